"""Released face boxes (source = release): check each box, find its landmarks with the detector inside it, or
align the box alone.

For every release row of an image (the collect sample's ``release_faces``, :mod:`facecaption.collect.release`):

1. the box must be four finite numbers with ``x1 > x0`` and ``y1 > y0`` (``malformed_box``);
2. when the release gives the image size, the downloaded image must have it (``image_changed``: the URL now
   serves another picture);
3. at least ``release.min_inside`` of the box's area must lie inside the image (``box_outside_image``);
4. an empty face caption is dropped (``empty_caption``) or kept with ``released_caption`` null
   (``release.empty_caption``);
5. the configured detector runs on the box grown by ``release.margin`` on every side; the detection that
   overlaps the released box most (IoU >= ``release.min_iou``, score >= ``faces.min_score``) gives the five
   landmarks, aligned as usual (``aligned_by = landmarks``). With none, the face is aligned from the box alone
   (``aligned_by = box``: the similarity transform that puts :data:`BOX_LAYOUT`, a mean five-point layout inside a
   face box, onto the template) or dropped as ``no_face_in_box`` (``release.box_only``).
"""

from __future__ import annotations

import json
import math

import numpy as np

from facecaption.core.reasons import ReleaseReason
from facecaption.faces.detect import Face

MALFORMED_BOX, BOX_OUTSIDE, IMAGE_CHANGED, NO_FACE_IN_BOX, EMPTY_CAPTION = (r.value for r in ReleaseReason)

#: mean landmark positions inside a face box, as shares of its width and height (left eye, right eye, nose,
#: left and right mouth corner); measured on synthface's ground truth (median over 215 faces), made symmetric
BOX_LAYOUT = np.array([[0.27, 0.38], [0.73, 0.38], [0.50, 0.61], [0.32, 0.74], [0.68, 0.74]])


def released_faces(value) -> list[dict]:
    """The ``release_faces`` JSON of a collect row as a list (empty for other sources)."""
    if not isinstance(value, str) or not value:
        return []
    try:
        faces = json.loads(value)
    except ValueError:
        return []
    return faces if isinstance(faces, list) else []


def parse_box(raw, box_format: str = "xyxy") -> tuple[float, float, float, float] | None:
    """``(x0, y0, x1, y1)`` of a released box (a list, or a JSON / comma-separated string), None when malformed."""
    if isinstance(raw, str):
        text = raw.strip()
        try:
            raw = json.loads(text) if text.startswith("[") else [float(v) for v in text.replace(";", ",").split(",")]
        except ValueError:
            return None
    if isinstance(raw, dict):
        raw = [raw.get(k) for k in ("x0", "y0", "x1", "y1")]
    if isinstance(raw, np.ndarray):
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        return None
    try:
        x0, y0, a, b = (float(v) for v in raw)
    except (TypeError, ValueError):
        return None
    x1, y1 = (x0 + a, y0 + b) if box_format == "xywh" else (a, b)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def share_inside(box, width: int, height: int) -> float:
    """The share of the box's area inside a ``width`` x ``height`` image."""
    x0, y0, x1, y1 = box
    iw = max(0.0, min(x1, width) - max(x0, 0.0))
    ih = max(0.0, min(y1, height) - max(y0, 0.0))
    return iw * ih / ((x1 - x0) * (y1 - y0))


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def check(entry: dict, box, width: int, height: int, rcfg: dict) -> str:
    """The reason a released face cannot be aligned before any detection ("" = go on)."""
    if box is None:
        return MALFORMED_BOX
    w0, h0 = entry.get("width"), entry.get("height")
    if w0 is not None and h0 is not None and (int(w0), int(h0)) != (width, height):
        return f"{IMAGE_CHANGED}: released {int(w0)}x{int(h0)}, downloaded {width}x{height}"
    if share_inside(box, width, height) < rcfg["min_inside"]:
        return BOX_OUTSIDE
    caption = entry.get("caption")
    if rcfg["empty_caption"] == "drop" and not (isinstance(caption, str) and caption.strip()):
        return EMPTY_CAPTION
    return ""


def region(box, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """The box grown by ``margin`` of its size on every side, clipped to the image (integer pixels)."""
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    return (max(0, int(math.floor(x0 - mx))), max(0, int(math.floor(y0 - my))),
            min(width, int(math.ceil(x1 + mx))), min(height, int(math.ceil(y1 + my))))


def detect_in_box(detector, rgb: np.ndarray, box, rcfg: dict, threshold: float) -> Face | None:
    """The detection inside the box region that best matches the released box, in image coordinates."""
    h, w = rgb.shape[:2]
    rx0, ry0, rx1, ry1 = region(box, w, h, rcfg["margin"])
    if rx1 - rx0 < 2 or ry1 - ry0 < 2:
        return None
    crop = np.ascontiguousarray(rgb[ry0:ry1, rx0:rx1])
    found = detector.detect([crop], threshold)[0]
    best, best_iou = None, rcfg["min_iou"]
    for f in found:
        shifted = (f.box[0] + rx0, f.box[1] + ry0, f.box[2] + rx0, f.box[3] + ry0)
        o = iou(shifted, box)
        if o >= best_iou and (best is None or o > best_iou):
            lm = np.asarray(f.landmarks, dtype=np.float32) + np.array([rx0, ry0], dtype=np.float32)
            best, best_iou = Face(box=shifted, score=f.score, landmarks=lm), o
    return best


def box_face(box) -> Face:
    """A face aligned from its box alone: :data:`BOX_LAYOUT` placed in the box (score NaN)."""
    x0, y0, x1, y1 = box
    lm = BOX_LAYOUT * np.array([x1 - x0, y1 - y0]) + np.array([x0, y0])
    return Face(box=tuple(box), score=float("nan"), landmarks=lm.astype(np.float32))
