#!/usr/bin/env bash
# Build .whl/: the wheels benchmarks/gpu_check.sh needs on a GPU machine with no network whose image
# has jax, flax, optax, orbax, transformers, torch and sentence-transformers but not these (the H200
# image of experiments/results_gpu/README.md). Python 3.12, pure-Python wheels; a few hundred KB.
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .gitignore || { echo "/.whl/ must be git-ignored" >&2; exit 1; }
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${1:-3.12}" --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  ml-collections==1.1.0 tensorboardX==2.6.5
du -sh .whl && ls .whl
