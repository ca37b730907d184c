"""Corpus report: counts, attribute frequencies (seaborn) and an example grid with true boxes.

Streamed: the collect parquet and ground truth are read one shard at a time, only the columns needed, into
a ``CorpusSummary`` (counts, sums, distinct identities); the example grid reads only the first shard's boxes."""

from __future__ import annotations

from collections import Counter
from io import BytesIO

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from facecaption.collect.common import funnel
from facecaption.core.config import StageConfig
from facecaption.core.report import Report, by_shard, read_columns, setup_plotting
from facecaption.core.shards import iter_samples
from facecaption.core.sketch import Distinct
from facecaption.core.stage import StageIO


def example_grid(tar_path: str, truth: pd.DataFrame, n: int = 18, cols: int = 6, cell: int = 160) -> Image.Image:
    rows = (n + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell, rows * cell), "white")
    i = -1
    for sample in iter_samples(tar_path):
        if i + 1 >= n:
            break
        try:
            im = Image.open(BytesIO(sample.get("jpg") or b"")).convert("RGB")
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


TRUTH_META = ("key", "face", "x0", "y0", "x1", "y1", "landmarks", "identity", "degrade", "tiny", "planted", "planted_key")
IMAGE_COLUMNS = ["key", "status", "width", "height", "caption", "downloaded"]


class CorpusSummary:
    """What the corpus report needs, accumulated shard by shard (a shard's images and its ground truth): exact
    counts and sums, and the distinct identities in a ``Distinct`` sketch (exact while small)."""

    def __init__(self, real_source: bool = False):
        self.real_source = real_source
        self.images = self.images_ok = self.faces = self.no_face = self.multi_face = self.tiny = 0
        self.width = [0.0, 0]  # sum, count of non-null values
        self.height = [0.0, 0]
        self.caption_words = 0
        self.identities = Distinct()
        self.degrade: Counter = Counter()
        self.attr_cols: list[str] = []
        self.attr_sum: dict[str, list] = {}  # attribute -> [sum, non-null count]
        self.funnel: Counter = Counter()
        self.status: Counter = Counter()

    def add_truth_columns(self, columns) -> None:
        for c in columns:
            if c not in TRUTH_META and c not in self.attr_sum:
                self.attr_cols.append(c)
                self.attr_sum[c] = [0, 0]

    def add(self, images: pd.DataFrame, truth: pd.DataFrame) -> None:
        self.images += len(images)
        self.images_ok += int((images.status == "success").sum())
        for acc, col in ((self.width, "width"), (self.height, "height")):
            v = images[col].dropna()
            acc[0] += v.sum()
            acc[1] += len(v)
        self.caption_words += int(images.caption.fillna("").str.split().str.len().sum())
        self.add_truth_columns(truth.columns)
        if len(truth):
            faces_per_image = truth.groupby("key").size().reindex(images.key, fill_value=0)
        else:
            faces_per_image = pd.Series(0, index=images.key)
        self.no_face += int((faces_per_image == 0).sum())
        self.multi_face += int((faces_per_image > 1).sum())
        self.faces += len(truth)
        if len(truth):
            self.tiny += int(truth["tiny"].sum())
            self.identities.add_values(truth["identity"].dropna().unique())
            self.degrade.update(truth.drop_duplicates("key")["degrade"].value_counts().to_dict())
            for c in self.attr_cols:
                if c in truth:
                    v = truth[c].dropna()
                    self.attr_sum[c][0] += v.sum()
                    self.attr_sum[c][1] += len(v)
        if self.real_source:
            self.funnel.update(funnel(images))
            self.status.update(images["status"].fillna("not_downloaded").value_counts().to_dict())

    def attribute_frequency(self) -> pd.Series:
        if not self.faces:
            return pd.Series(dtype=float)
        means = [float(s) / n if n else np.nan for s, n in (self.attr_sum[c] for c in self.attr_cols)]
        return pd.Series(means, index=self.attr_cols, dtype=float).sort_values(ascending=False)

    def metrics(self, source: str, shards: int) -> dict:
        def mean(acc: list) -> float:
            return acc[0] / acc[1] if acc[1] else float("nan")

        return {
            "source": source, "shards": shards, "images": self.images, "images_ok": self.images_ok,
            "faces": self.faces, "images_no_face": self.no_face, "images_multi_face": self.multi_face,
            "faces_tiny": self.tiny, "identities": self.identities.count() if self.faces else 0,
            "mean_width": float(mean(self.width)), "mean_height": float(mean(self.height)),
            "mean_caption_words": self.caption_words / self.images if self.images else float("nan"),
        }


