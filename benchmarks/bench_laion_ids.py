"""Benchmark the LAION-Face ID join (facecaption.collect.laion_ids): speed and peak memory of joining a LAION-400M
style metadata part with a LAION-Face sized ID set.

    PYTHONPATH=src python benchmarks/bench_laion_ids.py [--rows 1000000] [--ids 50000000] [--pth-ids 50000000]

Writes benchmarks/results/laion_ids.json. Generated data: one metadata part of ``--rows`` rows with LAION-400M's
columns (SAMPLE_ID in shuffled order, URL ~70 chars, TEXT ~55 chars, HEIGHT, WIDTH, LICENSE, NSFW, similarity;
snappy, pyarrow's default row groups), and an ID set of ``--ids`` IDs (.npy) of which 12 % of the part's rows are
members (LAION-Face: 50M of 413M rows). Each measurement runs in its own process and reports its own peak RSS:

* ``load_npy``: loading and de-duplicating the ID set only;
* ``part``: streaming the part alone (after loading the ID set, not timed): rows/s of the join itself;
* ``join``: the whole tool (ID set + streaming the part + writing the output part + summary), as the CLI runs it;
* ``rerun``: the same again: the ID set from the tool's cache (``<out>/.ids-*.npz``), the part finished (skipped:
  its matched IDs are read back from the output);
* ``load_pth``: FaRL's format, ``--pth-ids`` IDs as a torch-saved list of 32 lists of Python ints (the Python
  objects dominate its peak; 0 skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from facecaption.collect import laion_ids as L
what, arg = sys.argv[1], json.loads(sys.argv[2])
t1 = time.perf_counter()
if what == "load":
    ids = L.load_ids(arg)
    extra = {"ids_unique": int(len(ids.ids)), "ids_listed": ids.listed}
elif what == "part":  # the streaming alone: one part joined against the loaded ID set
    from pathlib import Path
    ids = L.load_ids(arg["ids"]).ids
    t_load = time.perf_counter()
    src = sorted(Path(arg["metadata"]).glob("*.parquet"))[0]
    r = L.join_part(src, Path(arg["out"]) / "part.parquet", ids, L._mapping(arg["columns"]), arg["batch_size"], "bench")
    extra = {"rows": r.rows, "matched": r.matched, "untimed_load_seconds": round(t_load - t1, 2)}
else:
    s = L.join(arg)
    extra = {k: s[k] for k in ("metadata_rows", "metadata_rows_matched", "ids_matched", "ids_unmatched")}
t2 = time.perf_counter()
seconds = t2 - (t_load if what == "part" else t1)
# VmHWM: this process's own peak (ru_maxrss would carry the parent's peak over fork + exec)
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(json.dumps({"seconds": round(seconds, 2), "import_seconds": round(t1 - t0, 2),
                  "peak_rss_mb": round(hwm / 1024, 1), **extra}))
"""

MAKE_PTH = r"""
import sys, numpy as np, torch
n, path = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(1)
ids = rng.choice(np.int64(4_200_000_000), size=n, replace=False)
torch.save([ids[k::32].tolist() for k in range(32)], path)
"""


