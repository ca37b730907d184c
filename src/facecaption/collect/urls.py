"""The URL source: image URLs from a parquet/CSV list, downloaded with img2dataset into the collect shards.

Input (``urls.input``): LAION-Face's URL lists, the released FaceCaption-15M parquet, or any table with a URL
column and optionally a caption column. Rows are numbered across the input files in sorted order; collect
shard ``i`` covers rows ``[i*per_shard, (i+1)*per_shard)`` (``workflow.shard_ids`` counts the rows with
:func:`count_urls`, from parquet metadata or one streaming pass over a CSV).

For one shard:

1. read the shard's rows; rows whose URL is empty, not ``http``/``https``, or opted out get their final
   status now and are never requested;
2. split the rest into chunks of ``urls.chunk`` consecutive rows and download the chunks with img2dataset
   (webdataset output, its multiprocessing / pyspark / ray distributor) into ``<work_dir>/<shard>/``. A chunk
   is finished when img2dataset wrote its ``_stats.json``; a killed job resumes there and fetches no finished
   chunk again. Every request goes through a guarded opener: only http/https (redirects included), opt-out
   checked on every redirect target, bodies over ``max_bytes`` dropped, a total time limit per download
   (``total_timeout``: every socket operation gets the time left as its timeout, so it holds whatever the
   server does);
   image area and aspect limits are img2dataset's;
3. re-pack the chunks into ``results/collect/<shard>.tar`` (key ``<shard>_<row in shard>``, fixed order and
   mtime) and ``<shard>.parquet`` with one row per input row: ``status`` is one of :data:`STATUSES`,
   ``error_message`` the raw error, ``downloaded`` whether a body arrived; input columns named by
   ``urls.keep_columns`` (e.g. the released face box and face caption) are kept in the parquet and json.

Nothing else is contacted: wandb is never started (img2dataset's logger process is not used), and
albumentations' version check is switched off.

Past one machine
----------------
* Several machines, one Snakemake: collect is a local rule for this source (compute nodes often have no
  internet), so shards download on the machine running Snakemake, ``--cores`` of them at a time, each with
  ``urls.processes`` x ``urls.threads`` connections. Later stages run on the cluster as usual.
* ``urls.distributor: pyspark`` (pinned pyspark and Java 17+; :mod:`facecaption.collect.spark` starts a
  session on ``urls.spark_master``, ``local[2]`` by default, or ``spark://host:7077`` / ``yarn`` on a cluster,
  and stops it with the job; an active SparkSession is reused) or ``ray`` (``pip install ray``; ``ray.init``
  connects to the running cluster, e.g. ``RAY_ADDRESS``) spread the chunks of each shard over the cluster's
  workers; ``urls.work_dir`` must then be on a filesystem every worker sees. Raise ``per_shard`` so one shard
  has many chunks.
* Resumption works the same in every mode: a chunk is done when its ``_stats.json`` exists.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import http.client
import io
import os
import json
import logging
import math
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from facecaption import workflow as W
from facecaption.collect import SourceError, require_path
from facecaption.core.optout import OptOut

log = logging.getLogger(__name__)

# img2dataset imports albumentations (which asks PyPI for a newer version) and wandb: keep both offline, here
# and in spawned download processes (they inherit the environment).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

SOURCE = "urls"
ALLOWED_SCHEMES = ("http", "https")
#: every status a row of the collect parquet can have
STATUSES = ("success", "invalid_url", "unsafe_scheme", "opted_out", "http_error", "timeout", "connection_error",
            "truncated", "too_large", "unsafe_redirect", "disallowed", "decode_error", "too_many_pixels",
            "too_small", "bad_aspect_ratio", "hash_mismatch", "not_downloaded")
#: statuses of rows whose body arrived (the "downloaded" step of the funnel)
DOWNLOADED = ("success", "decode_error", "too_many_pixels", "too_small", "bad_aspect_ratio")
OUTPUT_COLUMNS = ("key", "url", "width", "height", "source", "caption", "status", "error_message", "downloaded",
                  "http_status", "row", "original_width", "original_height", "sha256")
_FORMATS = (".parquet", ".csv", ".csv.gz", ".tsv", ".tsv.gz")
_MARK = "facecaption:"  # prefix of the errors our guarded opener raises


# -- input -----------------------------------------------------------------------------------------------------
def _fmt(path: Path) -> str | None:
    name = path.name.lower()
    return next((f for f in _FORMATS if name.endswith(f)), None)


def input_files(ucfg: dict) -> list[Path]:
    """The input files in reading order; a missing one stops with one line naming the key and the path."""
    spec = ucfg.get("input")
    specs = [spec] if isinstance(spec, str) else list(spec or [])
    if not specs or specs == [""]:
        raise SourceError("config error: urls.input: not set; give the URL list (.parquet/.csv/.tsv) to download")
    files: list[Path] = []
    for i, s in enumerate(specs):
        key = "urls.input" if isinstance(spec, str) else f"urls.input[{i}]"
        s = str(Path(str(s)).expanduser())
        if any(ch in s for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(s, recursive=True) if _fmt(Path(p)))
            if not found:
                raise SourceError(f"config error: {key}: {s} matches no .parquet/.csv/.tsv file")
        else:
            p = require_path(s, key)
            if p.is_dir():
                found = sorted(q for q in p.rglob("*") if q.is_file() and _fmt(q))
                if not found:
                    raise SourceError(f"config error: {key}: {p} holds no .parquet/.csv/.tsv file")
            elif _fmt(p) is None:
                raise SourceError(f"config error: {key}: {p} is not a .parquet, .csv or .tsv file")
            else:
                found = [p]
        files.extend(found)
    return files


def _csv_reader(path: Path, columns: list[str] | None = None):
    delim = "\t" if ".tsv" in path.name.lower() else ","
    parse = pacsv.ParseOptions(delimiter=delim, newlines_in_values=True)
    head = pacsv.open_csv(path, parse_options=parse)
    names = head.schema.names
    head.close()
    types = {n: pa.string() for n in names}  # no type inference: stable across blocks and files
    conv = pacsv.ConvertOptions(column_types=types, include_columns=columns, strings_can_be_null=True)
    return pacsv.open_csv(path, parse_options=parse, convert_options=conv), names


def _count(path: Path, cache_dir: str | None = None) -> int:
    """Rows of one input file: parquet metadata, or one streaming pass over a CSV (remembered in
    ``<work_dir>/_counts/`` keyed by path, size and mtime, so each shard does not pass over it again)."""
    if _fmt(path) == ".parquet":
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
    reader, _ = _csv_reader(path, columns=names_first(path)[:1])
    n = sum(batch.num_rows for batch in reader)
    if memo is not None:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
        tmp.write_text(str(n))
        os.replace(tmp, memo)
    return n


def names_first(path: Path) -> list[str]:
    if _fmt(path) == ".parquet":
        return pq.ParquetFile(path).schema_arrow.names
    reader, names = _csv_reader(path, columns=[])
    reader.close()
    return names


def count_urls(ucfg: dict) -> int:
    """Number of input rows (all files): parquet metadata, or one streaming pass over a CSV."""
    return sum(_count(p, ucfg.get("work_dir")) for p in input_files(ucfg))


def _read_rows(path: Path, lo: int, hi: int, columns: list[str]) -> pd.DataFrame:
    """Rows [lo, hi) of one file (only the row groups / blocks needed)."""
    parts, start = [], 0
    if _fmt(path) == ".parquet":
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
        reader, _ = _csv_reader(path, columns=columns)
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
        n = _count(path, ucfg.get("work_dir"))
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


def precheck(url, optout: OptOut) -> tuple[str | None, str | None]:
    """(status, message) for a URL that must not be requested, else (None, None)."""
    if url is None or (isinstance(url, float) and math.isnan(url)) or not str(url).strip():
        return "invalid_url", "empty URL"
    url = str(url).strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        return "invalid_url", str(exc)
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return "unsafe_scheme", f"scheme {parts.scheme or '(none)'!r} is not http or https"
    if not host:
        return "invalid_url", "no host"
    if optout.blocks(url):
        return "opted_out", "in the opt-out list"
    return None, None


# -- the guarded opener (runs inside img2dataset's download threads) ----------------------------------------------
class GuardError(urllib.error.URLError):
    def __str__(self) -> str:
        return f"{_MARK} {self.reason}"


_DEADLINE_ATTR = "_facecaption_deadline"  # on each Request: (monotonic time its download must end by, total_timeout)


def _deadline_error(total: float | None = None) -> GuardError:
    limit = f" ({total:g} s)" if total else ""
    return GuardError(f"deadline: download took longer than total_timeout{limit} (timed out)")


def _budget(deadline: float, stall: float | None, total: float | None = None) -> float | None:
    """The socket timeout for the next operation: the time left before ``deadline``, at most ``stall`` (the
    per-operation ``timeout``); raises the deadline error once no time is left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _deadline_error(total)
    if left == math.inf:  # no deadline (an opener without the guard)
        return stall
    return left if stall is None else min(stall, left)


