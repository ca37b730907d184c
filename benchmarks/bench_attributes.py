"""Attribute classifier inference speed: faces/s on one CPU core (or a GPU when present).

    python benchmarks/bench_attributes.py        # → benchmarks/results/attributes.json

Measures the embedded small CNN at its input size and the ResNet-50 used at scale (224 px), the prediction
step exactly as the attributes stage runs it (facecaption.attributes.train.predict).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from facecaption.attributes.model import build
from facecaption.attributes.train import predict


def rate(arch: str, size: int, n: int, batch: int, device: torch.device, width: int = 16) -> float:
    model = build(arch, 39, width).to(device)
    x = torch.randint(0, 255, (n, 3, size, size), dtype=torch.uint8)
    predict(model, x[:batch], batch, device)  # warm-up
    t0 = time.perf_counter()
    predict(model, x, batch, device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    out = {
        "machine": {"platform": platform.platform(), "cpu_threads": 1, "cuda": torch.cuda.is_available(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "predict_faces_per_s_per_core": rate("small_cnn", 64, 512, 256, cpu),
        "small_cnn_input": 64,
        "resnet50_224_faces_per_s_per_core": rate("resnet50", 224, 32, 16, cpu),
    }
    if torch.cuda.is_available():
        out["resnet50_224_faces_per_s_gpu"] = rate("resnet50", 224, 2048, 256, torch.device("cuda"))
    path = Path(__file__).parent / "results" / "attributes.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
