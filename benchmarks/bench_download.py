"""Benchmark the URL source: downloads/s from a loopback HTTP server through the whole collect shard
(guarded opener, img2dataset download + re-encode, re-pack into the deterministic shard).

    PYTHONPATH=src python benchmarks/bench_download.py [--n 400] [--threads 16 64] [--processes 1] [--latency 0.02]

Writes benchmarks/results/download.json. The server (ThreadingHTTPServer on 127.0.0.1 only) answers every
request after ``--latency`` seconds with a ~10 KB JPEG, standing in for a remote server's round trip; with
latency the rate is bound by threads x (1 / latency), without it by CPU (decode + re-encode). Timings
include the re-pack; the img2dataset part is reported separately.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _image(n: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(n)
    arr = (rng.random((96, 128, 3)) * 60 + np.linspace(0, 190, 128)[None, :, None]).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def serve(latency: float, images: list[bytes]) -> ThreadingHTTPServer:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            if latency:
                time.sleep(latency)
            n = int(self.path.rsplit("/", 1)[-1].split(".")[0])
            body = images[n % len(images)]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def run_once(n: int, threads: int, processes: int, chunk: int, port: int, work: Path) -> dict:
    import pandas as pd

    from facecaption.cli import main as facecaption_main
    from facecaption.collect import download as D
    from facecaption.core import config as fc_config
    from facecaption.core.shards import read_parquet

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    pd.DataFrame({"url": [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(n)],
                  "caption": [f"image {i}" for i in range(n)]}).to_parquet(work / "list.parquet")
    cfg = fc_config.validate({"source": "urls", "urls": {
        "input": str(work / "list.parquet"), "per_shard": n, "chunk": chunk, "threads": threads,
        "processes": processes, "timeout": 10, "work_dir": str(work / "cache")}})
    cwd = os.getcwd()
    os.chdir(work)
    try:
        timings = {}
        orig = D.download_chunks

        def timed(*a, **kw):
            t = time.perf_counter()
            out = orig(*a, **kw)
            timings["download_s"] = time.perf_counter() - t
            return out

        D.download_chunks = timed
        t0 = time.perf_counter()
        try:  # the collect job, in-process: its outputs from the stage registry, as Snakemake runs it
            assert facecaption_main(["collect", "--cfg", json.dumps(cfg), "--shard", "00000"]) == 0
        finally:
            D.download_chunks = orig
        total = time.perf_counter() - t0
        table = read_parquet("results/collect/00000.parquet")
    finally:
        os.chdir(cwd)
    ok = int((table.status == "success").sum())
    return {"threads": threads, "processes": processes, "chunk": chunk, "urls": n, "success": ok,
            "seconds": round(total, 2), "downloads_per_s": round(n / total, 1),
            "img2dataset_seconds": round(timings.get("download_s", float("nan")), 2),
            "img2dataset_downloads_per_s": round(n / timings["download_s"], 1) if timings.get("download_s") else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--threads", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=200)
    ap.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.05])
    ap.add_argument("--out", default=str(HERE / "results" / "download.json"))
    args = ap.parse_args()
    images = [_image(i) for i in range(16)]
    runs = []
    for latency in args.latency:
        srv = serve(latency, images)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                run_once(20, 4, 1, 10, srv.server_port, Path(tmp) / "warm")  # imports, first-use costs
                for t in args.threads:
                    r = run_once(args.n, t, args.processes, args.chunk, srv.server_port, Path(tmp) / f"t{t}")
                    r["latency_s"] = latency
                    runs.append(r)
                    print(json.dumps(r), flush=True)
        finally:
            srv.shutdown()
            srv.server_close()
    result = {
        "benchmark": "collect.urls: downloads/s from a loopback server through one collect shard",
        "image_bytes_mean": int(sum(map(len, images)) / len(images)),
        "runs": runs,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "note": "2 shared cores; latency = server-side sleep per request (stands in for a remote round trip)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
