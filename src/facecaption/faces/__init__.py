"""Stage 2, faces: detect faces in every collected image, filter them, align the kept ones.

For one shard it reads ``collect/<shard>.tar/.parquet`` and writes (see docs/ARCHITECTURE.md)

* ``faces/<shard>.tar``: aligned crops ``<fkey>.jpg`` + ``<fkey>.json`` (image_key, face, score, box, landmarks),
* ``faces/<shard>.parquet``: one row per kept face,
* ``faces/<shard>.records.parquet``: every image (``face = -1``) and every detected face, kept or with the
  reason it was dropped.

Nothing in one image can stop the shard: undecodable bytes, bombs and detector errors become records.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from facecaption.core.align import align, template, transform_points
from facecaption.core.config import StageConfig
from facecaption.core.optout import OptOut
from facecaption.core.reasons import FaceReason, ImageOutcome
from facecaption.core.shards import ShardWriter, encode_jpeg, iter_samples, read_parquet, write_parquet
from facecaption.core.stage import StageIO
from facecaption.faces.decode import decode_image
from facecaption.faces.detect import Face, ModelMissing, make_detector

log = logging.getLogger(__name__)

FACE_COLUMNS = ["key", "image_key", "face", "score", "x0", "y0", "x1", "y1", "landmarks", "box_width", "detector",
                "alt_text", "blur", "brightness", "align_error"]
RECORD_COLUMNS = ["image_key", "face", "status", "reason", "score", "x0", "y0", "x1", "y1"]

# face-level reasons (facecaption.core.reasons.FaceReason), as the strings written to the parquet
LOW_SCORE, TOO_SMALL, TOO_MANY, BLURRY, TOO_DARK, ALIGN_FAILED = (r.value for r in FaceReason)
# image-level reasons besides decode reasons (ImageOutcome); DUPLICATE: a key seen before in the shard's tar (the
# first occurrence wins); NO_IMAGE: a sample with no image member (lost to tar damage: ``corrupt_tar: ...``)
NO_FACE, NO_FACE_KEPT, DETECT_ERROR, MISSING, DUPLICATE, NO_IMAGE = (r.value for r in ImageOutcome)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "img")


def threads() -> int:
    """The rule's threads: Snakemake exports them as OMP_NUM_THREADS (``threads: threads_of("faces")``)."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def crop_quality(crop: np.ndarray) -> tuple[float, float]:
    """(sharpness = variance of the Laplacian, brightness = mean gray) of an aligned crop."""
    import cv2

    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var()), float(gray.mean())


def judge_faces(faces: list[Face], fcfg: dict) -> list[str]:
    """The score/size/count verdict for each face (sorted best first): "" = passes, else the reason.

    ``max_faces`` (None: no limit) caps the faces that pass score and size; :func:`process` applies the cap
    to the faces that pass every filter (alignment and crop quality too), so a face past the cap is kept
    in place of a better one that a later filter drops."""
    min_score = fcfg["min_score"][fcfg["detector"]]
    limit = fcfg.get("max_faces")
    out, n_ok = [], 0
    for f in faces:
        if f.score < min_score:
            out.append(LOW_SCORE)
        elif min(f.width, f.height) < fcfg["min_size"]:
            out.append(TOO_SMALL)
        elif limit is not None and n_ok >= limit:
            out.append(TOO_MANY)
        else:
            out.append("")
            n_ok += 1
    return out


def _record(image_key, face, status, reason, score=np.nan, box=(np.nan,) * 4) -> dict:
    return {"image_key": image_key, "face": int(face), "status": status, "reason": reason, "score": float(score),
            "x0": float(box[0]), "y0": float(box[1]), "x1": float(box[2]), "y1": float(box[3])}


