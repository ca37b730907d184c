#!/usr/bin/env bash
# One prepared GPU check (issue 15), for a bare GPU machine of the kind in ../shared/reference/gpu-h200.md
# (torch, Lightning, pandas... installed; open_clip, webdataset, jsonschema missing; no registry). Within
# ~8 minutes on one H200 it runs:
#   1. benchmarks/gpu_check.py: the default-config CUDA smoke (bf16, clipping on), 16-mixed, train.compile,
#      and a one-GPU ViT-B-16 `facecaption train` whose export loads in plain open_clip;
#   2. benchmarks/bench_train.py --gpu: ours vs open_clip's trainer vs the bare step (eager, compiled),
#      ViT-B-16 224 px bf16, batch 256 and 512, clipping on, GPU idle time.
# Results: benchmarks/results/gpu_check.json and train_gpu.json (also copied to $OUT when set).
# Prepare HERE first: bash benchmarks/gpu_wheels.sh  (fills .whl/; carry it along).
#   bash benchmarks/gpu_check.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing the wheels in .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
python3 - <<'PY' || exit 1
import importlib, sys
missing = [m for m in ("torch", "lightning", "open_clip", "webdataset", "jsonschema", "pandas", "pyarrow", "torchvision")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing {', '.join(missing)}; run `bash benchmarks/gpu_wheels.sh` here and carry .whl/")
import torch
print("gpu_check:", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
rc=0
timeout 200 python3 benchmarks/gpu_check.py || rc=$?
batches="256 512"; steps=30
[ "${1:-}" = "--quick" ] && { batches="256"; steps=20; }
timeout 280 python3 benchmarks/bench_train.py --gpu --batches $batches --steps $steps || rc=$?
if [ -n "${OUT:-}" ]; then cp benchmarks/results/gpu_check.json benchmarks/results/train_gpu.json "$OUT"/ 2>/dev/null; fi
exit $rc
