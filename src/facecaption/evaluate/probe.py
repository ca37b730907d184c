"""Linear probe on frozen features: one linear layer over all attributes, trained with BCE (L-BFGS, L2),
the L2 strength chosen on the validation split, accuracy measured on the test split."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from facecaption import rng as rngmod
from facecaption.evaluate.metrics import accuracy_per_column


def subset(n: int, fraction: float, seed: int, dataset: str, run: int) -> np.ndarray:
    """Indices of a random share of the training samples: keyed by dataset, fraction and run (not by model),
    so every model sees the same labels. At least two samples."""
    if fraction >= 1.0:
        return np.arange(n)
    k = min(n, max(2, int(round(fraction * n))))
    rng = rngmod.stream(seed, "evaluate/probe_subset", dataset, f"{fraction:.6g}", run)
    return np.sort(rng.choice(n, size=k, replace=False))


def _fit(x: torch.Tensor, y: torch.Tensor, decay: float, iterations: int, init=None):
    d, a = x.shape[1], y.shape[1]
    if init is None:
        prior = y.mean(0).clamp(0.02, 0.98)
        w = torch.zeros(d, a, dtype=torch.float64)
        b = torch.log(prior / (1 - prior)).clone()
    else:
        w, b = (t.clone() for t in init)
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def closure():
        opt.zero_grad()
        loss = loss_fn(x @ w + b, y) + 0.5 * decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


@contextlib.contextmanager
def _few_threads(work: int):
    """Small fits run on one thread: many tiny L-BFGS steps only lose time to thread hand-offs (badly so on a
    loaded machine). Large ones (real CelebA) keep torch's threads."""
    n = torch.get_num_threads()
    if work < 20_000_000:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def fit_and_score(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                  test: tuple[np.ndarray, np.ndarray], decays, iterations: int = 100) -> dict:
    """Fit one linear layer per L2 strength (strongest first, warm-started), keep the best on validation.

    Returns test accuracy per attribute, the chosen strength and the validation accuracy.
    """
    xtr, ytr = train
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    t = {name: (torch.from_numpy((x - mu) / sd).double(), torch.from_numpy(y.astype(np.float64)))
         for name, (x, y) in (("train", train), ("val", val), ("test", test))}
    best, init = None, None
    for decay in sorted(decays, reverse=True):
        with _few_threads(xtr.shape[0] * xtr.shape[1] * ytr.shape[1]):
            w, b = _fit(*t["train"], decay, iterations, init)
        init = (w, b)
        val_acc = accuracy_per_column((t["val"][0] @ w + b > 0).numpy(), val[1]).mean()
        if best is None or val_acc > best[0] + 1e-12:
            best = (val_acc, decay, w, b)
    val_acc, decay, w, b = best
    test_acc = accuracy_per_column((t["test"][0] @ w + b > 0).numpy(), test[1])
    return {"test_accuracy": test_acc, "decay": decay, "val_accuracy": float(val_acc)}


def majority(train_labels: np.ndarray, test_labels: np.ndarray) -> np.ndarray:
    """Accuracy per attribute of always answering the training majority."""
    guess = train_labels.mean(0) >= 0.5
    return accuracy_per_column(np.broadcast_to(guess, test_labels.shape), test_labels)
