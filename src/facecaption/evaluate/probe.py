"""Linear probe on frozen features: one linear layer over all attributes, trained with BCE (L-BFGS, L2),
the L2 strength chosen on the validation split, accuracy measured on the test split.

The test split reaches :func:`fit_and_score` only to be scored with the weights already chosen: no choice
(the L2 strength, the weights) ever sees it. A choice on an edge of the grid is reported (:func:`edges`): the
best value may lie beyond it."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
from scipy.optimize import minimize

from facecaption.core import rng as rngmod
from facecaption.evaluate.metrics import accuracy_per_column


def subset(n: int, fraction: float, seed: int, dataset: str, run: int) -> np.ndarray:
    """Indices of a random share of the training samples: keyed by dataset, fraction and run (not by model),
    so every model sees the same labels. At least two samples."""
    if fraction >= 1.0:
        return np.arange(n)
    k = min(n, max(2, int(round(fraction * n))))
    rng = rngmod.stream(seed, "evaluate/probe_subset", dataset, f"{fraction:.6g}", run)
    return np.sort(rng.choice(n, size=k, replace=False))


def _fit(x: np.ndarray, y: np.ndarray, decay: float, iterations: int, init=None):
    """Minimise mean BCE over all (sample, attribute) pairs + decay/2 * ||W||^2 with L-BFGS (scipy).

    Plain numpy with the analytic gradient: a convex problem, so the optimum does not depend on a seed."""
    n, d = x.shape
    a = y.shape[1]
    if init is None:
        prior = np.clip(y.mean(0), 0.02, 0.98)
        theta0 = np.concatenate([np.zeros(d * a), np.log(prior / (1 - prior))])
    else:
        theta0 = np.concatenate([init[0].ravel(), init[1]])

    def f(theta):
        w, b = theta[: d * a].reshape(d, a), theta[d * a:]
        z = x @ w + b
        e = np.exp(-np.abs(z))  # one exp for both the loss (softplus) and the gradient (sigmoid)
        loss = (np.maximum(z, 0) + np.log1p(e) - y * z).mean() + 0.5 * decay * (w * w).sum()
        g = (np.where(z >= 0, 1.0, e) / (1.0 + e) - y) / (n * a)
        return loss, np.concatenate([(x.T @ g + decay * w).ravel(), g.sum(0)])

    res = minimize(f, theta0, jac=True, method="L-BFGS-B", options={"maxiter": iterations, "gtol": 1e-7})
    return res.x[: d * a].reshape(d, a), res.x[d * a:]


SMALL = 4_000_000  # training features (samples × dimensions) up to which the probe runs BLAS on one thread


def _blas_threads(size: int):
    """One BLAS thread for a small probe: its matrices are too small to share, and on a loaded machine the
    threads of OpenBLAS wait on each other (three to four times slower on 2 busy cores); large ones keep all."""
    if size > SMALL:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits  # scikit-learn's dependency
    except ImportError:  # pragma: no cover
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def fit_and_score(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                  test: tuple[np.ndarray, np.ndarray], decays, iterations: int = 200,
                  norm: np.ndarray | None = None) -> dict:
    """Fit the linear layer for each L2 strength (strongest first, warm-started) and keep, per attribute, the
    strength best on validation (ties: the stronger) — the loss is separable over attributes, so this is
    logistic regression per attribute with its own C. Features are standardised with the statistics of
    ``norm`` (all training images, labels unused) or of the labeled subset.

    The choice per attribute: the highest validation accuracy; among equal accuracies (e.g. every strong
    decay answering the majority) the lowest validation BCE, then the stronger decay. The test split is
    scored only after the choice.

    Returns test accuracy per attribute, the test predictions (samples, attributes), the chosen strength per
    attribute (``decays``) and their median (``decay``), the validation accuracy, and the grid edges hit
    (:func:`edges`).
    """
    xtr, ytr = train
    ref = xtr if norm is None else norm
    mu, sd = ref.mean(0), ref.std(0) + 1e-6
    t = {name: ((x - mu) / sd).astype(np.float64) for name, (x, _) in (("train", train), ("val", val), ("test", test))}
    order = sorted(decays, reverse=True)
    fits, val_acc, val_bce, init = [], [], [], None
    with _blas_threads(t["train"].size):
        for decay in order:
            w, b = _fit(t["train"], ytr.astype(np.float64), decay, iterations, init)
            init = (w, b)
            fits.append((w, b))
            z = t["val"] @ w + b
            val_acc.append(accuracy_per_column(z > 0, val[1]))
            val_bce.append(bce_per_column(z, val[1]))
    val_acc, val_bce = np.stack(val_acc), np.stack(val_bce)  # (decays, attributes)
    pick = choose(val_acc, val_bce)
    cols = np.arange(val_acc.shape[1])
    w = np.stack([fits[k][0][:, j] for j, k in enumerate(pick)], 1)
    b = np.array([fits[k][1][j] for j, k in enumerate(pick)])
    pred = t["test"] @ w + b > 0  # the test split, scored once with the chosen weights
    decays = [order[k] for k in pick]
    decay = float(np.median(decays))
    return {"test_accuracy": accuracy_per_column(pred, test[1]), "test_pred": pred, "decay": decay,
            "decays": decays, "val_accuracy": float(val_acc[pick, cols].mean()), **edges(decay, decays, order)}


def bce_per_column(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean binary cross-entropy per column of logits ``z`` against 0/1 labels ``y``."""
    y = np.asarray(y, dtype=np.float64)
    return (np.logaddexp(0, z) - y * z).mean(0)


def choose(val_acc: np.ndarray, val_bce: np.ndarray) -> np.ndarray:
    """Per attribute (column), the row (decay, strongest first) with the best validation accuracy; ties broken by
    the lower validation BCE, then by the earlier row (the stronger decay)."""
    rows = np.arange(val_acc.shape[0])
    return np.array([np.lexsort((rows, val_bce[:, j], -val_acc[:, j]))[0] for j in range(val_acc.shape[1])], dtype=int)


def edges(decay: float, decays: list[float], grid) -> dict:
    """Where the choice sits in its grid: ``at_edge`` when the median choice ``decay`` is the grid's largest or
    smallest value (every choice of a grid of fewer than three values is), and the share of attributes whose
    own choice is the largest (``edge_top``: often an attribute the probe finds nothing for, answering the
    majority) or the smallest (``edge_bottom``) value."""
    hi, lo = max(grid), min(grid)
    d = np.asarray(decays, dtype=float)
    return {"at_edge": bool(len(set(grid)) < 3 or decay >= hi or decay <= lo),
            "edge_top": float((d >= hi).mean()) if len(d) else 0.0,
            "edge_bottom": float((d <= lo).mean()) if len(d) else 0.0}


def majority(train_labels: np.ndarray, test_labels: np.ndarray) -> np.ndarray:
    """Accuracy per attribute of always answering the training majority."""
    guess = train_labels.mean(0) >= 0.5
    return accuracy_per_column(np.broadcast_to(guess, test_labels.shape), test_labels)
