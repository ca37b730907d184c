"""Stage ``train``: FLIP pre-training of an open_clip model with Lightning on the caption shards.

Writes ``results/train/flip.pt`` (an open_clip state dict; see :mod:`facecaption.core.openclip`), the same
weights in open_clip's hub layout (``results/train/open_clip/``), ``results/train/logs/`` (``curves.csv``,
``summary.json``) and ``results/train/split.json``: which caption shards (and sample keys) were held out
(:mod:`facecaption.core.split`, the one definition that evaluation and the quality report read);
TensorBoard events and Lightning's CSV in ``logs/train/``.

Resumable checkpoints live in ``train.resume_dir`` (default ``cache/train/<hash of config and shard content>/checkpoints``), outside
``results/``: Snakemake deletes the declared outputs of a failed job, so a killed run, started again with
the same config, resumes from the newest checkpoint there (same weights as an uninterrupted run). The logs
are written beside the checkpoints and copied into ``results/train/logs`` when training ends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

from facecaption.core.config import ConfigError, StageConfig
from facecaption.core.openclip import ModelError
from facecaption.core.split import Split
from facecaption.core.split import make as make_split
from facecaption.core.stage import StageIO

log = logging.getLogger(__name__)


TB_DIR = "logs/train/tensorboard"  # `tensorboard --logdir logs/train/tensorboard`
CSV_LOG = "logs/train/metrics.csv"  # Lightning's CSV log, merged across resumes
TIMING_LOG = "logs/train/timing.json"  # wall time, samples/s, threads, resumed-from: not a versioned artifact


class TrainError(ModelError):
    """A problem with the training inputs or run, reported as one line."""


class SimulatedKill(RuntimeError):
    """Raised by the ``stop_after`` test hook."""


def tcfg_size(cfg: dict) -> int | None:
    """The training image size: train.image_size, else the crops' align.size."""
    return cfg["train"].get("image_size") or cfg.get("align", {}).get("size")


# `train.*` keys that a run resumes across: how the work is spread and watched, not what is learned. Any
# other key (architecture, batch per device, steps, optimiser, schedule, augmentation, data split, ...) names
# another resume folder, so changing it starts afresh. Resuming on another number of GPUs or nodes is allowed
# (a long job often comes back on another allocation): the step count and learning-rate schedule continue,
# the log says that the global batch changed, and the data order from there differs from an uninterrupted run
# (the stream is partitioned by reader); so does changing the number of data-loading workers.
RESUME_KEYS = ("resume_dir", "num_workers", "threads", "log_every", "checkpoint_every", "val_every",
               "accelerator", "devices", "num_nodes", "compile", "matmul_precision")
FINGERPRINTS = "fingerprints.json"  # in train.resume_dir: sha256 of each shard, keyed by path, size and mtime


def global_rank() -> int:
    """This process's rank from the launcher's environment (Lightning's subprocess launcher, SLURM, torchrun)
    before any Trainer exists; 0 in a single process."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


class _Hashing:
    """A read-only file wrapper that feeds every byte read through a hash (so one pass both hashes a shard
    and lets tarfile count its samples)."""

    def __init__(self, f, h):
        self.f, self.h = f, h

    def read(self, n=-1):
        data = self.f.read(n)
        self.h.update(data)
        return data


def _digest_and_count(shard: str) -> dict:
    """sha256 of a shard's bytes and its number of samples (distinct webdataset keys), in one streaming pass."""
    import tarfile

    h, keys = hashlib.sha256(), set()
    with open(shard, "rb") as f:
        reader = _Hashing(f, h)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for member in tar:
                    if member.isfile():
                        base = member.name.rsplit("/", 1)[-1]
                        keys.add(member.name[: len(member.name) - len(base)] + base.split(".", 1)[0])
        except tarfile.TarError:
            pass  # a damaged shard still gets its digest; the stream skips and counts its bad samples
        while reader.read(1 << 20):  # the rest (tar padding, or what follows the damage)
            pass
    return {"sha256": h.hexdigest(), "samples": len(keys)}


