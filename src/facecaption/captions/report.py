"""Caption report: statistics, the faithfulness audit (every stated attribute is a kept label and, in the
embedded default, true) and example captions beside their faces.

Streamed: each shard's captions, attribute labels, kept faces and ground truth are read together (only the
columns needed), summarised into a ``CaptionsSummary`` and dropped; the example figure reads only the
captions of the shards its faces come from."""

from __future__ import annotations

import textwrap
from collections import Counter
from io import BytesIO

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from facecaption.core.celeba import ATTRIBUTES
from facecaption.core.config import StageConfig
from facecaption.core.report import Report, by_shard, read_columns, setup_plotting, shard_of
from facecaption.core.shards import iter_samples
from facecaption.core.sketch import Distinct, hash_values
from facecaption.core.stage import StageIO
from facecaption.synthface.truth import truth_labels


def parse_stated(items) -> list[tuple[str, int]]:
    out = []
    for s in items if items is not None else []:
        a, _, v = str(s).rpartition("=")
        out.append((a, int(v)))
    return out


class Faithfulness:
    """The faithfulness audit's counts, accumulated shard by shard (a shard's captions, its attribute labels
    and, in the embedded default, the ground-truth labels of its faces)."""

    def __init__(self):
        self.faces = self.n_facts = self.n_label_ok = self.n_truth = self.n_truth_ok = 0
        self.faces_all_true = self.faces_checked = 0
        self.bad_label: dict[str, int] = {}
        self.bad_truth: dict[str, int] = {}  # in the order first seen (ties keep it when sorted by count)

    def add(self, caps: pd.DataFrame, attrs_df: pd.DataFrame, truth_df: pd.DataFrame | None) -> None:
        self.faces += len(caps)
        # plain lookups (key -> row, attribute -> column) instead of a pandas .loc per fact: same answers
        lab_row = {k: i for i, k in enumerate(attrs_df["key"])} if "key" in attrs_df else {}
        lab_cols = {c: attrs_df[c].to_numpy() for c in attrs_df.columns if c != "key"}
        if truth_df is not None:
            tru_row = {k: i for i, k in enumerate(truth_df.index)}
            tru_cols = {c: truth_df[c].to_numpy(dtype=float) for c in truth_df.columns}
        for key, stated in zip(caps["key"], caps["stated"]):
            facts = parse_stated(stated)
            i = lab_row.get(key)
            face_ok, face_checked = True, False
            for a, v in facts:
                self.n_facts += 1
                col = lab_cols.get(a)
                if i is not None and col is not None and int(col[i]) == v:
                    self.n_label_ok += 1
                else:
                    self.bad_label[a] = self.bad_label.get(a, 0) + 1
                if truth_df is not None and key in tru_row and a in tru_cols:
                    t = tru_cols[a][tru_row[key]]
                    if not np.isnan(t):
                        face_checked = True
                        self.n_truth += 1
                        if int(t) == v:
                            self.n_truth_ok += 1
                        else:
                            face_ok = False
                            self.bad_truth[a] = self.bad_truth.get(a, 0) + 1
            if face_checked:
                self.faces_checked += 1
                self.faces_all_true += face_ok

    def metrics(self) -> dict:
        n_facts, n_truth, faces_checked = self.n_facts, self.n_truth, self.faces_checked
        return {"facts_stated": n_facts, "facts_per_face": n_facts / max(self.faces, 1),
                "faithful_to_labels": self.n_label_ok / n_facts if n_facts else None,
                "unfaithful_by_attribute": dict(sorted(self.bad_label.items())),
                "facts_checked_against_truth": n_truth,
                "true_in_ground_truth": self.n_truth_ok / n_truth if n_truth else None,
                "faces_checked_against_truth": faces_checked,
                "faces_all_facts_true": self.faces_all_true / faces_checked if faces_checked else None,
                "false_by_attribute": dict(sorted(self.bad_truth.items(), key=lambda kv: -kv[1]))}


def faithfulness(caps: pd.DataFrame, attrs_df: pd.DataFrame, truth_df: pd.DataFrame | None) -> dict:
    f = Faithfulness()
    f.add(caps, attrs_df.reset_index(drop=True), truth_df)
    return f.metrics()


def _hash_set(strings: set) -> np.ndarray:
    return hash_values(np.array(sorted(strings), dtype=object)) if strings else np.zeros(0, dtype=np.uint64)


