"""The URL source: image URLs from a parquet/CSV list, downloaded with img2dataset into the collect shards.

Input (``urls.input``): LAION-Face's URL lists, the released FaceCaption-15M parquet, or any table with a URL
column and optionally a caption column. Rows are numbered across the input files in sorted order; collect
shard ``i`` covers rows ``[i*per_shard, (i+1)*per_shard)`` (:func:`plan` counts the rows with
:func:`~facecaption.collect.url_inputs.count_urls`, from parquet metadata or one streaming pass over a CSV).

The source is four modules, one per concern:

* :mod:`facecaption.collect.url_inputs`: the input files, counting their rows, reading one shard's slice;
* :mod:`facecaption.collect.opener`: the guarded opener every request goes through;
* :mod:`facecaption.collect.download`: driving img2dataset over a shard's chunks (resumable);
* this module: shard planning, the checks before any request, and re-packing the downloaded chunks into the
  collect shard (:func:`collect_shard`).

For one shard:

1. read the shard's rows; rows whose URL is empty, not ``http``/``https``, or opted out get their final
   status now and are never requested;
2. split the rest into chunks of ``urls.chunk`` consecutive rows and download the chunks with img2dataset
   (webdataset output, its multiprocessing / pyspark / ray distributor) into ``<work_dir>/<shard>/``. A chunk
   is finished when img2dataset wrote its ``_stats.json``; a killed job resumes there and fetches no finished
   chunk again. Every request goes through a guarded opener: only http/https (redirects included), opt-out
   checked on every redirect target, bodies over ``max_bytes`` dropped, a total time limit per download
   (``total_timeout``: every socket operation gets the time left as its timeout, so it holds whatever the
   server does);
   image area and aspect limits are img2dataset's;
3. re-pack the chunks into the shard's tar (key ``<shard>_<row in shard>``, fixed order and mtime) and its
   parquet with one row per input row: ``status`` is one of :data:`STATUSES`, ``error_message`` the error
   (without memory addresses, so that a rerun gives the same bytes), ``downloaded`` whether a body arrived;
   input columns named by ``urls.keep_columns`` (e.g. the released face box and face caption) are kept in the
   parquet and json.

Nothing else is contacted: wandb is never started (img2dataset's logger process is not used), and
albumentations' version check is switched off.

Past one machine
----------------
* Several machines, one Snakemake: collect is a local rule for this source (compute nodes often have no
  internet), so shards download on the machine running Snakemake, ``--cores`` of them at a time, each with
  ``urls.processes`` x ``urls.threads`` connections. Later stages run on the cluster as usual.
* ``urls.distributor: pyspark`` (pinned pyspark and Java 17+; :mod:`facecaption.collect.spark` starts a
  session on ``urls.spark_master``, ``local[2]`` by default, or ``spark://host:7077`` / ``yarn`` on a cluster,
  and stops it with the job; an active SparkSession is reused) or ``ray`` (``pip install ray``; ``ray.init``
  connects to the running cluster, e.g. ``RAY_ADDRESS``) spread the chunks of each shard over the cluster's
  workers; ``urls.work_dir`` must then be on a filesystem every worker sees. Raise ``per_shard`` so one shard
  has many chunks.
* Resumption works the same in every mode: a chunk is done when its ``_stats.json`` exists.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from facecaption.collect.common import clean_message, empty_truth, jsonable
from facecaption.collect.opener import ALLOWED_SCHEMES, MARK
from facecaption.collect.url_inputs import OUTPUT_COLUMNS, count_urls, read_slice
from facecaption.core.config import StageConfig
from facecaption.core.optout import OptOut
from facecaption.core.reasons import CollectStatus
from facecaption.core.stage import StageIO

log = logging.getLogger(__name__)

SOURCE = "urls"
#: every status a row of the collect parquet can have
STATUSES = tuple(s.value for s in CollectStatus)
#: statuses of rows whose body arrived (the "downloaded" step of the funnel)
DOWNLOADED = ("success", "decode_error", "too_many_pixels", "too_small", "bad_aspect_ratio")


def plan(cfg: dict) -> int:
    """The number of collect shards: the input rows (all files) over ``urls.per_shard``, at least one."""
    return max(math.ceil(count_urls(cfg["urls"]) / cfg["urls"]["per_shard"]), 1)


def precheck(url, optout: OptOut) -> tuple[str | None, str | None]:
    """(status, message) for a URL that must not be requested, else (None, None)."""
    if url is None or (isinstance(url, float) and math.isnan(url)) or not str(url).strip():
        return "invalid_url", "empty URL"
    url = str(url).strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        return "invalid_url", clean_message(str(exc))
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return "unsafe_scheme", f"scheme {parts.scheme or '(none)'!r} is not http or https"
    if not host:
        return "invalid_url", "no host"
    if optout.blocks(url):
        return "opted_out", "in the opt-out list"
    return None, None


# -- status --------------------------------------------------------------------------------------------------------
def classify(i2d_status: str | None, message: str | None) -> str:
    """Our status for one img2dataset result (``status``, ``error_message``)."""
    m = message or ""
    low = m.lower()
    if i2d_status == "success":
        return "success"
    if i2d_status == "failed_to_resize":
        if "area too large" in low:
            return "too_many_pixels"
        if "too small" in low:
            return "too_small"
        if "aspect ratio" in low:
            return "bad_aspect_ratio"
        return "decode_error"
    if i2d_status is None:
        return "not_downloaded"
    if MARK in m:
        for needle, status in (("opted out", "opted_out"), ("unsafe redirect", "unsafe_redirect"),
                               ("unsafe scheme", "unsafe_scheme"), ("too large", "too_large"),
                               ("deadline", "timeout"), ("incompleteread", "truncated")):
            if needle in low:
                return status
    if "x-robots-tag" in low:
        return "disallowed"
    if "hash mismatch" in low:
        return "hash_mismatch"
    if m.startswith("HTTP Error"):
        return "http_error"
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if "incompleteread" in low or "incomplete read" in low:
        return "truncated"
    if "unknown url type" in low:
        return "unsafe_scheme"
    return "connection_error"


def _http_status(message: str | None) -> int | None:
    m = re.match(r"HTTP Error (\d{3})", message or "")
    return int(m.group(1)) if m else None


# -- re-pack ---------------------------------------------------------------------------------------------------------
def _chunk_results(i2d: Path, chunk: int) -> tuple[pd.DataFrame, dict[str, bytes]]:
    """img2dataset's results of one chunk (its parquet) and the images of its successful rows (its tar)."""
    from facecaption.core.shards import iter_samples  # noqa: PLC0415

    name = f"{chunk:05d}"
    meta = pq.read_table(i2d / f"{name}.parquet").to_pandas()
    ok_keys = set(meta.loc[meta["status"] == "success", "key"])
    images: dict[str, bytes] = {}
    errors: list = []
    for sample in iter_samples(i2d / f"{name}.tar", errors):  # never extracted: member paths cannot escape
        if sample["__key__"] in ok_keys and "jpg" in sample:
            images[sample["__key__"]] = sample["jpg"]
    for e in errors:
        log.warning("chunk %s: %s: %s", name, e["key"], e["reason"])
    return meta, images


