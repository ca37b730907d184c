"""Shard planning, owned by the sources: how many collect shards a source config gives (shards
``00000``..``N-1``; every per-shard stage uses the same ids).

Each source module (:mod:`~facecaption.collect.synthface`, :mod:`~facecaption.collect.urls`,
:mod:`~facecaption.collect.folder`, :mod:`~facecaption.collect.release`) offers ``plan(cfg) -> int``; this
module picks the configured source's, with a lazy import. Light: planning imports no downloader (img2dataset)
and changes no environment variable, so building the DAG stays cheap; Snakemake plans once per run and passes
the count to the jobs (``--num-shards``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: ``source`` value -> the module that plans and collects its shards
SOURCES = {"synthface": "facecaption.collect.synthface", "urls": "facecaption.collect.urls",
           "folder": "facecaption.collect.folder", "release": "facecaption.collect.release"}


def source_module(cfg: dict) -> ModuleType:
    """The module of the configured source (imported on first use)."""
    source = cfg["source"]
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    return importlib.import_module(SOURCES[source])


def num_shards(cfg: dict) -> int:
    """The number of collect shards of the configured source (at least one)."""
    return max(int(source_module(cfg).plan(cfg)), 1)


def shard_ids(cfg: dict) -> list[str]:
    """Shard ids of the collect stage."""
    return [f"{i:05d}" for i in range(num_shards(cfg))]
