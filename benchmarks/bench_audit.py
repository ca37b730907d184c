"""Contamination audit speed: per aligned crop (synthface faces, 112 px, one process) every step the audit takes
- decode, pHash, colour layout, ORB keypoints, the candidate search against a test side of CelebA's size, the
keypoint verification of the candidates it checks - beside the FLIP image encoder's own images/s on the same
crops; and faiss search over 1M random 512-d vectors, projected to the 15M-face pool.

    python benchmarks/bench_audit.py            # → benchmarks/results/audit.json
    python benchmarks/bench_audit.py --n 200000 # a smaller index (memory: n × 2 KB)

The audit indexes the test side and streams the pool (facecaption.audit.search); the projection gives both
layouts' cost for 15M pool faces: (a) the audit's layout, 15M queries against a test-side index of
``--test`` vectors (CelebA's test split: 19,962), and (b) an index of the pool itself (what auditing a new
evaluation set against a 15M pool index would cost per query), flat and IVF (nlist = 4 √n, nprobe 32).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

POOL = 15_000_000


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors in the searched index")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--test", type=int, default=19_962, help="test-side vectors (the audit's index)")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--out", default="benchmarks/results/audit.json")
    args = ap.parse_args(argv)
    import faiss

    from facecaption.audit import features as F
    from facecaption.audit import search as S
    from facecaption.core.align import align
    from facecaption.core.shards import encode_jpeg
    from facecaption.synthface.plant import render_labeled

    rng = np.random.default_rng(0)
    faces = []
    for i in range(64):  # 64 synthetic faces, each aligned as the faces stage aligns a crop
        img, face = render_labeled(0, 30_000_000 + i, 0, 256)
        faces.append(encode_jpeg(align(img, face["landmarks"], 112, 0.6)[0]))
    jpgs = [faces[i % len(faces)] for i in range(args.images)]
    ims = [F.open_rgb(j, 112) for j in jpgs]
    out = {"machine": platform.processor() or platform.machine(), "faiss_threads": faiss.omp_get_max_threads(),
           "crops": args.images, "crop_px": 112}
    out["decode_per_s"] = _rate(lambda: [F.open_rgb(j, 112) for j in jpgs], len(jpgs))
    out["phash_per_s"] = _rate(lambda: [F.phash(im) for im in ims], len(ims))
    out["layout_per_s"] = _rate(lambda: [F.thumb(im) for im in ims], len(ims))
    kp = F.Keypoints()
    out["keypoints_per_s"] = _rate(lambda: [kp.describe(im) for im in ims], len(ims))
    pts = [kp.describe(im) for im in ims]
    out["verify_pairs_per_s"] = _rate(lambda: [kp.inliers(pts[i], pts[(i + 1) % len(pts)]) for i in range(len(pts))],
                                      len(pts))
    # the candidate search: each crop's 2 nearest of a CelebA-sized test side by colour layout
    layouts = rng.normal(size=(args.test, 192)).astype(np.float32)
    layouts /= np.linalg.norm(layouts, axis=1, keepdims=True)
    lindex, _ = S.embedding_index(layouts, "flat")
    qs192 = np.stack([F.thumb(im) for im in ims])
    out["layout_search_per_s"] = _rate(lambda: S.nearest(lindex, qs192, 2), len(qs192))
    from facecaption.core import openclip as oc

    model, pre, _ = oc.load(None, "FLIP-Tiny", image_size=64)
    oc.encode_images(model, pre, ims[:32])
    out["flip_tiny_64px_embed_per_s"] = _rate(lambda: oc.encode_images(model, pre, ims, batch=256), len(ims))
    # the paper's encoder (ViT-B/16 at 224 px, random init: the cost does not depend on the weights), on CPU
    vit, vpre, _ = oc.load(None, "ViT-B-16")
    oc.encode_images(vit, vpre, ims[:8], batch=8)
    out["vit_b16_224px_embed_per_s"] = _rate(lambda: oc.encode_images(vit, vpre, ims[:64], batch=32), 64)
    # the audit per pool crop: decode, hash, layout, search, keypoints, and the verification of the candidates it
    # checks (the embedded run: 2,058 pairs for 1,639 crops), then the embedding (the encoder's own cost)
    per = (1 / out["decode_per_s"] + 1 / out["phash_per_s"] + 1 / out["layout_per_s"] + 1 / out["layout_search_per_s"]
           + 1 / out["keypoints_per_s"] + (2058 / 1639) / out["verify_pairs_per_s"])
    out["near_copy_audit_per_s"] = 1 / per
    # the audit with the embedding: 1 / (near-copy time + encoder time), as a share of the encoder alone
    for enc in ("flip_tiny_64px", "vit_b16_224px"):
        e = out[f"{enc}_embed_per_s"]
        out[f"audit_vs_{enc}_encoder"] = (1 / (1 / out["near_copy_audit_per_s"] + 1 / e)) / e
    out["near_copy_15M_core_hours"] = POOL / out["near_copy_audit_per_s"] / 3600
    # (a) the audit: pool queries against the test side
    test = rng.normal(size=(args.test, 512)).astype(np.float32)
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    q = rng.normal(size=(args.queries * 10, 512)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    idx, _ = S.embedding_index(test, "flat")
    rate = _rate(lambda: S.cosine_pairs(idx, q, 0.9), len(q))
    out["test_side_flat"] = {"test_vectors": args.test, "queries_per_s": rate, "pool_15M_hours": POOL / rate / 3600}
    # (b) an index over n pool vectors, projected to 15M
    x = rng.normal(size=(args.n, 512)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qs = q[: args.queries]
    flat, _ = S.embedding_index(x, "flat")
    t = time.perf_counter()
    flat.search(qs, 10)
    per_q = (time.perf_counter() - t) / len(qs)
    out["pool_index_flat"] = {"n": args.n, "ms_per_query": 1000 * per_q,
                              "ms_per_query_at_15M": 1000 * per_q * POOL / args.n,
                              "memory_gb_at_15M": POOL * 512 * 4 / 1e9}
    t = time.perf_counter()
    ivf, _ = S.embedding_index(x, "ivf", nprobe=32)
    build = time.perf_counter() - t
    t = time.perf_counter()
    _, got = ivf.search(qs, 10)
    per_q_ivf = (time.perf_counter() - t) / len(qs)
    _, want = flat.search(qs[:100], 1)
    recall = float(np.mean([want[i, 0] in got[i] for i in range(100)]))
    out["pool_index_ivf"] = {"n": args.n, "build_s": build, "ms_per_query": 1000 * per_q_ivf,
                             "ms_per_query_at_15M_approx": 1000 * per_q_ivf * (POOL / args.n) ** 0.5,
                             "recall_at_10_of_exact_nn": recall,
                             "note": "random vectors are the worst case for IVF recall; real embeddings cluster"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