class CaptionsSummary:
    """What the caption report needs, accumulated shard by shard: counts, a histogram of words per caption
    (exact mean and median), distinct captions and vocabulary (``Distinct``: exact while small) and the
    faithfulness audit's counts."""

    def __init__(self):
        self.faces = self.captions = self.sentences = self.rewritten = self.rewrite_failures = 0
        self.words: Counter = Counter()  # words per caption -> captions
        self.unique = Distinct()
        self.vocab = Distinct()
        self.faith = Faithfulness()
        self.truth_seen = self.faces_seen = False

    def add(self, caps: pd.DataFrame, attrs_df: pd.DataFrame, faces: pd.DataFrame, truth: pd.DataFrame) -> None:
        n = len(caps)
        self.faces += n
        all_caps = [c for lst in caps["captions"] for c in lst] if n else []
        self.captions += len(all_caps)
        self.words.update(len(c.split()) for c in all_caps)
        self.sentences += sum(c.count(". ") + 1 for c in all_caps)
        self.unique.add(_hash_set(set(all_caps)))
        self.vocab.add(_hash_set({w.strip(".,").lower() for c in all_caps for w in c.split()}))
        if n:
            self.rewritten += int(caps["rewritten"].sum())
            self.rewrite_failures += int(caps["rewrite_error"].notna().sum())
        self.truth_seen |= len(truth) > 0
        self.faces_seen |= len(faces) > 0
        truth_df = None
        if len(truth) and len(faces):
            attrs = sorted({a for st in caps["stated"] for a, _ in parse_stated(st)}) if n else []
            cols = [c for c in ("key", "image_key", "x0", "y0", "x1", "y1") if c in faces.columns]
            truth_df = truth_labels(faces[faces["key"].isin(caps["key"])][cols], truth, attrs)
        if n:
            self.faith.add(caps, attrs_df, truth_df)

    @property
    def has_truth(self) -> bool:
        return self.truth_seen and self.faces_seen

    def word_stats(self) -> dict:
        """Mean and median words per caption (the median as ``numpy.median`` computes it), mean sentences."""
        if not self.captions:
            return {"mean_words": None, "median_words": None, "mean_sentences": None}
        values = sorted(self.words)
        cum = np.cumsum([self.words[v] for v in values])
        lo = values[int(np.searchsorted(cum, (self.captions - 1) // 2, side="right"))]
        hi = values[int(np.searchsorted(cum, self.captions // 2, side="right"))]
        total = sum(v * c for v, c in self.words.items())
        return {"mean_words": total / self.captions, "median_words": float(np.mean([lo, hi])),
                "mean_sentences": self.sentences / self.captions}


def summarise(shards) -> CaptionsSummary:
    """A ``CaptionsSummary`` of ``(captions, attributes, faces, truth)`` frames, one shard at a time."""
    summ = CaptionsSummary()
    for caps, attrs_df, faces, truth in shards:
        summ.add(caps, attrs_df, faces, truth)
    return summ


def example_figure(plt, tars: list[str], captions_of, n: int):
    """The first ``n`` captioned faces of the tars, in order; ``captions_of(tar)`` gives that shard's
    key -> caption (read only for the shards the examples come from)."""
    picked, texts = [], {}
    for tar in tars:
        if n <= 0:
            break
        by_key = captions_of(tar)
        for sample in iter_samples(tar):
            if sample["__key__"] in by_key and "jpg" in sample:
                picked.append((sample["__key__"], Image.open(BytesIO(sample["jpg"])).convert("RGB")))
                texts[sample["__key__"]] = by_key[sample["__key__"]]
            if len(picked) >= n:
                break
        if len(picked) >= n:
            break
    rows = max(len(picked), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(7.5, 1.25 * rows), gridspec_kw={"width_ratios": [1, 6.5]}, squeeze=False)
    for i, (key, im) in enumerate(picked):
        axes[i, 0].imshow(np.asarray(im))
        text = texts[key]
        axes[i, 1].text(0, 0.5, "\n".join(textwrap.wrap(text, 110)), fontsize=6, va="center", ha="left", wrap=True)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig, [k for k, _ in picked]


def iter_shards(cap_paths: list[str], attr_paths: list[str], face_paths: list[str], truth_paths: list[str]):
    """One shard's captions, attribute labels, kept faces and ground truth at a time (only needed columns)."""
    box = ["x0", "y0", "x1", "y1"]
    for _, (cp, ap, fp, tp) in by_shard(cap_paths, attr_paths, face_paths, truth_paths):
        if not cp:
            continue
        caps = read_columns(cp, ["key", "captions", "stated", "rewritten", "rewrite_error"])
        label_cols = [c for c in pq.read_schema(ap).names if c in ATTRIBUTES] if ap else []
        yield (caps, read_columns(ap, ["key", *label_cols]) if ap else pd.DataFrame(columns=["key"]),
               read_columns(fp, ["key", "image_key", *box]) if fp else pd.DataFrame(),
               read_columns(tp, [c for c in pq.read_schema(tp).names if c != "landmarks"]) if tp else pd.DataFrame())


def run(cfg: StageConfig, io: StageIO) -> int:
    cap_paths, tars = io.many("captions"), io.many("pairs")
    summ = summarise(iter_shards(cap_paths, io.many("attributes"), io.many("faces"), io.many("truth")))
    rep = Report(io.outputs["report"], metrics_file=io.outputs["metrics"])
    plt, sns = setup_plotting()

    n = summ.faces
    unique = summ.unique.count()
    rep.update({
        "faces_captioned": n, "captions": summ.captions, "captions_per_face": cfg["captions"]["per_face"],
        **summ.word_stats(),
        "unique_captions": unique, "unique_share": unique / max(summ.captions, 1),
        "vocabulary": summ.vocab.count(),
        "llm_enabled": cfg["captions"]["llm"]["enabled"],
        "rewritten": summ.rewritten,
        "rewrite_failures": summ.rewrite_failures,
    })
    fa = summ.faith.metrics() if n else {
        "facts_stated": 0, "facts_per_face": None, "faithful_to_labels": None, "unfaithful_by_attribute": {},
        "facts_checked_against_truth": 0, "true_in_ground_truth": None, "faces_checked_against_truth": 0,
        "faces_all_facts_true": None, "false_by_attribute": {}}
    rep.update(fa)
    rep.metric("audit_truth", summ.has_truth and fa.get("facts_checked_against_truth", 0) > 0)

    rows = [["faces captioned", n], ["grammar captions per face", cfg["captions"]["per_face"]],
            ["words per caption (mean)", round(rep.metrics["mean_words"], 1) if n else None],
            ["sentences per caption (mean)", round(rep.metrics["mean_sentences"], 1) if n else None],
            ["distinct captions", f"{rep.metrics['unique_share'] * 100:.1f} %"],
            ["vocabulary (words)", rep.metrics["vocabulary"]],
            ["facts stated per face (all its captions)",
             round(fa["facts_per_face"], 1) if fa.get("facts_per_face") is not None else None],
            ["stated facts that are kept labels", f"{(fa.get('faithful_to_labels') or 0) * 100:.2f} %" if n else None]]
    if fa.get("true_in_ground_truth") is not None:
        rows.append(["stated facts true in the ground truth", f"{fa['true_in_ground_truth'] * 100:.2f} %"])
    if cfg["captions"]["llm"]["enabled"]:
        rows.append(["rewritten by the LLM", rep.metrics["rewritten"]])
        rows.append(["rewrite failures (grammar caption kept)", rep.metrics["rewrite_failures"]])
    rep.table("captions_summary", ["quantity", "value"], rows,
              caption="Grammar captions and their faithfulness audit, measured on this run.")

    fig, ax = plt.subplots(figsize=(4.5, 2.4))
    if summ.captions:  # the histogram of words per caption, from its counts (one bin per word count)
        values = np.array(sorted(summ.words), dtype=np.int64)
        sns.histplot(x=values, weights=np.array([summ.words[v] for v in values], dtype=np.int64),
                     bins=range(int(values.min()), int(values.max()) + 2), ax=ax, color="#4c72b0")
    ax.set_xlabel("words per grammar caption")
    ax.set_ylabel("captions")
    rep.figure("caption_length", fig)

    shard_caps = {shard_of(p): p for p in cap_paths}

    def captions_of(tar: str) -> dict:
        path = shard_caps.get(shard_of(tar))
        if not path:
            return {}
        df = read_columns(path, ["key", "caption"])
        return dict(zip(df["key"], df["caption"]))

    fig, keys = example_figure(plt, tars, captions_of, cfg["captions"]["examples"])
    rep.figure("examples", fig)
    rep.metric("example_keys", keys)
    rep.save()
    return 0