def summarise(pairs, real_source: bool = False, truth_columns: list[str] | None = None) -> CorpusSummary:
    """A ``CorpusSummary`` of ``(images, truth)`` frames, one shard at a time (any iterable, e.g. a generator)."""
    summ = CorpusSummary(real_source)
    summ.add_truth_columns(truth_columns or [])
    for images, truth in pairs:
        summ.add(images, truth)
    return summ


def iter_shards(image_paths: list[str], truth_paths: list[str]):
    """One shard's images and ground truth at a time, only the columns the summary needs."""
    for _, (img_path, truth_path) in by_shard(image_paths, truth_paths):
        images = read_columns(img_path, IMAGE_COLUMNS) if img_path else pd.DataFrame(columns=IMAGE_COLUMNS)
        truth_cols = [c for c in pq.read_schema(truth_path).names if c != "landmarks"] if truth_path else []
        truth = read_columns(truth_path, truth_cols) if truth_path else pd.DataFrame(columns=["key"])
        yield images, truth


def summarise_files(image_paths: list[str], truth_paths: list[str], real_source: bool = False) -> CorpusSummary:
    # the attribute columns of the ground truth, in the order a concatenation of the shards would have them
    truth_columns = [c for p in truth_paths for c in pq.read_schema(p).names]
    return summarise(iter_shards(image_paths, truth_paths), real_source, truth_columns)


def run(cfg: StageConfig, io: StageIO) -> int:
    image_paths = io.many("records")  # one path per shard, in shard order
    truth_paths = io.many("truth")
    tars = io.many("images")
    source = cfg["source"]
    rep = Report(io.outputs["report"], metrics_file=io.outputs["metrics"])
    plt, sns = setup_plotting()

    summ = summarise_files(image_paths, truth_paths, source != "synthface")
    rep.update(summ.metrics(source, len(tars)))
    if source != "synthface":
        collect_funnel(rep, dict(summ.funnel), pd.Series(summ.status, dtype="int64"))
    degrade = summ.degrade
    rep.metric("degraded_images", {k: int(v) for k, v in sorted(degrade.items()) if k != "none"})

    attr_cols = summ.attr_cols
    freq = summ.attribute_frequency()
    rep.metric("attributes_drawn", len(attr_cols))
    rep.metric("attribute_frequency", {k: float(v) for k, v in freq.items()})
    rep.table("corpus_summary", ["quantity", "value"], [
        ["shards", len(tars)], ["images", summ.images], ["faces (ground truth)", summ.faces],
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
    elif source != "synthface":  # real sources: no ground truth to plot
        fig, ax = plt.subplots(figsize=(7, 1.2))
        ax.text(0.5, 0.5, "no ground-truth attributes for a real source", ha="center", va="center")
        ax.axis("off")
        rep.figure("attribute_frequency", fig)
    # the example grid shows the first shard's images: only that shard's boxes are read
    first = truth_paths[0] if truth_paths else None
    box_cols = ["key", "x0", "y0", "x1", "y1", "landmarks"]
    grid = example_grid(tars[0], read_columns(first, box_cols) if first else pd.DataFrame(columns=box_cols))
    rep.image("examples", grid)
    rep.save()
    return 0


# -- real sources (urls, folder): the collection funnel and per-URL status counts ------------------------------------
FUNNEL_STEPS = (("urls", "input rows (URLs or files)"), ("requested", "requested (valid http(s) URL, not opted out)"),
                ("downloaded", "downloaded (a body arrived)"), ("decodable", "decodable (an image within the limits)"),
                ("kept", "kept in the shards"))


def collect_funnel(rep: Report, fun: dict, status: pd.Series) -> None:
    """Metrics ``collect_funnel`` and ``collect_status``, tables ``collect_funnel`` and ``collect_status``, from
    the funnel counts and the per-status row counts summed over the shards."""
    fun = {k: int(fun.get(k, 0)) for k in ("urls", "requested", "downloaded", "decodable", "kept", "opted_out")}
    rep.metric("collect_funnel", fun)
    rep.metric("collect_status", {str(k): int(v) for k, v in sorted(status.items())})
    total = max(fun["urls"], 1)
    rep.table("collect_funnel", ["step", "images", "share of input"],
              [[label, fun[k], fun[k] / total] for k, label in FUNNEL_STEPS]
              + [["opted out (never downloaded or dropped after)", fun["opted_out"], fun["opted_out"] / total]],
              caption="Collection funnel: input rows to images kept in the collect shards.")
    rep.table("collect_status", ["status", "rows", "share"],
              [[str(k), int(v), int(v) / total] for k, v in sorted(status.items(), key=lambda kv: (-kv[1], kv[0]))],
              caption="Outcome of every input row of the collect stage (img2dataset status, refined).")
