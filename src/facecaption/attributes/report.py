"""Attribute report: the classifier's validation accuracy, the paper's filters, the share of faces kept and
(embedded default) the accuracy of the kept pseudo-labels against the ground truth.

Streamed: each shard's attribute table (labels only, not the probabilities), kept faces and ground truth are
read together, summarised into an ``AttributesSummary`` (counts, per-attribute audit counts: the audit
matches faces to true faces within an image, so within a shard) and dropped before the next shard."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from facecaption.core import reference
from facecaption.core.config import StageConfig
from facecaption.core.report import Report, by_shard, read_columns, setup_plotting
from facecaption.core.stage import StageIO
from facecaption.synthface.truth import truth_labels


def audit_counts(attrs_df: pd.DataFrame, faces: pd.DataFrame, truth: pd.DataFrame, attrs: list[str]) -> dict | None:
    """Counts behind :func:`audit` for one shard (or any set of whole images): matched faces, kept matched
    faces and, per attribute, confident labels and correct ones. None when no face matches a true face."""
    if not len(truth) or not len(attrs_df):
        return None
    cols = [c for c in ("key", "image_key", "x0", "y0", "x1", "y1") if c in faces.columns]
    truth_df = truth_labels(faces[cols], truth, attrs)
    if not len(truth_df):
        return None
    df = attrs_df.set_index("key")
    matched = df.index.intersection(truth_df.index)
    kept = df.loc[matched, "kept"].astype(bool)
    kept_keys = kept.index[kept.to_numpy()]
    per_attr = {}
    for a in truth_df.columns:
        lab = df.loc[kept_keys, a].to_numpy()
        tru = truth_df.loc[kept_keys, a].to_numpy()
        conf = lab >= 0
        per_attr[a] = [int((lab[conf] == tru[conf]).sum()), int(conf.sum())]  # correct, confident
    return {"faces_matched": int(len(matched)), "kept_matched": int(len(kept_keys)), "per_attr": per_attr}


def merge_audit_counts(total: dict | None, part: dict | None) -> dict | None:
    if part is None:
        return total
    if total is None:
        return {"faces_matched": part["faces_matched"], "kept_matched": part["kept_matched"],
                "per_attr": {a: list(v) for a, v in part["per_attr"].items()}}
    total["faces_matched"] += part["faces_matched"]
    total["kept_matched"] += part["kept_matched"]
    for a, (correct, n) in part["per_attr"].items():
        acc = total["per_attr"].setdefault(a, [0, 0])
        acc[0] += correct
        acc[1] += n
    return total


def audit_metrics(counts: dict | None) -> dict:
    """Per-attribute accuracy of the confident labels of kept faces against the truth, plus coverage."""
    if counts is None:
        return {}
    kept_n = counts["kept_matched"]
    per_attr, coverage, n_used = {}, {}, {}
    correct_all = total_all = 0
    for a, (correct, n) in counts["per_attr"].items():
        per_attr[a] = correct / n if n else None
        coverage[a] = n / kept_n if kept_n else None
        n_used[a] = n
        correct_all += correct
        total_all += n
    return {"faces_matched": counts["faces_matched"], "kept_matched": kept_n,
            "kept_label_accuracy": per_attr, "kept_label_coverage": coverage, "kept_label_count": n_used,
            "kept_label_accuracy_mean": float(np.mean([v for v in per_attr.values() if v is not None]))
            if any(v is not None for v in per_attr.values()) else None,
            "kept_label_accuracy_pooled": correct_all / total_all if total_all else None}


def audit(attrs_df: pd.DataFrame, faces: pd.DataFrame, truth: pd.DataFrame, attrs: list[str]) -> dict:
    """Per-attribute accuracy of the confident labels of kept faces against the truth, plus coverage."""
    return audit_metrics(audit_counts(attrs_df, faces, truth, attrs))


class AttributesSummary:
    """What the attributes report needs, accumulated shard by shard (a shard's attribute table, kept faces
    and ground truth): counts, the drop reasons, the labels-per-face histogram and the audit's counts."""

    def __init__(self, attrs: list[str]):
        self.attrs = attrs
        self.n = self.kept = self.n_labels = self.confident = self.cells = 0
        self.reasons: Counter = Counter()
        self.labels_per_face: Counter = Counter()
        self.audit = None

    def add(self, attrs_df: pd.DataFrame, faces: pd.DataFrame, truth: pd.DataFrame) -> None:
        n = len(attrs_df)
        if not n:
            return
        kept = attrs_df["kept"].astype(bool)
        self.n += n
        self.kept += int(kept.sum())
        self.reasons.update(attrs_df.loc[~kept, "reason"].fillna("").str.split(":").str[0].value_counts().to_dict())
        label_cols = [a for a in self.attrs if a in attrs_df.columns]
        if label_cols:
            self.confident += int((attrs_df[label_cols] >= 0).to_numpy().sum())
            self.cells += n * len(label_cols)
        self.n_labels += int(attrs_df["n_labels"].sum())
        self.labels_per_face.update(attrs_df["n_labels"].value_counts().to_dict())
        self.audit = merge_audit_counts(self.audit, audit_counts(attrs_df, faces, truth, self.attrs))


