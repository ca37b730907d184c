"""Stage 1, collect: images into webdataset shards, as a real crawl writes them.

Each shard's ``images`` output (``results/collect/<shard>.tar``) holds ``key.jpg`` (the image), ``key.txt``
(its alt-text-like caption) and ``key.json`` (metadata); ``records`` (``<shard>.parquet``) has one row per
attempted image with its status (as img2dataset writes), and ``truth`` (``<shard>.truth.parquet``) the ground
truth per face, read only by audits (empty for real sources).

Every source module (``synthface``, ``urls``, ``folder``) offers the same two functions: ``plan(cfg) -> int``
(the number of shards, :mod:`facecaption.collect.plan`) and ``collect_shard(cfg, io)`` (one shard into
``io.outputs``); :func:`run` calls the configured source's.
"""

from __future__ import annotations

import sys

from facecaption.core.config import SourceError, StageConfig
from facecaption.core.stage import StageIO


def run(cfg: StageConfig, io: StageIO) -> int:
    from facecaption.collect.plan import source_module  # noqa: PLC0415

    if io.shard is None:
        raise SystemExit("collect: --shard is required")
    try:
        source_module(cfg).collect_shard(cfg, io)
    except SourceError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0
