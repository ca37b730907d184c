"""Caption report: statistics, the faithfulness audit (every stated attribute is a kept label and, in the
embedded default, true) and example captions beside their faces."""

from __future__ import annotations

import argparse
import io
import textwrap

import numpy as np
import pandas as pd
from PIL import Image

from facecaption import workflow as W
from facecaption.attributes.truth import truth_labels
from facecaption.report import Report, setup_plotting
from facecaption.shards import iter_samples, read_parquet


def parse_stated(items) -> list[tuple[str, int]]:
    out = []
    for s in items if items is not None else []:
        a, _, v = str(s).rpartition("=")
        out.append((a, int(v)))
    return out


def faithfulness(caps: pd.DataFrame, attrs_df: pd.DataFrame, truth_df: pd.DataFrame | None) -> dict:
    labels = attrs_df.set_index("key")
    n_facts = n_label_ok = n_truth = n_truth_ok = 0
    bad_label: dict[str, int] = {}
    bad_truth: dict[str, int] = {}
    faces_all_true = faces_checked = 0
    for key, stated in zip(caps["key"], caps["stated"]):
        facts = parse_stated(stated)
        row = labels.loc[key] if key in labels.index else None
        face_ok, face_checked = True, False
        for a, v in facts:
            n_facts += 1
            if row is not None and a in row.index and int(row[a]) == v:
                n_label_ok += 1
            else:
                bad_label[a] = bad_label.get(a, 0) + 1
            if truth_df is not None and key in truth_df.index and a in truth_df.columns:
                t = truth_df.at[key, a]
                if not np.isnan(t):
                    face_checked = True
                    n_truth += 1
                    if int(t) == v:
                        n_truth_ok += 1
                    else:
                        face_ok = False
                        bad_truth[a] = bad_truth.get(a, 0) + 1
        if face_checked:
            faces_checked += 1
            faces_all_true += face_ok
    return {"facts_stated": n_facts, "facts_per_face": n_facts / max(len(caps), 1),
            "faithful_to_labels": n_label_ok / n_facts if n_facts else None,
            "unfaithful_by_attribute": dict(sorted(bad_label.items())),
            "facts_checked_against_truth": n_truth,
            "true_in_ground_truth": n_truth_ok / n_truth if n_truth else None,
            "faces_checked_against_truth": faces_checked,
            "faces_all_facts_true": faces_all_true / faces_checked if faces_checked else None,
            "false_by_attribute": dict(sorted(bad_truth.items(), key=lambda kv: -kv[1]))}


def example_figure(plt, tars: list[str], caps: pd.DataFrame, n: int):
    by_key = caps.set_index("key")
    picked = []
    for tar in tars:
        for sample in iter_samples(tar):
            if sample["__key__"] in by_key.index and "jpg" in sample:
                picked.append((sample["__key__"], Image.open(io.BytesIO(sample["jpg"])).convert("RGB")))
            if len(picked) >= n:
                break
        if len(picked) >= n:
            break
    rows = max(len(picked), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(7.5, 1.25 * rows), gridspec_kw={"width_ratios": [1, 6.5]}, squeeze=False)
    for i, (key, im) in enumerate(picked):
        axes[i, 0].imshow(np.asarray(im))
        text = by_key.at[key, "caption"]
        axes[i, 1].text(0, 0.5, "\n".join(textwrap.wrap(text, 110)), fontsize=6, va="center", ha="left", wrap=True)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig, [k for k, _ in picked]