def shard_fingerprints(shards: list[str], cache_dir: Path, rank: int | None = None,
                       wait_s: float = 1800.0) -> list[dict]:
    """``{"sha256", "samples"}`` of every caption shard, computed once: cached in ``cache_dir/fingerprints.json``
    keyed by (path, size, mtime_ns), so a restart re-reads nothing that is unchanged, and only rank 0 reads
    the shards: under Lightning's launcher it runs before the other ranks start; under SLURM, where all
    ranks start together, the others wait for rank 0's digests (and read the shards themselves after
    ``wait_s``)."""
    rank = global_rank() if rank is None else rank
    path = Path(cache_dir) / FINGERPRINTS

    def stat_key(shard: str) -> str:
        st = os.stat(shard)
        return f"{shard}|{st.st_size}|{st.st_mtime_ns}"

    def cached() -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    keys = [stat_key(s) for s in shards]
    known = cached()
    deadline = time.time() + wait_s
    while rank != 0 and not all(k in known for k in keys) and time.time() < deadline:
        time.sleep(2.0)
        known = cached()
    todo = [(s, k) for s, k in zip(shards, keys) if k not in known]
    if todo:
        t0, size = time.time(), 0
        for shard, key in todo:
            known[key] = _digest_and_count(shard)
            size += os.path.getsize(shard)
        log.info("train: fingerprinted %d caption shard(s), %.1f MiB in %.1f s (cached in %s)", len(todo),
                 size / 2**20, time.time() - t0, path)
        if rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**cached(), **{k: known[k] for _, k in todo}}, indent=0, sort_keys=True))
            os.replace(tmp, path)
    return [known[k] for k in keys]


def config_hash(cfg: dict, shards: list[str]) -> str:
    """Names the resume folder: the training config (less :data:`RESUME_KEYS`) *and the content of the caption
    shards*, so a rerun on changed captions (another grammar, an LLM rewrite, other filters) starts afresh
    instead of resuming a model trained on the old ones (:func:`shard_fingerprints` reads each shard once)."""
    content = [f["sha256"] for f in shard_fingerprints(shards, Path(cfg["train"]["resume_dir"]))]
    data = {"seed": cfg["seed"], "train": {k: v for k, v in cfg["train"].items() if k not in RESUME_KEYS},
            "align": tcfg_size(cfg), "shards": shards, "content": content}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def latest_checkpoint(folder: Path) -> str | None:
    """The newest readable checkpoint: one cut short by a kill while it was written (a torch checkpoint is a
    zip archive; a truncated one has no central directory) is skipped with a warning."""
    import zipfile

    ckpts = sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for path in reversed(ckpts):
        try:
            with zipfile.ZipFile(path):
                return str(path)
        except (zipfile.BadZipFile, OSError):
            log.warning("train: skipping unreadable checkpoint %s (cut short by a kill?)", path)
    return None


def _park_csv(logs: Path) -> None:
    """Lightning's CSVLogger empties metrics.csv when it starts again: keep the interrupted run's rows."""
    cur = logs / "csv" / "metrics.csv"
    if cur.exists():
        parts = logs / "parts"
        parts.mkdir(parents=True, exist_ok=True)
        os.replace(cur, parts / f"metrics-{len(list(parts.glob('*.csv'))):03d}.csv")


def merge_csv(logs: Path, out: Path) -> None:
    """One metrics.csv across resumes: an interrupted part keeps only the steps before the next part began."""
    import pandas as pd

    files = sorted((logs / "parts").glob("*.csv")) + [logs / "csv" / "metrics.csv"]
    frames = [pd.read_csv(f) for f in files if f.exists() and f.stat().st_size]
    kept = []
    for i, df in enumerate(frames):
        if i + 1 < len(frames) and len(frames[i + 1]):
            df = df[df["step"] < frames[i + 1]["step"].min()]
        kept.append(df)
    if kept:
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.concat(kept, ignore_index=True).to_csv(out, index=False)


def hardware(tcfg: dict) -> dict:
    """Lightning's accelerator, precision, devices, nodes and strategy for ``train.*``: DDP whenever more than
    one process trains (GPUs, or CPU processes with the gloo backend, e.g. ``accelerator: cpu, devices: 2``)."""
    import torch

    acc = tcfg["accelerator"]
    if acc == "auto":
        acc = "gpu" if torch.cuda.is_available() else "cpu"
    prec = tcfg["precision"]
    if prec == "auto":
        prec = "bf16-mixed" if acc == "gpu" else "32-true"
    devices = tcfg["devices"]
    if acc == "cpu":
        devices = 1 if devices == "auto" else devices
    strategy = "ddp" if tcfg["num_nodes"] > 1 or devices_per_node(devices) > 1 else "auto"
    return {"accelerator": acc, "precision": prec, "devices": devices, "num_nodes": tcfg["num_nodes"],
            "strategy": strategy}