class _DeadlineReader(io.RawIOBase):
    """The socket stream of one response, read in pieces of at most one ``recv`` each; before each piece the
    socket timeout is set to the time left before the deadline, so no read can outlast it (a server trickling
    its headers or body one byte at a time is stopped at the deadline, not after the whole body)."""

    def __init__(self, fp, sock, deadline: float, stall: float | None, total: float | None = None):
        super().__init__()
        self._fp, self._sock, self._deadline, self._stall, self._total = fp, sock, deadline, stall, total

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self._sock.settimeout(_budget(self._deadline, self._stall, self._total))
        try:
            return self._fp.readinto1(b)
        except (TimeoutError, socket.timeout):
            if time.monotonic() >= self._deadline:
                raise _deadline_error(self._total) from None
            raise

    def close(self) -> None:
        if not self.closed:
            self._fp.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """An HTTP response whose status line, headers and body are all read through :class:`_DeadlineReader`."""

    def __init__(self, sock, *args, deadline: float, stall: float | None, total: float | None = None, **kw):
        super().__init__(sock, *args, **kw)
        self.fp = io.BufferedReader(_DeadlineReader(self.fp, sock, deadline, stall, total))


class _DeadlineConnection:
    """Mixin for http.client connections: connect, TLS handshake, sending and every read end by the
    request's deadline (the per-operation ``timeout`` still applies within it)."""

    def __init__(self, *args, deadline: tuple[float, float | None] = (math.inf, None), **kw):
        super().__init__(*args, **kw)
        self._deadline, self._total = deadline
        self._stall = self.timeout if isinstance(self.timeout, (int, float)) else socket.getdefaulttimeout()
        self.response_class = functools.partial(_DeadlineResponse, deadline=self._deadline, stall=self._stall,
                                                total=self._total)

    def _left(self) -> float | None:
        return _budget(self._deadline, self._stall, self._total)

    def send(self, data):
        if self.sock is not None:
            self.sock.settimeout(self._left())
        return super().send(data)


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    def connect(self):
        self.timeout = self._left()
        super().connect()


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    def connect(self):  # http.client.HTTPSConnection.connect, with the handshake bounded by the deadline
        self.timeout = self._left()
        http.client.HTTPConnection.connect(self)
        self.sock.settimeout(self._left())  # the whole handshake (CPython's ssl applies it as one deadline)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._tunnel_host or self.host)