def _batches(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for it in items:
        batch.append(it)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def _detect_safely(detector, images: list[np.ndarray], threshold: float) -> list[list[Face] | str]:
    """Detect on a batch; if the batch fails, retry image by image so one bad image costs only itself."""
    try:
        return detector.detect(images, threshold)
    except Exception:  # noqa: BLE001 - any failure falls back to single images
        out = []
        for im in images:
            try:
                out.append(detector.detect([im], threshold)[0])
            except Exception as exc:  # noqa: BLE001 - recorded, never raised
                out.append(f"{DETECT_ERROR}: {type(exc).__name__}: {exc}"[:200])
        return out


def process(samples: Iterable[dict], fcfg: dict, acfg: dict, detector, tar_path: str, *, total: int | None = None,
            desc: str = "faces") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Detect, filter and align faces for ``samples`` (``{"__key__", "jpg": bytes, "txt": alt text}``), writing
    crops to ``tar_path``; returns (kept faces, records)."""
    size, scale = int(acfg["size"]), float(acfg["scale"])
    tmpl = template(size, scale)
    threshold = min(fcfg["candidate_score"], fcfg["min_score"][fcfg["detector"]])
    limit = fcfg.get("max_faces")  # faces kept per image (None: every face that passes the filters)
    faces_rows, records = [], []
    with ShardWriter(tar_path) as writer:
        bar = tqdm(total=total, desc=desc, mininterval=2, file=sys.stderr)
        for batch in _batches(samples, fcfg["batch_size"]):
            decoded = []
            for s in batch:
                data = s.get("jpg") or next((s[k] for k in ("jpeg", "png", "webp", "img") if k in s), None)
                rgb, reason = decode_image(data, fcfg["max_pixels"], fcfg["min_image_side"])
                if reason:
                    records.append(_record(s["__key__"], -1, "dropped", reason))
                else:
                    decoded.append((s, rgb))
            dets = _detect_safely(detector, [rgb for _, rgb in decoded], threshold) if decoded else []
            for (s, rgb), faces in zip(decoded, dets):
                key = s["__key__"]
                if isinstance(faces, str):
                    records.append(_record(key, -1, "dropped", faces))
                    continue
                alt = s.get("txt", b"")
                alt = alt.decode("utf-8", "replace") if isinstance(alt, bytes) else str(alt)
                verdicts = judge_faces(faces, fcfg | {"max_faces": None})  # score and size; the cap below
                kept = 0
                face_records = []
                for i, (f, why) in enumerate(zip(faces, verdicts)):
                    if not why and limit is not None and kept >= limit:  # best first: the rest are too many
                        why = TOO_MANY
                    if not why:
                        why, row, crop = _align_one(rgb, f, size, scale, tmpl, fcfg)
                        if not why:
                            fkey = f"{key}_{i:02d}"
                            meta = {"image_key": key, "face": i, "score": round(f.score, 6),
                                    "box": [round(v, 2) for v in f.box],
                                    "landmarks": [round(float(v), 2) for v in f.landmarks.ravel()]}
                            writer.write({"__key__": fkey, "jpg": encode_jpeg(crop, fcfg["jpeg_quality"]), "json": meta})
                            faces_rows.append({"key": fkey, "image_key": key, "face": i, "score": f.score,
                                               "x0": f.box[0], "y0": f.box[1], "x1": f.box[2], "y1": f.box[3],
                                               "landmarks": [float(v) for v in f.landmarks.ravel()],
                                               "box_width": f.width, "detector": detector.name, "alt_text": alt, **row})
                            kept += 1
                    face_records.append(_record(key, i, "dropped" if why else "kept", why, f.score, f.box))
                if kept:
                    records.append(_record(key, -1, "kept", ""))
                else:
                    records.append(_record(key, -1, "dropped", NO_FACE_KEPT if faces else NO_FACE))
                records.extend(face_records)
            bar.update(len(batch))
        bar.close()
    faces_df = pd.DataFrame(faces_rows, columns=FACE_COLUMNS)
    faces_df = faces_df.astype({"face": "int32", "score": "float32", "box_width": "float32", "blur": "float32",
                                "brightness": "float32", "align_error": "float32"})
    return faces_df, pd.DataFrame(records, columns=RECORD_COLUMNS)


def _align_one(rgb, f: Face, size, scale, tmpl, fcfg) -> tuple[str, dict, np.ndarray | None]:
    lm = np.asarray(f.landmarks, dtype=np.float64)
    if not np.isfinite(lm).all() or np.ptp(lm[:, 0]) < 1e-3:
        return ALIGN_FAILED, {}, None
    try:
        crop, matrix = align(rgb, lm, size, scale)
    except Exception:  # noqa: BLE001 - cv2 refuses degenerate point sets
        return ALIGN_FAILED, {}, None
    if matrix is None or not np.isfinite(matrix).all():
        return ALIGN_FAILED, {}, None
    err = float(np.linalg.norm(transform_points(lm, matrix) - tmpl, axis=1).mean() / size)
    blur, bright = crop_quality(crop)
    row = {"blur": blur, "brightness": bright, "align_error": err}
    if fcfg.get("min_blur") is not None and blur < fcfg["min_blur"]:
        return BLURRY, row, None
    if fcfg.get("min_brightness") is not None and bright < fcfg["min_brightness"]:
        return TOO_DARK, row, None
    return "", row, crop


def _collect_samples(tar_path: str, images: pd.DataFrame, records: list, optout=None) -> Iterator[dict]:
    """The collect tar's samples; collect rows that never made it into the tar become records, and images
    whose URL is on the opt-out list (even one added after the download) are dropped as ``opted_out``."""
    seen = set()
    occurrences: Counter = Counter()
    errors: list = []
    blocked = set()
    if optout:
        blocked = {row.key for row in images.itertuples() if optout.blocks(getattr(row, "url", None))}
    for s in iter_samples(tar_path, errors):
        occurrences[s["__key__"]] += 1
        if s["__key__"] in seen:
            records.append(_record(s["__key__"], -1, "dropped", DUPLICATE))
            continue
        seen.add(s["__key__"])
        if s["__key__"] in blocked:
            records.append(_record(s["__key__"], -1, "dropped", "opted_out"))
            continue
        if not any(ext in s for ext in IMAGE_EXTS):
            damage = next((e["reason"] for e in errors if e["key"] == s["__key__"]), None)
            records.append(_record(s["__key__"], -1, "dropped", (damage or NO_IMAGE)[:200]))
            continue
        yield s
    for e in errors:
        log.warning("collect tar %s: %s", tar_path, e["reason"])
    for row in images.itertuples():
        if occurrences[row.key] > 0:  # each collect row is matched by one sample (duplicates included)
            occurrences[row.key] -= 1
            continue
        status = getattr(row, "status", "success")
        if status != "success":
            msg = getattr(row, "error_message", None)
            reason = f"not_collected: {status}" + (f": {msg}" if msg else "")
        else:
            reason = MISSING + (f": {errors[0]['reason']}" if errors else "")
        records.append(_record(row.key, -1, "dropped", reason[:200]))


def run_shard(cfg: StageConfig, io: StageIO) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The faces of one shard: ``io`` inputs ``images`` (collect tar) and ``records`` (collect parquet),
    outputs ``crops`` (tar), ``faces`` (kept faces) and ``records`` (every image and detected face)."""
    fcfg, acfg = cfg["faces"], cfg["align"]
    detector = make_detector(fcfg, threads=threads())  # first: a detector that cannot run stops the shard at once
    tar_in = io.one("images")
    images = read_parquet(io.one("records"))
    extra: list = []
    optout = OptOut.from_config(cfg.get("optout"))  # its list files are also inputs (io: optout_lists)
    faces_df, records = process(_collect_samples(tar_in, images, extra, optout), fcfg, acfg, detector,
                                io.outputs["crops"], total=len(images), desc=f"faces {io.shard}")
    if extra:
        records = pd.concat([records, pd.DataFrame(extra, columns=RECORD_COLUMNS)], ignore_index=True)
    write_parquet(faces_df, io.outputs["faces"])
    write_parquet(records, io.outputs["records"])
    img = records[records.face == -1]
    log.info("faces %s: %d images, %d with a kept face, %d faces kept (%s)", io.shard, len(img),
             int((img.status == "kept").sum()), len(faces_df), detector.name)
    return faces_df, records


def run(cfg: StageConfig, io: StageIO) -> int:
    try:
        run_shard(cfg, io)
    except ModelMissing as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0
