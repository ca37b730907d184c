"""Training the attribute classifier on the labeled set (the module itself lives in ``model.py``).

Deterministic on CPU: fixed seeds, a seeded batch order and flips, ``torch.use_deterministic_algorithms``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from facecaption.attributes import data as D
from facecaption.attributes.model import MEAN, STD, build

log = logging.getLogger(__name__)


def device_of(acfg: dict) -> torch.device:
    want = acfg.get("device", "cpu")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 N×3×S×S → float, ImageNet-normalised."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def masked_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BCE over known labels only (NaN = unknown)."""
    known = ~torch.isnan(y)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.nan_to_num(y), reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int, device: torch.device) -> np.ndarray:
    """Probabilities N×A for uint8 images."""
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        out.append(torch.sigmoid(model(normalise(x[i:i + batch].to(device)))).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def evaluate(probs: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    """Per-attribute accuracy at 0.5, plus coverage and accuracy of the confident labels at the paper's filter."""
    known = ~np.isnan(y)
    pred = probs > 0.5
    acc = ((pred == (y > 0.5)) & known).sum(0) / np.maximum(known.sum(0), 1)
    conf = ((probs > threshold) | (probs < 1 - threshold)) & known
    conf_acc = ((pred == (y > 0.5)) & conf).sum(0) / np.maximum(conf.sum(0), 1)
    return {"accuracy": acc, "coverage": conf.sum(0) / np.maximum(known.sum(0), 1), "confident_accuracy": conf_acc}


def train(acfg: dict, seed: int, attrs: list[str], train_set, val_x: torch.Tensor, val_y: torch.Tensor) -> tuple[nn.Module, dict]:
    """Train on ``train_set`` (a (x, y) pair of tensors, or a StreamingLabeled) and validate; return (model, info)."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = device_of(acfg)
    model = build(acfg["arch"], len(attrs), acfg["width"], acfg.get("weights")).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=acfg["lr"], weight_decay=acfg["weight_decay"])
    streaming = isinstance(train_set, D.StreamingLabeled)
    n = len(train_set) if streaming else len(train_set[0])
    bs = acfg["batch_size"]
    steps_per_epoch = max(math.ceil(n / bs), 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=acfg["lr"], total_steps=steps_per_epoch * acfg["epochs"],
                                                pct_start=0.2)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(acfg["epochs"]):
        model.train()
        total, count = 0.0, 0
        if streaming:
            train_set.epoch = epoch
            batches = torch.utils.data.DataLoader(train_set, batch_size=bs, num_workers=0)
        else:
            perm = torch.randperm(n, generator=gen)
            batches = ((train_set[0][perm[i:i + bs]], train_set[1][perm[i:i + bs]]) for i in range(0, n, bs))
        for xb, yb in tqdm(batches, total=steps_per_epoch, desc=f"train epoch {epoch + 1}/{acfg['epochs']}",
                           mininterval=5, leave=False):
            xb, yb = xb.to(device), yb.to(device)
            if acfg["hflip"]:
                flip = (torch.rand(len(xb), generator=gen) < 0.5).to(device)
                xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            loss = masked_bce(model(normalise(xb)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched.last_epoch + 1 < sched.total_steps:
                sched.step()
            total += float(loss.detach()) * len(xb)
            count += len(xb)
        probs = predict(model, val_x, acfg["predict_batch_size"], device)
        acc = float(np.nanmean(evaluate(probs, val_y.numpy(), acfg["label_threshold"])["accuracy"]))
        history.append({"epoch": epoch + 1, "train_loss": total / max(count, 1), "val_accuracy": acc})
        log.info("epoch %d: train loss %.4f, val accuracy %.4f", epoch + 1, total / max(count, 1), acc)
    probs = predict(model, val_x, acfg["predict_batch_size"], device)
    ev = evaluate(probs, val_y.numpy(), acfg["label_threshold"])
    info = {
        "train_images": n, "val_images": len(val_x), "history": history,
        "val_accuracy": {a: float(v) for a, v in zip(attrs, ev["accuracy"])},
        "val_accuracy_mean": float(np.mean(ev["accuracy"])),
        "val_confident_coverage": {a: float(v) for a, v in zip(attrs, ev["coverage"])},
        "val_confident_accuracy": {a: float(v) for a, v in zip(attrs, ev["confident_accuracy"])},
    }
    return model.cpu(), info