def _deadline_of(req) -> tuple[float, float | None]:
    """(deadline, total_timeout) of a request; no deadline for one that did not pass the guard."""
    return getattr(req, _DEADLINE_ATTR, None) or (math.inf, None)


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(functools.partial(_DeadlineHTTPConnection, deadline=_deadline_of(req)), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        kw = {"context": self._context}
        if getattr(self, "_check_hostname", None) is not None:  # Python < 3.12
            kw["check_hostname"] = self._check_hostname
        return self.do_open(functools.partial(_DeadlineHTTPSConnection, deadline=_deadline_of(req)), req, **kw)


class _Capped:
    """A response whose ``read()`` stops past ``max_bytes`` or ``deadline`` and notices a short body."""

    def __init__(self, resp, max_bytes: int, deadline: float, total: float | None = None):
        self._resp, self._max, self._deadline, self._total = resp, max_bytes, deadline, total

    def __getattr__(self, name):
        return getattr(self._resp, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._resp.close()

    def __iter__(self):
        return iter(self._resp)

    def read(self, amt=None):
        if amt is not None:
            return self._resp.read(amt)
        chunks, total = [], 0
        while True:
            if time.monotonic() > self._deadline:
                raise _deadline_error(self._total)
            b = self._resp.read(65536)  # each socket read inside is bounded by the deadline (_DeadlineReader)
            if not b:
                break
            total += len(b)
            if total > self._max:
                raise GuardError(f"too large: body over max_bytes ({self._max})")
            chunks.append(b)
        left = getattr(self._resp, "length", None)
        if left:  # the server closed before Content-Length bytes arrived
            raise GuardError(f"IncompleteRead: truncated body, {total} bytes read, {left} more expected")
        return b"".join(chunks)


class _Guard(urllib.request.BaseHandler):
    handler_order = 1001  # after HTTPErrorProcessor: sees only responses that are kept

    def __init__(self, max_bytes: int, total_timeout: float, optout: OptOut):
        self.max_bytes, self.total_timeout, self.optout = max_bytes, total_timeout, optout

    def _check(self, req):
        url = req.full_url
        if urlsplit(url).scheme.lower() not in ALLOWED_SCHEMES:
            raise GuardError(f"unsafe scheme: {url[:100]}")
        if self.optout.blocks(url):
            raise GuardError(f"opted out: {url[:100]}")
        if getattr(req, _DEADLINE_ATTR, None) is None:  # a new download (a redirect carries its deadline on)
            setattr(req, _DEADLINE_ATTR, (time.monotonic() + self.total_timeout, self.total_timeout))
        return req

    http_request = https_request = _check

    def http_response(self, req, resp):
        length = resp.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > self.max_bytes:
            resp.close()
            raise GuardError(f"too large: Content-Length {length} over max_bytes ({self.max_bytes})")
        if isinstance(resp, _Capped):
            return resp
        return _Capped(resp, self.max_bytes, *_deadline_of(req))

    https_response = http_response


class _SafeRedirect(urllib.request.HTTPRedirectHandler):
    max_redirections = 5

    def __init__(self, optout: OptOut):
        self.optout = optout

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        from urllib.parse import urljoin  # noqa: PLC0415

        target = urljoin(req.full_url, newurl)
        if urlsplit(target).scheme.lower() not in ALLOWED_SCHEMES:
            raise GuardError(f"unsafe redirect to {target[:100]}")
        if self.optout.blocks(target):
            raise GuardError(f"opted out: redirect to {target[:100]}")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:  # the redirect is part of the same download: same deadline
            setattr(new, _DEADLINE_ATTR, _deadline_of(req))
        return new


def guarded_opener(max_bytes: int, total_timeout: float, optout: OptOut) -> urllib.request.OpenerDirector:
    """An opener that speaks only http/https (no ftp, file or data handlers) and applies the limits.

    ``total_timeout`` bounds each ``open`` + ``read`` as a whole, redirects included, whatever the server
    does: the deadline is set when the request is opened, and the connect, the TLS handshake, sending the
    request and every socket read (status line, headers, body) get the time left as their socket timeout
    (at most the per-operation ``timeout`` given to ``open``). Name resolution (DNS) is not bounded by it.
    """
    op = urllib.request.OpenerDirector()
    for h in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), _DeadlineHTTPHandler(),
              _DeadlineHTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(), _SafeRedirect(optout),
              urllib.request.HTTPErrorProcessor(), _Guard(max_bytes, total_timeout, optout)):
        op.add_handler(h)
    return op


