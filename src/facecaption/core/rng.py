"""Seeded random streams: one independent generator per (seed, purpose, ids...).

Streams are keyed by what they are for, never by the order work happens in, so a shard renders the same
bytes whether it runs first, last, alone on a cluster node, or again after a crash.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, purpose: str, *ids: int | str) -> np.random.Generator:
    words = [int(seed), zlib.crc32(purpose.encode())]
    words += [int(i) if isinstance(i, (int, np.integer)) else zlib.crc32(str(i).encode()) for i in ids]
    return np.random.default_rng(np.random.SeedSequence(words))
