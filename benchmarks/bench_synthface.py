"""Benchmark the procedural face renderer: images/s on one core, and CenterFace recall on its images.

    PYTHONPATH=src python benchmarks/bench_synthface.py [--n256 200] [--n640 40] [--out PATH]

Writes benchmarks/results/synthface.json.  Rendering is timed alone (cv2.setNumThreads(1)); the detector
(onnxruntime, 1 thread) then runs on the same images, matching each drawn face to its best detection
(IoU >= 0.5, score >= 0.5 counts as found).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import cv2
import numpy as np

from facecaption.faces.centerface import CenterFace, iou
from facecaption.synthface import render_image

HERE = os.path.dirname(os.path.abspath(__file__))


def _bench(det, n, seed, threshold=0.5, **kw):
    imgs = []
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        imgs.append(render_image(np.random.default_rng(seed + i), **kw))
    dt, cdt = time.perf_counter() - t0, time.process_time() - c0
    scores, found, widths = [], [], []
    t1 = time.perf_counter()
    fp = 0
    for img, faces in imgs:
        dets = det.detect(img, threshold=0.05)
        for f in faces:
            best = max(((iou(f["box"], d.box), d.score) for d in dets), default=(0.0, 0.0))
            s = best[1] if best[0] >= 0.5 else 0.0
            scores.append(s)
            found.append(s >= threshold)
            widths.append(f["box"][2] - f["box"][0])
        fp += sum(1 for d in dets if d.score >= threshold and not any(iou(d.box, f["box"]) >= 0.3 for f in faces))
    det_dt = time.perf_counter() - t1
    scores, found, widths = map(np.asarray, (scores, found, widths))
    out = {
        "images": n, "faces": int(len(scores)), "images_per_s": round(n / dt, 2),
        # CPU seconds of this process only: the one-core rate even when other jobs share the machine
        "images_per_cpu_s": round(n / max(cdt, 1e-9), 2),
        "detector_ms_per_image": round(1000 * det_dt / n, 1),
        "recall@0.5": round(float(found.mean()), 4) if len(found) else None,
        "mean_score": round(float(scores.mean()), 4) if len(scores) else None,
        "share_above_0.7": round(float((scores > 0.7).mean()), 4) if len(scores) else None,
        "false_positives": int(fp),
    }
    buckets = {}
    for lo, hi in ((0, 40), (40, 64), (64, 128), (128, 10_000)):
        m = (widths >= lo) & (widths < hi)
        if m.any():
            buckets[f"{lo}-{hi}px"] = {"faces": int(m.sum()), "recall@0.5": round(float(found[m].mean()), 4),
                                       "mean_score": round(float(scores[m].mean()), 4)}
    out["by_face_width"] = buckets
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n256", type=int, default=200)
    ap.add_argument("--n640", type=int, default=40)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "synthface.json"))
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    det = CenterFace(threads=1)
    res = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
                    "cv2_threads": 1, "onnxruntime_threads": 1},
        "256px": _bench(det, args.n256, 100_000, size=256),
        "640px": _bench(det, args.n640, 200_000, size=640),
        "256px_sizes_0.08-0.6": _bench(det, args.n256, 300_000, size=256, face_scale=(0.08, 0.6)),
        "256px_multi_2-4": _bench(det, max(1, args.n256 // 2), 400_000, size=256, n_faces=(2, 4),
                                  face_scale=(0.15, 0.3)),
        "256px_no_face": _bench(det, max(1, args.n256 // 2), 500_000, size=256, n_faces=0),
    }
    for name in ("blur", "noise", "jpeg", "lowlight", "lowres"):
        res[f"256px_{name}"] = _bench(det, max(1, args.n256 // 4), 600_000, size=256, degrade=name)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=2)
    for k, v in res.items():
        if k == "machine":
            continue
        print(f"{k:22s} img/s={v['images_per_s']:7.2f} (per cpu-s {v['images_per_cpu_s']:7.2f})  faces={v['faces']:4d}  "
              f"recall@0.5={v['recall@0.5']}  "
              f"mean={v['mean_score']}  >0.7={v['share_above_0.7']}  fp={v['false_positives']}")
        for b, bv in v["by_face_width"].items():
            print(f"{'':24s}{b:>12s}: n={bv['faces']:4d} recall={bv['recall@0.5']} mean={bv['mean_score']}")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
