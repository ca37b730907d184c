"""Linear probe on frozen features: one linear layer over all attributes, trained with BCE (L-BFGS, L2),
the L2 strength chosen on the validation split, accuracy measured on the test split."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

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
        loss = (np.logaddexp(0, z) - y * z).mean() + 0.5 * decay * (w * w).sum()
        g = (expit(z) - y) / (n * a)
        return loss, np.concatenate([(x.T @ g + decay * w).ravel(), g.sum(0)])

    res = minimize(f, theta0, jac=True, method="L-BFGS-B", options={"maxiter": iterations, "gtol": 1e-7})
    return res.x[: d * a].reshape(d, a), res.x[d * a:]


def fit_and_score(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                  test: tuple[np.ndarray, np.ndarray], decays, iterations: int = 200,
                  norm: np.ndarray | None = None) -> dict:
    """Fit the linear layer for each L2 strength (strongest first, warm-started) and keep, per attribute, the
    strength best on validation (ties: the stronger) — the loss is separable over attributes, so this is
    logistic regression per attribute with its own C. Features are standardised with the statistics of
    ``norm`` (all training images, labels unused) or of the labeled subset.

    Returns test accuracy per attribute, the chosen strength per attribute and the validation accuracy.
    """
    xtr, ytr = train
    ref = xtr if norm is None else norm
    mu, sd = ref.mean(0), ref.std(0) + 1e-6
    t = {name: ((x - mu) / sd).astype(np.float64) for name, (x, _) in (("train", train), ("val", val), ("test", test))}
    order = sorted(decays, reverse=True)
    fits, val_acc, init = [], [], None
    for decay in order:
        w, b = _fit(t["train"], ytr.astype(np.float64), decay, iterations, init)
        init = (w, b)
        fits.append((w, b))
        val_acc.append(accuracy_per_column(t["val"] @ w + b > 0, val[1]))
    val_acc = np.stack(val_acc)  # (decays, attributes)
    pick = val_acc.argmax(0)  # first maximum = the strongest decay among ties
    cols = np.arange(val_acc.shape[1])
    w = np.stack([fits[k][0][:, j] for j, k in enumerate(pick)], 1)
    b = np.array([fits[k][1][j] for j, k in enumerate(pick)])
    test_acc = accuracy_per_column(t["test"] @ w + b > 0, test[1])
    return {"test_accuracy": test_acc, "decay": float(np.median([order[k] for k in pick])),
            "decays": [order[k] for k in pick], "val_accuracy": float(val_acc[pick, cols].mean())}


def majority(train_labels: np.ndarray, test_labels: np.ndarray) -> np.ndarray:
    """Accuracy per attribute of always answering the training majority."""
    guess = train_labels.mean(0) >= 0.5
    return accuracy_per_column(np.broadcast_to(guess, test_labels.shape), test_labels)
