"""The Lightning system around a plain open_clip model: contrastive loss, optimiser, schedule, metrics.

The ``nn.Module`` (``self.model``) is an unmodified open_clip model, so its ``state_dict`` is what
``open_clip.create_model_and_transforms(arch, pretrained=PATH)`` loads. The loss is open_clip's
``ClipLoss`` with features gathered across ranks (``local_loss``, ``gather_with_grad``) under DDP.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from open_clip.loss import ClipLoss

from facecaption.train.data import SKIP_REASONS

MAX_LOGIT_SCALE = math.log(100.0)  # temperature floor 0.01, as in CLIP / open_clip


def lr_lambda(tcfg: dict):
    """Multiplier of the peak lr at a step: linear warm-up, then cosine / step decay / constant."""
    warm, total, base = tcfg["warmup_steps"], tcfg["max_steps"], tcfg["lr"]
    floor = tcfg["min_lr"] / base

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if tcfg["schedule"] == "cosine":
            t = (step - warm) / max(1, total - warm)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if tcfg["schedule"] == "step":
            return max(floor, tcfg["step_gamma"] ** ((step - warm) // tcfg["step_every"]))
        return 1.0

    return f


def in_batch_accuracy(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """Mean of image→text and text→image top-1 accuracy within the batch."""
    sims = img.float() @ txt.float().T
    target = torch.arange(len(sims), device=sims.device)
    return ((sims.argmax(1) == target).float().mean() + (sims.argmax(0) == target).float().mean()) / 2


class FlipSystem(L.LightningModule):
    def __init__(self, model: torch.nn.Module, tcfg: dict):
        super().__init__()
        self.model = model
        self.tcfg = tcfg
        self.loss_fn: ClipLoss | None = None
        self.skipped = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
        self.train_seconds = 0.0  # across resumes
        self.samples_seen = 0
        self.curve: list[dict] = []  # logged rows, kept in checkpoints: complete curves across resumes
        self.timed_seconds, self.timed_samples = 0.0, 0  # steady-state throughput (this process's run)
        self._t_last: float | None = None
        self._rate: float | None = None

    def setup(self, stage: str) -> None:
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.trainer.global_rank if self._trainer is not None else 0
        self.loss_fn = ClipLoss(local_loss=world > 1, gather_with_grad=world > 1, cache_labels=True,
                                rank=rank, world_size=world)

    def _step(self, batch):
        images, tokens, skipped = batch
        img = self.model.encode_image(images, normalize=True)
        txt = self.model.encode_text(tokens, normalize=True)
        scale = self.model.logit_scale.exp()
        loss = self.loss_fn(img, txt, scale)
        return loss, img, txt, scale, skipped

    # -- training ------------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx):
        now = time.perf_counter()
        if self._t_last is not None:
            dt = now - self._t_last
            self.train_seconds += dt
            rate = len(batch[0]) * self.trainer.world_size / max(dt, 1e-9)
            if batch_idx >= 3:  # steady state: past start-up and the first steps
                self.timed_seconds += dt
                self.timed_samples += len(batch[0]) * self.trainer.world_size
            self._rate = rate if self._rate is None else 0.9 * self._rate + 0.1 * rate
        self._t_last = now

    def training_step(self, batch, batch_idx):
        loss, img, txt, scale, skipped = self._step(batch)
        bs = len(img)
        self.skipped += skipped.to("cpu", torch.long)
        self.samples_seen += bs * self.trainer.world_size
        every = self.tcfg["log_every"]
        if (self.global_step + 1) % every == 0 or self.global_step == 0:
            with torch.no_grad():
                acc = in_batch_accuracy(img, txt)
            self.curve.append({"step": int(self.global_step), "train/loss": float(loss), "train/acc": float(acc),
                               "train/temperature": float(1.0 / scale), "train/lr": self.optimizers().param_groups[0]["lr"],
                               "train/samples": self.samples_seen})
            self.log_dict({"train/loss": loss.detach(), "train/acc": acc, "train/temperature": 1.0 / scale.detach(),
                           "train/lr": torch.tensor(self.optimizers().param_groups[0]["lr"]),
                           "train/samples": float(self.samples_seen)},
                          batch_size=bs, sync_dist=False, rank_zero_only=True)
            self.log_dict({f"skipped/{r}": float(v) for r, v in zip(SKIP_REASONS, self.skipped.tolist())},
                          batch_size=bs, rank_zero_only=True)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=bs)
        if self._rate is not None:
            self.log("samples/s", self._rate, prog_bar=True, logger=False, batch_size=bs)
            if (self.global_step + 1) % every == 0:
                self.log("train/samples_per_s", self._rate, batch_size=bs, rank_zero_only=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def on_train_end(self):
        self._t_last = None

    # -- validation ----------------------------------------------------------------------------------------
    def on_validation_epoch_start(self):
        self._t_last = None  # validation time is not training time

    def on_validation_epoch_end(self):
        m = self.trainer.callback_metrics
        if "val/loss" in m and not self.trainer.sanity_checking:
            self.curve.append({"step": int(self.global_step), "val/loss": float(m["val/loss"]),
                               "val/acc": float(m["val/acc"])})

    def validation_step(self, batch, batch_idx):
        loss, img, txt, _, _ = self._step(batch)
        bs = len(img)
        self.log_dict({"val/loss": loss, "val/acc": in_batch_accuracy(img, txt)}, batch_size=bs, sync_dist=True,
                      on_epoch=True, on_step=False)

    # -- optimisation --------------------------------------------------------------------------------------
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            excluded = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name \
                or "embedding" in name or "token_embedding" in name
            (no_decay if excluded else decay).append(p)
        t = self.tcfg
        opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                                 {"params": decay, "weight_decay": t["weight_decay"]}],
                                lr=t["lr"], betas=tuple(t["betas"]), eps=t["eps"], fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # -- state across resumes ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        checkpoint["facecaption"] = {"skipped": self.skipped.tolist(), "train_seconds": float(self.train_seconds),
                                     "samples_seen": int(self.samples_seen), "curve": self.curve}

    def on_load_checkpoint(self, checkpoint):
        st = checkpoint.get("facecaption", {})
        self.skipped = torch.tensor(st.get("skipped", [0] * len(SKIP_REASONS)), dtype=torch.long)
        self.train_seconds = float(st.get("train_seconds", 0.0))
        self.samples_seen = int(st.get("samples_seen", 0))
        self.curve = list(st.get("curve", []))
