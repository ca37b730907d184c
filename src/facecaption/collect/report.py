"""Corpus report: counts, attribute frequencies (seaborn) and an example grid with true boxes."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from facecaption import workflow as W
from facecaption.report import Report, setup_plotting
from facecaption.shards import iter_samples, read_parquet


def example_grid(tar_path: str, truth: pd.DataFrame, n: int = 18, cols: int = 6, cell: int = 160) -> Image.Image:
    rows = (n + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell, rows * cell), "white")
    i = -1
    for sample in iter_samples(tar_path):
        if i + 1 >= n:
            break
        try:
            im = Image.open(io.BytesIO(sample.get("jpg") or b"")).convert("RGB")
        except Exception:  # noqa: BLE001 - a broken image (the faces stage records why) is no example
            continue
        i += 1
        draw = ImageDraw.Draw(im)
        for _, f in truth[truth.key == sample["__key__"]].iterrows():
            draw.rectangle([f.x0, f.y0, f.x1, f.y1], outline=(0, 255, 0), width=2)
            for x, y in np.asarray(f.landmarks).reshape(5, 2):
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 0, 0))
        grid.paste(im.resize((cell - 4, cell - 4)), ((i % cols) * cell + 2, (i // cols) * cell + 2))
    return grid


def run(cfg: dict, args: argparse.Namespace) -> int:
    deps = W.stage_deps("report_corpus", cfg)
    images = read_parquet([p for p in deps if p.endswith(".parquet") and not p.endswith(".truth.parquet")])
    truth = read_parquet([p for p in deps if p.endswith(".truth.parquet")])
    tars = [p for p in deps if p.endswith(".tar")]
    rep = Report(W.report_dir("corpus"))
    plt, sns = setup_plotting()

    faces_per_image = truth.groupby("key").size().reindex(images.key, fill_value=0) if len(truth) else pd.Series(0, index=images.key)
    rep.update({
        "source": cfg.get("source", "synthface"),
        "shards": len(tars),
        "images": len(images),
        "images_ok": int((images.status == "success").sum()),
        "faces": len(truth),
        "images_no_face": int((faces_per_image == 0).sum()),
        "images_multi_face": int((faces_per_image > 1).sum()),
        "faces_tiny": int(truth["tiny"].sum()) if len(truth) else 0,
        "identities": int(truth["identity"].nunique()) if len(truth) else 0,
        "mean_width": float(images.width.mean()),
        "mean_height": float(images.height.mean()),
        "mean_caption_words": float(images.caption.fillna("").str.split().str.len().mean()),
    })
    if cfg.get("source", "synthface") != "synthface":
        collect_funnel(rep, images)
    degrade = truth.drop_duplicates("key")["degrade"].value_counts().to_dict() if len(truth) else {}
    rep.metric("degraded_images", {k: int(v) for k, v in sorted(degrade.items()) if k != "none"})

    attr_cols = [c for c in truth.columns if c not in
                 ("key", "face", "x0", "y0", "x1", "y1", "landmarks", "identity", "degrade", "tiny")]
    freq = truth[attr_cols].mean().sort_values(ascending=False) if len(truth) else pd.Series(dtype=float)
    rep.metric("attributes_drawn", len(attr_cols))
    rep.metric("attribute_frequency", {k: float(v) for k, v in freq.items()})
    rep.table("corpus_summary", ["quantity", "value"], [
        ["shards", len(tars)], ["images", len(images)], ["faces (ground truth)", len(truth)],
        ["images without a face", rep.metrics["images_no_face"]],
        ["images with several faces", rep.metrics["images_multi_face"]],
        ["tiny faces", rep.metrics["faces_tiny"]],
        ["degraded images", sum(rep.metrics["degraded_images"].values())],
        ["identities", rep.metrics["identities"]],
        ["attributes drawn (of CelebA's 40)", len(attr_cols)],
    ], caption="The collected corpus, counted from the collect shards and their ground truth.")

    if len(freq):
        fig, ax = plt.subplots(figsize=(7, 2.6))
        sns.barplot(x=freq.index, y=freq.values, ax=ax, color="#4c72b0")
        ax.set_ylabel("share of faces")
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=90, labelsize=6)
        ax.set_ylim(0, 1)
        rep.figure("attribute_frequency", fig)
    elif cfg.get("source", "synthface") != "synthface":  # real sources: no ground truth to plot
        fig, ax = plt.subplots(figsize=(7, 1.2))
        ax.text(0.5, 0.5, "no ground-truth attributes for a real source", ha="center", va="center")
        ax.axis("off")
        rep.figure("attribute_frequency", fig)
    grid = example_grid(tars[0], truth)
    rep.image("examples", grid)
    rep.save()
    return 0


# -- real sources (urls, folder): the collection funnel and per-URL status counts ------------------------------------
FUNNEL_STEPS = (("urls", "input rows (URLs or files)"), ("requested", "requested (valid http(s) URL, not opted out)"),
                ("downloaded", "downloaded (a body arrived)"), ("decodable", "decodable (an image within the limits)"),
                ("kept", "kept in the shards"))


def collect_funnel(rep: Report, images: pd.DataFrame) -> None:
    """Metrics ``collect_funnel`` and ``collect_status``, tables ``collect_funnel`` and ``collect_status``."""
    from facecaption.collect.urls import funnel  # noqa: PLC0415

    fun = funnel(images)
    rep.metric("collect_funnel", fun)
    status = images["status"].fillna("not_downloaded").value_counts()
    rep.metric("collect_status", {str(k): int(v) for k, v in sorted(status.items())})
    total = max(fun["urls"], 1)
    rep.table("collect_funnel", ["step", "images", "share of input"],
              [[label, fun[k], fun[k] / total] for k, label in FUNNEL_STEPS]
              + [["opted out (never downloaded or dropped after)", fun["opted_out"], fun["opted_out"] / total]],
              caption="Collection funnel: input rows to images kept in the collect shards.")
    rep.table("collect_status", ["status", "rows", "share"],
              [[str(k), int(v), int(v) / total] for k, v in sorted(status.items(), key=lambda kv: (-kv[1], kv[0]))],
              caption="Outcome of every input row of the collect stage (img2dataset status, refined).")
