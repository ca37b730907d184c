"""LAION-Face IDs -> URL parquet parts: FaRL's list of LAION-400M sample IDs joined with the LAION-400M metadata.

LAION-Face (FaRL, github.com/FacePerceiver/LAION-Face) is released as the SAMPLE_IDs of the LAION-400M rows whose
image holds a face (``laion_face_ids.pth``: a torch-saved list of 32 per-part lists), not as URLs. This step joins
that list with the LAION-400M metadata parts the user has on disk (``part-000NN-*.parquet``: SAMPLE_ID, URL, TEXT,
HEIGHT, WIDTH, LICENSE, NSFW, similarity) and writes one output part per metadata part, holding the matching rows
in their metadata order with columns ``sample_id, url, caption, width, height, nsfw, license, similarity``
(``laion_ids.columns``) and ``meta_row`` (the row in the metadata part). The URL source reads that folder as it
is (``urls.input: <out>``, ``urls.url_column: url``, ``urls.caption_column: caption``).

* Memory: the ID set is loaded once as a sorted unique int64 array (50M IDs: 400 MB, plus a 50 MB "found" mask);
  loading FaRL's .pth unpickles Python lists first (a few GB at 50M IDs, once). Each metadata part is streamed in
  batches of ``laion_ids.batch_size`` rows, reading only the named columns; matching is ``np.searchsorted``.
* Resumable: an output part is written to a temporary file and renamed when complete; it carries a fingerprint
  (the ID set's sha256, the column mapping, the metadata part's name and size), and a rerun skips every part
  whose output has the same fingerprint (so a changed ID list or mapping redoes them). The same inputs give the
  same bytes (row groups of 65536 rows, whatever the batch size).
* Accounting (the summary JSON, ``laion_ids.summary``): IDs listed, duplicate IDs in the list, IDs matched and
  unmatched (no metadata row in the parts given: first ones listed, and per FaRL part list when the file has
  them), metadata rows read, matched and not in the list, rows with no ID, and metadata rows whose ID an earlier
  row already matched (duplicates on the metadata side: all such rows are kept).

IDs are matched across all parts given (FaRL's own script matches list ``k`` against part ``k`` only; the two
agree unless a SAMPLE_ID occurs in two parts, which the metadata duplicate count shows).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facecaption.core.config import ConfigError, SourceError
from facecaption.core.shards import atomic_path

log = logging.getLogger(__name__)

TOOL = "laion-face-urls"
ROW_GROUP = 65536
EXAMPLES = 10
FINGERPRINT_KEY = b"facecaption.laion_ids"
GET_IDS = ("get LAION-Face's ID list laion_face_ids.pth from https://huggingface.co/datasets/FacePerceiver/laion-face "
           "(see github.com/FacePerceiver/LAION-Face)")
GET_METADATA = ("get the LAION-400M metadata parts (part-000NN-*.parquet) from "
                "https://the-eye.eu/public/AI/cah/laion400m-met-release/laion400m-meta/ or the Hugging Face dataset "
                "laion/laion400m")
ID_FORMATS = (".pth", ".pt", ".npy", ".txt", ".txt.gz", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet")




# -- the ID list --------------------------------------------------------------------------------------------------
@dataclass
class Ids:
    """The ID set: ``ids`` sorted, unique int64; ``groups`` the list each ID was first listed in (FaRL's file holds
    one list per LAION-400M part), or None for a flat list."""

    ids: np.ndarray
    listed: int
    duplicates: int = 0
    duplicate_examples: list[int] = field(default_factory=list)
    groups: np.ndarray | None = None
    group_sizes: list[int] | None = None

    def sha256(self) -> str:
        return hashlib.sha256(memoryview(np.ascontiguousarray(self.ids)).cast("B")).hexdigest()


def _fmt(path: Path, formats) -> str | None:
    name = path.name.lower()
    return next((f for f in formats if name.endswith(f)), None)


def _unreadable(path: Path, why) -> SourceError:
    text = str(why).strip().splitlines()
    return SourceError(f"{TOOL}: cannot read {path} as a list of LAION sample IDs (laion_ids.ids): "
                       f"{text[0] if text else type(why).__name__}")


def _int64(values: np.ndarray, path: Path) -> np.ndarray:
    values = np.asarray(values).reshape(-1)
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.floor(values)):
        return values.astype(np.int64)
    if len(values) == 0:
        return values.astype(np.int64)
    raise _unreadable(path, f"the IDs are {values.dtype}, not integers")


def _torch_ids(path: Path) -> list[np.ndarray]:
    """FaRL's .pth: a tensor, a list of ints, or a list of per-part lists / tensors / numpy arrays. Loaded with
    ``weights_only=True``; numpy arrays and scalars are allowed through (they are data, not code)."""
    import torch  # noqa: PLC0415  (only for .pth: heavy)

    core = np._core.multiarray
    allowed = [core._reconstruct, np.ndarray, np.dtype, core.scalar, (core._reconstruct, "numpy.core.multiarray._reconstruct"),
               (core.scalar, "numpy.core.multiarray.scalar"), *(type(np.dtype(t)) for t in ("i8", "i4", "u8", "u4", "f8", "O"))]
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unpickling failure is the file's)
        raise _unreadable(path, str(exc).split("\n")[-1] if "Unsupported global" not in str(exc) else
                          next(ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln)) from None

    def flat(x) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            return _int64(x.numpy(), path)
        if isinstance(x, np.ndarray):
            return _int64(x, path)
        if isinstance(x, (list, tuple, set)):
            return _int64(np.fromiter((int(v) for v in x), dtype=np.int64, count=len(x)), path)
        raise _unreadable(path, f"found a {type(x).__name__}, not a list or tensor of IDs")

    if isinstance(obj, dict):
        obj = [obj[k] for k in sorted(obj)]
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(x, (list, tuple, set, np.ndarray, torch.Tensor))
                                                      for x in obj):
        obj, out = list(obj), []
        try:
            for i in range(len(obj)):  # each list's Python ints freed once converted: they dominate the peak
                out.append(flat(obj[i]))
                obj[i] = None
        except (TypeError, ValueError) as exc:
            raise _unreadable(path, exc) from None
        return out
    try:
        return [flat(obj)]
    except (TypeError, ValueError) as exc:
        raise _unreadable(path, exc) from None


def _table_column(table: pa.Table, path: Path, id_column: str) -> np.ndarray:
    names = table.column_names
    pick = next((c for c in ("sample_id", id_column, "SAMPLE_ID", "id") if c in names), None)
    if pick is None and len(names) == 1:
        pick = names[0]
    if pick is None:
        raise SourceError(f"{TOOL}: no sample ID column in {path} (laion_ids.ids): looked for sample_id, {id_column}; "
                          f"columns: {', '.join(names[:20])}")
    col = table.column(pick)
    if col.null_count:
        raise _unreadable(path, f"column {pick!r} has {col.null_count} empty values")
    return _int64(col.to_numpy(), path)


def _text_ids(path: Path, fmt: str, id_column: str) -> np.ndarray:
    import pyarrow.csv as pacsv  # noqa: PLC0415

    if fmt.startswith(".txt"):
        with (gzip.open(path, "rb") if fmt.endswith(".gz") else open(path, "rb")) as f:
            first = f.readline(4096).decode("utf-8", "replace").strip()
        header = bool(first) and not first.lstrip("+-").isdigit()
        ropts = pacsv.ReadOptions(column_names=["sample_id"], skip_rows=1 if header else 0)
        popts = pacsv.ParseOptions(delimiter="\x1f")  # one ID per line
        conv = pacsv.ConvertOptions(column_types={"sample_id": pa.int64()})
    else:
        ropts, conv = pacsv.ReadOptions(), pacsv.ConvertOptions()
        popts = pacsv.ParseOptions(delimiter="\t" if fmt.startswith(".tsv") else ",")
    table = pacsv.read_csv(path, read_options=ropts, parse_options=popts, convert_options=conv)
    return _table_column(table, path, id_column)


def load_ids(path_spec: str, id_column: str = "SAMPLE_ID", cache_dir: Path | None = None) -> Ids:
    """Load the ID list once: sorted unique int64 IDs, how many entries were listed and which repeat. With
    ``cache_dir``, the result is kept there (``.ids-<key>.npz``, keyed by the file's path, size and mtime), so a
    rerun does not unpickle FaRL's .pth again (minutes at 50M IDs)."""
    ids = None
    if cache_dir is not None and str(path_spec or "").strip() and Path(str(path_spec)).expanduser().is_file():
        path = Path(str(path_spec)).expanduser()
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{id_column}".encode()).hexdigest()[:24]
        cache = Path(cache_dir) / f".ids-{key}.npz"
        if cache.exists():
            try:
                with np.load(cache, allow_pickle=False) as z:
                    ids = Ids(ids=z["ids"], listed=int(z["listed"]), duplicates=int(z["duplicates"]),
                              duplicate_examples=[int(v) for v in z["duplicate_examples"]],
                              groups=z["groups"] if int(z["grouped"]) else None,
                              group_sizes=[int(v) for v in z["group_sizes"]] if int(z["grouped"]) else None)
                log.info("%s: the ID set of %s from %s", TOOL, path, cache)
                return ids
            except (OSError, ValueError, KeyError):
                log.warning("%s: unreadable ID cache %s: loading %s again", TOOL, cache, path)
        ids = _load_ids(path_spec, id_column)
        for old in Path(cache_dir).glob(".ids-*.npz"):
            old.unlink(missing_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=ids.ids, listed=ids.listed, duplicates=ids.duplicates,
                     duplicate_examples=np.array(ids.duplicate_examples, dtype=np.int64),
                     grouped=int(ids.groups is not None),
                     groups=ids.groups if ids.groups is not None else np.zeros(0, np.uint8),
                     group_sizes=np.array(ids.group_sizes or [], dtype=np.int64))
        return ids
    return _load_ids(path_spec, id_column)


def _load_ids(path_spec: str, id_column: str) -> Ids:
    if not str(path_spec or "").strip():
        raise SourceError(f"config error: laion_ids.ids: not set; {GET_IDS}")
    path = Path(str(path_spec)).expanduser()
    if not path.exists():
        raise SourceError(f"config error: laion_ids.ids: {path} does not exist; {GET_IDS}")
    if path.is_dir():
        raise SourceError(f"config error: laion_ids.ids: {path} is a folder; give the ID file ({', '.join(ID_FORMATS)})")
    fmt = _fmt(path, ID_FORMATS)
    if fmt is None:
        raise SourceError(f"config error: laion_ids.ids: {path} is not one of {', '.join(ID_FORMATS)}")
    try:
        if fmt in (".pth", ".pt"):
            parts = _torch_ids(path)
        elif fmt == ".npy":
            parts = [_int64(np.load(path, allow_pickle=False), path)]
        elif fmt == ".parquet":
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            cols = [c for c in ("sample_id", id_column, "SAMPLE_ID", "id") if c in names][:1] or names[:1]
            parts = [_table_column(pf.read(columns=cols), path, id_column)]
        else:
            parts = [_text_ids(path, fmt, id_column)]
    except SourceError:
        raise
    except (OSError, ValueError, pa.ArrowException, EOFError) as exc:
        raise _unreadable(path, exc) from None
    return _dedupe(parts)


def _dedupe(parts: list[np.ndarray]) -> Ids:
    listed = sum(len(p) for p in parts)
    if len(parts) > 1:
        values = np.concatenate(parts)
        labels = np.repeat(np.arange(len(parts), dtype=np.uint16), [len(p) for p in parts])
        ids, first = np.unique(values, return_index=True)  # stable: the first listing of each ID
        groups = labels[first].astype(np.uint8 if len(parts) < 256 else np.uint16)
        del labels, first
        values.sort()
    else:
        values = parts[0] if parts[0].flags.writeable else parts[0].copy()
        values.sort()  # in place: ours (np.load / conversion), no second 400 MB copy
        ids = None
        groups = None
    repeat = values[1:][values[1:] == values[:-1]] if len(values) > 1 else values[:0]
    examples = [int(v) for v in np.unique(repeat[: EXAMPLES * 4])[:EXAMPLES]]
    if ids is None:
        keep = np.ones(len(values), dtype=bool)
        if len(values) > 1:
            keep[1:] = values[1:] != values[:-1]
        ids = values[keep] if len(repeat) else values
    return Ids(ids=ids, listed=listed, duplicates=listed - len(ids), duplicate_examples=examples, groups=groups,
               group_sizes=[len(p) for p in parts] if len(parts) > 1 else None)


# -- the metadata parts ---------------------------------------------------------------------------------------------
def metadata_files(spec) -> list[Path]:
    """The metadata parts in reading order (sorted, each once); a missing one stops with one line."""
    specs = [spec] if isinstance(spec, str) else list(spec or [])
    if not specs or all(not str(s).strip() for s in specs):
        raise SourceError(f"config error: laion_ids.metadata: not set; {GET_METADATA}")
    found: list[Path] = []
    for i, s in enumerate(specs):
        key = "laion_ids.metadata" if isinstance(spec, str) else f"laion_ids.metadata[{i}]"
        s = str(Path(str(s)).expanduser())
        if any(ch in s for ch in "*?["):
            hits = sorted(Path(p) for p in glob.glob(s, recursive=True) if p.lower().endswith(".parquet"))
            if not hits:
                raise SourceError(f"config error: {key}: {s} matches no .parquet file; {GET_METADATA}")
        else:
            p = Path(s)
            if not p.exists():
                raise SourceError(f"config error: {key}: {p} does not exist; {GET_METADATA}")
            if p.is_dir():
                hits = sorted(q for q in p.rglob("*.parquet") if q.is_file() and not q.name.startswith("."))
                if not hits:
                    raise SourceError(f"config error: {key}: {p} holds no .parquet file; {GET_METADATA}")
            elif not p.name.lower().endswith(".parquet"):
                raise SourceError(f"config error: {key}: {p} is not a .parquet file; {GET_METADATA}")
            else:
                hits = [p]
        found.extend(hits)
    seen, out = set(), []
    for p in sorted(found, key=str):
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            out.append(p)
    return out


def output_name(part: Path) -> str:
    name = part.name
    return (name[: -len(".parquet")] if name.lower().endswith(".parquet") else name) + ".parquet"


def _mapping(columns: dict) -> dict[str, str]:
    """output column -> metadata column, sample_id and url first, nulls left out."""
    cols = {k: v for k, v in (columns or {}).items() if v}
    for need in ("sample_id", "url"):
        if need not in cols:
            raise ConfigError(f"config error: laion_ids.columns.{need}: not set; name the metadata's {need} column")
    if "meta_row" in cols:
        raise ConfigError("config error: laion_ids.columns.meta_row: reserved (the row in the metadata part)")
    rest = [k for k in cols if k not in ("sample_id", "url", "caption")]
    return {k: cols[k] for k in ["sample_id", "url", *(["caption"] if "caption" in cols else []), *rest]}


def _id_values(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The ID column as int64 and a validity mask (nulls, NaN, fractions and non-numbers are not IDs)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    valid = col.is_valid()
    t = col.type
    if pa.types.is_integer(t):
        vals = pc.fill_null(col, 0).cast(pa.int64()).to_numpy(zero_copy_only=False)
        return vals, valid.to_numpy(zero_copy_only=False)
    if pa.types.is_floating(t):
        f = pc.fill_null(col, np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
        ok = np.isfinite(f) & (f == np.floor(f)) & (np.abs(f) < 2**63)
        return np.where(ok, f, 0).astype(np.int64), ok
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        s = pc.utf8_trim_whitespace(col)
        ok = pc.fill_null(pc.match_substring_regex(s, r"^[+-]?\d{1,18}$"), False)
        vals = pc.if_else(ok, s, "0").cast(pa.int64()).to_numpy(zero_copy_only=False)
        return vals, ok.to_numpy(zero_copy_only=False)
    raise TypeError(str(t))


def _match(ids: np.ndarray, values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose ID is in ``ids`` (mask) and each matched row's position in ``ids``."""
    if not len(ids):
        return np.zeros(len(values), dtype=bool), np.zeros(0, dtype=np.int64)
    pos = np.searchsorted(ids, values)
    np.minimum(pos, len(ids) - 1, out=pos)
    hit = (ids[pos] == values) & valid
    return hit, pos[hit]


def _out_schema(src: pa.Schema, mapping: dict[str, str]) -> pa.Schema:
    fields = []
    for out, col in mapping.items():
        if out == "sample_id":
            t = pa.int64()
        elif out in ("url", "caption"):
            t = pa.string()
        else:
            t = src.field(col).type
            t = pa.string() if pa.types.is_large_string(t) else t
        fields.append(pa.field(out, t))
    return pa.schema([*fields, pa.field("meta_row", pa.int64())])


@dataclass
class PartResult:
    rows: int
    matched: int
    null_ids: int
    positions: np.ndarray  # the matched rows' positions in the ID set, in row order


def _fingerprint(ids_sha: str, mapping: dict, part: Path) -> str:
    return json.dumps({"ids_sha256": ids_sha, "columns": mapping, "metadata": part.name, "size": part.stat().st_size},
                      sort_keys=True, separators=(",", ":"))


def _finished(dst: Path, fingerprint: str) -> dict | None:
    """The stats stored in a finished output part whose fingerprint matches, else None."""
    if not dst.exists():
        return None
    try:
        meta = pq.read_metadata(dst).metadata or {}  # the file's key-value metadata
        stored = json.loads(meta.get(FINGERPRINT_KEY, b"{}"))
    except (OSError, ValueError, pa.ArrowException):
        return None
    return stored if stored.get("fingerprint") == fingerprint else None


def _check_columns(src: Path, names: list[str], mapping: dict[str, str]) -> None:
    for out, col in mapping.items():
        if col not in names:
            raise SourceError(f"{TOOL}: column {col!r} (laion_ids.columns.{out}) is not in {src}; "
                              f"columns: {', '.join(names[:30])}")


def check_parts(parts: list[Path], mapping: dict[str, str]) -> None:
    """Every part readable and holding the named columns (its footer only), before the ID list is loaded."""
    for src in parts:
        try:
            names = pq.read_schema(src).names
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"{TOOL}: cannot read metadata part {src}: {str(exc).splitlines()[0]}") from None
        _check_columns(src, names, mapping)


def join_part(src: Path, dst: Path, ids: np.ndarray, mapping: dict[str, str], batch_size: int,
              fingerprint: str) -> PartResult:
    """Stream one metadata part, keep the rows whose ID is listed, write them (row order kept) atomically."""
    try:
        pf = pq.ParquetFile(src)
        names = pf.schema_arrow.names
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{TOOL}: cannot read metadata part {src}: {str(exc).splitlines()[0]}") from None
    _check_columns(src, names, mapping)
    read = list(dict.fromkeys(mapping.values()))
    schema = _out_schema(pf.schema_arrow, mapping)
    id_col = mapping["sample_id"]
    rows = matched = nulls = 0
    positions: list[np.ndarray] = []
    pending: list[pa.Table] = []
    pending_rows = 0
    with atomic_path(dst) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        try:
            def flush(final: bool) -> None:
                nonlocal pending, pending_rows
                if not pending or (pending_rows < ROW_GROUP and not final):
                    return
                table = pa.concat_tables(pending)
                start = 0
                while table.num_rows - start >= ROW_GROUP or (final and start < table.num_rows):
                    writer.write_table(table.slice(start, ROW_GROUP), row_group_size=ROW_GROUP)
                    start += ROW_GROUP
                rest = table.slice(start)
                pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

            for batch in pf.iter_batches(batch_size=batch_size, columns=read, use_threads=True):
                try:
                    values, valid = _id_values(batch.column(id_col))
                except TypeError:
                    raise SourceError(f"{TOOL}: column {id_col!r} (laion_ids.columns.sample_id) in {src} is "
                                      f"{batch.schema.field(id_col).type}, not an integer ID") from None
                nulls += int(len(valid) - valid.sum())
                hit, pos = _match(ids, values, valid)
                if len(pos):
                    idx = np.flatnonzero(hit)
                    take = pa.array(idx)
                    arrays = []
                    for out, col in mapping.items():
                        if out == "sample_id":
                            arrays.append(pa.array(values[idx], pa.int64()))
                        else:
                            arrays.append(batch.column(col).take(take).cast(schema.field(out).type))
                    arrays.append(pa.array(idx.astype(np.int64) + rows, pa.int64()))
                    pending.append(pa.Table.from_arrays(arrays, schema=schema))
                    pending_rows += len(idx)
                    positions.append(pos)
                    matched += len(idx)
                    flush(False)
                rows += batch.num_rows
            flush(True)
            stats = {"fingerprint": fingerprint, "rows": rows, "matched": matched, "null_ids": nulls}
            writer.add_key_value_metadata({FINGERPRINT_KEY.decode(): json.dumps(stats, sort_keys=True)})
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"{TOOL}: cannot read metadata part {src}: {str(exc).splitlines()[0]}") from None
        finally:
            writer.close()
    return PartResult(rows, matched, nulls, np.concatenate(positions) if positions else np.zeros(0, np.int64))


def _positions_of(dst: Path, ids: np.ndarray) -> np.ndarray:
    values = pq.read_table(dst, columns=["sample_id"]).column("sample_id").to_numpy()
    _, pos = _match(ids, values.astype(np.int64), np.ones(len(values), dtype=bool))
    return pos


# -- the step -------------------------------------------------------------------------------------------------------
def join(lcfg: dict) -> dict:
    """Join the ID list with every metadata part into ``lcfg["out"]``; write and return the summary."""
    mapping = _mapping(lcfg.get("columns") or {})
    out = Path(str(lcfg["out"])).expanduser()
    inside = out.resolve()
    parts = [p for p in metadata_files(lcfg.get("metadata")) if inside not in p.resolve().parents]  # not our own output
    if not parts:
        raise SourceError(f"config error: laion_ids.metadata: every part given is inside laion_ids.out ({out}); {GET_METADATA}")
    names = [output_name(p) for p in parts]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        clash = [str(p) for p, n in zip(parts, names) if n == dup]
        raise SourceError(f"{TOOL}: metadata parts {clash[0]} and {clash[1]} would both write {out / dup}; "
                          f"give parts with distinct file names (laion_ids.metadata)")
    check_parts(parts, mapping)
    out.mkdir(parents=True, exist_ok=True)
    ids = load_ids(lcfg.get("ids"), mapping["sample_id"], cache_dir=out)
    log.info("%s: %d IDs listed, %d unique, from %s", TOOL, ids.listed, len(ids.ids), lcfg.get("ids"))
    sha = ids.sha256()
    found = np.zeros(len(ids.ids), dtype=bool)
    meta_dups: list[int] = []
    totals = {"rows": 0, "matched": 0, "null_ids": 0}
    per_part = []
    out.mkdir(parents=True, exist_ok=True)
    for src, name in zip(parts, names):
        dst = out / name
        fp = _fingerprint(sha, mapping, src)
        stored = _finished(dst, fp)
        if stored is not None:
            log.info("%s: %s finished before (%d of %d rows matched): skipped", TOOL, dst, stored["matched"], stored["rows"])
            res = PartResult(stored["rows"], stored["matched"], stored["null_ids"], _positions_of(dst, ids.ids))
        else:
            res = join_part(src, dst, ids.ids, mapping, int(lcfg.get("batch_size") or 131072), fp)
            log.info("%s: %s: %d of %d rows matched -> %s", TOOL, src.name, res.matched, res.rows, dst)
        uniq, counts = np.unique(res.positions, return_counts=True)
        again = uniq[found[uniq] | (counts > 1)]
        if len(again) and len(meta_dups) < EXAMPLES:
            meta_dups.extend(int(v) for v in ids.ids[again[: EXAMPLES - len(meta_dups)]])
        found[uniq] = True
        for k in totals:
            totals[k] += getattr(res, k)
        per_part.append({"metadata": src.name, "output": name, "rows": res.rows, "matched": res.matched,
                         "null_ids": res.null_ids})
    stale = sorted(p.name for p in out.glob("*.parquet") if p.name not in set(names))
    for name in stale:
        log.warning("%s: %s is in %s but no metadata part given writes it; the URL source will read it too: remove it "
                    "if it is from another run", TOOL, name, out)
    n_found = int(found.sum())
    missing = np.flatnonzero(~found)
    summary = {
        "ids": str(lcfg.get("ids")),
        "ids_listed": ids.listed,
        "ids_unique": int(len(ids.ids)),
        "ids_duplicates": ids.duplicates,
        "ids_duplicate_examples": ids.duplicate_examples,
        "ids_sha256": sha,
        "ids_matched": n_found,
        "ids_unmatched": int(len(missing)),
        "ids_unmatched_examples": [int(v) for v in ids.ids[missing[:EXAMPLES]]],
        "metadata_parts": len(parts),
        "metadata_rows": totals["rows"],
        "metadata_rows_matched": totals["matched"],
        "metadata_rows_not_listed": totals["rows"] - totals["matched"],
        "metadata_rows_without_id": totals["null_ids"],
        "metadata_duplicate_rows": totals["matched"] - n_found,
        "metadata_duplicate_examples": meta_dups,
        "out": str(lcfg["out"]),
        "columns": [*mapping, "meta_row"],
        "parts": per_part,
        "stale_outputs": stale,
    }
    if ids.groups is not None:
        summary["id_lists"] = [{"list": i, "listed": n, "unmatched": int(u)} for i, (n, u) in enumerate(
            zip(ids.group_sizes, np.bincount(ids.groups[missing], minlength=len(ids.group_sizes)), strict=True))]
    path = Path(str(lcfg["summary"])).expanduser()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def run(cfg: dict, args) -> int:
    """``facecaption laion-face-urls``: the ``laion_ids`` config section, overridden by --ids / --metadata / --out."""
    lcfg = dict(cfg["laion_ids"])
    for key in ("ids", "metadata", "out"):
        value = getattr(args, key, None)
        if value:
            lcfg[key] = value
    try:
        summary = join(lcfg)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{TOOL}: {summary['metadata_rows_matched']} URLs from {summary['metadata_parts']} metadata parts into "
          f"{summary['out']}; IDs matched {summary['ids_matched']} of {summary['ids_unique']}, unmatched "
          f"{summary['ids_unmatched']}; summary {lcfg['summary']}", file=sys.stderr)
    return 0


# -- for the rule (rules/laion_face.smk) ---------------------------------------------------------------------------
RUNTIME_KEYS = ("batch_size",)


def rule_inputs(lcfg: dict) -> dict[str, object]:
    """The rule's named inputs: the ID file and the metadata parts. A missing or unset one stops Snakemake with
    the one line the tool would print (raised as Snakemake's WorkflowError where Snakemake is there)."""
    try:
        parts = metadata_files(lcfg.get("metadata"))
        ids = str(lcfg.get("ids") or "")
        if not ids.strip() or not Path(ids).expanduser().exists():
            load_ids(ids)  # raises the one-line error
    except ConfigError as exc:
        try:
            from snakemake.exceptions import WorkflowError  # noqa: PLC0415
        except ImportError:  # pragma: no cover
            raise exc from None
        raise WorkflowError(str(exc)) from None
    return {"ids": str(Path(ids).expanduser()), "metadata": [str(p) for p in parts]}


def rule_keys(lcfg: dict) -> tuple[str, str]:
    """(rerun key, runtime key) as JSON for ``--cfg`` / ``--runtime``: batch_size changes no output."""
    key = {k: v for k, v in lcfg.items() if k not in RUNTIME_KEYS}
    run_ = {k: v for k, v in lcfg.items() if k in RUNTIME_KEYS}
    dump = lambda d: json.dumps({"laion_ids": d}, sort_keys=True, separators=(",", ":"))  # noqa: E731
    return dump(key), dump(run_)
