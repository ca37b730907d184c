"""The release source: rebuild FaceCaption-15M from its released parquet (``release.input``).

The release (``FaceCaption-v1.parquet``, ~13.3M rows) has one row per *face*: the image URL, the face box, the
LAION alt-text and the face caption, and no image. This source downloads each distinct URL once, through the URL
source's guarded img2dataset path (:func:`facecaption.collect.urls.fetch_and_pack`, with the ``urls`` section's
download settings), and carries the URL's released faces with its image; the faces stage then aligns those boxes
instead of detecting faces in the whole image (:mod:`facecaption.faces.boxes`).

Sharding by URL
---------------
There are ``ceil(rows / release.per_shard)`` shards (:func:`plan`: parquet metadata only) and a URL belongs to
shard ``hash(URL) mod shards`` (pandas' ``hash_array`` with its fixed 16-byte key over the stripped UTF-8 URL),
so every face of one image lands in the same shard wherever its rows lie in the release. Inside a shard the
distinct URLs are numbered in the order of their first release row: the key of URL ``i`` is ``<shard>_<i:05d>``.
The collect parquet has one row per distinct URL (``row`` = its first release row, ``caption`` = its first
non-empty alt-text) with ``release_faces``, a JSON string ``[{"row", "box", "caption", "width", "height"}, ...]``
(one entry per release row, in row order, the box as released), and ``release_rows`` (how many); the tar
sample's json carries the same ``release_faces``.

What one shard job reads and costs: it streams every release file once, in record batches of 65,536 rows
(the configured columns only: URL, box, caption, alt-text, optional width/height) and keeps the rows whose URL
hashes to its shard; memory holds one batch plus the shard's own rows (about ``per_shard`` rows). At 13.3M rows
(the 4.1 GB ``FaceCaption-v1.parquet``) that is one sequential read of the file and hashing 13.3M URLs per job:
tens of seconds of CPU, against hours of downloading the shard's ~``per_shard`` URLs (at the benchmarked rate,
``benchmarks/results/download.json``); with the default 50,000 rows per shard, 266 shards read the release 266
times in all. No job ever holds the whole release.

A missing column stops at planning, before any job, with one line naming the key, the column and the columns
found.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from facecaption.collect.common import jsonable
from facecaption.collect.url_inputs import count_rows, csv_reader, file_format, input_files, names_first
from facecaption.core.config import SourceError, StageConfig
from facecaption.core.optout import OptOut
from facecaption.core.stage import StageIO

log = logging.getLogger(__name__)

SOURCE = "release"
BATCH = 65_536
_HASH_KEY = "0123456789123456"  # pandas' default hash key, spelled out: the shard of a URL must never change

#: the config keys naming release columns; each one set must be in every release file (the optional ones,
#: alt_text/width/height, are read only when set)
COLUMN_KEYS = ("url_column", "box_column", "caption_column", "alt_text_column", "width_column", "height_column")


def _columns(rcfg: dict) -> dict[str, str]:
    """The configured release columns (config key -> column name); unset optional ones left out."""
    return {k: rcfg[k] for k in COLUMN_KEYS if rcfg.get(k)}


def check_columns(rcfg: dict, files: list[Path] | None = None) -> list[Path]:
    """The release files; a configured column missing from one stops with one line naming it."""
    files = input_files(rcfg, "release") if files is None else files
    for path in files:
        names = names_first(path)
        for key, col in _columns(rcfg).items():
            if col not in names:
                raise SourceError(f"config error: release.{key}: column {col!r} is not in {path}; "
                                  f"columns found: {', '.join(names[:30])}")
    return files


def total_rows(rcfg: dict, work_dir: str | None = None) -> int:
    return sum(count_rows(p, work_dir) for p in input_files(rcfg, "release"))


def plan(cfg: dict) -> int:
    """The number of collect shards: the release rows over ``release.per_shard`` (at least one). Checks the
    columns of every file first (parquet/CSV headers only)."""
    rcfg = cfg["release"]
    check_columns(rcfg)
    work_dir = (cfg.get("urls") or {}).get("work_dir")
    return max(math.ceil(total_rows(rcfg, work_dir) / rcfg["per_shard"]), 1)


def url_shard(urls, n_shards: int) -> np.ndarray:
    """The shard number of each URL (None/NaN count as the empty URL)."""
    clean = np.array([u.strip() if isinstance(u, str) else "" for u in urls], dtype=object)
    if not len(clean):
        return np.zeros(0, dtype=np.int64)
    h = pd.util.hash_array(clean, encoding="utf8", hash_key=_HASH_KEY, categorize=False)
    return (h % np.uint64(n_shards)).astype(np.int64)


def _batches(path: Path, columns: list[str]):
    """Record batches of ``columns`` of one release file, streamed (bounded memory whatever its row groups)."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    if file_format(path) == ".parquet":
        yield from pq.ParquetFile(path, buffer_size=1 << 20).iter_batches(batch_size=BATCH, columns=columns)
    else:
        reader, _ = csv_reader(path, columns=columns)
        for batch in reader:
            yield from pa.Table.from_batches([batch]).to_batches(max_chunksize=BATCH)


