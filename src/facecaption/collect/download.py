"""Driving img2dataset for the URL source: one shard's rows, in chunks of ``urls.chunk`` consecutive rows,
downloaded into ``<work_dir>/<shard>/i2d/`` with img2dataset's webdataset writer and its multiprocessing,
pyspark (:mod:`facecaption.collect.spark`) or ray distributor, every request through the guarded opener
(:mod:`facecaption.collect.opener`). A chunk is finished when img2dataset wrote its ``_stats.json`` (and its
parquet and tar); a killed job resumes there and fetches no finished chunk again. A change of the shard's rows
or of the settings that change what a chunk holds (:func:`_settings`) starts the download afresh.

Importing this module sets the environment img2dataset needs offline (it imports albumentations, which asks
PyPI for a newer version, and wandb): only the collect job imports it, never shard planning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from facecaption.collect.opener import guarded_opener
from facecaption.core.config import SourceError
from facecaption.core.optout import OptOut

log = logging.getLogger(__name__)

# img2dataset imports albumentations (which asks PyPI for a newer version) and wandb: keep both offline, here
# and in spawned download processes (they inherit the environment).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


def _downloader_class():
    from img2dataset.downloader import Downloader  # noqa: PLC0415 (heavy import, only when downloading)

    class GuardedDownloader(Downloader):
        """img2dataset's Downloader with every request through :func:`guarded_opener`."""

        def __init__(self, guard: dict, **kw):
            super().__init__(**kw)
            self.guard = guard

        def __call__(self, row):
            previous = urllib.request._opener
            urllib.request.install_opener(guarded_opener(**self.guard))
            try:
                return super().__call__(row)
            finally:
                urllib.request._opener = previous

    return GuardedDownloader


def __getattr__(name):
    """``GuardedDownloader`` is built on first use (no img2dataset/wandb import until a download starts) and is
    a module attribute so spawn/pyspark/ray workers unpickle it."""
    if name == "GuardedDownloader":
        cls = _downloader_class()
        cls.__module__, cls.__qualname__ = __name__, "GuardedDownloader"
        globals()["GuardedDownloader"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _guarded_downloader_cls():
    return globals().get("GuardedDownloader") or __getattr__("GuardedDownloader")


def _settings(ucfg: dict) -> dict:
    """The settings that change what a chunk holds (a change restarts the shard's download)."""
    return {k: ucfg[k] for k in ("chunk", "resize_mode", "image_size", "encode_quality", "skip_reencode",
                                 "max_pixels", "min_image_size", "max_aspect_ratio", "max_bytes",
                                 "respect_robots_headers", "user_agent_token")}


def prepare_work(work: Path, df: pd.DataFrame, ucfg: dict) -> None:
    """Start ``work`` afresh unless it belongs to the same rows and settings (then it is resumed)."""
    digest = hashlib.sha256()
    for r, u in zip(df["row"].tolist(), df["url"].tolist()):
        digest.update(f"{r}\t{u}\n".encode("utf-8", "replace"))
    manifest = {"rows": digest.hexdigest(), "settings": _settings(ucfg)}
    path = work / "manifest.json"
    if path.exists():
        try:
            same = json.loads(path.read_text()) == manifest
        except ValueError:
            same = False
        if same:
            return
        log.info("%s: rows or settings changed, starting the download afresh", work)
        shutil.rmtree(work)
    (work / "i2d").mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, sort_keys=True))


def chunk_done(i2d: Path, chunk: int) -> bool:
    name = f"{chunk:05d}"
    return all((i2d / f"{name}{ext}").exists() for ext in ("_stats.json", ".parquet", ".tar"))


def download_chunks(work: Path, todo: pd.DataFrame, ucfg: dict, optout: OptOut) -> list[int]:
    """Download with img2dataset every unfinished chunk of ``todo`` (columns row_in_shard, row, url).

    Returns the chunk ids that were run. A chunk's feather input is written only when it is about to run.
    """
    from img2dataset.distributor import multiprocessing_distributor, pyspark_distributor  # noqa: PLC0415
    from img2dataset.resizer import Resizer  # noqa: PLC0415
    from img2dataset.writer import WebDatasetSampleWriter  # noqa: PLC0415

    i2d, tmp = work / "i2d", work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    size = ucfg["chunk"]
    chunks = todo["row_in_shard"].to_numpy() // size
    pending = [int(c) for c in np.unique(chunks) if not chunk_done(i2d, int(c))]
    if not pending:
        return []
    jobs = []
    for c in pending:
        part = todo[chunks == c]
        table = pa.table({"row": pa.array(part["row"].to_numpy(), pa.int64()),
                          "url": pa.array(part["url"].astype(str).str.strip().tolist(), pa.string())})
        feather = tmp / f"{c}.feather"
        with pa.OSFile(str(feather), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
            writer.write_table(table)
        jobs.append((c, str(feather)))

    resizer = Resizer(image_size=ucfg["image_size"], resize_mode=ucfg["resize_mode"],
                      resize_only_if_bigger=False, upscale_interpolation="lanczos", downscale_interpolation="area",
                      encode_quality=ucfg["encode_quality"], encode_format="jpg",
                      skip_reencode=ucfg["skip_reencode"], disable_all_reencoding=False,
                      min_image_size=ucfg["min_image_size"], max_image_area=float(ucfg["max_pixels"]),
                      max_aspect_ratio=float(ucfg["max_aspect_ratio"]), blurrer=None)
    directives = ["noai", "noimageai", "noindex", "noimageindex"] if ucfg["respect_robots_headers"] else None
    downloader = _guarded_downloader_cls()(
        guard={"max_bytes": ucfg["max_bytes"], "total_timeout": float(ucfg["total_timeout"]), "optout": optout},
        sample_writer_class=WebDatasetSampleWriter, resizer=resizer, thread_count=ucfg["threads"],
        save_caption=False, extract_exif=False, output_folder=str(i2d), column_list=["row", "url"],
        timeout=ucfg["timeout"], number_sample_per_shard=size, oom_shard_count=5, compute_hash="sha256",
        verify_hash_type=None, encode_format="jpg", retries=ucfg["retries"],
        user_agent_token=ucfg.get("user_agent_token"), disallowed_header_directives=directives)

    dist, procs = ucfg["distributor"], ucfg["processes"]
    t0 = time.perf_counter()
    if dist == "multiprocessing" and procs == 1:  # in this process: no spawn, a kill loses only chunks in flight
        failed = [job for job in jobs if not downloader(job)[0]]
        if failed:
            failed = [job for job in failed if not downloader(job)[0]]
        if failed:
            raise RuntimeError(f"img2dataset failed on chunks {[c for c, _ in failed]} of {work}")
    elif dist == "multiprocessing":
        multiprocessing_distributor(procs, downloader, jobs, None, 1)
    elif dist == "pyspark":
        from facecaption.collect.spark import spark_session  # noqa: PLC0415

        with spark_session(ucfg, work):  # started (or reused) here, so img2dataset's distributor reuses it
            pyspark_distributor(procs, downloader, jobs, 1000, 1)
    else:
        try:
            from img2dataset.distributor import ray_distributor  # noqa: PLC0415
        except ImportError:
            raise SourceError("config error: urls.distributor: ray is not installed (pip install ray)") from None
        ray_distributor(procs, downloader, jobs, None, 1)
    missing = [c for c in pending if not chunk_done(i2d, c)]
    if missing:
        raise RuntimeError(f"img2dataset left chunks {missing} of {work} unfinished; run again to resume")
    log.info("%s: %d chunks downloaded in %.1f s", work, len(pending), time.perf_counter() - t0)
    return pending
