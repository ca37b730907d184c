"""Faces stage throughput: images/s per core for each detector backend on 256 px and 640 px images.

    python benchmarks/bench_faces.py [--config config.yaml ...] [--images 48] [--threads 1]

Two numbers per backend and size: ``detect`` (the detector alone, in the stage's batches) and ``stage``
(decode JPEG + detect + filter + align + encode crops, i.e. the faces rule per image). Images are synthface
renders (one to three faces). The insightface backend is measured only when its model pack is present
(``faces.insightface``). Results go to ``benchmarks/results/faces.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def images(size: int, n: int, seed: int = 0) -> list[np.ndarray]:
    from facecaption.synthface.render import render_image

    rng = np.random.default_rng(seed)
    return [render_image(rng, size=size, n_faces=int(rng.integers(1, 4)), face_scale=(0.2, 0.5))[0] for _ in range(n)]


def bench(detector, fcfg: dict, acfg: dict, imgs: list[np.ndarray], threads: int, repeat: int = 2) -> dict:
    from facecaption.core.shards import encode_jpeg
    from facecaption.faces import process

    bs = fcfg["batch_size"]
    threshold = min(fcfg["candidate_score"], fcfg["min_score"][fcfg["detector"]])
    detector.detect(imgs[:bs], threshold)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for i in range(0, len(imgs), bs):
            detector.detect(imgs[i: i + bs], threshold)
        best = min(best, time.perf_counter() - t)
    samples = [{"__key__": f"b_{i:05d}", "jpg": encode_jpeg(im, 90), "txt": ""} for i, im in enumerate(imgs)]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        faces, _ = process(samples, fcfg, acfg, detector, os.path.join(tmp, "bench.tar"), desc="bench")
        stage = time.perf_counter() - t
    return {"images": len(imgs), "batch_size": bs, "threads": threads,
            "detect_images_per_s": len(imgs) / best, "detect_images_per_s_per_core": len(imgs) / best / threads,
            "stage_images_per_s": len(imgs) / stage, "stage_images_per_s_per_core": len(imgs) / stage / threads,
            "faces_kept": len(faces)}


def main(argv=None) -> int:
    from facecaption.core import config as fc_config
    from facecaption.faces.detect import ModelMissing, make_detector

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=None)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/faces.json"))
    args = p.parse_args(argv)
    cfg = fc_config.load(args.config or [ROOT / "config.yaml"])
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpu_count": os.cpu_count()}, "runs": []}
    for backend in ("centerface", "insightface"):
        fcfg = fc_config.deep_merge(cfg["faces"], {"detector": backend})
        try:
            det = make_detector(fcfg, threads=args.threads)
        except (ModelMissing, ImportError) as exc:
            results["runs"].append({"backend": backend, "skipped": str(exc)})
            print(f"{backend}: skipped ({exc})")
            continue
        for size in (256, 640):
            r = {"backend": backend, "size": size, **bench(det, fcfg, cfg["align"], images(size, args.images), args.threads)}
            results["runs"].append(r)
            print(f"{backend} {size}px: detect {r['detect_images_per_s_per_core']:.1f} img/s/core, "
                  f"stage {r['stage_images_per_s_per_core']:.1f} img/s/core")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
