"""Shard I/O: webdataset tar shards and parquet tables, written deterministically and atomically.

Every artifact of the pipeline is a shard pair ``NAME.tar`` (webdataset: ``key.jpg``, ``key.txt``,
``key.json``) plus ``NAME.parquet`` (one row per sample). Same input → same bytes: tar members get a
fixed mtime, owner and mode, and files are renamed into place only when complete, so a killed job never
leaves a half-written shard behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# 2000-01-01T00:00:00Z: a fixed member mtime keeps tar bytes (and so DVC hashes) stable across runs.
FIXED_MTIME = 946684800.0


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds.

    A temporary file left by a killed writer (SIGKILL skips every cleanup) is removed here, when the
    output is written again, so a rerun leaves no debris beside its outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class ShardWriter:
    """Write samples ``{"__key__": str, ext: bytes|str|dict, ...}`` to one tar, atomically.

    >>> with ShardWriter("out.tar") as w:
    ...     w.write({"__key__": "000001", "jpg": jpeg_bytes, "txt": "a caption", "json": {"w": 3}})

    The members are laid out as webdataset's ``TarWriter`` lays them out (``<key>.<ext>`` in sorted extension
    order, a stream-mode tar, fixed owner, mode and mtime), written with the standard library's ``tarfile``:
    importing webdataset imports torch, 1.6 s at the start of every job that writes a shard and needs no torch.
    """

    def __init__(self, path: str | os.PathLike):
        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self._file = open(self._tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w|")
        self.count = 0

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        for ext in sorted(k for k in sample if not k.startswith("_")):
            v = sample[ext]
            if isinstance(v, str):
                v = v.encode("utf-8")
            elif not isinstance(v, (bytes, bytearray, memoryview)):
                v = json.dumps(v, sort_keys=True, separators=(",", ":")).encode("utf-8")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(v), FIXED_MTIME, 0o644, "", ""
            self._tar.addfile(info, io.BytesIO(v))
        self.count += 1

    def close(self, ok: bool = True) -> None:
        self._tar.close()
        self._file.close()
        if ok:
            self._atomic.__exit__(None, None, None)
        else:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def leaves_folder(name: str) -> bool:
    """A member or listed file name that would leave its folder: absolute, a drive letter, or a ``..`` part."""
    return (name.startswith(("/", "\\")) or ".." in Path(name.replace("\\", "/")).parts
            or (len(name) > 1 and name[1] == ":"))


def iter_samples(path: str | os.PathLike, errors: list | None = None) -> Iterator[dict]:
    """Yield samples ``{"__key__": key, ext: bytes}`` from a tar shard, grouping members by key.

    A corrupt or truncated tar never raises: the problem is appended to ``errors`` (when given) as
    ``{"key": ..., "reason": ...}``. A damaged block in the middle (a header with a bad checksum, garbage
    bytes) is skipped and reading resumes at the next intact member, recorded as ``corrupt_tar`` under the
    key of that member; a truncated tar stops at the damage, keeping everything before it.
    A member whose key and extension repeat the previous one (the same key written twice in a row) starts
    a new sample, so duplicates are seen, never merged. Member names that would escape a folder (absolute,
    ``..``) are skipped and recorded.
    """
    current: dict | None = None
    try:
        # ignore_zeros: skip unreadable header blocks instead of silently ending at the first one
        with tarfile.open(path, mode="r:*", ignore_zeros=True) as tar:
            expected = 0  # where the next header should start
            for member in tar:
                name = member.name
                base = name.rsplit("/", 1)[-1]
                prefix = name[: len(name) - len(base)]
                key, _, ext = base.partition(".")
                key = prefix + key
                if member.offset > expected and errors is not None:
                    errors.append({"key": key,
                                   "reason": f"corrupt_tar: {member.offset - expected} unreadable bytes "
                                             f"at offset {expected}"})
                expected = member.offset_data + (-(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                                                 if member.isreg() else 0)
                if not member.isfile():
                    continue
                if leaves_folder(name):
                    if errors is not None:
                        errors.append({"key": name, "reason": "unsafe_member_path"})
                    continue
                data = tar.extractfile(member).read()
                if current is not None and (current["__key__"] != key or ext in current):
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key}
                current[ext] = data
    except (tarfile.TarError, OSError, EOFError) as exc:
        if errors is not None:
            errors.append({"key": current["__key__"] if current else None,
                           "reason": f"corrupt_tar: {type(exc).__name__}: {exc}"})
        current = None  # the sample being read when the damage hit is incomplete
    if current is not None:
        yield current


def write_parquet(df: pd.DataFrame | pa.Table, path: str | os.PathLike) -> None:
    """Write a table to parquet atomically and reproducibly (no pandas index, fixed row groups)."""
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=65536)


def read_parquet(paths: str | os.PathLike | Iterable, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one or several parquet files into one DataFrame (in the order given)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    frames = [pq.read_table(p, columns=columns).to_pandas() for p in paths]
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame(columns=columns or [])
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def encode_jpeg(rgb, quality: int = 92) -> bytes:
    """Encode an RGB uint8 array as baseline JPEG with fixed settings (stable bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, optimize=False, progressive=False,
                              subsampling=0)
    return buf.getvalue()
