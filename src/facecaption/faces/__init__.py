"""Stage 2, faces: detect faces in every collected image, filter them, align the kept ones.

For one shard it reads ``collect/<shard>.tar/.parquet`` and writes (see docs/ARCHITECTURE.md)

* ``faces/<shard>.tar``: aligned crops ``<fkey>.jpg`` + ``<fkey>.json`` (image_key, face, score, box, landmarks),
* ``faces/<shard>.parquet``: one row per kept face,
* ``faces/<shard>.records.parquet``: every image (``face = -1``) and every detected face, kept or with the
  reason it was dropped.

Released boxes (source = release): an image whose collect row carries ``release_faces`` is not searched for
faces; each released box is checked and aligned on its own (:mod:`facecaption.faces.boxes`), face ``i`` being
the image's ``i``-th release row, and every release row gets exactly one face record (``release_row``): kept, a
box reason, or its image's reason (the URL's collect status, a decode reason, ``opted_out``). Kept faces carry
``released_caption`` (null for other sources), ``url`` and ``sha256`` (of the downloaded bytes, when the source
has it), ``aligned_by`` (``landmarks`` or ``box``) and ``matrix`` (the 2x3 similarity onto the template, row-major):
with ``align.size``/``align.scale`` what it takes to rebuild the crop.

Nothing in one image can stop the shard: undecodable bytes, bombs and detector errors become records.
"""

from __future__ import annotations

import logging
import math
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
from facecaption.core.reasons import FaceReason, ImageOutcome, category
from facecaption.core.shards import ShardWriter, encode_jpeg, iter_samples, read_parquet, write_parquet
from facecaption.core.stage import StageIO
from facecaption.faces import boxes
from facecaption.faces.decode import decode_image
from facecaption.faces.detect import Face, ModelMissing, make_detector

log = logging.getLogger(__name__)

FACE_COLUMNS = ["key", "image_key", "face", "score", "x0", "y0", "x1", "y1", "landmarks", "box_width", "detector",
                "alt_text", "blur", "brightness", "align_error", "released_caption", "url", "sha256", "release_row",
                "aligned_by", "matrix"]
RECORD_COLUMNS = ["image_key", "face", "status", "reason", "score", "x0", "y0", "x1", "y1", "release_row"]

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


def _record(image_key, face, status, reason, score=np.nan, box=(np.nan,) * 4, release_row=None) -> dict:
    return {"image_key": image_key, "face": int(face), "status": status, "reason": reason, "score": float(score),
            "x0": float(box[0]), "y0": float(box[1]), "x1": float(box[2]), "y1": float(box[3]),
            "release_row": release_row}


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
            desc: str = "faces", release: dict | None = None, rcfg: dict | None = None,
            meta: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Detect, filter and align faces for ``samples`` (``{"__key__", "jpg": bytes, "txt": alt text}``), writing
    crops to ``tar_path``; returns (kept faces, records). ``release``: image key -> its released faces (those
    images get their boxes aligned instead of a detection, ``rcfg`` the release section); ``meta``: image key ->
    (url, sha256) for the kept faces' columns."""
    release, meta = release or {}, meta or {}
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
                elif s["__key__"] in release:
                    _released(s, rgb, release[s["__key__"]], rcfg, fcfg, detector, writer, faces_rows, records,
                              (size, scale, tmpl), meta.get(s["__key__"], (None, None)))
                else:
                    decoded.append((s, rgb))
            dets = _detect_safely(detector, [rgb for _, rgb in decoded], threshold) if decoded else []
            for (s, rgb), faces in zip(decoded, dets):
                key = s["__key__"]
                if isinstance(faces, str):
                    records.append(_record(key, -1, "dropped", faces))
                    continue
                alt = _alt_text(s)
                url, sha = meta.get(key, (None, None))
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
                                               "box_width": f.width, "detector": detector.name, "alt_text": alt,
                                               "released_caption": None, "url": url, "sha256": sha,
                                               "release_row": None, "aligned_by": "landmarks", **row})
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
                                "brightness": "float32", "align_error": "float32", "release_row": "Int64"})
    records_df = pd.DataFrame(records, columns=RECORD_COLUMNS)
    records_df["release_row"] = records_df["release_row"].astype("Int64")
    return faces_df, records_df


def _alt_text(s: dict) -> str:
    alt = s.get("txt", b"")
    return alt.decode("utf-8", "replace") if isinstance(alt, bytes) else str(alt)


