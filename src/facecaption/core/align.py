"""Face alignment: a similarity transform from 5 landmarks onto a fixed template.

The template is the widely used 5-point ArcFace layout (left eye, right eye, nose tip, mouth corners on a
112×112 crop), shrunk toward the crop centre by ``scale`` so that hair, hats and earrings stay in view, as
in CelebA's aligned crops. The same function aligns the crawl's detected faces and the labeled split.
"""

from __future__ import annotations

import cv2
import numpy as np

ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def template(size: int, scale: float = 0.6) -> np.ndarray:
    """The 5-point template for a ``size``×``size`` crop; ``scale`` < 1 leaves room around the face."""
    unit = ARCFACE_112 / 112.0
    centre = np.array([0.5, 0.5])
    return ((unit - centre) * scale + centre + np.array([0.0, 0.02])) * size


def similarity(landmarks: np.ndarray, size: int, scale: float = 0.6) -> np.ndarray:
    """The 2×3 similarity transform (rotation, uniform scale, shift) that maps landmarks to the template."""
    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    dst = template(size, scale)
    matrix, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    if matrix is None:  # degenerate landmarks: fall back to least squares on all points
        matrix, _ = cv2.estimateAffinePartial2D(src, dst, method=0)
    return matrix


def align(rgb: np.ndarray, landmarks: np.ndarray, size: int = 224, scale: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``rgb`` so the landmarks land on the template; return (crop, 2×3 matrix)."""
    matrix = similarity(landmarks, size, scale)
    crop = cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    return crop, matrix


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]