def _downloader_class():
    from img2dataset.downloader import Downloader  # noqa: PLC0415 (heavy import, only when downloading)

    class GuardedDownloader(Downloader):
        """img2dataset's Downloader with every request through :func:`guarded_opener`."""

        def __init__(self, guard: dict, **kw):
            super().__init__(**kw)
            self.guard = guard

        def __call__(self, row):
            previous = urllib.request._opener
            urllib.request.install_opener(guarded_opener(**self.guard))
            try:
                return super().__call__(row)
            finally:
                urllib.request._opener = previous

    return GuardedDownloader


def __getattr__(name):
    """``GuardedDownloader`` is built on first use (keeps ``import facecaption.collect.urls`` light, no
    img2dataset/wandb import at DAG-build time) and is a module attribute so spawn/pyspark/ray workers unpickle it."""
    if name == "GuardedDownloader":
        cls = _downloader_class()
        cls.__module__, cls.__qualname__ = __name__, "GuardedDownloader"
        globals()["GuardedDownloader"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _guarded_downloader_cls():
    return globals().get("GuardedDownloader") or __getattr__("GuardedDownloader")


# -- status --------------------------------------------------------------------------------------------------------
def classify(i2d_status: str | None, message: str | None) -> str:
    """Our status for one img2dataset result (``status``, ``error_message``)."""
    m = message or ""
    low = m.lower()
    if i2d_status == "success":
        return "success"
    if i2d_status == "failed_to_resize":
        if "area too large" in low:
            return "too_many_pixels"
        if "too small" in low:
            return "too_small"
        if "aspect ratio" in low:
            return "bad_aspect_ratio"
        return "decode_error"
    if i2d_status is None:
        return "not_downloaded"
    if _MARK in m:
        for needle, status in (("opted out", "opted_out"), ("unsafe redirect", "unsafe_redirect"),
                               ("unsafe scheme", "unsafe_scheme"), ("too large", "too_large"),
                               ("deadline", "timeout"), ("incompleteread", "truncated")):
            if needle in low:
                return status
    if "x-robots-tag" in low:
        return "disallowed"
    if "hash mismatch" in low:
        return "hash_mismatch"
    if m.startswith("HTTP Error"):
        return "http_error"
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if "incompleteread" in low or "incomplete read" in low:
        return "truncated"
    if "unknown url type" in low:
        return "unsafe_scheme"
    return "connection_error"


def _http_status(message: str | None) -> int | None:
    m = re.match(r"HTTP Error (\d{3})", message or "")
    return int(m.group(1)) if m else None


# -- download ------------------------------------------------------------------------------------------------------
def _settings(ucfg: dict) -> dict:
    """The settings that change what a chunk holds (a change restarts the shard's download)."""
    return {k: ucfg[k] for k in ("chunk", "resize_mode", "image_size", "encode_quality", "skip_reencode",
                                 "max_pixels", "min_image_size", "max_aspect_ratio", "max_bytes",
                                 "respect_robots_headers", "user_agent_token")}


def _prepare_work(work: Path, df: pd.DataFrame, ucfg: dict) -> None:
    """Start ``work`` afresh unless it belongs to the same rows and settings (then it is resumed)."""
    digest = hashlib.sha256()
    for r, u in zip(df["row"].tolist(), df["url"].tolist()):
        digest.update(f"{r}\t{u}\n".encode("utf-8", "replace"))
    manifest = {"rows": digest.hexdigest(), "settings": _settings(ucfg)}
    path = work / "manifest.json"
    if path.exists():
        try:
            same = json.loads(path.read_text()) == manifest
        except ValueError:
            same = False
        if same:
            return
        log.info("%s: rows or settings changed, starting the download afresh", work)
        shutil.rmtree(work)
    (work / "i2d").mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, sort_keys=True))


