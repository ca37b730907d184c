"""Stage ``report_train``: training curves and setup from ``results/train/logs`` → ``results/reports/train``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from facecaption.core import reference
from facecaption.core.config import StageConfig
from facecaption.core.report import Report, setup_plotting
from facecaption.core.stage import StageIO


def curves(logs: str | Path) -> pd.DataFrame:
    """One row per logged step: train/loss, train/acc, train/temperature, train/lr, val/loss, val/acc, ..."""
    df = pd.read_csv(Path(logs) / "curves.csv")
    return df.groupby("step", as_index=False).last().sort_values("step")


def _series(df: pd.DataFrame, col: str) -> pd.DataFrame:
    return df[["step", col]].dropna() if col in df else pd.DataFrame(columns=["step", col])


def run(cfg: StageConfig, io: StageIO) -> int:
    logs = io.one("logs")
    summary = json.loads((Path(logs) / "summary.json").read_text())
    df = curves(logs)
    rep = Report(io.outputs["report"], metrics_file=io.outputs["metrics"])
    loss, vloss = _series(df, "train/loss"), _series(df, "val/loss")
    acc, vacc = _series(df, "train/acc"), _series(df, "val/acc")
    temp = _series(df, "train/temperature")
    head = loss["train/loss"].head(3).mean() if len(loss) else None
    tail = loss["train/loss"].tail(3).mean() if len(loss) else None
    rep.update({
        "arch": summary["arch"], "base_arch": summary["base_arch"], "image_size": summary["image_size"],
        "steps": summary["steps"], "samples": summary["samples"], "batch_size": summary["batch_size"],
        "global_batch": summary["global_batch"], "world_size": summary["world_size"],
        "parameters": summary["parameters"], "device": summary["device_name"], "precision": summary["precision"],
        "skipped": summary["skipped"],
        "skipped_total": sum(summary["skipped"].values()),
        "train_shards": summary["train_shards"], "val_shards": summary["val_shards"],
        "initial_loss": float(loss["train/loss"].iloc[0]) if len(loss) else None,
        "final_loss": float(loss["train/loss"].iloc[-1]) if len(loss) else None,
        "initial_loss_mean3": head, "final_loss_mean3": tail,
        "loss_drop": (head - tail) if head is not None else None,
        "initial_val_loss": float(vloss["val/loss"].iloc[0]) if len(vloss) else None,
        "final_val_loss": float(vloss["val/loss"].iloc[-1]) if len(vloss) else None,
        "final_val_acc": float(vacc["val/acc"].iloc[-1]) if len(vacc) else None,
        "final_train_acc": float(acc["train/acc"].iloc[-1]) if len(acc) else None,
        "initial_temperature": float(temp["train/temperature"].iloc[0]) if len(temp) else None,
        "final_temperature": float(temp["train/temperature"].iloc[-1]) if len(temp) else None,
    })

    t = reference.TRAINING
    rows = [["FLIP (paper)", t["image_encoder"], t["text_encoder"], t["embed_dim"], t["global_batch"],
             f"{t['gpus']} GPUs", f"{t['epochs']} epochs", t["wall_time"]],
            ["this run", f"{summary['arch']} (random init)", f"{summary['arch']} text tower",
             summary.get("embed_dim"), summary["global_batch"], f"{summary['world_size']} × {summary['device_name']}",
             f"{summary['steps']} steps", "job log"]]
    rep.table("train_setup", ["setup", "image encoder", "text encoder", "embedding", "global batch", "devices",
                              "training", "wall time"], rows,
              caption="Training setup: the paper's (quoted) and this run's (measured). This run's wall time is in its job "
                      "log (logs/train/timing.json), outside the versioned artifacts, so that a rerun gives the same bytes.",
              quoted_rows=[0])

    plt, sns = setup_plotting()
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    ax = axes[0]
    ax.plot(loss["step"], loss["train/loss"], label="train")
    if len(vloss):
        ax.plot(vloss["step"], vloss["val/loss"], "o-", label="held-out")
    ax.set(xlabel="step", ylabel="contrastive loss", title="loss")
    ax.legend()
    ax = axes[1]
    ax.plot(temp["step"], temp["train/temperature"])
    ax.set(xlabel="step", ylabel="τ", title="temperature")
    ax = axes[2]
    ax.plot(acc["step"], acc["train/acc"], label="train")
    if len(vacc):
        ax.plot(vacc["step"], vacc["val/acc"], "o-", label="held-out")
    ax.set(xlabel="step", ylabel="top-1", title="in-batch retrieval accuracy", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    rep.figure("curves", fig)
    rep.save()
    # the DVC plot: `dvc plots show results/metrics/train_curve.csv` (x = step)
    cols = [c for c in ("step", "train/loss", "val/loss", "train/acc", "val/acc", "train/temperature") if c in df]
    df[cols].to_csv(io.outputs["curve"], index=False, float_format="%.6g")
    return 0
