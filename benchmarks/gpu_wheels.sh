#!/usr/bin/env bash
# Wheels a bare GPU machine lacks to run the train stage (see ../shared/reference/gpu-h200.md: python 3.12,
# torch, Lightning, pandas... are there; no package registry can be reached from it). Run HERE, where pip
# reaches a registry; benchmarks/gpu_check.sh installs them THERE from .whl/ (git-ignored, carried along).
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION=3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-3.12}
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
# the versions pinned in requirements.lock
pins=(open-clip-torch webdataset braceexpand ftfy wcwidth jsonschema jsonschema-specifications referencing rpds-py)
for name in "${pins[@]}"; do
  spec=$(grep -i -E "^${name//-/[-_]}==" requirements.lock | head -1)
  [ -n "$spec" ] || { echo "gpu_wheels: $name is not pinned in requirements.lock" >&2; exit 1; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .whl "$spec"
done
ls -la .whl