def chunk_done(i2d: Path, chunk: int) -> bool:
    name = f"{chunk:05d}"
    return all((i2d / f"{name}{ext}").exists() for ext in ("_stats.json", ".parquet", ".tar"))


def download_chunks(work: Path, todo: pd.DataFrame, ucfg: dict, optout: OptOut) -> list[int]:
    """Download with img2dataset every unfinished chunk of ``todo`` (columns row_in_shard, row, url).

    Returns the chunk ids that were run. A chunk's feather input is written only when it is about to run.
    """
    from img2dataset.distributor import multiprocessing_distributor, pyspark_distributor  # noqa: PLC0415
    from img2dataset.resizer import Resizer  # noqa: PLC0415
    from img2dataset.writer import WebDatasetSampleWriter  # noqa: PLC0415

    i2d, tmp = work / "i2d", work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    size = ucfg["chunk"]
    chunks = todo["row_in_shard"].to_numpy() // size
    pending = [int(c) for c in np.unique(chunks) if not chunk_done(i2d, int(c))]
    if not pending:
        return []
    jobs = []
    for c in pending:
        part = todo[chunks == c]
        table = pa.table({"row": pa.array(part["row"].to_numpy(), pa.int64()),
                          "url": pa.array(part["url"].astype(str).str.strip().tolist(), pa.string())})
        feather = tmp / f"{c}.feather"
        with pa.OSFile(str(feather), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
            writer.write_table(table)
        jobs.append((c, str(feather)))

    resizer = Resizer(image_size=ucfg["image_size"], resize_mode=ucfg["resize_mode"],
                      resize_only_if_bigger=False, upscale_interpolation="lanczos", downscale_interpolation="area",
                      encode_quality=ucfg["encode_quality"], encode_format="jpg",
                      skip_reencode=ucfg["skip_reencode"], disable_all_reencoding=False,
                      min_image_size=ucfg["min_image_size"], max_image_area=float(ucfg["max_pixels"]),
                      max_aspect_ratio=float(ucfg["max_aspect_ratio"]), blurrer=None)
    directives = ["noai", "noimageai", "noindex", "noimageindex"] if ucfg["respect_robots_headers"] else None
    downloader = _guarded_downloader_cls()(
        guard={"max_bytes": ucfg["max_bytes"], "total_timeout": float(ucfg["total_timeout"]), "optout": optout},
        sample_writer_class=WebDatasetSampleWriter, resizer=resizer, thread_count=ucfg["threads"],
        save_caption=False, extract_exif=False, output_folder=str(i2d), column_list=["row", "url"],
        timeout=ucfg["timeout"], number_sample_per_shard=size, oom_shard_count=5, compute_hash="sha256",
        verify_hash_type=None, encode_format="jpg", retries=ucfg["retries"],
        user_agent_token=ucfg.get("user_agent_token"), disallowed_header_directives=directives)

    dist, procs = ucfg["distributor"], ucfg["processes"]
    t0 = time.perf_counter()
    if dist == "multiprocessing" and procs == 1:  # in this process: no spawn, a kill loses only chunks in flight
        failed = [job for job in jobs if not downloader(job)[0]]
        if failed:
            failed = [job for job in failed if not downloader(job)[0]]
        if failed:
            raise RuntimeError(f"img2dataset failed on chunks {[c for c, _ in failed]} of {work}")
    elif dist == "multiprocessing":
        multiprocessing_distributor(procs, downloader, jobs, None, 1)
    elif dist == "pyspark":
        from facecaption.collect.spark import spark_session  # noqa: PLC0415

        with spark_session(ucfg, work):  # started (or reused) here, so img2dataset's distributor reuses it
            pyspark_distributor(procs, downloader, jobs, 1000, 1)
    else:
        try:
            from img2dataset.distributor import ray_distributor  # noqa: PLC0415
        except ImportError:
            raise SourceError("config error: urls.distributor: ray is not installed (pip install ray)") from None
        ray_distributor(procs, downloader, jobs, None, 1)
    missing = [c for c in pending if not chunk_done(i2d, c)]
    if missing:
        raise RuntimeError(f"img2dataset left chunks {missing} of {work} unfinished; run again to resume")
    log.info("%s: %d chunks downloaded in %.1f s", work, len(pending), time.perf_counter() - t0)
    return pending


# -- re-pack ---------------------------------------------------------------------------------------------------------
def _jsonable(v):
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, (pd.Timestamp,)):
        return v.isoformat()
    if v is pd.NaT or v is pd.NA:
        return None
    return v


