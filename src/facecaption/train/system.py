"""The Lightning system around a plain open_clip model: contrastive loss, optimiser, schedule, metrics.

The ``nn.Module`` (``self.model``) is an unmodified open_clip model, so its ``state_dict`` is what
``open_clip.create_model_and_transforms(arch, pretrained=PATH)`` loads. The loss is open_clip's
``ClipLoss`` with features gathered across ranks (``local_loss``, ``gather_with_grad``) under DDP
(:func:`contrastive_loss`): the mean of the ranks' losses is the single-process loss of the global batch.

Gradient clipping under mixed precision: Lightning's AMP plugin refuses to clip with a fused optimizer
("performs unscaling of gradients internally"), yet the fused AdamW is the fast one on a GPU. The system
therefore clips in its own ``configure_gradient_clipping`` hook (the Trainer gets no ``gradient_clip_val``):
under ``32-true`` and ``bf16-mixed`` there is no gradient scaler, the gradients are the true ones when the
hook runs, and the fused AdamW is kept; under ``16-mixed`` (a GradScaler) the optimiser is the non-fused
(foreach) AdamW, so Lightning unscales the gradients before the hook and the clip acts on true gradients.

A non-finite loss stops training: every step records it on the device (no host sync), and the flag is
checked across ranks at every logged step and before every checkpoint, so no checkpoint is ever written
from non-finite weights; the error names the first bad step and the newest good checkpoint.
"""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import torch
from open_clip.loss import ClipLoss

from facecaption.train.data import SKIP_REASONS

log = logging.getLogger(__name__)
MAX_LOGIT_SCALE = math.log(100.0)  # temperature floor 0.01, as in CLIP / open_clip


