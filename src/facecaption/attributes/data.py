"""Reading labeled splits and face shards into classifier inputs (uint8 tensors at ``input_size``)."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image

from facecaption.core.celeba import ATTRIBUTES
from facecaption.core.reasons import plain
from facecaption.core.shards import iter_samples, read_parquet

log = logging.getLogger(__name__)

LABELED_META = ("key", "split", "identity")


class AttributeDataError(ValueError):
    """A labeled table or face shard that cannot be used, with the file and the column/key named."""


def threads() -> int:
    """Threads for torch: the rule's ``threads`` (exported as OMP_NUM_THREADS / FACECAPTION_THREADS)."""
    for var in ("FACECAPTION_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    return 1


def decode(jpg: bytes, size: int) -> np.ndarray:
    """JPEG bytes → HWC uint8 RGB at size×size."""
    with Image.open(io.BytesIO(jpg)) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR, reducing_gap=None)
        return np.asarray(im, dtype=np.uint8)


def labeled_attributes(df: pd.DataFrame, path: str) -> list[str]:
    """The attribute columns of a labeled parquet, in CelebA order; unknown or empty columns are errors."""
    cols = [c for c in df.columns if c not in LABELED_META]
    unknown = [c for c in cols if c not in ATTRIBUTES]
    if unknown:
        raise AttributeDataError(f"{path}: unknown attribute column {unknown[0]!r}; known: the 40 CelebA names "
                                 "(facecaption.core.celeba.ATTRIBUTES)")
    if not cols:
        raise AttributeDataError(f"{path}: no attribute columns")
    for c in cols:
        values = df[c]
        if len(df) and values.isna().all():
            raise AttributeDataError(f"{path}: attribute column {c!r} is empty (all null)")
        bad = values.dropna()[~values.dropna().isin([0, 1])]
        if len(bad):
            raise AttributeDataError(f"{path}: attribute column {c!r} holds {plain(bad.iloc[0])!r}; expected 0 or 1")
    return [a for a in ATTRIBUTES if a in cols]


def load_labeled(tar: str, parquet: str, attrs: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode a labeled split into (N×3×S×S uint8, N×A float labels with NaN = unknown, keys)."""
    df = read_parquet(parquet)
    labels = df.set_index("key")[attrs]
    errors: list = []
    images, ys, keys = [], [], []
    for sample in iter_samples(tar, errors):
        key = sample["__key__"]
        if key not in labels.index or "jpg" not in sample:
            continue
        images.append(decode(sample["jpg"], size))
        ys.append(labels.loc[key].to_numpy(dtype=np.float32))
        keys.append(key)
    for e in errors:
        log.warning("%s: %s (%s)", tar, e["reason"], e["key"])
    if not images:
        raise AttributeDataError(f"{tar}: no labeled image could be read")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.stack(ys)), keys


class StreamingLabeled(torch.utils.data.IterableDataset):
    """A labeled split too large for memory (CelebA at scale): read from the tar with a seeded shuffle buffer."""

    def __init__(self, tar: str, parquet: str, attrs: list[str], size: int, seed: int, buffer: int = 4096):
        self.tar, self.attrs, self.size, self.seed, self.buffer = tar, attrs, size, seed, buffer
        self.labels = read_parquet(parquet).set_index("key")[attrs]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        buf: list = []
        for sample in iter_samples(self.tar):
            key = sample["__key__"]
            if key not in self.labels.index or "jpg" not in sample:
                continue
            buf.append((sample["jpg"], self.labels.loc[key].to_numpy(dtype=np.float32)))
            if len(buf) >= self.buffer:
                yield self._item(buf.pop(int(rng.integers(len(buf)))))
        rng.shuffle(buf)
        for item in buf:
            yield self._item(item)

    def _item(self, item):
        jpg, y = item
        return torch.from_numpy(decode(jpg, self.size)).permute(2, 0, 1).contiguous(), torch.from_numpy(y)