def read_shard_rows(rcfg: dict, shard: int, n_shards: int, work_dir: str | None = None) -> pd.DataFrame:
    """The release rows of one shard: columns ``row`` (global release row), ``url``, ``box``, ``face_caption``,
    ``alt_text``, ``width``, ``height`` (None where the release has no such column)."""
    cols = _columns(rcfg)
    rename = {cols["url_column"]: "url", cols["box_column"]: "box", cols["caption_column"]: "face_caption"}
    for key, out in (("alt_text_column", "alt_text"), ("width_column", "width"), ("height_column", "height")):
        if key in cols:
            rename[cols[key]] = out
    wanted = list(dict.fromkeys(rename))
    parts, offset = [], 0
    for path in check_columns(rcfg):
        for batch in _batches(path, wanted):
            n = batch.num_rows
            urls = batch.column(wanted.index(cols["url_column"])).to_pylist()
            hit = np.flatnonzero(url_shard(urls, n_shards) == shard)
            if len(hit):
                df = batch.take(hit).to_pandas()
                df = df.rename(columns=rename)
                df.insert(0, "row", hit.astype(np.int64) + offset)
                parts.append(df)
            offset += n
        log.info("release %s: %d rows read so far", path, offset)
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["row", *rename.values()])
    for c in ("alt_text", "width", "height"):
        if c not in df:
            df[c] = None
    return df


def _text(v) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(v)


def _size(v) -> int | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(round(f)) if math.isfinite(f) else None


def group_by_url(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct URL (in order of its first release row): ``row`` (first release row),
    ``row_in_shard``, ``url``, ``caption`` (first non-empty alt-text), ``release_faces`` (JSON), ``release_rows``."""
    rows = rows.sort_values("row", kind="stable")
    url_key = rows["url"].map(lambda u: u.strip() if isinstance(u, str) else "")
    out = []
    for i, (_, g) in enumerate(rows.groupby(url_key, sort=False)):
        alt = next((t for t in map(_text, g["alt_text"]) if t and t.strip()), "")
        faces = [{"row": int(r.row), "box": jsonable(r.box), "caption": _text(r.face_caption),
                  "width": _size(r.width), "height": _size(r.height)} for r in g.itertuples(index=False)]
        url = g["url"].iloc[0]
        out.append({"row": int(g["row"].iloc[0]), "row_in_shard": i, "url": url.strip() if isinstance(url, str) else None,
                    "caption": alt, "release_faces": json.dumps(faces, ensure_ascii=False, sort_keys=True),
                    "release_rows": len(faces)})
    return pd.DataFrame(out, columns=["row", "row_in_shard", "url", "caption", "release_faces", "release_rows"])


def collect_shard(cfg: StageConfig, io: StageIO) -> None:
    """Download shard ``io.shard``'s distinct URLs once each and write ``images``, ``records`` and ``truth``."""
    from facecaption.collect.urls import fetch_and_pack  # noqa: PLC0415

    rcfg, ucfg = cfg["release"], cfg["urls"]
    n_shards = plan(cfg)
    rows = read_shard_rows(rcfg, int(io.shard), n_shards, ucfg.get("work_dir"))
    df = group_by_url(rows)
    log.info("release shard %s of %d: %d release rows, %d distinct URLs", io.shard, n_shards, len(rows), len(df))
    fetch_and_pack(df, ["release_faces", "release_rows"], ucfg, OptOut.from_config(cfg["optout"]), io, SOURCE)