def devices_per_node(devices) -> int:
    """How many devices Lightning's ``devices`` names: a count, ``auto``/``-1`` (every GPU), or a list of ids."""
    import torch

    if devices in ("auto", -1, "-1"):
        return torch.cuda.device_count()
    if isinstance(devices, str) and not devices.strip().isdigit():
        return len([d for d in devices.split(",") if d.strip()])
    return int(devices)


def loader_workers(tcfg: dict, hw: dict) -> int:
    """``train.num_workers``, or for ``auto`` the CPUs this process may use shared among the devices of the
    node, one left for the training process itself (at most 16 per device)."""
    if tcfg["num_workers"] != "auto":
        return int(tcfg["num_workers"])
    task_cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if task_cpus and int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # srun gave this task (= device) its own CPUs
        return max(1, min(16, int(task_cpus) - 1))
    per_node = devices_per_node(hw["devices"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cpus // max(1, per_node) - 1))


def require_shards(shards: list[str]) -> None:
    missing = [s for s in shards if not os.path.exists(s)]
    if missing:
        raise TrainError(f"train error: caption shard {missing[0]} does not exist ({len(missing)} missing)")


def resume_folder(cfg: dict, shards: list[str]) -> Path:
    """``train.resume_dir/<config and content hash>``: where this run's checkpoints and logs live (rank 0
    creates it)."""
    ckdir = Path(cfg["train"]["resume_dir"]) / config_hash(cfg, shards)
    if global_rank() == 0:
        ckdir.mkdir(parents=True, exist_ok=True)
    return ckdir


def new_model(arch: str, seed: int, tcfg: dict):
    """The open_clip model to train: random init with ``seed`` (temperature ``train.init_temperature``), or
    the local weights of ``train.init``."""
    import torch

    from facecaption.core import openclip as M

    model, _ = M.create(arch, seed=seed, init=tcfg["init"])
    if tcfg["init"] is None:
        with torch.no_grad():
            model.logit_scale.fill_(float(torch.log(torch.tensor(1.0 / tcfg["init_temperature"]))))
    return model


def excluded_keys(path: str | list | None, mode: str) -> frozenset[str]:
    """The pool crops the contamination audit flagged (``results/audit/pool.parquet``) that
    ``train.exclude_contaminated`` leaves out: ``near_copy``, ``identity`` or ``any`` of the two."""
    if mode == "none" or not path:
        return frozenset()
    import pandas as pd

    df = pd.read_parquet(path[0] if isinstance(path, list) else path, columns=["key", "near_copy", "identity"])
    keep = {"near_copy": df["near_copy"], "identity": df["identity"], "any": df["near_copy"] | df["identity"]}[mode]
    return frozenset(df.loc[keep, "key"].astype(str))


def caption_data(split: Split, tcfg: dict, *, seed: int, image_size: int, tokenizer, num_workers: int,
                 exclude: frozenset[str] = frozenset()):
    """The data module: training on the split's training shards, validation on its held-out shards, without
    the ``exclude`` keys (the audit's flagged crops; skipped and counted as ``contaminated``)."""
    from facecaption.train.data import CaptionData

    if not split.held_out:
        log.warning("train: %s", split.note)
    return CaptionData(list(split.train), list(split.held_out), tokenizer=tokenizer, image_size=image_size, seed=seed,
                       batch_size=tcfg["batch_size"], augment=tcfg["augment"], shuffle_buffer=tcfg["shuffle_buffer"],
                       resampled=tcfg["resampled"] is True,  # auto: exact passes, each sample once per pass
                       val_max_samples=tcfg["val_max_samples"], num_workers=num_workers, text=tcfg["text"],
                       exclude=exclude)


def planned_steps(tcfg: dict, train_shards: list[str], hw: dict) -> int:
    """``train.max_steps``, or with ``train.epochs`` the steps of that many passes over the training shards
    (their samples counted once, with their digests)."""
    if tcfg["epochs"] is None:
        return tcfg["max_steps"]
    train_samples = sum(f["samples"] for f in shard_fingerprints(list(train_shards), Path(tcfg["resume_dir"])))
    world = devices_per_node(hw["devices"]) * hw["num_nodes"]
    steps = max(1, math.ceil(tcfg["epochs"] * train_samples / (tcfg["batch_size"] * world)))
    log.info("train: %g epochs of %d samples at a global batch of %d = %d steps", tcfg["epochs"], train_samples,
             tcfg["batch_size"] * world, steps)
    return steps


def flip_system(model, tcfg: dict, max_steps: int):
    from facecaption.train.system import FlipSystem

    return FlipSystem(model, lr=tcfg["lr"], min_lr=tcfg["min_lr"], weight_decay=tcfg["weight_decay"],
                      betas=tcfg["betas"], eps=tcfg["eps"], warmup_steps=tcfg["warmup_steps"], max_steps=max_steps,
                      schedule=tcfg["schedule"], step_every=tcfg["step_every"], step_gamma=tcfg["step_gamma"],
                      grad_clip=tcfg["grad_clip"], log_every=tcfg["log_every"], batch_size=tcfg["batch_size"])


def make_trainer(ckdir: Path, tcfg: dict, hw: dict, max_steps: int, has_val: bool, stop_after: int | None = None):
    """(Lightning Trainer, its loggers): checkpoints every ``train.checkpoint_every`` steps into
    ``ckdir/checkpoints``, CSV and TensorBoard logs into ``ckdir/logs``."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    class _Stop(Callback):  # test hook: behave like a job killed after `stop_after` steps
        def on_train_batch_end(self, trainer, *a):
            if stop_after is not None and trainer.global_step >= stop_after:
                raise SimulatedKill(f"stopped after step {trainer.global_step}")

    if global_rank() == 0:
        _park_csv(ckdir / "logs")
    callbacks = [ModelCheckpoint(dirpath=ckdir / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
                                 every_n_train_steps=tcfg["checkpoint_every"], save_top_k=2, monitor="step", mode="max",
                                 save_last=True, save_on_train_epoch_end=False),
                 TQDMProgressBar(refresh_rate=max(1, min(tcfg["log_every"], 10))), _Stop()]
    loggers = [CSVLogger(save_dir=ckdir, name="logs", version="csv")]
    try:
        loggers.append(TensorBoardLogger(save_dir=ckdir, name="logs", version="tb", default_hp_metric=False))
    except ModuleNotFoundError as exc:  # a bare GPU machine may lack tensorboard: the CSV log and curves remain
        log.warning("train: no TensorBoard events (%s)", exc)
    # where Lightning would use SLURM's layout, keep it but not its requeue: a job restarts through the
    # profile's retries and resumes from train.resume_dir
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    trainer = L.Trainer(
        **hw, max_steps=max_steps, max_epochs=-1, logger=loggers, callbacks=callbacks,
        gradient_clip_val=None,  # the system clips (FlipSystem.configure_gradient_clipping), AMP or not
        deterministic=hw["accelerator"] == "cpu",
        val_check_interval=tcfg["val_every"] if has_val else None, check_val_every_n_epoch=None,
        limit_val_batches=1.0 if has_val else 0, num_sanity_val_steps=0, log_every_n_steps=1,  # the system throttles its own logging
        default_root_dir=str(ckdir), enable_model_summary=False, benchmark=False, plugins=plugins or None,
    )
    return trainer, loggers


def fit(trainer, system, data, resume: str | None, ckpts: Path, *, what: str) -> None:
    """``trainer.fit`` (resuming from ``resume``), a non-finite loss or an out-of-memory as one line
    (``what``: the batch, architecture, size and precision, for the latter)."""
    import torch

    from facecaption.train.system import NonFiniteLoss

    if resume:
        log.info("train: resuming from %s", resume)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*IterableDataset.*__len__.*")
        warnings.filterwarnings("ignore", ".*that ended before the epoch ended.*")
        try:
            trainer.fit(system, datamodule=data, ckpt_path=resume, weights_only=True)
        except NonFiniteLoss as exc:
            good = latest_checkpoint(ckpts)
            raise TrainError(f"train error: {exc}; newest good checkpoint: {good or 'none yet'} (kept; no "
                             f"checkpoint holds non-finite weights); lower train.lr or set train.grad_clip, "
                             f"then rerun to resume from it") from None
        except torch.OutOfMemoryError:
            raise TrainError(f"train error: out of GPU memory at {what}; lower train.batch_size "
                             f"(add GPUs to keep the global batch), or use a smaller train.arch / "
                             f"train.image_size") from None
    if getattr(trainer, "interrupted", False):
        raise RuntimeError("training interrupted")


def summary_of(trainer, system, data, *, arch: str, tcfg: dict, image_size, hw: dict, max_steps: int) -> dict:
    """``summary.json``: what was trained, on what, how (no wall-clock facts: a rerun gives the same bytes)."""
    import torch

    from facecaption.core import openclip as M
    from facecaption.train.data import SKIP_REASONS

    return {"arch": arch, "base_arch": tcfg["arch"], "image_size": image_size, "steps": int(trainer.global_step),
            "samples": int(system.samples_seen),
            "skipped": dict(zip(SKIP_REASONS, system.skipped.tolist())), **{k: str(v) for k, v in hw.items()},
            "precision": str(trainer.precision),  # what Lightning ran (16-mixed becomes bf16 on CPU)
            "world_size": trainer.world_size, "batch_size": tcfg["batch_size"],
            "global_batch": tcfg["batch_size"] * trainer.world_size,
            "device_name": torch.cuda.get_device_name(0) if hw["accelerator"] == "gpu" else "cpu",
            "parameters": sum(p.numel() for p in system.model.parameters()),
            "embed_dim": M.model_config(arch)["embed_dim"],
            "train_shards": len(data.train_shards), "val_shards": len(data.val_shards),
            **({"epochs": tcfg["epochs"], "max_steps_from_epochs": max_steps} if tcfg["epochs"] is not None else {})}


def timing_of(trainer, system, data, *, tcfg: dict, hw: dict, resume: str | None, t0: float) -> dict:
    """Wall-clock facts, which differ run to run: for the job's logs, never the versioned artifacts (the
    benchmarks measure speed on purpose)."""
    import torch

    return {"train_seconds": float(system.train_seconds), "wall_seconds_this_run": time.time() - t0,
            "resumed_from": Path(resume).name if resume else None,
            "samples_per_s": (system.timed_samples / system.timed_seconds if system.timed_seconds else
                              system.samples_seen / system.train_seconds if system.train_seconds else None),
            "torch_threads": torch.get_num_threads(), "steps": int(trainer.global_step),
            "data_workers": data.num_workers, "compile": bool(tcfg["compile"]),
            # share of the steady-state training time the GPU sat idle between steps (rank 0's GPU)
            "gpu_idle_fraction": (system.gpu_idle_seconds / system.timed_seconds
                                  if hw["accelerator"] == "gpu" and system.timed_seconds else None)}


def write_logs(ckdir: Path, out_logs: str, system, summary: dict, arch: str) -> None:
    """``out_logs``: curves.csv (once per step, across resumes), summary.json, model_config.json; the
    TensorBoard events and Lightning's CSV (which carry wall-clock times) go to the job's logs (logs/train/)."""
    import pandas as pd

    from facecaption.core import openclip as M

    out = Path(out_logs)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(ckdir / "logs", out, ignore=shutil.ignore_patterns("parts", "tb", "csv"))
    if (ckdir / "logs" / "tb").exists():
        shutil.rmtree(TB_DIR, ignore_errors=True)
        shutil.copytree(ckdir / "logs" / "tb", TB_DIR)
    merge_csv(ckdir / "logs", Path(CSV_LOG))
    pd.DataFrame(system.curve).to_csv(out / "curves.csv", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    (out / "model_config.json").write_text(json.dumps({"arch": arch, "model_cfg": M.model_config(arch)}, indent=1))


def timing_log_of(out_model: str) -> Path:
    """The job log of a run's timing: ``logs/train/timing.json`` for ``results/train/flip.pt``, and beside it
    for another model (an ablation arm's ``results/ablation/<text>/flip.pt`` -> ``logs/ablation/<text>/``)."""
    parent = Path(out_model).parent
    if parent == Path("results/train") or parent.parts[:1] != ("results",):
        return Path(TIMING_LOG)
    return Path("logs", *parent.parts[1:], "timing.json")


def train(cfg: dict, shards: list[str], out_model: str, out_logs: str, stop_after: int | None = None,
          out_hub: str | None = None, out_split: str | None = None, contaminated_pool: str | None = None) -> dict:
    """Train, export ``out_model`` (and, when given, ``out_hub``: open_clip's hub layout, and ``out_split``: the
    held-out split, :mod:`facecaption.core.split`), copy logs to ``out_logs``; returns the summary (with the
    timing, on rank 0). ``stop_after`` (tests) raises after that many steps, as a killed job would stop."""
    import lightning as L
    import open_clip
    import torch

    from facecaption.core import openclip as M

    tcfg, seed = cfg["train"], cfg["seed"]
    if tcfg["threads"]:
        torch.set_num_threads(tcfg["threads"])
    image_size = tcfg_size(cfg)
    arch = M.arch_for(tcfg["arch"], image_size)
    require_shards(shards)
    hw = hardware(tcfg)
    split = make_split(shards, tcfg["val_shards"])
    if hw["accelerator"] == "gpu":
        torch.set_float32_matmul_precision(tcfg["matmul_precision"])  # TF32 for what runs outside autocast
    ckdir = resume_folder(cfg, shards)
    ckpts = ckdir / "checkpoints"
    resume = latest_checkpoint(ckpts)

    L.seed_everything(seed, workers=True, verbose=False)
    model = new_model(arch, seed, tcfg)
    data = caption_data(split, tcfg, seed=seed, image_size=image_size or M._image_size(M.model_config(arch)),
                        tokenizer=open_clip.get_tokenizer(arch), num_workers=loader_workers(tcfg, hw),
                        exclude=excluded_keys(contaminated_pool, tcfg["exclude_contaminated"]))
    max_steps = planned_steps(tcfg, split.train, hw)
    if tcfg["compile"]:
        model.compile()  # in place: the state dict keeps open_clip's names, so the export is unchanged
    system = flip_system(model, tcfg, max_steps)
    has_val = bool(split.held_out)
    trainer, loggers = make_trainer(ckdir, tcfg, hw, max_steps, has_val, stop_after)

    t0 = time.time()
    fit(trainer, system, data, resume, ckpts,
        what=f"train.batch_size: {tcfg['batch_size']} per device ({arch}, {image_size or 'native'} px, {hw['precision']})")
    if has_val and trainer.global_step % tcfg["val_every"] != 0:
        trainer.validate(system, datamodule=data, verbose=False)
    trainer.save_checkpoint(ckpts / "final.ckpt", weights_only=False)
    if not trainer.is_global_zero:  # only rank 0 writes: the folders, the logs, the artifacts
        return {}

    steps = int(trainer.global_step)
    M.save_checkpoint(system.model, arch, out_model, steps=steps)
    if out_hub is not None:
        M.save_open_clip_folder(system.model, arch, out_hub, steps=steps)
    if out_split is not None:
        split.write(out_split)
    summary = summary_of(trainer, system, data, arch=arch, tcfg=tcfg, image_size=image_size, hw=hw, max_steps=max_steps)
    timing = timing_of(trainer, system, data, tcfg=tcfg, hw=hw, resume=resume, t0=t0)
    timing_log = timing_log_of(out_model)
    timing_log.parent.mkdir(parents=True, exist_ok=True)
    timing_log.write_text(json.dumps(timing, indent=1, sort_keys=True))
    log.info("train: %d steps in %.1f s of training (%.1f samples/s)%s", timing["steps"], timing["train_seconds"],
             timing["samples_per_s"] or 0, f", resumed from {timing['resumed_from']}" if resume else "")
    for lg in loggers:
        lg.finalize("success")
    write_logs(ckdir, out_logs, system, summary, arch)
    return {**summary, **timing}


def run(cfg: StageConfig, io: StageIO) -> int:
    from facecaption.core.devices import require_cuda_for_train

    try:
        require_cuda_for_train(cfg)  # a job submitted to a node without CUDA: one line, before any work
        train(cfg, io.many("pairs"), io.outputs["model"], io.outputs["logs"], out_hub=io.outputs["open_clip"],
              out_split=io.outputs["split"])
    except (ModelError, ConfigError) as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0
