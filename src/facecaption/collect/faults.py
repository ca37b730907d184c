"""Bad-data injection for the synthface corpus (config ``synthface.faults``; all off by default).

A real crawl holds truncated downloads, empty files, HTML error pages saved as ``.jpg``, empty alt-texts,
the same key written twice and tars damaged in the middle. :class:`Injector` post-processes the rendered
samples of one shard so every such kind is present, deterministically (``rng.stream(seed,
"synthface/faults", shard)``, never by order):

* ``truncated_jpeg``, ``zero_byte``, ``not_image``: the image member of that many samples per shard is cut
  in half, emptied, or replaced by an HTML error page;
* ``empty_caption``: that many samples per shard get an empty alt-text (the image is intact);
* ``duplicate_key``: that many samples per shard are written twice in a row under the same key, the second
  time with different image bytes (a key collision); first occurrence wins downstream;
* ``corrupt_tar_shard``: in that shard (id, e.g. ``"00001"``), the tar header of the middle sample's image
  member gets a bad checksum after the shard is written.

The collect parquet still describes what was written (status ``success``, one row per written sample, the
duplicate included): it is the later stages that must notice. The truth parquet lists only the faces of
intact images (not those of broken, duplicated or tar-damaged samples).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

from facecaption.core import rng as rngmod
from facecaption.core.shards import atomic_path, encode_jpeg

# per-shard counts, in the order indices are drawn (changing the order changes which samples are hit)
COUNTS = ("truncated_jpeg", "zero_byte", "not_image", "empty_caption", "duplicate_key")
# the kinds whose image is not intact (their faces are left out of the truth table)
BROKEN = ("truncated_jpeg", "zero_byte", "not_image", "corrupt_tar_member")

NOT_IMAGE_BYTES = (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
                   b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>\n")


def plan(faults: dict | None, seed: int, shard: str, n_images: int) -> dict[int, str]:
    """``{image index: fault kind}`` for one shard (empty when faults are off)."""
    faults = faults or {}
    out: dict[int, str] = {}
    corrupt = faults.get("corrupt_tar_shard")
    reserved = set()
    if corrupt is not None and str(corrupt) == shard and n_images > 0:
        out[n_images // 2] = "corrupt_tar_member"
        reserved.add(n_images // 2)
    wanted = [(kind, int(faults.get(kind, 0) or 0)) for kind in COUNTS]
    if not any(n for _, n in wanted):
        return out
    order = [int(i) for i in rngmod.stream(seed, "synthface/faults", shard).permutation(n_images) if i not in reserved]
    for kind, n in wanted:
        for _ in range(n):
            if not order:
                return out
            out[order.pop(0)] = kind
    return out


def _flipped(jpg: bytes, quality: int) -> bytes:
    """Different bytes for a duplicate: the same picture mirrored."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))[:, ::-1]
    return encode_jpeg(np.ascontiguousarray(rgb), quality=quality)


class Injector:
    """The faults of one shard. With faults off, :meth:`apply` passes samples through unchanged."""

    def __init__(self, cfg: dict, shard: str):
        sf = cfg["synthface"]
        self.quality = sf["jpeg_quality"]
        self.plan = plan(sf.get("faults"), cfg["seed"], shard, sf["images_per_shard"])
        self.corrupt_key: str | None = None

    def kind(self, idx: int) -> str | None:
        return self.plan.get(idx)

    def intact(self, idx: int) -> bool:
        """Whether the image of sample ``idx`` is written intact (its faces belong in the truth table)."""
        return self.plan.get(idx) not in BROKEN

    def apply(self, idx: int, sample: dict, row: dict) -> Iterator[tuple[dict, dict]]:
        """The (tar sample, collect parquet row) pairs to write for rendered sample ``idx``."""
        kind = self.plan.get(idx)
        if kind is None:
            yield sample, row
            return
        sample, row = dict(sample), dict(row)
        if kind == "truncated_jpeg":
            sample["jpg"] = sample["jpg"][: len(sample["jpg"]) // 2]
        elif kind == "zero_byte":
            sample["jpg"] = b""
        elif kind == "not_image":
            sample["jpg"] = NOT_IMAGE_BYTES
        elif kind == "empty_caption":
            sample["txt"], row["caption"] = "", ""
        elif kind == "corrupt_tar_member":
            self.corrupt_key = sample["__key__"]
        yield sample, row
        if kind == "duplicate_key":
            yield {**sample, "jpg": _flipped(sample["jpg"], self.quality)}, dict(row)

    def finish(self, tar_path: str) -> None:
        """Damage the written tar (when this shard is the one with a corrupt member)."""
        if self.corrupt_key is not None:
            corrupt_member(tar_path, f"{self.corrupt_key}.jpg")


def corrupt_member(tar_path: str, member: str) -> None:
    """Give every header block of ``member`` (its pax extended header too) a bad checksum, rewriting the tar
    atomically: a reader loses that member and must resynchronise at the next one."""
    data = bytearray(Path(tar_path).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:") as tar:
        m = next(m for m in tar.getmembers() if m.name == member)
    for block in range(m.offset, m.offset_data, tarfile.BLOCKSIZE):
        data[block + 148: block + 156] = b"XXXXXXX\0"  # the checksum field: not even an octal number
    with atomic_path(tar_path) as tmp:
        Path(tmp).write_bytes(bytes(data))