def summarise(shards, attrs: list[str]) -> AttributesSummary:
    """An ``AttributesSummary`` of ``(attributes, faces, truth)`` frames, one shard at a time (any iterable)."""
    summ = AttributesSummary(attrs)
    for attrs_df, faces, truth in shards:
        summ.add(attrs_df, faces, truth)
    return summ


def iter_shards(attr_paths: list[str], face_paths: list[str], truth_paths: list[str], attrs: list[str]):
    """One shard's attribute labels (not the probabilities), kept faces and ground truth at a time."""
    box = ["x0", "y0", "x1", "y1"]
    for _, (ap, fp, tp) in by_shard(attr_paths, face_paths, truth_paths):
        yield (read_columns(ap, ["key", "kept", "reason", "n_labels", *attrs]) if ap else pd.DataFrame(),
               read_columns(fp, ["key", "image_key", *box]) if fp else pd.DataFrame(columns=["key", "image_key"]),
               read_columns(tp, ["key", "face", *box, *attrs]) if tp else pd.DataFrame())


def first_images(tars: list[str], n: int) -> list:
    """The first ``n`` decodable images of the tars, in order (reads no further than it needs)."""
    import io

    from PIL import Image

    from facecaption.core.imageio import to_rgb
    from facecaption.core.shards import iter_samples

    out = []
    for tar in tars:
        for sample in iter_samples(tar):
            data = sample.get("jpg") or sample.get("png")
            if not data:
                continue
            try:
                with Image.open(io.BytesIO(data)) as im:
                    out.append(to_rgb(im))
            except Exception:  # noqa: BLE001 (an unreadable example is skipped; the stages count them)
                continue
            if len(out) == n:
                return out
    return out


def framing_figure(rep: Report, plt, labeled_tar: str, face_tars: list[str], n: int = 6) -> None:
    """The crops the classifier is trained on (the labeled set: CelebA aligned from its landmarks, or
    synthface) beside the crawled faces it labels, both as the stages wrote them: one framing or two."""
    rows = [("labeled set (trained on)", first_images([labeled_tar], n)),
            ("crawled faces (labeled)", first_images(face_tars, n))]
    fig, axes = plt.subplots(2, n, figsize=(1.15 * n, 2.6))
    for r, (title, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            if c < len(images):
                ax.imshow(images[c])
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=6)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    rep.figure("framing", fig)


