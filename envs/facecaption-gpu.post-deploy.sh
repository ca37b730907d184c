#!/usr/bin/env sh
# Run inside the environment of envs/facecaption-gpu.yaml once it exists (Snakemake does so with --sdm conda).
# onnxruntime (CPU) and onnxruntime-gpu write the same `onnxruntime` module; put the GPU build's files last.
# The same pins as requirements-gpu.lock (tests/test_preflight.py checks).
set -eu
python -m pip install --force-reinstall --no-deps onnxruntime-gpu==1.31.1 nvidia-curand==10.4.2.66
