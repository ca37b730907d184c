"""URL source (img2dataset) against a real HTTP server on 127.0.0.1: good images, 404/500, slow responses,
redirects (good, to ftp, to an opted-out host, loops), truncated bodies, non-image bytes, oversized bodies
and pixel bombs; opt-out by URL, hash and domain; kill-and-resume; the corpus report's funnel."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, run_stage, tiny_config
from PIL import Image

from facecaption.collect import download as D
from facecaption.collect import opener as O
from facecaption.collect import url_inputs as I
from facecaption.collect import urls as U
from facecaption.collect.common import clean_message
from facecaption.collect.plan import shard_ids
from facecaption.core.optout import OptOut, url_sha256
from facecaption.core.shards import iter_samples, read_parquet


def make_image(n: int, fmt: str = "JPEG", size: tuple[int, int] | None = None) -> bytes:
    w, h = size or (40 + n % 17, 30 + n % 13)
    im = Image.new("RGB", (w, h), ((n * 37) % 256, (n * 91) % 256, (n * 13) % 256))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "Server"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str = "image/jpeg", headers: dict | None = None,
              length: int | None = None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _head(self, code: int, length: int | None) -> bytes:
        lines = [f"HTTP/1.1 {code} OK", "Content-Type: image/jpeg", "Connection: close"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _dribble(self, head: bytes, data: bytes, per_byte: float | None = None, forever: bool = False) -> None:
        """Send ``head`` at once, then ``data`` one byte every ``per_byte`` seconds (then, with ``forever``,
        more bytes) until the client goes away or ``server.trickle_cap_s`` has passed."""
        per_byte = self.server.trickle_s if per_byte is None else per_byte
        end = time.monotonic() + self.server.trickle_cap_s
        i = 0
        try:
            self.wfile.write(head)
            self.wfile.flush()
            while time.monotonic() < end and (forever or i < len(data)):
                self.wfile.write(data[i:i + 1] if i < len(data) else b"\xff")
                self.wfile.flush()
                i += 1
                time.sleep(per_byte)
        except OSError:
            pass
        self.close_connection = True

    def do_GET(self):  # noqa: C901 (one branch per case)
        path = self.path
        self.server.hits[path] += 1
        parts = path.strip("/").split("/")
        kind, arg = parts[0], (parts[1] if len(parts) > 1 else "0")
        n = int("".join(ch for ch in arg if ch.isdigit()) or 0)
        delay = self.server.delays.get(kind, 0.0)
        if delay:
            time.sleep(delay)
        if kind == "img":
            self._send(200, make_image(n))
        elif kind == "png":
            self._send(200, make_image(n, "PNG"), "image/png")
        elif kind == "missing":
            self._send(404, b"not found", "text/plain")
        elif kind == "error":
            self._send(500, b"boom", "text/plain")
        elif kind == "slow":
            time.sleep(self.server.slow_s)
            self._send(200, make_image(n))
        elif kind == "redirect":
            self.send_response(302)
            self.send_header("Location", f"/img/{n}.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "redirect_ftp":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/secret.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "redirect_optout":
            self.send_response(301)
            self.send_header("Location", f"http://optedout.localhost:{self.server.server_port}/img/{n}.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "loop":
            self.send_response(302)
            self.send_header("Location", f"/loop/{n}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "truncated":
            body = make_image(n, size=(200, 150))
            self._send(200, body[: len(body) // 2], length=len(body))
            self.close_connection = True
        elif kind == "notimage":
            self._send(200, b"<html>this is not an image</html>" * 10)
        elif kind == "big":  # announced as too large: never read
            self._send(200, b"", length=50_000_000)
            self.close_connection = True
        elif kind == "bigstream":  # no Content-Length: read until over the cap
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"\xff" * 65536)
            except OSError:
                pass
            self.close_connection = True
        elif kind == "trickle":  # a whole image, one byte at a time: each read is quick, the body takes long
            body = make_image(n)
            self._dribble(self._head(200, len(body)), body)
        elif kind == "trickle_head":  # even the status line and headers arrive one byte at a time
            self._dribble(b"", self._head(200, 0), per_byte=self.server.trickle_head_s)
        elif kind == "endless":  # no Content-Length, a body that never ends (too slow to reach max_bytes)
            self._dribble(self._head(200, None), b"", forever=True)
        elif kind == "bomb":  # small file, many pixels
            self._send(200, self.server.bomb, "image/png")
        elif kind == "noai":
            self._send(200, make_image(n), headers={"X-Robots-Tag": "noai"})
        else:
            self._send(404, b"?", "text/plain")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: Counter = Counter()
        self.delays: dict = {}
        self.slow_s = 3.0
        self.trickle_s = 0.05  # seconds between two bytes of a trickled body (well under urls.timeout)
        self.trickle_head_s = 0.3  # ... of trickled headers
        self.trickle_cap_s = 60.0  # a trickling handler gives up after this long
        buf = io.BytesIO()
        Image.new("L", (2500, 2500)).save(buf, format="PNG")
        self.bomb = buf.getvalue()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):  # requests stay on loopback
        monkeypatch.delenv(var, raising=False)
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


# url path -> expected status (None: a full URL given verbatim)
CASES = [
    ("/img/1.jpg", "success"), ("/png/2.png", "success"), ("/missing/3.jpg", "http_error"),
    ("/img/4.jpg", "success"), ("/error/5", "http_error"), ("/slow/6.jpg", "timeout"),
    ("/redirect/7", "success"), ("/redirect_ftp/8", "unsafe_redirect"), ("/truncated/9.jpg", "truncated"),
    ("/notimage/10", "decode_error"), ("/big/11", "too_large"), ("/bigstream/12", "too_large"),
    ("/bomb/13", "too_many_pixels"), ("/noai/14", "disallowed"), ("/img/15.jpg", "opted_out"),  # by URL
    ("/img/16.jpg", "opted_out"),  # by hash
    ("/redirect_optout/17", "opted_out"), ("/loop/18", "http_error"), ("/img/19.jpg", "success"),
]
VERBATIM = [("ftp://127.0.0.1/x.jpg", "unsafe_scheme"), ("file:///etc/passwd", "unsafe_scheme"),
            ("", "invalid_url"), ("http://optedout.localhost/img/20.jpg", "opted_out"),  # by domain
            ("data:image/png;base64,AAAA", "unsafe_scheme")]


def write_list(srv: Server, folder: Path, fmt: str = "parquet") -> tuple[Path, list[tuple[str, str]]]:
    rows = [(srv.url(p), st) for p, st in CASES] + VERBATIM
    df = pd.DataFrame({"url": [u for u, _ in rows], "caption": [f"caption {i}" for i in range(len(rows))],
                       "face_caption": [f"a face {i}" for i in range(len(rows))],
                       "face_box": [[float(i), 1.0, 2.0, 3.0] for i in range(len(rows))],
                       "status": ["from the input"] * len(rows)})
    path = folder / f"list.{fmt}"
    if fmt == "parquet":
        df.to_parquet(path, row_group_size=7)
    else:
        df.drop(columns=["face_box"]).to_csv(path, index=False)
    return path, rows


def url_config(srv: Server, tmp: Path, list_path: Path, **over) -> dict:
    optout = tmp / "optout.txt"
    optout.write_text(f"# opt-out list\n{srv.url('/img/15.jpg')}\nsha256:{url_sha256(srv.url('/img/16.jpg'))}\n"
                      "optedout.localhost\n")
    urls = {"input": str(list_path), "per_shard": 16, "chunk": 5, "threads": 4, "timeout": 1, "total_timeout": 10,
            "max_bytes": 1_000_000, "max_pixels": 1_000_000, **over}
    return tiny_config(source="urls", urls=urls, optout={"lists": [str(optout)]})


@pytest.mark.parametrize("fmt", ["parquet"])
def test_download_statuses_and_shards(workdir, server, fmt):
    list_path, rows = write_list(server, workdir, fmt)
    cfg = url_config(server, workdir, list_path)
    assert I.count_urls(cfg["urls"]) == len(rows)
    shards = shard_ids(cfg)
    assert shards == ["00000", "00001"]
    for sh in shards:
        assert run_stage("collect", cfg, sh) == 0
    table = read_parquet([f"results/collect/{sh}.parquet" for sh in shards])
    assert list(table["row"]) == list(range(len(rows)))
    assert list(table["url"].fillna("")) == [u for u, _ in rows]
    got = dict(zip(table["url"].fillna(""), table["status"]))
    assert got == {u: st for u, st in rows}, table[["url", "status", "error_message"]].to_string()
    assert set(table["status"]) <= set(U.STATUSES)
    # failures are named, without memory addresses (the same bytes on every run)
    assert table.loc[table.status != "success", "error_message"].notna().all()
    assert not table["error_message"].fillna("").str.contains(" at 0x").any(), table["error_message"].tolist()
    assert set(table.loc[table.url.str.contains("/missing/").fillna(False), "http_status"]) == {404}
    # released columns kept; a clash with an output column is renamed
    assert list(table["face_caption"]) == [f"a face {i}" for i in range(len(rows))]
    assert list(table["src_status"].unique()) == ["from the input"]
    # the shards hold exactly the good images, in row order, decodable, with caption and kept columns
    good = table[table.status == "success"]
    samples = [s for sh in shards for s in iter_samples(f"results/collect/{sh}.tar")]
    assert [s["__key__"] for s in samples] == list(good["key"])
    for s, (_, row) in zip(samples, good.iterrows()):
        im = Image.open(io.BytesIO(s["jpg"]))
        im.load()
        meta = json.loads(s["json"])
        assert (meta["width"], meta["height"]) == im.size == (row.width, row.height)
        assert meta["url"] == row.url and meta["source"] == "urls" and meta["face_caption"] == row.face_caption
        assert meta["face_box"] == list(row.face_box)
        assert s["txt"].decode() == row.caption
    assert good["key"].str.match(r"^\d{5}_\d{5}$").all()
    # opted-out and non-http URLs were never requested; no request left the loopback server
    assert server.hits["/img/15.jpg"] == 0 and server.hits["/img/16.jpg"] == 0 and server.hits["/img/17.jpg"] == 0
    assert read_parquet("results/collect/00000.truth.parquet").empty
    # the work folder is gone once the shard is written (keep_work: false)
    assert not Path("cache/collect/00000").exists()
    # the corpus report shows the funnel
    assert run_stage("report_corpus", cfg) == 0
    metrics = json.loads(Path("results/reports/corpus/metrics.json").read_text())
    fun = metrics["collect_funnel"]
    assert fun["urls"] == len(rows) and fun["kept"] == len(good)
    assert fun["urls"] >= fun["requested"] >= fun["downloaded"] >= fun["decodable"] >= fun["kept"]
    assert fun["opted_out"] == 4
    assert metrics["collect_status"]["success"] == len(good)
    assert Path("results/reports/corpus/tables/collect_funnel.json").exists()


def test_csv_input_and_missing_input(workdir, server, capsys):
    list_path, rows = write_list(server, workdir, "csv")
    cfg = url_config(server, workdir, list_path, per_shard=100)
    assert I.count_urls(cfg["urls"]) == len(rows)
    df, kept = I.read_slice(cfg["urls"], 3, 9)
    assert list(df["row"]) == list(range(3, 9)) and "face_caption" in kept
    cfg["urls"]["input"] = str(workdir / "nope.parquet")
    assert run_stage("collect", cfg, "00000") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"config error: urls.input: {workdir / 'nope.parquet'} does not exist"
    cfg["urls"]["input"] = str(list_path)
    cfg["optout"]["lists"] = ["missing-optout.txt"]
    assert run_stage("collect", cfg, "00000") == 2
    assert "optout.lists[0]: missing-optout.txt does not exist" in capsys.readouterr().err


def test_optout_parsing():
    oo = OptOut.parse(["# comment", "https://Example.COM:443/a.jpg#frag", "domain:bad.org", "evil.net  # trailing",
                       url_sha256("http://x.org/h.jpg"), ""])
    assert oo.blocks("https://example.com/a.jpg")
    assert not oo.blocks("https://example.com/b.jpg")
    assert oo.blocks("http://cdn.bad.org/x.png") and oo.blocks("http://bad.org/x.png")
    assert not oo.blocks("http://notbad.org/x.png")
    assert oo.blocks("http://evil.net/1") and oo.blocks("http://x.org/h.jpg")
    assert not OptOut().blocks("http://x.org/h.jpg")


def test_guarded_opener_refuses_non_http(server):
    op = O.guarded_opener(1000, 5.0, OptOut())
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/x"):
        with pytest.raises(Exception) as exc:
            op.open(url, timeout=1)
        assert "unsafe scheme" in str(exc.value) or "unknown url type" in str(exc.value)


def test_malicious_cache_tar_member_stays_inside(workdir):
    """A tampered chunk tar in the work folder: its ../ member is skipped, nothing written outside."""
    import tarfile

    i2d = workdir / "cache" / "i2d"
    i2d.mkdir(parents=True)
    with tarfile.open(i2d / "00000.tar", "w") as tar:
        for name, data in (("../../escape.jpg", b"x"), ("/tmp/abs.jpg", b"y"), ("000000000.jpg", make_image(1))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pd.DataFrame({"row": [0], "key": ["000000000"], "status": ["success"], "error_message": [None]}).to_parquet(
        i2d / "00000.parquet")
    meta, images = U._chunk_results(i2d, 0)
    assert list(images) == ["000000000"]
    assert not (workdir / "escape.jpg").exists() and not Path("/tmp/abs.jpg").exists()
    assert sorted(p.name for p in i2d.iterdir()) == ["00000.parquet", "00000.tar"]


@pytest.mark.slow
def test_kill_and_resume(workdir, server):
    """Kill the download mid-shard; the rerun refetches no finished chunk and the shard holds every good
    image once."""
    n = 24
    df = pd.DataFrame({"url": [server.url(f"/img/{i}.jpg") for i in range(n)], "caption": [str(i) for i in range(n)]})
    df.to_parquet(workdir / "list.parquet")
    cfg = url_config(server, workdir, workdir / "list.parquet", per_shard=n, chunk=4, threads=2)
    cfg["optout"]["lists"] = []
    server.delays["img"] = 0.25
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "facecaption", "collect", "--cfg", json.dumps(cfg),
                             "--shard", "00000"], cwd=workdir, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    i2d = workdir / "cache/collect/00000/i2d"
    deadline = time.time() + 90
    while time.time() < deadline and not (i2d / "00001_stats.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = [c for c in range(n // 4) if D.chunk_done(i2d, c)]
    assert 2 <= len(done) < n // 4, "the kill should land mid-shard"
    assert not Path("results/collect/00000.tar").exists()
    hits_before = Counter(server.hits)
    server.delays.clear()
    assert run_stage("collect", cfg, "00000") == 0
    finished_urls = [f"/img/{i}.jpg" for c in done for i in range(c * 4, c * 4 + 4)]
    for path in finished_urls:  # finished chunks were not fetched again
        assert server.hits[path] == hits_before[path] == 1
    table = read_parquet("results/collect/00000.parquet")
    assert (table.status == "success").all() and len(table) == n
    keys = [s["__key__"] for s in iter_samples("results/collect/00000.tar")]
    assert keys == [f"00000_{i:05d}" for i in range(n)]
    assert all(server.hits[f"/img/{i}.jpg"] >= 1 for i in range(n))


def test_download_is_deterministic(workdir, server):
    df = pd.DataFrame({"url": [server.url(f"/img/{i}.jpg") for i in range(6)] + [server.url("/missing/1")]})
    df.to_parquet(workdir / "list.parquet")
    cfg = url_config(server, workdir, workdir / "list.parquet", per_shard=10, chunk=3)
    assert run_stage("collect", cfg, "00000") == 0
    first = Path("results/collect/00000.tar").read_bytes(), Path("results/collect/00000.parquet").read_bytes()
    cfg["urls"]["threads"] = 1
    assert run_stage("collect", cfg, "00000") == 0
    assert (Path("results/collect/00000.tar").read_bytes(), Path("results/collect/00000.parquet").read_bytes()) == first


@pytest.mark.parametrize("path", ["/trickle/1.jpg", "/trickle_head/2", "/endless/3"])
def test_total_timeout_bounds_one_download(server, path):
    """The guarded opener ends a download at total_timeout whatever the server does: body or headers one
    byte at a time (no single read stalls past ``timeout``), or a body that never ends."""
    total = 1.0
    opened = False
    t0 = time.monotonic()
    with pytest.raises(O.GuardError) as exc:
        with O.guarded_opener(1_000_000, total, OptOut()).open(server.url(path), timeout=5) as resp:
            opened = True  # the headers arrived: the deadline strikes in the body
            resp.read()
    took = time.monotonic() - t0
    assert opened == (path != "/trickle_head/2")
    assert "deadline" in str(exc.value) and U.classify("failed_to_download", str(exc.value)) == "timeout"
    assert total * 0.9 <= took < 10 * total, took  # without the bound: the whole trickle, 24 to 60 s


def test_total_timeout_bounds_a_trickling_server_in_a_chunk(workdir, server):
    """A chunk with trickling URLs: each is recorded as a timeout with its reason within a few seconds,
    the other URLs of the same chunk are fetched."""
    paths = ["/img/1.jpg", "/trickle/2.jpg", "/img/3.jpg", "/trickle_head/4", "/endless/5", "/png/6.png"]
    pd.DataFrame({"url": [server.url(p) for p in paths]}).to_parquet(workdir / "list.parquet")
    total = 2
    cfg = url_config(server, workdir, workdir / "list.parquet", per_shard=10, chunk=10, threads=6,
                     timeout=1, total_timeout=total)
    cfg["optout"]["lists"] = []
    t0 = time.monotonic()
    assert run_stage("collect", cfg, "00000") == 0
    took = time.monotonic() - t0
    assert took < 10 * total, took  # before the fix: as long as the slowest trickle (60 s)
    table = read_parquet("results/collect/00000.parquet").set_index("url")
    status = {p: table.loc[server.url(p), "status"] for p in paths}
    assert status == {"/img/1.jpg": "success", "/trickle/2.jpg": "timeout", "/img/3.jpg": "success",
                      "/trickle_head/4": "timeout", "/endless/5": "timeout", "/png/6.png": "success"}, status
    for p in ("/trickle/2.jpg", "/trickle_head/4", "/endless/5"):
        msg = table.loc[server.url(p), "error_message"]
        assert "total_timeout" in msg and not table.loc[server.url(p), "downloaded"], (p, msg)
    keys = [s["__key__"] for s in iter_samples("results/collect/00000.tar")]
    assert keys == ["00000_00000", "00000_00002", "00000_00005"]


def test_clean_message():
    assert clean_message("cannot identify image file <_io.BytesIO object at 0x7f3a2b1c0e50>") == \
        "cannot identify image file <_io.BytesIO object>"
    assert clean_message("pointer 0x7f3a2b1c0e50 freed") == "pointer 0x… freed"
    assert clean_message("EXIF tag 0x0112 ignored") == "EXIF tag 0x0112 ignored"  # a short code is no address
    assert clean_message(None) is None and clean_message(float("nan")) is None


def test_planning_imports_no_downloader(workdir):
    """Shard planning (what Snakemake and the CLI do before any job) neither imports img2dataset nor changes
    the environment: only the collect job of the URL source does (facecaption.collect.download)."""
    pd.DataFrame({"url": [f"http://127.0.0.1:1/{i}.jpg" for i in range(7)]}).to_parquet(workdir / "list.parquet")
    cfg = tiny_config(source="urls", urls={"input": str(workdir / "list.parquet"), "per_shard": 3})
    code = (
        "import json, os, sys\n"
        "before = dict(os.environ)\n"
        "from facecaption.collect.plan import shard_ids\n"
        f"ids = shard_ids(json.loads({json.dumps(json.dumps(cfg))}))\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.startswith(('img2dataset', 'wandb', 'albumentations', 'facecaption.collect.download')))\n"
        "print(json.dumps([ids, heavy, dict(os.environ) == before]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for var in ("NO_ALBUMENTATIONS_UPDATE", "WANDB_MODE", "WANDB_SILENT"):
        env.pop(var, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [["00000", "00001", "00002"], [], True]
