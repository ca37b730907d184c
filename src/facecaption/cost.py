"""The cost of the real thing: CPU-hours, GPU-hours, storage and wall time for 50M URLs → 15M faces.

Rates come from the benchmark result files (the ``benchmarks`` input, ``benchmarks/results/*.json``, written by
``benchmarks/*.py`` with the machine they ran on); counts from the paper's funnel (quoted); bytes per item from
this run's shards (the ``images``, ``crops`` and ``pairs`` inputs: bytes on disk over the samples they hold).
Each row says whether its rate was **measured** (and where) or is **projected**/quoted.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from facecaption.core import reference
from facecaption.core.config import StageConfig
from facecaption.core.report import Report
from facecaption.core.stage import StageIO


def _load(bench: Path, name: str) -> dict:
    path = Path(bench) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _first(data: dict, *paths: str):
    """The first value found at any dotted path in ``data``."""
    for p in paths:
        node = data
        for part in p.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                node = None
                break
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            return float(node)
    return None


def _faces_rate(data: dict) -> tuple[float | None, str]:
    runs = [r for r in data.get("runs", []) if "skipped" not in r]
    for backend in ("insightface", "centerface"):
        for size in (640, 256):
            for r in runs:
                if r.get("backend") == backend and r.get("size") == size:
                    return float(r["stage_images_per_s_per_core"]), f"{backend}, {size} px"
    return None, ""


def _samples(tar: Path) -> int:
    """Distinct sample keys of a tar shard, from its member headers (no data read)."""
    keys = set()
    try:
        with tarfile.open(tar) as t:
            for m in t:
                if m.isfile():
                    base = m.name.rsplit("/", 1)[-1]
                    keys.add(m.name[: len(m.name) - len(base)] + base.split(".", 1)[0])
    except (tarfile.TarError, OSError):
        pass
    return len(keys)


def bytes_per_item(shards: list[str]) -> float | None:
    """Bytes on disk per stored sample over the tar ``shards`` (None when they hold none)."""
    files = [Path(p) for p in shards if Path(p).exists()]
    total, items = sum(f.stat().st_size for f in files), sum(_samples(f) for f in files)
    return total / items if items and total else None


def projection(cfg: dict, bench: Path, shards: dict[str, list[str]]) -> dict:
    """The projected cost: rates from the benchmark results in ``bench``, bytes per item from this run's
    ``shards`` (``{"images": collect tars, "crops": faces tars, "pairs": caption tars}``)."""
    cost = cfg["cost"]
    urls = cost["urls"]
    scale = urls / reference.FUNNEL[0][1]
    images = int(urls * 0.75)  # the paper: ~75 % of LAION-Face URLs still reachable
    faces_aligned = int(reference.FUNNEL[2][1] * scale)
    faces_final = int(reference.FUNNEL[3][1] * scale)
    machine = {}
    rows = []

    def add(stage, items, rate, unit, how, basis):
        hours = items / rate / 3600 if rate else None
        rows.append({"stage": stage, "items": items, "unit": unit, "rate_per_core": rate, "cpu_hours": hours,
                     "how": how, "basis": basis})

    dl = _load(bench, "download")
    slow = [r for r in dl.get("runs", []) if r.get("latency_s", 0) > 0 and r.get("downloads_per_s")]
    dl_rate = max(r["downloads_per_s"] for r in slow) / 2 if slow else None  # the benchmark machine: 2 cores
    add("collect (download)", urls, dl_rate, "URLs", "projected",
        "best loopback rate with 50 ms latency per request, per core of a 2-core machine; a real crawl is network-bound")
    fr, fdesc = _faces_rate(_load(bench, "faces"))
    add("faces (detect + align)", images, fr, "images", "measured rate" if fr else "not measured", fdesc)
    at = _load(bench, "attributes")
    add("attributes (predict)", faces_aligned, _first(at, "resnet50_224_faces_per_s_per_core"),
        "faces", "measured rate" if at else "not measured",
        "ResNet-50 at 224 px on one CPU core; on a GPU this stage is far cheaper" if at else "")
    cp = _load(bench, "captions")
    add("captions (grammar)", faces_final, _first(cp, "stage_captions_per_s_cpu", "captions_per_s_cpu"),
        "faces", "measured rate" if cp else "not measured", "one core")
    qu = _load(bench, "quality")
    add("quality (image metrics)", faces_final, _first(qu, "images_per_s_per_core"), "faces",
        "measured rate" if qu else "not measured", "with BRISQUE, one core")
    for name in ("download", "faces", "attributes", "captions", "quality"):
        m = _load(bench, name).get("machine")
        if m:
            machine[name] = m

    tr, tg = _load(bench, "train"), _load(bench, "train_gpu")  # train_gpu.json: bench_train.py --gpu (benchmarks/gpu_check.sh)
    measured = _first(tg, "gpu.samples_per_s")
    gpu_rate = cost["gpu_samples_per_s"] or measured or _first(tr, "gpu.samples_per_s", "ours_gpu.samples_per_s")
    samples = faces_final * cost["epochs"]
    if gpu_rate and not cost["gpu_samples_per_s"] and measured:
        gpu_hours = samples / gpu_rate / 3600
        gpu_how = (f"measured on one {tg.get('device', 'GPU')} ({tg.get('arch', 'ViT-B-16')}, batch "
                   f"{(tg.get('gpu') or {}).get('batch')}, benchmarks/results/train_gpu.json), scaled linearly "
                   f"to {cost['cluster_gpus']} GPUs")
    elif gpu_rate:
        gpu_hours, gpu_how = samples / gpu_rate / 3600, "projected from a measured rate"
    else:
        t = reference.TRAINING
        gpu_hours, gpu_how = 94 * t["gpus"], "quoted: the authors' 3 days 22 hours on 8 GPUs"
    cpu_hours = sum(r["cpu_hours"] or 0 for r in rows)
    wall = cpu_hours / cost["cluster_cores"] + gpu_hours / cost["cluster_gpus"]

    storage = {
        "collect shards": (bytes_per_item(shards["images"]), images),
        "face shards": (bytes_per_item(shards["crops"]), faces_aligned),
        "caption shards": (bytes_per_item(shards["pairs"]), faces_final),
    }
    storage_rows = [{"what": k, "bytes_per_item": b, "items": n, "terabytes": (b * n / 1e12) if b else None}
                    for k, (b, n) in storage.items()]
    return {"rows": rows, "gpu_hours": gpu_hours, "gpu_how": gpu_how, "gpu_samples_per_s": gpu_rate,
            "cpu_hours": cpu_hours, "wall_hours": wall, "storage": storage_rows, "machines": machine,
            "cluster_cores": cost["cluster_cores"], "cluster_gpus": cost["cluster_gpus"], "epochs": cost["epochs"],
            "urls": urls, "images": images, "faces_aligned": faces_aligned, "faces_final": faces_final}


REPORT_STAGES = (("corpus", "corpus"), ("faces", "faces (+ accounting)"), ("attributes", "attributes"),
                 ("captions", "captions"), ("quality", "quality (+ card)"))


def report_scaling(bench: Path) -> dict:
    """The report stages' peak memory at 15M faces, projected from ``benchmarks/results/reports.json``
    (``benchmarks/bench_reports.py``), and the caption stage's LLM-cache lookup memory."""
    data = _load(bench, "reports")
    summary = data.get("summary") or {}
    rows = []
    for key, label in REPORT_STAGES:
        s = summary.get(key)
        if s:
            rows.append([label, s.get("peak_gb"), s.get("projected_peak_gb_15m"), s.get("one_frame_projected_gb_15m"),
                         s.get("projected_cpu_hours_15m")])
    cache = data.get("caption_cache") or {}
    work = cache.get("work_mb") or {}
    sizes = sorted(work, key=int)
    return {"rows": rows, "measured_rows": (data.get("runs") or {}).get("real_source", {}).get("rows"),
            "target_faces": data.get("target_faces", 15_000_000),
            "max_peak_gb": data.get("max_projected_peak_gb_15m"), "all_within_4gb": data.get("all_within_4gb"),
            "cache_small": int(sizes[0]) if sizes else None, "cache_large": int(sizes[-1]) if sizes else None,
            "cache_mb_small": work.get(sizes[0]) if sizes else None, "cache_mb_large": work.get(sizes[-1]) if sizes else None,
            "cache_old_mb_large": (cache.get("old_work_mb") or {}).get(sizes[-1]) if sizes else None,
            "machine": data.get("machine")}


