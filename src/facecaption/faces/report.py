"""Faces report: the funnel (images → with faces → kept faces) beside the paper's, drop reasons, the
detection audit against ground truth (synthface), a funnel figure and example aligned crops."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pandas as pd
from PIL import Image

from facecaption import accounting, reference
from facecaption import workflow as W
from facecaption.faces.audit import audit
from facecaption.faces.decode import category
from facecaption.report import Report, setup_plotting
from facecaption.shards import iter_samples, read_parquet


def funnel(records: pd.DataFrame, min_score: float) -> dict:
    img = records[records.face == -1]
    det = records[records.face >= 0]
    decoded_reasons = img.reason.fillna("").map(category)
    undecoded = decoded_reasons.isin(["empty_file", "not_an_image", "decompression_bomb", "corrupt_image",
                                      "image_too_small", "not_collected", "missing_from_tar", "detect_error",
                                      "corrupt_tar", "missing_image", "duplicate_key", "opted_out"])
    confident = det[det.score >= min_score]
    return {
        "images": int(len(img)),
        "images_decoded": int((~undecoded).sum()),
        "images_with_faces": int(confident.image_key.nunique()),
        "images_kept": int((img.status == "kept").sum()),
        "faces_detected": int(len(confident)),
        "faces_kept": int((det.status == "kept").sum()),
    }


def crop_grid(tar_path: str, n: int = 24, cols: int = 8, cell: int = 80) -> Image.Image | None:
    crops = []
    for s in iter_samples(tar_path):
        if "jpg" in s:
            crops.append(Image.open(io.BytesIO(s["jpg"])).convert("RGB").resize((cell - 2, cell - 2)))
        if len(crops) >= n:
            break
    if not crops:
        return None
    rows = (len(crops) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell, rows * cell), "white")
    for i, c in enumerate(crops):
        grid.paste(c, ((i % cols) * cell + 1, (i // cols) * cell + 1))
    return grid


def run(cfg: dict, args: argparse.Namespace) -> int:
    fcfg = cfg["faces"]
    deps = W.stage_deps("report_faces", cfg)
    face_files = [p for p in deps if p.startswith(f"{W.R}/faces/") and p.endswith(".parquet") and ".records." not in p]
    faces = read_parquet(face_files)
    records = read_parquet([p for p in deps if p.endswith(".records.parquet")])
    truth = read_parquet([p for p in deps if p.endswith(".truth.parquet")])
    detector = fcfg["detector"]
    min_score = fcfg["min_score"][detector]
    rep = Report(W.report_dir("faces"))
    plt, sns = setup_plotting()

    f = funnel(records, min_score)
    rep.update(f)
    rep.update({"detector": detector, "min_score": min_score, "min_size": fcfg["min_size"],
                "max_faces": fcfg["max_faces"], "shards": len(face_files),
                "share_images_with_faces": f["images_with_faces"] / f["images"] if f["images"] else None,
                "faces_per_image_kept": f["faces_kept"] / f["images_kept"] if f["images_kept"] else None,
                "paper_min_score": reference.FUNNEL_FILTERS["min_score"],
                "paper_min_size": reference.FUNNEL_FILTERS["min_size"],
                "paper_detector": reference.FUNNEL_FILTERS["detector"]})
    img = records[records.face == -1]
    det = records[records.face >= 0]
    rep.metric("image_reasons", {k: int(v) for k, v in sorted(
        img.reason.fillna("").map(category).replace("", "kept").value_counts().items())})
    rep.metric("face_reasons", {k: int(v) for k, v in sorted(
        det.reason.fillna("").map(category).replace("", "kept").value_counts().items())})
    if len(faces):
        rep.metric("mean_face_width", float(faces.box_width.mean()))
        rep.metric("mean_score_kept", float(faces.score.mean()))
        rep.metric("mean_align_error", float(faces.align_error.mean()) if "align_error" in faces else None)

    has_truth = len(truth) > 0
    rep.metric("has_truth", has_truth)
    if has_truth:
        rep.update(audit(faces, truth, fcfg["min_size"]))

    # the funnel table: measured rows, then the paper's (quoted)
    first = f["images"] or 1
    rows = [
        ["images collected", f["images"], 1.0],
        ["images decoded", f["images_decoded"], f["images_decoded"] / first],
        [f"images with faces ({detector}, score ≥ {min_score})", f["images_with_faces"], f["images_with_faces"] / first],
        [f"faces kept (crop ≥ {fcfg['min_size']} px, ≤ {fcfg['max_faces']}/image), aligned", f["faces_kept"],
         f["faces_kept"] / first],
    ]
    paper_first = reference.FUNNEL[0][1]
    quoted = [[f"paper: {name}", count, count / paper_first] for name, count, _ in reference.FUNNEL[:3]]
    rep.table("faces_funnel", ["step", "count", "share of images"], rows + quoted,
              quoted_rows=list(range(len(rows), len(rows) + len(quoted))),
              caption="The face funnel: measured in this run, and the paper's own counts.",
              note=f"Source of quoted rows: {reference.SOURCE}. Shares of the first row of each block.")
    if has_truth:
        m = rep.metrics
        rep.table("faces_audit", ["quantity", "value"], [
            ["true faces (all)", m["truth_faces"]],
            [f"true faces ≥ {fcfg['min_size']} px", m["truth_faces_eligible"]],
            ["recall at IoU 0.5", m["recall"]],
            ["precision at IoU 0.5", m["precision"]],
            ["mean landmark error (px)", m["landmark_error_px"]],
            ["landmark error / inter-ocular distance", m["landmark_nme"]],
        ], caption=f"Detection audit of the kept faces against the synthface ground truth ({detector}).")

    # figure: the funnel, measured beside the paper, as shares of the first step
    labels = ["images", "images with faces", "faces kept"]
    measured = [1.0, f["images_with_faces"] / first, f["faces_kept"] / first]
    paper = [c / paper_first for _, c, _ in reference.FUNNEL[:3]]
    df = pd.DataFrame({"step": labels * 2, "share": measured + paper,
                       "source": ["this run"] * 3 + ["paper (quoted)"] * 3})
    fig, ax = plt.subplots(figsize=(6, 2.4))
    sns.barplot(data=df, y="step", x="share", hue="source", ax=ax, palette=["#4c72b0", "#bbbbbb"])
    for cont in ax.containers:
        ax.bar_label(cont, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xlim(0, max(1.2, float(np.nanmax(df.share)) * 1.15))
    ax.set_xlabel("share of the first step")
    ax.set_ylabel("")
    ax.legend(loc="lower right", fontsize=7)
    rep.figure("funnel", fig)

    # record accounting: every record entering a stage is kept or rejected with its reason
    acc = accounting.account(W.shard_ids(cfg))
    bad = accounting.violations(acc)
    rep.metric("accounting", {k: v.as_dict() for k, v in acc.items()})
    rep.metric("accounting_violations", bad)
    rep.metric("accounting_conserved", not bad)
    rep.metric("accounting_rejected", int(sum(v.n_rejected for v in acc.values())))
    rep.table("faces_accounting", ["stage", "in", "kept", "rejected", "rejected by reason"], accounting.table_rows(acc),
              caption="Record accounting per stage: every record in is kept or rejected with its reason.",
              note="Reasons are categories (the part before ':'); duplicate keys: the first occurrence wins.")

    tars = [p.replace(".parquet", ".tar") for p in face_files]
    grid = crop_grid(tars[0]) if tars else None
    rep.metric("has_examples", grid is not None)
    if grid is not None:
        rep.image("aligned_examples", grid)
    rep.save()
    return 0
