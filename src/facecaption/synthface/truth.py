"""Matching detected faces to ground-truth faces (synthface) by box IoU, for the audits."""

from __future__ import annotations

import numpy as np
import pandas as pd

BOX = ["x0", "y0", "x1", "y1"]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between boxes a (N×4) and b (M×4), x0 y0 x1 y1."""
    a = np.asarray(a, float).reshape(-1, 4)
    b = np.asarray(b, float).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_truth(faces: pd.DataFrame, truth: pd.DataFrame, min_iou: float = 0.4) -> pd.DataFrame:
    """For each face row (``key, image_key, x0..y1``) the best truth face of the same image by IoU (greedy,
    one-to-one). Returns ``key, truth_face, iou`` for matched faces only."""
    out = []
    if not len(faces) or not len(truth) or not set(BOX) <= set(faces.columns):
        return pd.DataFrame(columns=["key", "truth_face", "iou"])
    truth_by_image = {k: g for k, g in truth.groupby("key")}
    for image_key, group in faces.groupby("image_key"):
        t = truth_by_image.get(image_key)
        if t is None:
            continue
        m = iou(group[BOX].to_numpy(), t[BOX].to_numpy())
        used_f, used_t = set(), set()
        for flat in np.argsort(-m, axis=None):
            i, j = divmod(int(flat), m.shape[1])
            if m[i, j] < min_iou:
                break
            if i in used_f or j in used_t:
                continue
            used_f.add(i)
            used_t.add(j)
            out.append({"key": group["key"].iloc[i], "truth_face": int(t["face"].iloc[j]), "iou": float(m[i, j]),
                        "image_key": image_key})
    return pd.DataFrame(out, columns=["key", "truth_face", "iou", "image_key"])


def truth_labels(faces: pd.DataFrame, truth: pd.DataFrame, attrs: list[str]) -> pd.DataFrame:
    """Ground-truth 0/1 labels (columns ``attrs`` present in the truth) indexed by face key."""
    m = match_truth(faces, truth)
    if not len(m):
        return pd.DataFrame(columns=[a for a in attrs if a in truth.columns])
    cols = [a for a in attrs if a in truth.columns]
    t = truth.rename(columns={"key": "image_key", "face": "truth_face"})[["image_key", "truth_face", *cols]]
    merged = m.merge(t, on=["image_key", "truth_face"], how="left").set_index("key")
    return merged[cols].astype(float)