def empty_truth() -> pd.DataFrame:
    """The truth table's columns with zero rows (real sources have no ground truth)."""
    from facecaption.synthface.render import DRAWABLE  # noqa: PLC0415

    schema = pa.schema([("key", pa.string()), ("face", pa.int64()), *[(c, pa.float64()) for c in ("x0", "y0", "x1", "y1")],
                        ("landmarks", pa.list_(pa.float64())), ("identity", pa.int64()), ("degrade", pa.string()),
                        ("tiny", pa.bool_()), *[(a, pa.bool_()) for a in DRAWABLE]])
    return schema.empty_table()


def _chunk_results(i2d: Path, chunk: int) -> tuple[pd.DataFrame, dict[str, bytes]]:
    from facecaption.core.shards import iter_samples  # noqa: PLC0415 (webdataset is slow to import)
    name = f"{chunk:05d}"
    meta = pq.read_table(i2d / f"{name}.parquet").to_pandas()
    ok_keys = set(meta.loc[meta["status"] == "success", "key"])
    images: dict[str, bytes] = {}
    errors: list = []
    for sample in iter_samples(i2d / f"{name}.tar", errors):  # never extracted: member paths cannot escape
        if sample["__key__"] in ok_keys and "jpg" in sample:
            images[sample["__key__"]] = sample["jpg"]
    for e in errors:
        log.warning("chunk %s: %s: %s", name, e["key"], e["reason"])
    return meta, images


