"""Faces report: the funnel (images → with faces → kept faces) beside the paper's, drop reasons, the
detection audit against ground truth (synthface), a funnel figure and example aligned crops.

Source = release: also the share of the release rebuilt (release rows → distinct URLs → alive → box matches →
kept, beside the paper's quoted numbers) and ``release_manifest.parquet``, one row per kept face: release row,
key, URL, sha256 of the downloaded bytes, the released box, how it was aligned (landmarks or box), the landmarks,
the 2x3 similarity matrix and ``align.size``/``align.scale``; ``metrics.json`` holds its sha256
(``release.manifest_sha256``: over its rows in shard order, so two groups that sharded alike compare one
number, else they join the manifests on ``release_row``).

Streamed: each shard's kept faces, records and ground truth are read together (only the columns needed),
summarised into a ``FacesSummary`` and dropped before the next shard is read."""

from __future__ import annotations

from collections import Counter
from io import BytesIO

import numpy as np
import pandas as pd
from PIL import Image

from facecaption.core import reference
from facecaption.core.config import StageConfig
from facecaption.core.reasons import ReleaseReason, category
from facecaption.core.report import Report, by_shard, read_columns, setup_plotting
from facecaption.core.shards import iter_samples
from facecaption.core.stage import StageIO
from facecaption.faces import accounting
from facecaption.faces.audit import audit


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
            crops.append(Image.open(BytesIO(s["jpg"])).convert("RGB").resize((cell - 2, cell - 2)))
        if len(crops) >= n:
            break
    if not crops:
        return None
    rows = (len(crops) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell, rows * cell), "white")
    for i, c in enumerate(crops):
        grid.paste(c, ((i % cols) * cell + 1, (i // cols) * cell + 1))
    return grid


FACE_COLUMNS = ["image_key", "score", "x0", "y0", "x1", "y1", "landmarks", "box_width", "align_error"]
RECORD_COLUMNS = ["image_key", "face", "status", "reason", "score"]
TRUTH_COLUMNS = ["key", "x0", "y0", "x1", "y1", "landmarks", "degrade"]
AUDIT_SUMS = ("truth_faces", "truth_faces_eligible", "truth_faces_below_floor", "true_positives", "false_positives",
              "missed_eligible")


class FacesSummary:
    """What the faces report needs, accumulated shard by shard (a shard's kept faces, records and ground
    truth): funnel counts, reason counts, sums for the means, and the detection audit's counts (the audit is
    per image, and an image's faces and true faces are in the same shard)."""

    def __init__(self, min_score: float, min_size: float):
        self.min_score, self.min_size = min_score, min_size
        self.funnel: Counter = Counter()
        self.image_reasons: Counter = Counter()
        self.face_reasons: Counter = Counter()
        self.sums = {c: [0.0, 0] for c in ("box_width", "score", "align_error")}
        self.has_align_error = False
        self.faces = 0
        self.truth_rows = 0
        self.audit: Counter = Counter()
        self.landmark = {"px": 0.0, "nme": 0.0}
        self.by_degrade: dict[str, list[int]] = {}  # degrade -> [eligible true faces found, eligible]
        self.faces_without_truth = 0

    def add(self, faces: pd.DataFrame, records: pd.DataFrame, truth: pd.DataFrame) -> None:
        f = funnel(records, self.min_score)
        for k, v in f.items():
            self.funnel[k] += v
        img = records[records.face == -1]
        det = records[records.face >= 0]
        self.image_reasons.update(img.reason.fillna("").map(category).replace("", "kept").value_counts().to_dict())
        self.face_reasons.update(det.reason.fillna("").map(category).replace("", "kept").value_counts().to_dict())
        self.faces += len(faces)
        self.has_align_error |= "align_error" in faces
        for c, acc in self.sums.items():
            if c in faces:
                v = faces[c].to_numpy(dtype=np.float64)  # float32 columns: summed in float64
                v = v[~np.isnan(v)]
                acc[0] += float(v.sum())
                acc[1] += len(v)
        self.truth_rows += len(truth)
        if len(truth):
            self._audit_shard(faces, truth)
        else:  # no true face in this shard: its kept faces are false positives (if any shard has truth)
            self.faces_without_truth += len(faces)

    def _audit_shard(self, faces: pd.DataFrame, truth: pd.DataFrame) -> None:
        a = audit(faces, truth, self.min_size)
        for k in AUDIT_SUMS:
            self.audit[k] += a[k]
        tp = a["true_positives"]
        if a["landmark_error_px"] is not None:  # the mean over this shard's matched pairs (one per true positive)
            self.landmark["px"] += a["landmark_error_px"] * tp
            self.landmark["nme"] += a["landmark_nme"] * tp
        if "recall_by_degradation" in a:
            side = np.minimum(truth.x1 - truth.x0, truth.y1 - truth.y0)
            eligible = truth.loc[side >= self.min_size, "degrade"].value_counts()
            for k, share in a["recall_by_degradation"].items():
                n = int(eligible.get(k, 0))
                acc = self.by_degrade.setdefault(str(k), [0, 0])
                acc[0] += int(round(share * n))
                acc[1] += n

    def audit_metrics(self) -> dict:
        """The same metrics as ``faces.audit.audit`` over all shards at once."""
        c = Counter(self.audit)
        c["false_positives"] += self.faces_without_truth
        eligible, tp, fp = c["truth_faces_eligible"], c["true_positives"], c["false_positives"]
        out = {k: int(c[k]) for k in ("truth_faces", "truth_faces_eligible", "truth_faces_below_floor")}
        out.update({
            "recall": (eligible - c["missed_eligible"]) / eligible if eligible else None,
            "precision": tp / (tp + fp) if tp + fp else None,
            "true_positives": int(tp), "false_positives": int(fp), "missed_eligible": int(c["missed_eligible"]),
            "landmark_error_px": self.landmark["px"] / tp if tp else None,
            "landmark_nme": self.landmark["nme"] / tp if tp else None,
            "iou": 0.5,
        })
        if eligible and self.by_degrade:
            out["recall_by_degradation"] = {k: found / n for k, (found, n) in sorted(self.by_degrade.items()) if n}
        return out

    def mean(self, column: str) -> float:
        s, n = self.sums[column]
        return s / n if n else float("nan")


def summarise(shards, min_score: float, min_size: float) -> FacesSummary:
    """A ``FacesSummary`` of ``(faces, records, truth)`` frames, one shard at a time (any iterable)."""
    summ = FacesSummary(min_score, min_size)
    for faces, records, truth in shards:
        summ.add(faces, records, truth)
    return summ


def _frame(path, columns):
    return read_columns(path, columns) if path else pd.DataFrame(columns=columns)


def iter_shards(face_files: list[str], record_files: list[str], truth_files: list[str]):
    """One shard's kept faces, records and ground truth at a time, only the columns the summary needs."""
    for _, (fp, rp, tp) in by_shard(face_files, record_files, truth_files):
        yield _frame(fp, FACE_COLUMNS), _frame(rp, RECORD_COLUMNS), _frame(tp, TRUTH_COLUMNS)


def run(cfg: StageConfig, io: StageIO) -> int:
    fcfg = cfg["faces"]
    face_files, record_files, truth_files = io.many("faces"), io.many("face_records"), io.many("truth")
    detector = fcfg["detector"]
    min_score = fcfg["min_score"][detector]
    rep = Report(io.outputs["report"], metrics_file=io.outputs["metrics"])
    plt, sns = setup_plotting()

    summ = summarise(iter_shards(face_files, record_files, truth_files), min_score, fcfg["min_size"])
    f = {k: int(summ.funnel[k]) for k in ("images", "images_decoded", "images_with_faces", "images_kept",
                                          "faces_detected", "faces_kept")}
    rep.update(f)
    rep.update({"detector": detector, "min_score": min_score, "min_size": fcfg["min_size"],
                "max_faces": fcfg["max_faces"], "shards": len(face_files),
                "share_images_with_faces": f["images_with_faces"] / f["images"] if f["images"] else None,
                "faces_per_image_kept": f["faces_kept"] / f["images_kept"] if f["images_kept"] else None,
                "paper_min_score": reference.FUNNEL_FILTERS["min_score"],
                "paper_min_size": reference.FUNNEL_FILTERS["min_size"],
                "paper_detector": reference.FUNNEL_FILTERS["detector"]})
    rep.metric("image_reasons", {k: int(v) for k, v in sorted(summ.image_reasons.items())})
    rep.metric("face_reasons", {k: int(v) for k, v in sorted(summ.face_reasons.items())})
    if summ.faces:
        rep.metric("mean_face_width", summ.mean("box_width"))
        rep.metric("mean_score_kept", summ.mean("score"))
        rep.metric("mean_align_error", summ.mean("align_error") if summ.has_align_error else None)

    has_truth = summ.truth_rows > 0
    rep.metric("has_truth", has_truth)
    if has_truth:
        rep.update(summ.audit_metrics())

    # the funnel table: measured rows, then the paper's (quoted)
    first = f["images"] or 1
    per_image = "" if fcfg["max_faces"] is None else f", ≤ {fcfg['max_faces']}/image"  # null: every face kept
    rows = [
        ["images collected", f["images"], 1.0],
        ["images decoded", f["images_decoded"], f["images_decoded"] / first],
        [f"images with faces ({detector}, score ≥ {min_score})", f["images_with_faces"], f["images_with_faces"] / first],
        [f"faces kept (crop ≥ {fcfg['min_size']} px{per_image}), aligned", f["faces_kept"],
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
    acc = accounting.account(accounting.shard_paths(io.many("records"), record_files, face_files,
                                                    io.many("attributes"), io.many("captions")))
    bad = accounting.violations(acc)
    rep.metric("accounting", {k: v.as_dict() for k, v in acc.items()})
    rep.metric("accounting_violations", bad)
    rep.metric("accounting_conserved", not bad)
    rep.metric("accounting_rejected", int(sum(v.n_rejected for v in acc.values())))
    rep.table("faces_accounting", ["stage", "in", "kept", "rejected", "rejected by reason"], accounting.table_rows(acc),
              caption="Record accounting per stage: every record in is kept or rejected with its reason.",
              note="Reasons are categories (the part before ':'); duplicate keys: the first occurrence wins.")

    release = release_summary(record_files, face_files, io.many("records"), cfg["align"],
                              rep.folder / "release_manifest.parquet")
    rep.metric("has_release", release is not None)
    if release is not None:
        _release_report(rep, release)

    tars = io.many("crops")
    grid = crop_grid(tars[0]) if tars else None
    rep.metric("has_examples", grid is not None)
    if grid is not None:
        rep.image("aligned_examples", grid)
    rep.save()
    return 0


# -- source = release: the share of the release rebuilt, and the rebuild manifest ---------------------------------
#: release-row reasons that mean the box was valid on the image as downloaded (the "box matches" step)
_BOX_MATCHED = {ReleaseReason.NO_FACE_IN_BOX.value, ReleaseReason.EMPTY_CAPTION.value, "blurry", "too_dark",
                "align_failed", "detect_error"}
MANIFEST_COLUMNS = ["release_row", "key", "url", "sha256", "x0", "y0", "x1", "y1", "aligned_by", "detector", "score",
                    "landmarks", "matrix"]


def manifest_schema():
    """The manifest's types, fixed: a shard whose faces all lack a value must not decide them."""
    import pyarrow as pa

    f64, s = pa.float64(), pa.string()
    return pa.schema([("release_row", pa.int64()), ("key", s), ("url", s), ("sha256", s), ("x0", f64), ("y0", f64),
                      ("x1", f64), ("y1", f64), ("aligned_by", s), ("detector", s), ("score", f64),
                      ("landmarks", pa.list_(f64)), ("matrix", pa.list_(f64)), ("align_size", pa.int64()),
                      ("align_scale", f64)])


#: quoted beside the rebuilt share: the release's size (dataset card) and the paper's URL reachability
RELEASE_QUOTED = [("released rows (dataset card, ~13.2–13.4M)", 13_300_000, 1.0),
                  ("LAION-Face URLs reachable for the paper (~75 %)", None, 0.75)]


def release_summary(record_files: list[str], face_files: list[str], collect_files: list[str], acfg: dict,
                    manifest_path) -> dict | None:
    """The release funnel and reasons over all shards, writing the manifest (None when no record answers for a
    release row: another source). One shard's records, faces and collect rows in memory at a time."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    counts: Counter = Counter()
    reasons: Counter = Counter()
    digest = hashlib.sha256()
    writer = None
    try:
        for _, (rp, fp, cp) in by_shard(record_files, face_files, collect_files):
            if rp is None:
                continue
            rec = _frame(rp, ["image_key", "face", "status", "reason", "release_row"])
            if "release_row" not in rec or rec["release_row"].isna().all():
                continue
            rel = rec[rec["release_row"].notna()]
            cat = rel["reason"].fillna("").map(category)
            kept = rel["status"] == "kept"
            col = _frame(cp, ["key", "status"]) if cp else pd.DataFrame(columns=["key", "status"])
            alive_keys = set(col.loc[col["status"] == "success", "key"])
            alive = rel["image_key"].isin(alive_keys)
            counts["rows"] += len(rel)
            counts["urls"] += rel["image_key"].nunique()
            counts["urls_alive"] += int(rel.loc[alive, "image_key"].nunique())
            counts["rows_alive"] += int(alive.sum())
            counts["rows_box_matches"] += int((kept | cat.isin(_BOX_MATCHED)).sum())
            counts["rows_kept"] += int(kept.sum())
            reasons.update(cat[~kept].value_counts().to_dict())
            faces = _frame(fp, MANIFEST_COLUMNS) if fp else pd.DataFrame(columns=MANIFEST_COLUMNS)
            if "release_row" not in faces:
                continue
            faces = faces[faces["release_row"].notna()].sort_values("release_row")
            counts["kept_landmarks"] += int((faces["aligned_by"] == "landmarks").sum())
            counts["kept_box"] += int((faces["aligned_by"] == "box").sum())
            man = faces[MANIFEST_COLUMNS].assign(align_size=int(acfg["size"]), align_scale=float(acfg["scale"]))
            if man.empty:
                continue
            man = man.assign(release_row=man["release_row"].astype("int64"))
            table = pa.Table.from_pandas(man, preserve_index=False).cast(manifest_schema())
            for r in man.itertuples(index=False):
                box = ",".join(f"{v:.2f}" for v in (r.x0, r.y0, r.x1, r.y1))
                mat = ",".join(f"{v:.4f}" for v in r.matrix)
                digest.update(f"{int(r.release_row)}\t{r.url}\t{r.sha256}\t{box}\t{r.aligned_by}\t{mat}\n".encode())
            if writer is None:
                writer = pq.ParquetWriter(str(manifest_path), manifest_schema(), compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if not counts["rows"]:
        return None
    return {"funnel": {k: int(counts[k]) for k in ("rows", "urls", "urls_alive", "rows_alive", "rows_box_matches",
                                                   "rows_kept", "kept_landmarks", "kept_box")},
            "reasons": {k: int(v) for k, v in sorted(reasons.items())},
            "manifest": "release_manifest.parquet" if writer is not None else None,
            "manifest_sha256": digest.hexdigest(), "align_size": int(acfg["size"]), "align_scale": float(acfg["scale"])}


def _release_report(rep: Report, release: dict) -> None:
    f = release["funnel"]
    rows = f["rows"] or 1
    rep.metric("release", release)
    rep.metric("release_share_rebuilt", f["rows_kept"] / rows)
    table = [
        ["release rows (faces)", f["rows"], 1.0],
        ["distinct URLs", f["urls"], None],
        ["URLs alive (downloaded, decodable, not opted out)", f["urls_alive"], f["urls_alive"] / (f["urls"] or 1)],
        ["rows of alive URLs", f["rows_alive"], f["rows_alive"] / rows],
        ["rows whose box matches the image (valid, inside, same size)", f["rows_box_matches"], f["rows_box_matches"] / rows],
        ["faces kept (rebuilt)", f["rows_kept"], f["rows_kept"] / rows],
        ["  aligned by landmarks found in the box", f["kept_landmarks"], f["kept_landmarks"] / rows],
        ["  aligned by the box alone", f["kept_box"], f["kept_box"] / rows],
    ]
    quoted = [[f"paper: {name}", count, share] for name, count, share in RELEASE_QUOTED]
    rep.table("release_funnel", ["step", "count", "share"], table + quoted,
              quoted_rows=list(range(len(table), len(table) + len(quoted))),
              caption="The share of the released FaceCaption-15M rebuilt: release rows to kept faces.",
              note=f"Shares of the release rows (URLs alive: of the distinct URLs). Quoted rows: {reference.SOURCE} "
                   "and its dataset card. Every release row has one outcome; reasons: "
                   + ", ".join(f"{k} {v}" for k, v in release["reasons"].items()))