def collect_shard(cfg: StageConfig, io: StageIO) -> None:
    """Download shard ``io.shard``'s rows and write the outputs ``images`` (tar), ``records`` and ``truth``
    (empty: a crawl has no ground truth)."""
    ucfg, shard = cfg["urls"], io.shard
    optout = OptOut.from_config(cfg["optout"])
    per = ucfg["per_shard"]
    lo = int(shard) * per
    df, kept = read_slice(ucfg, lo, lo + per)
    df["row_in_shard"] = df["row"] - lo
    fetch_and_pack(df, kept, ucfg, optout, io, SOURCE)


def fetch_and_pack(df: pd.DataFrame, kept: list[str], ucfg: dict, optout: OptOut, io: StageIO, source: str) -> None:
    """Download one shard's rows and write the outputs ``images`` (tar), ``records`` and ``truth`` (empty).

    ``df``: one row per image to fetch, with ``row`` (a number unique in the run, img2dataset's id),
    ``row_in_shard`` (0.. in order: the key ``<shard>_<row_in_shard>`` and the chunk), ``url``, ``caption`` and
    the ``kept`` columns (copied into the parquet and each sample's json). ``ucfg``: the ``urls`` settings of
    the download (chunk, threads, limits, work_dir). Shared by the URL and release sources."""
    from facecaption.collect import download  # noqa: PLC0415 (img2dataset's environment: only when downloading)
    from facecaption.core.shards import ShardWriter, write_parquet  # noqa: PLC0415

    shard = io.shard
    tar_path, parquet_path, truth_path = io.outputs["images"], io.outputs["records"], io.outputs["truth"]
    checks = [precheck(u, optout) for u in df["url"].tolist()]
    df["status"] = [c[0] for c in checks]
    df["error_message"] = [c[1] for c in checks]
    todo = df[df["status"].isna()]

    work = Path(ucfg["work_dir"]) / shard
    download.prepare_work(work, df[["row", "url"]].astype({"url": str}), ucfg)
    if len(todo):
        download.download_chunks(work, todo, ucfg, optout)

    size, i2d = ucfg["chunk"], work / "i2d"
    out_rows = []
    meta_cols = ["width", "height", "original_width", "original_height", "sha256"]
    with ShardWriter(tar_path) as writer:
        chunk_of = df["row_in_shard"].to_numpy() // size
        for c in np.unique(chunk_of) if len(df) else []:
            part = df[chunk_of == c]
            results, images = (_chunk_results(i2d, int(c)) if part["status"].isna().any()
                               else (pd.DataFrame(columns=["row", "key", "status", "error_message"]), {}))
            by_row = {int(r.row): r for r in results.itertuples(index=False)}
            for rec in part.to_dict("records"):
                key = f"{shard}_{int(rec['row_in_shard']):05d}"
                url = rec["url"] if isinstance(rec["url"], str) else None
                caption = rec["caption"] if isinstance(rec["caption"], str) else ""
                out = {"key": key, "url": url, "width": None, "height": None, "source": source, "caption": caption,
                       "status": rec["status"], "error_message": rec["error_message"], "downloaded": False,
                       "http_status": None, "row": int(rec["row"]), "original_width": None,
                       "original_height": None, "sha256": None}
                if out["status"] is None:
                    res = by_row.get(int(rec["row"]))
                    i2d_status = getattr(res, "status", None)
                    msg = getattr(res, "error_message", None)
                    status = classify(i2d_status, msg)
                    out.update(status=status, error_message=clean_message(msg) if status != "success" else None,
                               downloaded=status in DOWNLOADED, http_status=_http_status(msg))
                    if i2d_status is not None:
                        for col in meta_cols:
                            v = getattr(res, col, None)
                            out[col] = None if v is None or (isinstance(v, float) and math.isnan(v)) else \
                                (int(v) if col != "sha256" else v)
                    if status == "success":
                        jpg = images.get(res.key)
                        if jpg is None:
                            out.update(status="decode_error", error_message="image missing from the chunk tar")
                        elif optout.blocks(url):  # an entry added after this chunk was downloaded
                            out.update(status="opted_out", error_message="in the opt-out list (after download)")
                        elif ucfg["skip_reencode"] and not _decodes(jpg):
                            out.update(status="decode_error", error_message="kept bytes do not decode")
                        else:
                            extra = {k: jsonable(rec.get(k)) for k in kept}
                            writer.write({"__key__": key, "jpg": jpg, "txt": caption,
                                          "json": {"key": key, "url": url, "width": out["width"],
                                                   "height": out["height"], "source": source, **extra}})
                out.update({k: rec.get(k) for k in kept})
                out_rows.append(out)
    table = pd.DataFrame(out_rows, columns=[*OUTPUT_COLUMNS, *kept])
    for col in ("width", "height", "http_status", "original_width", "original_height"):
        table[col] = table[col].astype("Int64")
    table["downloaded"] = table["downloaded"].astype(bool)
    for col in ("url", "caption", "status", "error_message", "sha256", "key", "source"):
        table[col] = table[col].astype(object).where(table[col].notna(), None)
    write_parquet(table, parquet_path)
    write_parquet(empty_truth(), truth_path)
    counts = table["status"].value_counts().to_dict()
    log.info("shard %s: %d URLs, %d written; %s", shard, len(table), int((table.status == "success").sum()), counts)
    if not ucfg["keep_work"]:
        shutil.rmtree(work, ignore_errors=True)


def _decodes(data: bytes) -> bool:
    from io import BytesIO  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(BytesIO(data)) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 (any decoder error means: not decodable)
        return False

