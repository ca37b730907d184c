"""What the audit compares: perceptual hashes, colour layouts, keypoints and face embeddings of aligned crops.

* :func:`phash`: imagehash's 64-bit pHash (DCT of the 32×32 greyscale image) packed into 8 bytes, the layout of
  faiss's binary indexes: a copy of the same pixels keeps (nearly) every bit. It finds *exact* copies only: two
  aligned crops of one photo, each aligned from its own detection, differ by a few pixels of shift, scale and
  rotation, and that moves a pHash as far as another face's (measured on the embedded run: planted near copies
  at 8-26 of 64 bits from their test image, unrelated crops from 6).
* :func:`thumb`: the crop's colour layout (8×8 RGB, mean removed, L2-normalised): the *candidate* search for near
  copies. A near copy's source is its nearest test image by this layout (all 12 planted near copies of the
  embedded run), but unrelated faces can be as close, so candidates are verified:
* :class:`Keypoints`: ORB keypoints matched between a pool crop and a candidate, kept when one similarity
  transform (RANSAC) explains them: a near copy is the same picture under a small shift, scale, rotation, colour
  change and re-encode, so hundreds of keypoints agree; another face does not.
* :class:`Embedder`: L2-normalised face embeddings from an insightface recognition ONNX of the faces stage's
  model pack (ArcFace input: 112×112 RGB, (x - 127.5) / 127.5), or from FLIP's image encoder
  (:mod:`facecaption.core.openclip`), the offline fallback; ``name`` says which one ran.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

HASH_BYTES = 8  # 64-bit pHash


def open_rgb(source, size: int) -> Image.Image:
    """A test or pool sample as an RGB square of ``size``: JPEG bytes, a path, or (path, "square") (the middle
    square of a portrait, as evaluation frames it). Raises on an unreadable image."""
    if isinstance(source, (bytes, bytearray)):
        im = Image.open(io.BytesIO(source))
    else:
        im = Image.open(source[0] if isinstance(source, tuple) else source)
    with im:
        im.load()
        im = im.convert("RGB")
    if isinstance(source, tuple):
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    return im if im.size == (size, size) else im.resize((size, size), Image.BICUBIC)


def phash(im: Image.Image) -> np.ndarray:
    """The 64-bit pHash of an image as 8 uint8 (faiss's binary layout)."""
    import imagehash

    bits = imagehash.phash(im, hash_size=8).hash.ravel()
    return np.packbits(bits.astype(np.uint8))


THUMB_SIDE = 8  # the colour layout: 8×8 RGB = 192 numbers


def thumb(im: Image.Image) -> np.ndarray:
    """The colour layout of a crop: 8×8 RGB, mean removed, L2-normalised (192 float32)."""
    x = np.asarray(im.convert("RGB").resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR), np.float32).ravel()
    x = x - x.mean()
    return x / max(float(np.linalg.norm(x)), 1e-6)


class Keypoints:
    """ORB keypoints of a crop (resized to ``side``) and a geometric check between two crops' keypoints:
    :meth:`inliers` counts the cross-checked matches that one similarity transform (RANSAC, 3 px) explains.
    Safe to share between threads (OpenCV releases the GIL; each thread gets its own detector and matcher)."""

    def __init__(self, features: int = 500, side: int = 224):
        import threading

        import cv2

        self.cv2, self.side, self.features = cv2, side, features
        self._local = threading.local()

    def _tools(self):
        t = self._local
        if not hasattr(t, "orb"):
            t.orb = self.cv2.ORB_create(nfeatures=self.features, edgeThreshold=8, patchSize=15, fastThreshold=10)
            t.matcher = self.cv2.BFMatcher(self.cv2.NORM_HAMMING, crossCheck=True)
        return t.orb, t.matcher

    def describe(self, im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
        """(keypoint positions (n, 2) float32, descriptors (n, 32) uint8 or None)."""
        grey = np.asarray(im.convert("L").resize((self.side, self.side), Image.BICUBIC))
        kps, desc = self._tools()[0].detectAndCompute(grey, None)
        return np.float32([k.pt for k in kps]).reshape(-1, 2), desc

    def inliers(self, a: tuple, b: tuple) -> int:
        (pa, da), (pb, db) = a, b
        if da is None or db is None or len(pa) < 4 or len(pb) < 4:
            return 0
        matches = self._tools()[1].match(da, db)
        if len(matches) < 4:
            return 0
        src = pa[[m.queryIdx for m in matches]]
        dst = pb[[m.trainIdx for m in matches]]
        _, mask = self.cv2.estimateAffinePartial2D(src, dst, method=self.cv2.RANSAC, ransacReprojThreshold=3.0)
        return int(mask.sum()) if mask is not None else 0


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(np.bitwise_xor(a, b)).sum())


class Embedder:
    """Face embeddings (N, D) float32, L2-normalised. ``kind``: insightface or flip; ``name``: the model used."""

    def __init__(self, kind: str, path: str, batch: int = 256):
        self.kind, self.path, self.batch = kind, path, batch
        if kind == "insightface":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            inp = self.session.get_inputs()[0]
            self.input_name = inp.name
            shape = inp.shape
            self.size = int(shape[2]) if isinstance(shape[2], int) else 112
            self.name = f"insightface {Path(path).name}"
        else:
            from facecaption.core import openclip as oc

            self.model, self.preprocess, _ = oc.load(path, "FLIP-Tiny")
            self.name = f"FLIP image encoder ({path})"

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        if self.kind == "flip":
            from facecaption.core import openclip as oc

            return oc.encode_images(self.model, self.preprocess, images, batch=self.batch)
        out = []
        for i in range(0, len(images), self.batch):
            x = np.stack([np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR), np.float32)
                          for im in images[i:i + self.batch]])
            x = ((x - 127.5) / 127.5).transpose(0, 3, 1, 2).copy()
            y = np.asarray(self.session.run(None, {self.input_name: x})[0], np.float32)
            out.append(y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out) if out else np.zeros((0, 512), np.float32)


def choose_embedder(audit: dict, faces: dict, flip: str | None) -> tuple[str | None, str | None, str]:
    """(kind, path, why) of the identity embedder: audit.embedder, with auto = the insightface recognition model
    when its file is there, else FLIP's image encoder; kind None (and why) when there is none."""
    ins = (faces or {}).get("insightface") or {}
    shown = os.path.join(str(ins.get("model_dir", "~/.insightface/models")), str(ins.get("pack", "buffalo_l")),
                         audit["recognition_model"])  # as configured: the report does not name this machine's home
    model = os.path.expanduser(shown)
    want = audit["embedder"]
    if want == "none":
        return None, None, "audit.embedder: none"
    if want in ("auto", "insightface") and os.path.isfile(model):
        return "insightface", model, f"{shown} found"
    if want == "insightface":
        return None, None, f"audit.embedder: insightface, but {shown} does not exist"
    if flip and os.path.isfile(flip):
        why = f"{shown} not found: the offline fallback" if want == "auto" else "audit.embedder: flip"
        return "flip", flip, why
    return None, None, f"no recognition model ({shown}) and no FLIP checkpoint ({flip})"
