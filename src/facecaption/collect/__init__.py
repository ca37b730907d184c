"""Stage 1, collect: images into webdataset shards, as a real crawl writes them.

Each shard ``results/collect/<shard>.tar`` holds ``key.jpg`` (the image), ``key.txt`` (its alt-text-like
caption) and ``key.json`` (metadata); ``<shard>.parquet`` has one row per attempted image with its status
(as img2dataset writes), and ``<shard>.truth.parquet`` the ground truth per face, read only by audits
(empty for real sources).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facecaption.config import ConfigError


# -- real sources (urls, folder): input checks shared by collect.urls, collect.folder, collect.optout ----------
class SourceError(ConfigError):
    """A source input problem (missing file, bad column), as one line naming the config key and the path."""


def require_path(path, key: str, kind: str = "file") -> Path:
    """``path`` (``~`` expanded) if it exists, else stop with one line naming the config key and the path."""
    if path is None or str(path) == "":
        raise SourceError(f"config error: {key}: not set; give the {kind} to read")
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise SourceError(f"config error: {key}: {p} does not exist")
    return p
# ---------------------------------------------------------------------------------------------------------------


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
