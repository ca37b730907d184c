"""Detection audit against ground truth: greedy IoU matching, recall, precision and landmark error."""

from __future__ import annotations

import numpy as np
import pandas as pd


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match(det_boxes: np.ndarray, det_scores: np.ndarray, true_boxes: np.ndarray, iou: float = 0.5) -> list[tuple[int, int]]:
    """Greedy matching, best score first: (detection index, truth index) pairs with IoU >= ``iou``."""
    if len(det_boxes) == 0 or len(true_boxes) == 0:
        return []
    m = iou_matrix(det_boxes, true_boxes)
    taken: set[int] = set()
    pairs = []
    for d in np.argsort(-np.asarray(det_scores), kind="stable"):
        cand = [(m[d, t], t) for t in range(m.shape[1]) if t not in taken and m[d, t] >= iou]
        if cand:
            t = max(cand)[1]
            taken.add(t)
            pairs.append((int(d), int(t)))
    return pairs


def audit(faces: pd.DataFrame, truth: pd.DataFrame, min_size: float, iou: float = 0.5) -> dict:
    """Audit kept faces (``faces`` parquet rows) against the true faces of the same images.

    Recall counts the true faces whose box's shorter side is at least ``min_size`` (the ones the filter
    is meant to keep); precision counts every kept face (a kept face on a true face below the floor is
    still a true face). Landmark error is the mean distance of the five points, in pixels and as a share
    of the true inter-ocular distance (NME).
    """
    truth = truth.copy()
    truth["side"] = np.minimum(truth.x1 - truth.x0, truth.y1 - truth.y0)
    truth["eligible"] = truth.side >= min_size
    truth["found"] = False
    det_ok = np.zeros(len(faces), dtype=bool)
    errors_px, errors_nme = [], []
    faces = faces.reset_index(drop=True)
    by_image = faces.groupby("image_key").indices
    for key, tidx in truth.groupby("key").indices.items():
        didx = by_image.get(key, np.zeros(0, dtype=np.int64))
        t = truth.iloc[tidx]
        d = faces.iloc[didx]
        pairs = match(d[["x0", "y0", "x1", "y1"]].to_numpy(), d.score.to_numpy(), t[["x0", "y0", "x1", "y1"]].to_numpy(), iou)
        for di, ti in pairs:
            det_ok[didx[di]] = True
            truth.iloc[tidx[ti], truth.columns.get_loc("found")] = True
            p = np.asarray(d.landmarks.iloc[di], dtype=np.float64).reshape(5, 2)
            q = np.asarray(t.landmarks.iloc[ti], dtype=np.float64).reshape(5, 2)
            dist = np.linalg.norm(p - q, axis=1).mean()
            errors_px.append(dist)
            errors_nme.append(dist / max(np.linalg.norm(q[0] - q[1]), 1e-6))
    eligible = truth[truth.eligible]
    out = {
        "truth_faces": len(truth),
        "truth_faces_eligible": len(eligible),
        "truth_faces_below_floor": int((~truth.eligible).sum()),
        "recall": float(eligible.found.mean()) if len(eligible) else None,
        "precision": float(det_ok.mean()) if len(faces) else None,
        "true_positives": int(det_ok.sum()),
        "false_positives": int((~det_ok).sum()),
        "missed_eligible": int((~eligible.found).sum()),
        "landmark_error_px": float(np.mean(errors_px)) if errors_px else None,
        "landmark_nme": float(np.mean(errors_nme)) if errors_nme else None,
        "iou": iou,
    }
    if "degrade" in truth.columns and len(eligible):
        out["recall_by_degradation"] = {str(k): float(v) for k, v in eligible.groupby("degrade").found.mean().items()}
    return out