def lr_lambda(*, lr: float, min_lr: float, warmup_steps: int, max_steps: int, schedule: str,
              step_every: int = 1000, step_gamma: float = 0.1):
    """Multiplier of the peak lr at a step: linear warm-up, then cosine / step decay / constant."""
    warm, total = warmup_steps, max_steps
    floor = min_lr / lr

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule == "cosine":
            t = (step - warm) / max(1, total - warm)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if schedule == "step":
            return max(floor, step_gamma ** ((step - warm) // step_every))
        return 1.0

    return f


def contrastive_loss(rank: int = 0, world: int = 1) -> ClipLoss:
    """open_clip's contrastive loss; with ``world > 1`` each rank scores its own rows against the features
    gathered from every rank (with their gradients), so the mean over ranks equals the loss of the global
    batch in one process (tests/test_train_ddp.py)."""
    return ClipLoss(local_loss=world > 1, gather_with_grad=world > 1, cache_labels=True, rank=rank, world_size=world)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; raised before any checkpoint of the bad weights is written."""


def in_batch_accuracy(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """Mean of image→text and text→image top-1 accuracy within the batch."""
    sims = img.float() @ txt.float().T
    target = torch.arange(len(sims), device=sims.device)
    return ((sims.argmax(1) == target).float().mean() + (sims.argmax(0) == target).float().mean()) / 2


class FlipSystem(L.LightningModule):
    """Contrastive training of ``model`` (an open_clip model). The arguments are the ``train.*`` keys of the
    same names (``max_steps``: the steps the schedule spans, after ``train.epochs``); ``batch_size`` is per
    device."""

    def __init__(self, model: torch.nn.Module, *, lr: float = 1e-3, min_lr: float = 0.0, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, warmup_steps: int = 10,
                 max_steps: int = 80, schedule: str = "cosine", step_every: int = 1000, step_gamma: float = 0.1,
                 grad_clip: float | None = 1.0, log_every: int = 5, batch_size: int = 48):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.hparams.betas = tuple(float(b) for b in betas)
        self.model = model
        self.loss_fn: ClipLoss | None = None
        self.skipped = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
        self.train_seconds = 0.0  # across resumes
        self.samples_seen = 0
        self.curve: list[dict] = []  # logged rows, kept in checkpoints: complete curves across resumes
        self.timed_seconds, self.timed_samples = 0.0, 0  # steady-state throughput (this process's run)
        self._t_last: float | None = None
        self._rate: float | None = None
        self.resumed_global_batch: int | None = None
        self.gpu_idle_seconds = 0.0  # this process's steady-state steps (see _gpu_gap_start)
        self._gpu_end, self._gpu_gaps = None, []
        # the first step with a non-finite loss (-1: none), kept on the device: no host sync per step
        self.register_buffer("_bad_step", torch.tensor(-1, dtype=torch.long), persistent=False)

    def setup(self, stage: str) -> None:
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.trainer.global_rank if self._trainer is not None else 0
        self.loss_fn = contrastive_loss(rank, world)

    def _step(self, batch):
        images, tokens, skipped, _keys = batch
        out = self.model(images, tokens)  # the module's forward: what `train.compile` compiles
        img, txt, scale = (out["image_features"], out["text_features"], out["logit_scale"]) if isinstance(out, dict) \
            else out[:3]
        loss = self.loss_fn(img, txt, scale)
        return loss, img, txt, scale, skipped

    # -- non-finite loss -----------------------------------------------------------------------------------
    def _record_finite(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()) & (self._bad_step < 0)
        self._bad_step = torch.where(bad, torch.full_like(self._bad_step, self.global_step), self._bad_step)

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLoss` on every rank if any rank saw a non-finite loss (a collective: call it
        at the same point on all ranks)."""
        if self._trainer is None:
            return
        bad = int(self._bad_step)
        if self.trainer.strategy.reduce_boolean_decision(bad >= 0, all=False):
            raise NonFiniteLoss(f"non-finite loss at step {bad if bad >= 0 else '(on another rank)'}")

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
        if self.device.type == "cuda":
            self._gpu_gap_start(batch_idx)

    # -- GPU idle time between steps (the loader must never be the bottleneck) -----------------------------
    def _gpu_gap_start(self, batch_idx: int) -> None:
        """CUDA events after each step and before the next: on the GPU's own timeline the gap between them is
        time the GPU had nothing queued (waiting for data or the host). Read without blocking (``query``)."""
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        if self._gpu_end is not None and batch_idx >= 3:
            self._gpu_gaps.append((self._gpu_end, start))
        while self._gpu_gaps and self._gpu_gaps[0][1].query():
            end, nxt = self._gpu_gaps.pop(0)
            self.gpu_idle_seconds += end.elapsed_time(nxt) / 1000.0
        self._gpu_end = None

    def training_step(self, batch, batch_idx):
        loss, img, txt, scale, skipped = self._step(batch)
        self._record_finite(loss)
        bs = len(img)
        self.skipped += skipped.to("cpu", torch.long)
        self.samples_seen += bs * self.trainer.world_size
        every = self.hparams.log_every
        if (self.global_step + 1) % every == 0 or self.global_step == 0:
            self.check_finite()
            with torch.no_grad():
                acc = in_batch_accuracy(img, txt)
            self.curve.append({"step": int(self.global_step), "train/loss": float(loss.detach()), "train/acc": float(acc),
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

    def on_train_start(self):
        now = self.trainer.world_size * self.hparams.batch_size
        if self.resumed_global_batch is not None and self.resumed_global_batch != now:
            log.warning("train: resumed with global batch %d (was %d): %d process(es) x train.batch_size %d; the "
                        "step count and learning-rate schedule continue, the data order from here differs from an "
                        "uninterrupted run", now, self.resumed_global_batch, self.trainer.world_size,
                        self.hparams.batch_size)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        if self.device.type == "cuda":
            self._gpu_end = torch.cuda.Event(enable_timing=True)
            self._gpu_end.record()

    def on_train_end(self):
        self._t_last = None

    # -- validation ----------------------------------------------------------------------------------------
    def on_validation_epoch_start(self):
        self._t_last = None  # validation time is not training time
        self._gpu_end = None

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
        h = self.hparams
        # fused AdamW (fast on GPUs) except under a gradient scaler, where the clip needs Lightning to unscale
        # first, which it does only for optimisers that do not unscale inside their step (module docstring)
        scaled = self._trainer is not None and str(self.trainer.precision).startswith("16")
        opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                                 {"params": decay, "weight_decay": h.weight_decay}],
                                lr=h.lr, betas=tuple(h.betas), eps=h.eps, fused=not scaled,
                                foreach=True if scaled else None)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(
            lr=h.lr, min_lr=h.min_lr, warmup_steps=h.warmup_steps, max_steps=h.max_steps, schedule=h.schedule,
            step_every=h.step_every, step_gamma=h.step_gamma))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip the global gradient norm to ``train.grad_clip`` here rather than through the precision plugin
        (see the module docstring); the parameters in the optimiser's order, as Lightning's own clip does."""
        clip = self.hparams.grad_clip
        if clip:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)

    # -- state across resumes ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        self.check_finite()  # never a checkpoint of non-finite weights
        checkpoint["facecaption"] = {"skipped": self.skipped.tolist(), "train_seconds": float(self.train_seconds),
                                     "samples_seen": int(self.samples_seen), "curve": self.curve,
                                     "world_size": int(self.trainer.world_size),
                                     "global_batch": int(self.trainer.world_size * self.hparams.batch_size)}

    def on_load_checkpoint(self, checkpoint):
        st = checkpoint.get("facecaption", {})
        self.resumed_global_batch = st.get("global_batch")
        self.skipped = torch.tensor(st.get("skipped", [0] * len(SKIP_REASONS)), dtype=torch.long)
        self.train_seconds = float(st.get("train_seconds", 0.0))
        self.samples_seen = int(st.get("samples_seen", 0))
        self.curve = list(st.get("curve", []))