def run(cfg: StageConfig, io: StageIO) -> int:
    acfg = cfg["attributes"]
    meta = json.loads(Path(io.one("card")).read_text())
    attrs = meta["attributes"]
    summ = summarise(iter_shards(io.many("attributes"), io.many("faces"), io.many("truth"), attrs), attrs)

    rep = Report(io.outputs["report"], metrics_file=io.outputs["metrics"])
    plt, sns = setup_plotting()
    n = summ.n
    kept_n = summ.kept
    reasons = dict(summ.reasons)
    conf_share = summ.confident / summ.cells if summ.cells else None
    rep.update({
        "arch": meta["arch"], "input_size": meta["input_size"], "attributes_predicted": len(attrs),
        "train_images": meta["train_images"], "val_images": meta["val_images"],
        "epochs": meta["epochs"], "val_accuracy_mean": meta["val_accuracy_mean"], "val_accuracy": meta["val_accuracy"],
        "label_threshold": acfg["label_threshold"], "min_labels": acfg["min_labels"],
        "faces": n, "faces_kept": kept_n, "share_kept": kept_n / n if n else None,
        "mean_labels_per_face": summ.n_labels / n if n else None,
        "confident_label_share": conf_share, "drop_reasons": {str(k): int(v) for k, v in reasons.items()},
        "paper_share_kept": reference.FUNNEL[3][1] / reference.FUNNEL[2][1],
    })
    au = audit_metrics(summ.audit)
    rep.metric("audit", bool(au))
    if au:
        rep.update(au)

    rows = [["backbone", f"{meta['arch']} ({meta['input_size']} px)"],
            ["labeled images (train / val)", f"{meta['train_images']:,} / {meta['val_images']:,}"],
            ["attributes predicted", len(attrs)],
            ["classifier val. accuracy (mean over attributes)", round(meta["val_accuracy_mean"], 4)],
            ["label filter", f"p > {acfg['label_threshold']} or p < {1 - acfg['label_threshold']:.2f}"],
            ["face filter", f"more than {acfg['min_labels']} confident labels"],
            ["faces", n], ["faces kept", kept_n],
            ["share kept", round(kept_n / n, 4) if n else None]]
    if au:
        rows.append(["kept-label accuracy vs. truth (mean)", round(au["kept_label_accuracy_mean"], 4)
                     if au["kept_label_accuracy_mean"] is not None else None])
    rows.append(["share kept, original paper", round(rep.metrics["paper_share_kept"], 4)])
    rep.table("attributes_summary", ["quantity", "value"], rows, quoted_rows=[len(rows) - 1],
              caption="Attribute classifier and the paper's filters, measured on this run.",
              note=f"The last row is the paper's funnel ({reference.SOURCE}): 15M of 23M aligned faces kept.")

    # per-attribute figure: classifier val accuracy and kept-label accuracy vs truth
    recs = [{"attribute": a, "measure": "classifier, val. split (p > 0.5)", "accuracy": meta["val_accuracy"][a]}
            for a in attrs]
    if au:
        recs += [{"attribute": a, "measure": f"kept labels vs. truth (p > {acfg['label_threshold']})", "accuracy": v}
                 for a, v in au["kept_label_accuracy"].items() if v is not None]
    fig, ax = plt.subplots(figsize=(7.5, 2.8))
    sns.barplot(data=pd.DataFrame(recs), x="attribute", y="accuracy", hue="measure", ax=ax)
    ax.set_ylim(0.5, 1.0)
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=90, labelsize=6)
    ax.legend(fontsize=6, loc="lower left")
    rep.figure("attribute_accuracy", fig)

    framing_figure(rep, plt, io.one("labeled_images"), io.many("crops"))

    fig, ax = plt.subplots(figsize=(4.5, 2.4))
    if n:
        counts = pd.Series(summ.labels_per_face, dtype="int64").reindex(range(len(attrs) + 1), fill_value=0)
        sns.barplot(x=counts.index, y=counts.values, ax=ax, color="#4c72b0")
        ax.axvline(acfg["min_labels"] + 0.5, color="#c44e52", ls="--", lw=1)
        ax.tick_params(axis="x", labelsize=5)
    ax.set_xlabel("confident labels per face")
    ax.set_ylabel("faces")
    rep.figure("labels_per_face", fig)
    rep.save()
    return 0
