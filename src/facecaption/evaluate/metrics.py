"""Metrics on plain arrays: recall@k for retrieval, attribute accuracy."""

from __future__ import annotations

import numpy as np


def hits_at_k(sim: np.ndarray, positive: np.ndarray, ks=(1, 5, 10)) -> dict[int, np.ndarray]:
    """Per query (row of ``sim``): whether a positive is among its ``k`` best-scored candidates (ties count
    against the query, as in :func:`recall_at_k`)."""
    sim = np.asarray(sim, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if sim.shape != positive.shape:
        raise ValueError(f"sim {sim.shape} and positive {positive.shape} differ in shape")
    if not positive.any(axis=1).all():
        raise ValueError("every query needs at least one positive candidate")
    best_pos = np.where(positive, sim, -np.inf).max(axis=1, keepdims=True)
    rank = ((sim >= best_pos) & ~positive).sum(axis=1)  # negatives at or above the best positive
    return {k: rank < k for k in ks}


def recall_at_k(sim: np.ndarray, positive: np.ndarray, ks=(1, 5, 10)) -> dict[int, float]:
    """Share of queries (rows of ``sim``) with a positive among their ``k`` best-scored candidates.

    ``positive`` is a boolean (queries, candidates) mask; a query may have several positives (identical
    captions). Ties count against the query: a candidate scored equal to the best positive ranks ahead of
    it, so a constant scorer gets no credit.
    """
    return {k: float(h.mean()) for k, h in hits_at_k(sim, positive, ks).items()}


def retrieval_hits(img: np.ndarray, txt: np.ndarray, captions: list[str], ks=(1, 5, 10)) -> dict:
    """Per query hits of :func:`retrieval`: ``i2t`` {k: (images,) bool}, ``t2i`` {k: (distinct captions,)
    bool} and ``owner`` (images,): the index of each image's caption among the distinct ones."""
    distinct = sorted(set(captions))
    index = {c: i for i, c in enumerate(distinct)}
    owner = np.array([index[c] for c in captions])
    first_of: dict[str, int] = {}
    for i, c in enumerate(captions):
        first_of.setdefault(c, i)
    first = np.array([first_of[c] for c in distinct])
    sim = img @ txt[first].T  # (images, distinct captions)
    pos = owner[:, None] == np.arange(len(distinct))[None, :]
    return {"i2t": hits_at_k(sim, pos, ks), "t2i": hits_at_k(sim.T, pos.T, ks), "owner": owner}


def retrieval(img: np.ndarray, txt: np.ndarray, captions: list[str], ks=(1, 5, 10)) -> dict[str, float]:
    """Image→text and text→image recall@k for paired faces and captions.

    Identical captions are one candidate (the gallery is the set of distinct captions): an image's positive
    is its caption; a caption's positives are all images that carry it.
    """
    h = retrieval_hits(img, txt, captions, ks)
    out = {f"i2t_r{k}": float(v.mean()) for k, v in h["i2t"].items()}
    out.update({f"t2i_r{k}": float(v.mean()) for k, v in h["t2i"].items()})
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
