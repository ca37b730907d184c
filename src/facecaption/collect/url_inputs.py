"""The URL source's input lists: which files (``urls.input``: files, folders, globs), how many rows they hold,
and reading one shard's slice of rows. Rows are numbered across the input files in sorted order; collect shard
``i`` covers rows ``[i*per_shard, (i+1)*per_shard)``. Light: pyarrow only, so that shard planning
(:func:`facecaption.collect.urls.plan`) imports no downloader."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from facecaption.core.config import SourceError, require_path

#: the collect parquet's columns for this source; a kept input column of the same name becomes ``src_<name>``
OUTPUT_COLUMNS = ("key", "url", "width", "height", "source", "caption", "status", "error_message", "downloaded",
                  "http_status", "row", "original_width", "original_height", "sha256")
_FORMATS = (".parquet", ".csv", ".csv.gz", ".tsv", ".tsv.gz")


def file_format(path: Path) -> str | None:
    name = path.name.lower()
    return next((f for f in _FORMATS if name.endswith(f)), None)


def input_files(ucfg: dict, section: str = "urls") -> list[Path]:
    """The input files in reading order; a missing one stops with one line naming the key and the path.
    ``section``: the config section the ``input`` key belongs to (``urls``, ``release``), for the messages."""
    spec = ucfg.get("input")
    specs = [spec] if isinstance(spec, str) else list(spec or [])
    if not specs or specs == [""]:
        raise SourceError(f"config error: {section}.input: not set; give the URL list (.parquet/.csv/.tsv) to download")
    files: list[Path] = []
    for i, s in enumerate(specs):
        key = f"{section}.input" if isinstance(spec, str) else f"{section}.input[{i}]"
        s = str(Path(str(s)).expanduser())
        if any(ch in s for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(s, recursive=True) if file_format(Path(p)))
            if not found:
                raise SourceError(f"config error: {key}: {s} matches no .parquet/.csv/.tsv file")
        else:
            p = require_path(s, key)
            if p.is_dir():
                found = sorted(q for q in p.rglob("*") if q.is_file() and file_format(q))
                if not found:
                    raise SourceError(f"config error: {key}: {p} holds no .parquet/.csv/.tsv file")
            elif file_format(p) is None:
                raise SourceError(f"config error: {key}: {p} is not a .parquet, .csv or .tsv file")
            else:
                found = [p]
        files.extend(found)
    return files


def csv_reader(path: Path, columns: list[str] | None = None):
    delim = "\t" if ".tsv" in path.name.lower() else ","
    parse = pacsv.ParseOptions(delimiter=delim, newlines_in_values=True)
    head = pacsv.open_csv(path, parse_options=parse)
    names = head.schema.names
    head.close()
    types = {n: pa.string() for n in names}  # no type inference: stable across blocks and files
    conv = pacsv.ConvertOptions(column_types=types, include_columns=columns, strings_can_be_null=True)
    return pacsv.open_csv(path, parse_options=parse, convert_options=conv), names


def count_rows(path: Path, cache_dir: str | None = None) -> int:
    """Rows of one input file: parquet metadata, or one streaming pass over a CSV (remembered in
    ``<work_dir>/_counts/`` keyed by path, size and mtime, so each shard does not pass over it again)."""
    if file_format(path) == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    st = path.stat()
    memo = None
    if cache_dir:
        tag = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
        memo = Path(cache_dir) / "_counts" / f"{tag}.txt"
        if memo.exists():
            try:
                return int(memo.read_text())
            except ValueError:
                pass
    reader, _ = csv_reader(path, columns=names_first(path)[:1])
    n = sum(batch.num_rows for batch in reader)
    if memo is not None:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
        tmp.write_text(str(n))
        os.replace(tmp, memo)
    return n


def names_first(path: Path) -> list[str]:
    if file_format(path) == ".parquet":
        return pq.ParquetFile(path).schema_arrow.names
    reader, names = csv_reader(path, columns=[])
    reader.close()
    return names


def count_urls(ucfg: dict) -> int:
    """Number of input rows (all files): parquet metadata, or one streaming pass over a CSV."""
    return sum(count_rows(p, ucfg.get("work_dir")) for p in input_files(ucfg))


def _read_rows(path: Path, lo: int, hi: int, columns: list[str]) -> pd.DataFrame:
    """Rows [lo, hi) of one file (only the row groups / blocks needed)."""
    parts, start = [], 0
    if file_format(path) == ".parquet":
        pf = pq.ParquetFile(path)
        for rg in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if start < hi and start + n > lo:
                t = pf.read_row_group(rg, columns=columns)
                parts.append(t.slice(max(lo - start, 0), min(hi, start + n) - max(lo, start)))
            start += n
            if start >= hi:
                break
    else:
        reader, _ = csv_reader(path, columns=columns)
        for batch in reader:
            n = batch.num_rows
            if start < hi and start + n > lo:
                parts.append(pa.Table.from_batches([batch]).slice(max(lo - start, 0), min(hi, start + n) - max(lo, start)))
            start += n
            if start >= hi:
                break
    frames = [p.to_pandas() for p in parts]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def read_slice(ucfg: dict, lo: int, hi: int) -> tuple[pd.DataFrame, list[str]]:
    """Input rows [lo, hi) with columns ``url``, ``caption``, ``row`` and the kept columns (renamed on clash)."""
    frames, offset, kept_out = [], 0, []
    url_col, cap_col, keep = ucfg["url_column"], ucfg.get("caption_column"), ucfg["keep_columns"]
    for path in input_files(ucfg):
        n = count_rows(path, ucfg.get("work_dir"))
        if offset < hi and offset + n > lo:
            names = names_first(path)
            if url_col not in names:
                raise SourceError(f"config error: urls.url_column: column {url_col!r} is not in {path}; "
                                  f"columns: {', '.join(names[:20])}")
            extra = [c for c in names if c not in (url_col, cap_col)] if keep == "all" else \
                [c for c in keep if c in names and c not in (url_col, cap_col)]
            cols = [url_col] + ([cap_col] if cap_col and cap_col in names else []) + extra
            df = _read_rows(path, max(lo - offset, 0), min(hi, offset + n) - offset, cols)
            df.insert(0, "row", np.arange(max(lo, offset), min(hi, offset + n), dtype=np.int64))
            rename = {url_col: "url"}
            if cap_col and cap_col in names:
                rename[cap_col] = "caption"
            for c in extra:
                rename[c] = f"src_{c}" if c in OUTPUT_COLUMNS else c
            df = df.rename(columns=rename)
            if "caption" not in df:
                df["caption"] = None
            kept_out.extend(rename[c] for c in extra if rename[c] not in kept_out)
            frames.append(df)
        offset += n
        if offset >= hi:
            break
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["row", "url", "caption"])
    return df, kept_out
