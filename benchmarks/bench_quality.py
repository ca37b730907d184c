"""Benchmark the quality metrics on one core: images/s for the image metrics (with and without BRISQUE)
and captions/s for the text metrics (words, sentences, Flesch, 1–4-gram hashes).

    python benchmarks/bench_quality.py [--images 200] [--captions 5000] [--size 112]

Writes benchmarks/results/quality.json. Inputs are synthface faces aligned to ``--size`` (the embedded
default's crop size) and grammar-style captions, made on the fly (deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def make_faces(n: int, size: int) -> list[bytes]:
    from facecaption.core.align import align
    from facecaption.core.shards import encode_jpeg
    from facecaption.synthface.render import render_image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img, faces = render_image(rng, size=256, n_faces=1, face_scale=(0.4, 0.6), degrade="blur" if i % 5 == 0 else None)
        crop, _ = align(img, np.asarray(faces[0]["landmarks"]), size=size)
        out.append(encode_jpeg(crop))
    return out


def make_captions(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    hair = ["black", "brown", "blond", "gray", "wavy", "straight"]
    extras = ["wears earrings", "has a big nose", "wears eyeglasses", "has bushy eyebrows", "is smiling",
              "has a pointy nose", "wears lipstick", "has high cheekbones", "has a double chin"]
    caps = []
    for _ in range(n):
        who = rng.choice(["The man", "The woman", "This person", "The young woman", "The old man"])
        parts = rng.choice(extras, size=3, replace=False)
        caps.append(f"{who} has {rng.choice(hair)} hair and {parts[0]}. It {parts[1]} and {parts[2]}.")
    return caps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--captions", type=int, default=5000)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--out", default="benchmarks/results/quality.json")
    a = ap.parse_args(argv)
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    from facecaption.quality import image as qimg
    from facecaption.quality import text as qtext

    faces = make_faces(a.images, a.size)
    brisque = qimg.Brisque()
    qimg.image_row(faces[0], brisque)  # warm-up
    t = time.perf_counter()
    for f in faces:
        qimg.image_row(f)
    basic = len(faces) / (time.perf_counter() - t)
    t = time.perf_counter()
    for f in faces:
        qimg.image_row(f, brisque)
    full = len(faces) / (time.perf_counter() - t)

    caps = make_captions(a.captions)
    qtext.text_row(caps[0])
    t = time.perf_counter()
    for c in caps:
        qtext.text_row(c)
    t_rows = time.perf_counter() - t
    t = time.perf_counter()
    for n in qtext.NGRAM_N:
        qtext.ngram_hashes(caps, n)
    t_ngrams = time.perf_counter() - t
    result = {
        "images_per_s_per_core": round(full, 1),
        "images_per_s_per_core_without_brisque": round(basic, 1),
        "captions_per_s_per_core": round(len(caps) / (t_rows + t_ngrams), 1),
        "captions_per_s_per_core_metrics_only": round(len(caps) / t_rows, 1),
        "captions_per_s_per_core_ngrams_only": round(len(caps) / t_ngrams, 1),
        "images": a.images, "crop_size": a.size, "captions": a.captions,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores_visible": os.cpu_count(),
                    "python": platform.python_version()},
        "note": "one thread (OMP/OpenCV/torch = 1); image metrics = resolution, sharpness, brightness, contrast, "
                "JPEG quality (+ BRISQUE); text = words, sentences, words/sentence, Flesch (textstat) and 1–4-gram hashes",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