def _released(s: dict, rgb: np.ndarray, entries: list[dict], rcfg: dict, fcfg: dict, detector, writer,
              faces_rows: list, records: list, geometry: tuple, url_sha: tuple) -> None:
    """One image's released boxes: face ``i`` is its ``i``-th release row; one record per row, crops written."""
    size, scale, tmpl = geometry
    key, alt = s["__key__"], _alt_text(s)
    h, w = rgb.shape[:2]
    threshold = fcfg["min_score"][fcfg["detector"]]
    face_records, kept = [], 0
    for i, entry in enumerate(entries):
        row_no = entry.get("row")
        box = boxes.parse_box(entry.get("box"), rcfg["box_format"])
        why = boxes.check(entry, box, w, h, rcfg)
        face, aligned_by, crop, row = None, "", None, {}
        if not why:
            try:
                face = boxes.detect_in_box(detector, rgb, box, rcfg, threshold)
            except Exception as exc:  # noqa: BLE001 - recorded, never raised
                why = f"{DETECT_ERROR}: {type(exc).__name__}: {exc}"[:200]
        if not why:
            aligned_by = "landmarks"
            if face is None:
                if rcfg["box_only"] == "drop":
                    why = boxes.NO_FACE_IN_BOX
                else:
                    face, aligned_by = boxes.box_face(box), "box"
        if not why:
            why, row, crop = _align_one(rgb, face, size, scale, tmpl, fcfg)
        if not why:
            fkey = f"{key}_{i:02d}"
            caption = entry.get("caption")
            caption = caption if isinstance(caption, str) and caption.strip() else None
            lms = [round(float(v), 2) for v in face.landmarks.ravel()]
            writer.write({"__key__": fkey, "jpg": encode_jpeg(crop, fcfg["jpeg_quality"]),
                          "json": {"image_key": key, "face": i, "score": None if math.isnan(face.score) else round(face.score, 6),
                                   "box": [round(v, 2) for v in box], "landmarks": lms, "release_row": row_no,
                                   "aligned_by": aligned_by, "released_caption": caption}})
            faces_rows.append({"key": fkey, "image_key": key, "face": i, "score": face.score, "x0": box[0], "y0": box[1],
                               "x1": box[2], "y1": box[3], "landmarks": [float(v) for v in face.landmarks.ravel()],
                               "box_width": box[2] - box[0], "detector": detector.name if aligned_by == "landmarks" else "box",
                               "alt_text": alt, "released_caption": caption, "url": url_sha[0], "sha256": url_sha[1],
                               "release_row": row_no, "aligned_by": aligned_by, **row})
            kept += 1
        score = face.score if face is not None else np.nan
        face_records.append(_record(key, i, "dropped" if why else "kept", why, score,
                                    box if box is not None else (np.nan,) * 4, row_no))
    if kept:
        records.append(_record(key, -1, "kept", ""))
    else:
        cats = {category(r["reason"]) for r in face_records}
        records.append(_record(key, -1, "dropped", boxes.IMAGE_CHANGED if cats == {boxes.IMAGE_CHANGED} else NO_FACE_KEPT))
    records.extend(face_records)


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
    row = {"blur": blur, "brightness": bright, "align_error": err, "matrix": [float(v) for v in np.ravel(matrix)]}
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
    release = ({k: boxes.released_faces(v) for k, v in zip(images["key"], images["release_faces"])}
               if "release_faces" in images else {})
    release = {k: v for k, v in release.items() if v}
    meta = {k: (u if isinstance(u, str) else None, h if isinstance(h, str) else None)
            for k, u, h in zip(images["key"], _column(images, "url"), _column(images, "sha256"))}
    faces_df, records = process(_collect_samples(tar_in, images, extra, optout), fcfg, acfg, detector,
                                io.outputs["crops"], total=len(images), desc=f"faces {io.shard}",
                                release=release, rcfg=cfg["release"] if release else None, meta=meta)
    if extra:
        extra_df = pd.DataFrame(extra, columns=RECORD_COLUMNS).astype({"release_row": "Int64"})
        records = pd.concat([records, extra_df], ignore_index=True)
    records = _release_outcomes(records, release)
    write_parquet(faces_table(faces_df), io.outputs["faces"])
    write_parquet(records, io.outputs["records"])
    img = records[records.face == -1]
    log.info("faces %s: %d images, %d with a kept face, %d faces kept (%s)", io.shard, len(img),
             int((img.status == "kept").sum()), len(faces_df), detector.name)
    return faces_df, records


def _column(df: pd.DataFrame, name: str) -> list:
    return df[name].tolist() if name in df else [None] * len(df)


def _release_outcomes(records: pd.DataFrame, release: dict[str, list[dict]]) -> pd.DataFrame:
    """Give every release row of an image that had no face records (not collected, opted out, undecodable, ...)
    one face record carrying the image's reason: the collect status (``http_error: ...``) for a URL that was
    not collected, else the image-level reason."""
    if not release:
        return records
    has_faces = set(records.loc[records.face >= 0, "image_key"])
    image = records[records.face == -1].drop_duplicates("image_key").set_index("image_key")["reason"]
    rows = []
    for key, entries in release.items():
        if key in has_faces:
            continue
        reason = str(image.get(key) or ImageOutcome.MISSING.value)
        reason = reason.removeprefix("not_collected: ")
        for i, entry in enumerate(entries):
            box = boxes.parse_box(entry.get("box"))
            rows.append(_record(key, i, "dropped", reason, np.nan, box if box is not None else (np.nan,) * 4,
                                entry.get("row")))
    if not rows:
        return records
    extra = pd.DataFrame(rows, columns=RECORD_COLUMNS).astype({"release_row": "Int64"})
    return pd.concat([records, extra], ignore_index=True)


def faces_table(faces_df: pd.DataFrame):
    """The faces parquet's table: the new columns typed even when all null (``released_caption``, ``url``,
    ``sha256``, ``aligned_by``: string; ``release_row``: int64; ``matrix``: list of 6 floats)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(faces_df, preserve_index=False)
    types = {"released_caption": pa.string(), "url": pa.string(), "sha256": pa.string(), "aligned_by": pa.string(),
             "release_row": pa.int64(), "matrix": pa.list_(pa.float64()), "landmarks": pa.list_(pa.float64()),
             "alt_text": pa.string(), "detector": pa.string(), "key": pa.string(), "image_key": pa.string()}
    for name, typ in types.items():
        i = table.schema.get_field_index(name)
        if i >= 0 and table.schema.field(i).type != typ:
            table = table.set_column(i, pa.field(name, typ), table.column(i).cast(typ))
    return table


def run(cfg: StageConfig, io: StageIO) -> int:
    try:
        run_shard(cfg, io)
    except ModelMissing as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0
