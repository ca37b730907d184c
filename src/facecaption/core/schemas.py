"""Artifact schemas: the contracts between stages (docs/ARCHITECTURE.md, "Artifacts") as code.

Each parquet artifact has required columns (a stage may write more; a reader may rely on these), and each
webdataset shard the members of every sample. :func:`check_parquet` and :func:`check_shard` name the first
broken promise in one line; the end-to-end test checks every artifact of a real run against them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    pattern: str  # results-relative glob of the artifact
    columns: tuple[str, ...]  # required columns
    unique: tuple[str, ...] = ()  # columns whose combination is unique per row


@dataclass(frozen=True)
class Shard:
    pattern: str
    members: tuple[str, ...]  # extensions every sample has


TABLES = (
    Table("collect/*.truth.parquet", ("key", "face", "x0", "y0", "x1", "y1", "landmarks", "identity", "degrade", "tiny")),
    Table("collect/*.parquet", ("key", "url", "width", "height", "source", "caption", "status", "error_message"),
          unique=("key",)),
    Table("labeled/*.parquet", ("key", "split", "identity"), unique=("key",)),
    # release_row: the release row a face record answers for (source = release; null elsewhere)
    Table("faces/*.records.parquet", ("image_key", "face", "status", "reason", "score", "x0", "y0", "x1", "y1",
                                      "release_row"), unique=("image_key", "face")),
    # released_caption (nullable string): the release's face caption (source = release; null for other sources);
    # alt_text stays the image's alt-text. url, sha256 (of the downloaded bytes, null where the source has none),
    # aligned_by (landmarks | box) and matrix (2x3 similarity, row-major) rebuild the crop with align.size/scale.
    Table("faces/*.parquet", ("key", "image_key", "face", "score", "x0", "y0", "x1", "y1", "landmarks", "box_width",
                              "detector", "alt_text", "blur", "brightness", "align_error", "released_caption", "url",
                              "sha256", "release_row", "aligned_by", "matrix"), unique=("key",)),
    Table("attributes/*.parquet", ("key", "n_labels", "kept", "reason"), unique=("key",)),
    Table("captions/*.parquet", ("key", "image_key", "caption", "captions", "grammar_caption", "rewritten",
                                 "rewrite_error", "alt_text", "n_labels"), unique=("key",)),
    Table("quality/*.parquet", ("key", "excluded_reason")),
    # the contamination audit: flagged test items (one row per dataset + test key) and flagged pool crops
    Table("audit/contaminated.parquet", ("dataset", "key", "near_copy", "identity", "hamming", "inliers", "cosine",
                                         "pool_key"), unique=("dataset", "key")),
    Table("audit/pool.parquet", ("key", "near_copy", "identity", "dataset", "test_key"), unique=("key",)),
)
SHARDS = (
    Shard("collect/*.tar", ("jpg", "txt", "json")),
    Shard("labeled/*.tar", ("jpg", "json")),
    Shard("faces/*.tar", ("jpg", "json")),
    Shard("captions/*.tar", ("jpg", "txt", "json")),
)


def table_for(relpath: str) -> Table | None:
    """The schema of a results-relative parquet path (the first pattern that matches)."""
    return next((t for t in TABLES if fnmatch.fnmatchcase(relpath, t.pattern)), None)


def shard_for(relpath: str) -> Shard | None:
    return next((s for s in SHARDS if fnmatch.fnmatchcase(relpath, s.pattern)), None)


def check_parquet(path, relpath: str) -> str | None:
    """None when the parquet file keeps its schema's promises, else the first broken one, in one line."""
    import pyarrow.parquet as pq

    table = table_for(relpath)
    if table is None:
        return f"{relpath}: no schema for this artifact"
    names = set(pq.read_schema(path).names)
    missing = [c for c in table.columns if c not in names]
    if missing:
        return f"{relpath}: missing columns {missing}"
    if table.unique:
        df = pq.read_table(path, columns=list(table.unique)).to_pandas()
        dup = df.duplicated().sum()
        if dup:
            return f"{relpath}: {dup} rows repeat {'+'.join(table.unique)}"
    return None


def check_shard(path, relpath: str) -> str | None:
    """None when every sample of the webdataset shard has its schema's members."""
    from facecaption.core.shards import iter_samples

    shard = shard_for(relpath)
    if shard is None:
        return f"{relpath}: no schema for this artifact"
    for sample in iter_samples(str(path)):
        missing = [m for m in shard.members if m not in sample]
        if missing:
            return f"{relpath}: sample {sample.get('__key__')} lacks {missing}"
    return None