def run(cfg: dict, args: argparse.Namespace) -> int:
    deps = W.stage_deps("report_captions", cfg)
    cap_paths = [p for p in deps if p.startswith(f"{W.R}/captions/") and p.endswith(".parquet")]
    tars = [p for p in deps if p.startswith(f"{W.R}/captions/") and p.endswith(".tar")]
    attr_paths = [p for p in deps if p.startswith(f"{W.R}/attributes/") and p.endswith(".parquet")]
    face_paths = [p for p in deps if p.startswith(f"{W.R}/faces/") and p.endswith(".parquet")]
    truth_paths = [p for p in deps if p.endswith(".truth.parquet")]
    caps = read_parquet(cap_paths)
    attrs_df = read_parquet(attr_paths)
    faces = read_parquet(face_paths)
    truth = read_parquet(truth_paths)
    rep = Report(W.report_dir("captions"))
    plt, sns = setup_plotting()

    n = len(caps)
    all_caps = [c for lst in caps["captions"] for c in lst] if n else []
    words = np.array([len(c.split()) for c in all_caps]) if all_caps else np.zeros(0)
    sentences = np.array([c.count(". ") + 1 for c in all_caps]) if all_caps else np.zeros(0)
    vocab = {w.strip(".,").lower() for c in all_caps for w in c.split()}
    rep.update({
        "faces_captioned": n, "captions": len(all_caps), "captions_per_face": cfg["captions"]["per_face"],
        "mean_words": float(words.mean()) if len(words) else None,
        "median_words": float(np.median(words)) if len(words) else None,
        "mean_sentences": float(sentences.mean()) if len(sentences) else None,
        "unique_captions": len(set(all_caps)), "unique_share": len(set(all_caps)) / max(len(all_caps), 1),
        "vocabulary": len(vocab),
        "llm_enabled": cfg["captions"]["llm"]["enabled"],
        "rewritten": int(caps["rewritten"].sum()) if n else 0,
        "rewrite_failures": int(caps["rewrite_error"].notna().sum()) if n else 0,
    })
    truth_df = None
    if len(truth) and len(faces):
        attrs = sorted({a for st in caps["stated"] for a, _ in parse_stated(st)}) if n else []
        cols = [c for c in ("key", "image_key", "x0", "y0", "x1", "y1") if c in faces.columns]
        truth_df = truth_labels(faces[faces["key"].isin(caps["key"])][cols], truth, attrs)
    fa = faithfulness(caps, attrs_df, truth_df) if n else {
        "facts_stated": 0, "facts_per_face": None, "faithful_to_labels": None, "unfaithful_by_attribute": {},
        "facts_checked_against_truth": 0, "true_in_ground_truth": None, "faces_checked_against_truth": 0,
        "faces_all_facts_true": None, "false_by_attribute": {}}
    rep.update(fa)
    rep.metric("audit_truth", truth_df is not None and fa.get("facts_checked_against_truth", 0) > 0)

    rows = [["faces captioned", n], ["grammar captions per face", cfg["captions"]["per_face"]],
            ["words per caption (mean)", round(rep.metrics["mean_words"], 1) if n else None],
            ["sentences per caption (mean)", round(rep.metrics["mean_sentences"], 1) if n else None],
            ["distinct captions", f"{rep.metrics['unique_share'] * 100:.1f} %"],
            ["vocabulary (words)", len(vocab)],
            ["facts stated per face (all its captions)", round(fa.get("facts_per_face", 0), 1)],
            ["stated facts that are kept labels", f"{(fa.get('faithful_to_labels') or 0) * 100:.2f} %" if n else None]]
    if fa.get("true_in_ground_truth") is not None:
        rows.append(["stated facts true in the ground truth", f"{fa['true_in_ground_truth'] * 100:.2f} %"])
    if cfg["captions"]["llm"]["enabled"]:
        rows.append(["rewritten by the LLM", rep.metrics["rewritten"]])
        rows.append(["rewrite failures (grammar caption kept)", rep.metrics["rewrite_failures"]])
    rep.table("captions_summary", ["quantity", "value"], rows,
              caption="Grammar captions and their faithfulness audit, measured on this run.")

    fig, ax = plt.subplots(figsize=(4.5, 2.4))
    if len(words):
        sns.histplot(words, bins=range(int(words.min()), int(words.max()) + 2), ax=ax, color="#4c72b0")
    ax.set_xlabel("words per grammar caption")
    ax.set_ylabel("captions")
    rep.figure("caption_length", fig)

    fig, keys = example_figure(plt, tars, caps, cfg["captions"]["examples"])
    rep.figure("examples", fig)
    rep.metric("example_keys", keys)
    rep.save()
    return 0
