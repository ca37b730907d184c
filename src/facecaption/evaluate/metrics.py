"""Metrics on plain arrays: recall@k for retrieval, attribute accuracy."""

from __future__ import annotations

import numpy as np


def recall_at_k(sim: np.ndarray, positive: np.ndarray, ks=(1, 5, 10)) -> dict[int, float]:
    """Share of queries (rows of ``sim``) with a positive among their ``k`` best-scored candidates.

    ``positive`` is a boolean (queries, candidates) mask; a query may have several positives (identical
    captions). Ties count against the query: a candidate scored equal to the best positive ranks ahead of
    it, so a constant scorer gets no credit.
    """
    sim = np.asarray(sim, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if sim.shape != positive.shape:
        raise ValueError(f"sim {sim.shape} and positive {positive.shape} differ in shape")
    if not positive.any(axis=1).all():
        raise ValueError("every query needs at least one positive candidate")
    best_pos = np.where(positive, sim, -np.inf).max(axis=1, keepdims=True)
    rank = ((sim >= best_pos) & ~positive).sum(axis=1)  # negatives at or above the best positive
    return {k: float((rank < k).mean()) for k in ks}


def retrieval(img: np.ndarray, txt: np.ndarray, captions: list[str], ks=(1, 5, 10)) -> dict[str, float]:
    """Image→text and text→image recall@k for paired faces and captions.

    Identical captions are one candidate (the gallery is the set of distinct captions): an image's positive
    is its caption; a caption's positives are all images that carry it.
    """
    distinct = sorted(set(captions))
    index = {c: i for i, c in enumerate(distinct)}
    owner = np.array([index[c] for c in captions])
    first_of: dict[str, int] = {}
    for i, c in enumerate(captions):
        first_of.setdefault(c, i)
    first = np.array([first_of[c] for c in distinct])
    sim = img @ txt[first].T  # (images, distinct captions)
    pos = owner[:, None] == np.arange(len(distinct))[None, :]
    i2t = recall_at_k(sim, pos, ks)
    t2i = recall_at_k(sim.T, pos.T, ks)
    out = {f"i2t_r{k}": v for k, v in i2t.items()}
    out.update({f"t2i_r{k}": v for k, v in t2i.items()})
    return out


def accuracy_per_column(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return (np.asarray(pred).astype(bool) == np.asarray(truth).astype(bool)).mean(axis=0)


def balanced_accuracy_per_column(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean of the true-positive and true-negative rates per column (NaN where a class is absent)."""
    pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (pred & truth).sum(0) / truth.sum(0)
        tnr = (~pred & ~truth).sum(0) / (~truth).sum(0)
    return (tpr + tnr) / 2
