#!/usr/bin/env bash
# The one script a GPU slot runs (benchmarks/gpu_check.py: what it measures and writes). Packages the
# machine lacks travel as wheels in .git-ignored .whl/ (benchmarks/gpu_wheels.sh builds it); they are
# installed to a scratch folder, and this checkout goes on the path uninstalled.
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--budget SECONDS] [--peak-tflops 989]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}  # PYTHON: another interpreter (the tests pass their own)
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/starbucks_site .whl/*.whl
  export PYTHONPATH=/tmp/starbucks_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
