"""The GPU checks of issue 15 that are not benchmarks, run by ``benchmarks/gpu_check.sh`` on a GPU machine.

1. **default-config CUDA smoke**: the shipped ``config.yaml`` (train section untouched but ``max_steps``) on
   synthetic caption shards: precision ``auto`` → bf16-mixed, gradient clipping on (the default 1.0), a few
   steps; then the same with ``train.precision: 16-mixed`` (GradScaler path) and with ``train.compile``.
2. **one-GPU ViT-B-16 stage run**: ``python -m facecaption.cli train`` at 224 px, a few steps, in a working
   folder laid out like the pipeline's; the exported ``results/train/flip.pt`` is then loaded by plain open_clip
   in a fresh process that never imports facecaption, and its embeddings are compared with the pipeline's
   loader.

Each check is recorded in ``benchmarks/results/gpu_check.json`` (ok / error line, seconds, what it saw);
a failing check does not stop the others. ``--allow-cpu`` runs the same logic on a CPU at toy sizes (to test
the script itself; its results are not GPU results and go to a scratch file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))


def _check(results: dict, name: str, fn, out: Path) -> None:
    t0 = time.time()
    try:
        got = fn()
        results[name] = {"ok": True, **(got or {})}
    except Exception as exc:  # noqa: BLE001 (every check reports; none stops the others)
        traceback.print_exc()
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"}
    results[name]["seconds"] = round(time.time() - t0, 1)
    print(f"gpu_check: {name}: {results[name]}", flush=True)
    out.write_text(json.dumps(results, indent=1))


def smoke(tmp: Path, shards: list[str], gpu: bool, **train) -> dict:
    """The shipped config's train section, a few steps."""
    from facecaption.core import config as fc_config
    from facecaption.train import train as run_train

    overrides = {"train": {"max_steps": 6, "val_every": 3, "checkpoint_every": 3, "log_every": 1,
                           "resume_dir": str(tmp / f"ck_{len(list(tmp.glob('ck_*')))}"), **train}}
    if not gpu:
        overrides["train"].update(accelerator="cpu", batch_size=8)
    cfg = fc_config.load([ROOT / "config.yaml"], overrides=overrides)
    assert cfg["train"]["grad_clip"] == 1.0, "the default clipping is on"
    logs = tmp / f"logs_{len(list(tmp.glob('logs_*')))}"
    s = run_train(cfg, shards, str(tmp / "smoke.pt"), str(logs))
    import pandas as pd

    losses = pd.read_csv(logs / "curves.csv")["train/loss"].dropna()
    assert s["steps"] == 6 and losses.notna().all() and bool((losses.abs() < 1e4).all()), (s, list(losses))
    return {k: s.get(k) for k in ("arch", "precision", "accelerator", "device_name", "steps", "samples_per_s",
                                  "gpu_idle_fraction", "compile")} | {"losses": [round(float(v), 4) for v in losses]}


PLAIN = r'''
import json, sys
import numpy as np, open_clip, torch
from PIL import Image
assert not any(m.startswith("facecaption") for m in sys.modules)
model, _, preprocess = open_clip.create_model_and_transforms(sys.argv[1])  # local-dir:<the hub-layout folder>
model.eval()
images = [Image.fromarray(np.full((224, 224, 3), 40 * i, np.uint8)) for i in range(4)]
with torch.no_grad():
    emb = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True).numpy()
assert not any(m.startswith("facecaption") for m in sys.modules)
np.save(sys.argv[2], emb)
'''


def stage_vit(tmp: Path, gpu: bool) -> dict:
    """`python -m facecaption.cli train` with ViT-B-16 at 224 px in a pipeline-shaped folder; export loads
    in plain open_clip (fresh process) with the same embeddings as the pipeline's loader."""
    import numpy as np
    from bench_train import write_shards
    from PIL import Image

    from facecaption import workflow as W
    from facecaption.core import config as fc_config
    from facecaption.core import openclip as M

    work = tmp / "stage"
    (work / "results" / "captions").mkdir(parents=True)
    cfg = fc_config.load([ROOT / "config.yaml"], overrides={
        "align": {"size": 224}, "synthface": {"num_shards": 2},
        "train": {"arch": "ViT-B-16", "image_size": 224, "max_steps": 4 if gpu else 2, "batch_size": 64 if gpu else 4,
                  "val_every": 2, "checkpoint_every": 2, "log_every": 1, "warmup_steps": 1, "val_max_samples": 64,
                  **({} if gpu else {"accelerator": "cpu"})}})
    shards = W.stage_inputs("train", cfg, [f"{i:05d}" for i in range(cfg["synthface"]["num_shards"])])["pairs"]
    outs = W.stage_outputs("train")
    made = write_shards(work / "results" / "captions", n=len(shards), per_shard=160 if gpu else 16, size=224)
    assert [str(Path(p).relative_to(work)) for p in made] == shards, (made, shards)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    t0 = time.time()
    run = subprocess.run([sys.executable, "-m", "facecaption.cli", "train", "--cfg", json.dumps(cfg)], cwd=work,
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    seconds = time.time() - t0
    model_path = work / outs["model"]
    summary = json.loads((work / outs["logs"] / "summary.json").read_text())
    plain_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    if os.environ.get("PYTHONPATH"):  # the wheels brought along (open_clip), never facecaption's src/
        plain_env["PYTHONPATH"] = os.pathsep.join(p for p in os.environ["PYTHONPATH"].split(os.pathsep)
                                                  if p and Path(p).resolve() != (ROOT / "src").resolve())
    hub = work / outs["open_clip"]
    plain = subprocess.run([sys.executable, "-c", PLAIN, f"local-dir:{hub}", str(tmp / "plain.npy")], cwd=tmp,
                           env=plain_env, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr[-2000:]
    ours, pre, _ = M.load(str(model_path), "ViT-B-16")
    images = [Image.fromarray(np.full((224, 224, 3), 40 * i, np.uint8)) for i in range(4)]
    diff = float(np.abs(M.encode_images(ours, pre, images) - np.load(tmp / "plain.npy")).max())
    assert diff < 1e-4, diff
    return {"stage_seconds": round(seconds, 1), "steps": summary["steps"], "precision": summary["precision"],
            "device_name": summary["device_name"], "export_vs_plain_open_clip_max_abs_diff": diff}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--allow-cpu", action="store_true", help="test this script on a CPU (toy sizes, scratch output)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_check.json"))
    a = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    if not gpu and not a.allow_cpu:
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); --allow-cpu tests the script", file=sys.stderr)
        return 2
    out = Path(a.out) if gpu else Path(tempfile.gettempdir()) / "gpu_check.cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    res: dict = {"device": torch.cuda.get_device_name(0) if gpu else "cpu (script test only)", "torch": torch.__version__,
                 "measured": time.strftime("%Y-%m-%d")}
    from bench_train import write_shards

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shards = write_shards(tmp, n=4, per_shard=96 if gpu else 24, size=112)
        _check(res, "smoke_default_bf16_clip", lambda: smoke(tmp, shards, gpu), out)
        _check(res, "smoke_16_mixed_clip", lambda: smoke(tmp, shards, gpu, precision="16-mixed"), out)
        _check(res, "smoke_compile", lambda: smoke(tmp, shards, gpu, compile=True), out)
        _check(res, "stage_vit_b16_export_loads_in_open_clip", lambda: stage_vit(tmp, gpu), out)
    res["all_ok"] = all(v.get("ok") for v in res.values() if isinstance(v, dict))
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0 if res["all_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
