"""Stage 1, collect: images into webdataset shards, as a real crawl writes them.

Each shard ``results/collect/<shard>.tar`` holds ``key.jpg`` (the image), ``key.txt`` (its alt-text-like
caption) and ``key.json`` (metadata); ``<shard>.parquet`` has one row per attempted image with its status
(as img2dataset writes), and ``<shard>.truth.parquet`` the ground truth per face, read only by audits
(empty for real sources).
"""

from __future__ import annotations

import argparse
import sys

from facecaption.core.config import SourceError, require_path  # noqa: F401 (the sources' input checks)


def run(cfg: dict, args: argparse.Namespace) -> int:
    if args.shard is None:
        raise SystemExit("collect: --shard is required")
    source = cfg.get("source", "synthface")
    if source == "synthface":
        from facecaption.collect.synthface import collect_shard
    elif source == "urls":
        from facecaption.collect.urls import collect_shard
    else:
        from facecaption.collect.folder import collect_shard
    try:
        collect_shard(cfg, args.shard)
    except SourceError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0