def run(cfg: StageConfig, io: StageIO) -> int:
    bench = Path(io.one("benchmarks"))
    p = projection(cfg, bench, {k: io.many(k) for k in ("images", "crops", "pairs")})
    rep = Report(io.outputs["report"])
    rep.update({k: v for k, v in p.items() if k not in ("rows", "storage")})
    rep.table("cost_cpu", ["stage", "items", "rate / core / s", "CPU-hours", "rate"], [
        [r["stage"], r["items"], None if r["rate_per_core"] is None else round(r["rate_per_core"], 1),
         None if r["cpu_hours"] is None else round(r["cpu_hours"]), f"{r['how']}; {r['basis']}".strip("; ")]
        for r in p["rows"]
    ] + [["FLIP pre-training (GPU-hours)", p["faces_final"] * p["epochs"], p["gpu_samples_per_s"],
          round(p["gpu_hours"]), p["gpu_how"]]],
        caption=f"Projected cost of the real run: {p['urls']:,} URLs → {p['faces_final']:,} captioned faces "
                f"(counts from the paper's funnel, quoted). Rates from benchmarks/results on the machine each names.")
    rep.table("cost_storage", ["artifact", "bytes / item (this run)", "items", "TB (projected)"], [
        [s["what"], None if s["bytes_per_item"] is None else round(s["bytes_per_item"]), s["items"],
         None if s["terabytes"] is None else round(s["terabytes"], 2)] for s in p["storage"]
    ], caption="Storage per stage: bytes per item measured on this run's shards, scaled to the real counts "
               "(projected; real photos are larger than the embedded 256 px renders).")
    rs = report_scaling(bench)
    rep.metric("report_scaling", {k: v for k, v in rs.items() if k != "rows"})
    n = rs["measured_rows"]
    rep.table("cost_reports", ["report stage", f"peak GB ({n:,} faces)" if n else "peak GB", "GB at 15M (projected)",
                               "GB at 15M, one frame (before)", "CPU-hours at 15M"],
              rs["rows"] or [["not measured (run benchmarks/bench_reports.py)", None, None, None, None]],
              caption=(f"Report stages at 15M faces (projected from {n:,} rows): peak resident memory of the "
                       "streamed aggregation, and of reading the inputs whole as before." if n else
                       "Report stages at 15M faces: not measured."),
              note="Synthetic shards in the real schemas, no ground truth (a crawl's shape); peak = resident memory of "
                   "a fresh process, including the package's imports (about 0.7 GB); projected along the line "
                   "through two sizes; \"one frame\": the inputs read whole, as the reports did before (a lower bound; "
                   "report_quality streamed already). benchmarks/results/reports.json.")
    rep.save()
    return 0