def collect_shard(cfg: dict, shard: str) -> None:
    from facecaption.core.shards import ShardWriter, write_parquet  # noqa: PLC0415

    ucfg = cfg["urls"]
    tar_path, parquet_path, truth_path = W.stage_outs("collect", shard)
    optout = OptOut.from_config(cfg.get("optout"))
    per = ucfg["per_shard"]
    lo = int(shard) * per
    df, kept = read_slice(ucfg, lo, lo + per)
    df["row_in_shard"] = df["row"] - lo
    checks = [precheck(u, optout) for u in df["url"].tolist()]
    df["status"] = [c[0] for c in checks]
    df["error_message"] = [c[1] for c in checks]
    todo = df[df["status"].isna()]

    work = Path(ucfg["work_dir"]) / shard
    _prepare_work(work, df[["row", "url"]].astype({"url": str}), ucfg)
    if len(todo):
        download_chunks(work, todo, ucfg, optout)

    size, i2d = ucfg["chunk"], work / "i2d"
    out_rows = []
    meta_cols = ["width", "height", "original_width", "original_height", "sha256"]
    with ShardWriter(tar_path) as writer:
        chunk_of = df["row_in_shard"].to_numpy() // size
        for c in np.unique(chunk_of) if len(df) else []:
            part = df[chunk_of == c]
            results, images = (_chunk_results(i2d, int(c)) if part["status"].isna().any()
                               else (pd.DataFrame(columns=["row", "key", "status", "error_message"]), {}))
            by_row = {int(r.row): r for r in results.itertuples(index=False)}
            for rec in part.to_dict("records"):
                key = f"{shard}_{int(rec['row_in_shard']):05d}"
                url = rec["url"] if isinstance(rec["url"], str) else None
                caption = rec["caption"] if isinstance(rec["caption"], str) else ""
                out = {"key": key, "url": url, "width": None, "height": None, "source": SOURCE, "caption": caption,
                       "status": rec["status"], "error_message": rec["error_message"], "downloaded": False,
                       "http_status": None, "row": int(rec["row"]), "original_width": None,
                       "original_height": None, "sha256": None}
                if out["status"] is None:
                    res = by_row.get(int(rec["row"]))
                    i2d_status = getattr(res, "status", None)
                    msg = getattr(res, "error_message", None)
                    status = classify(i2d_status, msg)
                    out.update(status=status, error_message=msg if status != "success" else None,
                               downloaded=status in DOWNLOADED, http_status=_http_status(msg))
                    if i2d_status is not None:
                        for col in meta_cols:
                            v = getattr(res, col, None)
                            out[col] = None if v is None or (isinstance(v, float) and math.isnan(v)) else \
                                (int(v) if col != "sha256" else v)
                    if status == "success":
                        jpg = images.get(res.key)
                        if jpg is None:
                            out.update(status="decode_error", error_message="image missing from the chunk tar")
                        elif optout.blocks(url):  # an entry added after this chunk was downloaded
                            out.update(status="opted_out", error_message="in the opt-out list (after download)")
                        elif ucfg["skip_reencode"] and not _decodes(jpg):
                            out.update(status="decode_error", error_message="kept bytes do not decode")
                        else:
                            extra = {k: _jsonable(rec.get(k)) for k in kept}
                            writer.write({"__key__": key, "jpg": jpg, "txt": caption,
                                          "json": {"key": key, "url": url, "width": out["width"],
                                                   "height": out["height"], "source": SOURCE, **extra}})
                out.update({k: rec.get(k) for k in kept})
                out_rows.append(out)
    table = pd.DataFrame(out_rows, columns=[*OUTPUT_COLUMNS, *kept])
    for col in ("width", "height", "http_status", "original_width", "original_height"):
        table[col] = table[col].astype("Int64")
    table["downloaded"] = table["downloaded"].astype(bool)
    for col in ("url", "caption", "status", "error_message", "sha256", "key", "source"):
        table[col] = table[col].astype(object).where(table[col].notna(), None)
    write_parquet(table, parquet_path)
    write_parquet(empty_truth(), truth_path)
    counts = table["status"].value_counts().to_dict()
    log.info("shard %s: %d URLs, %d written; %s", shard, len(table), int((table.status == "success").sum()), counts)
    if not ucfg["keep_work"]:
        shutil.rmtree(work, ignore_errors=True)


def _decodes(data: bytes) -> bool:
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 (any decoder error means: not decodable)
        return False


def funnel(images: pd.DataFrame) -> dict:
    """URLs → requested → downloaded → decodable → kept, from collect parquet rows (urls or folder source).

    requested: not stopped before the download (invalid URL, unsafe scheme, opt-out); downloaded: a body
    arrived; decodable: it decoded to an image within the limits; kept: written to the shard (after the
    second opt-out check)."""
    status = images["status"].fillna("not_downloaded")
    downloaded = (images["downloaded"].fillna(False).astype(bool) if "downloaded" in images
                  else status == "success")
    stopped = status.isin(["invalid_url", "unsafe_scheme"]) | ((status == "opted_out") & ~downloaded)
    decodable = downloaded & images["width"].notna() & ~status.isin(["decode_error", "too_many_pixels",
                                                                     "too_small", "bad_aspect_ratio"])
    return {"urls": int(len(images)), "requested": int((~stopped).sum()), "downloaded": int(downloaded.sum()),
            "decodable": int(decodable.sum()), "kept": int((status == "success").sum()),
            "opted_out": int((status == "opted_out").sum())}