def child(what: str, arg, env) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, what, json.dumps(arg)], capture_output=True, text=True, env=env,
                          check=False)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_part(path: Path, rows: int, ids_total: int, seed: int = 0) -> tuple:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    sample_id = np.cumsum(rng.integers(1, 20, size=rows)).astype(np.int64) + 10_000_000
    rng.shuffle(sample_id)
    sid = pa.array(sample_id).cast(pa.string())
    host = pa.array((sample_id % 997).astype(np.int64)).cast(pa.string())
    url = pc.binary_join_element_wise("https://images.example", host, ".com/uploads/2019/07/photo-", sid, ".jpg", "")
    text = pc.binary_join_element_wise("a portrait photo of a smiling person, number ", sid, " in the gallery", "")
    table = pa.table({
        "SAMPLE_ID": sample_id, "URL": url, "TEXT": text,
        "HEIGHT": pa.array(rng.integers(200, 1200, size=rows), pa.int32()),
        "WIDTH": pa.array(rng.integers(200, 1200, size=rows), pa.int32()),
        "LICENSE": pa.array(["?"] * rows), "NSFW": pa.array(["UNLIKELY"] * rows),
        "similarity": rng.uniform(0.3, 0.45, size=rows),
    })
    pq.write_table(table, path, compression="snappy")
    members = rng.choice(sample_id, size=int(rows * 0.12), replace=False)
    others = np.int64(5_000_000_000) + rng.choice(np.int64(10 * ids_total), size=ids_total - len(members), replace=False)
    return np.concatenate([members, others]), pq.ParquetFile(path).metadata.num_row_groups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--ids", type=int, default=50_000_000)
    ap.add_argument("--pth-ids", type=int, default=50_000_000)
    ap.add_argument("--out", default=str(HERE / "results" / "laion_ids.json"))
    args = ap.parse_args()
    import numpy as np

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory(prefix="laion_ids_bench_") as tmp:
        tmp = Path(tmp)
        (tmp / "meta").mkdir()
        t = time.perf_counter()
        ids, row_groups = make_part(tmp / "meta" / "part-00000-bench-c000.snappy.parquet", args.rows, args.ids)
        np.save(tmp / "ids.npy", ids)
        del ids
        build = round(time.perf_counter() - t, 1)
        lcfg = {"ids": str(tmp / "ids.npy"), "metadata": str(tmp / "meta"), "out": str(tmp / "urls"),
                "summary": str(tmp / "summary.json"), "batch_size": 131072,
                "columns": {"sample_id": "SAMPLE_ID", "url": "URL", "caption": "TEXT", "width": "WIDTH", "height": "HEIGHT",
                            "nsfw": "NSFW", "license": "LICENSE", "similarity": "similarity"}}
        runs = {"load_npy": child("load", str(tmp / "ids.npy"), env)}
        runs["part"] = child("part", {**lcfg, "out": str(tmp / "part")}, env)
        runs["part"]["rows_per_s"] = int(args.rows / max(runs["part"]["seconds"], 1e-3))
        runs["join"] = child("join", lcfg, env)
        runs["rerun"] = child("join", lcfg, env)
        sizes = {"metadata_part_mb": round((tmp / "meta" / "part-00000-bench-c000.snappy.parquet").stat().st_size / 2**20, 1),
                 "output_part_mb": round(sum(p.stat().st_size for p in (tmp / "urls").glob("*.parquet")) / 2**20, 1),
                 "ids_npy_mb": round((tmp / "ids.npy").stat().st_size / 2**20, 1)}
        if args.pth_ids:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", MAKE_PTH, str(args.pth_ids), str(tmp / "ids.pth")], check=True, env=env)
            pth_build = round(time.perf_counter() - t, 1)
            runs["load_pth"] = child("load", str(tmp / "ids.pth"), env)
            runs["load_pth"]["file_mb"] = round((tmp / "ids.pth").stat().st_size / 2**20, 1)
            runs["load_pth"]["build_seconds"] = pth_build
    laion_rows = 413_000_000
    part_s = runs["part"]["seconds"]
    result = {
        "benchmark": "collect.laion_ids: LAION-Face IDs joined with one LAION-400M style metadata part",
        "rows": args.rows, "row_groups": row_groups, "ids": args.ids, "pth_ids": args.pth_ids, "member_rate": 0.12,
        "build_seconds": build, "sizes": sizes, "runs": runs,
        "projection_laion400m": {
            "rows": laion_rows,
            "hours_streaming": round(laion_rows / args.rows * part_s / 3600, 2),
            "note": "one process, parts in sequence: the ID set is loaded once, then every part streams at the rate above",
        },
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "note": "2 shared cores (other jobs running: see loadavg); peak RSS per process (VmHWM), including the Python "
                "interpreter, numpy and pyarrow (~80 MB)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
