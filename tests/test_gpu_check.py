"""benchmarks/gpu_check.sh --dry-run: the GPU slot's script, every section, on this CPU (MiniLM's shape,
tiny sizes); and a section that outlives its share is recorded as not measured."""

import json
import os
import subprocess
import sys

from conftest import REPO


def gpu_check(out, *args, timeout=300):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
  return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_dry_run_measures_every_section(tmp_path):
  done = gpu_check(tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(tmp_path / "gpu_check.json"))
  assert results["dry_run"] and results["env"]["platform"] == "cpu"
  step, recipe, encode = (results["sections"][k] for k in ("step", "recipe", "encode"))
  (row,) = step["rows"]
  assert row["loss"]["relative_difference"] < 1e-5  # ours and the authors' loss on the same batch
  assert row["examples_per_sec"]["jax/starbucks"] > 0 and row["examples_per_sec"]["torch/starbucks"] > 0
  timing = recipe["timing"]
  assert timing["steps"] == 3 and timing["compiled_step_bytes"] > 0 and "device_peak_bytes" not in timing  # CPU
  assert recipe["result_rows"] >= 6  # the demo STS evaluation at every pair
  assert [(r["layer"], r["dim"]) for r in encode["rates"]] == [(1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384)]
  table = open(tmp_path / "gpu_check.md").read()
  assert "dry run" in table and "| nli (generated triplets) | 3 x 8 |" in table and "NOT MEASURED" not in table


def test_a_section_past_its_share_is_not_measured(tmp_path):
  done = gpu_check(tmp_path, "--only", "encode", "--budget", "0.1")
  assert done.returncode != 0 and "encode not measured" in done.stderr
  results = json.load(open(tmp_path / "gpu_check.json"))
  assert "timed out" in results["sections"]["encode"]["error"]
  assert "- encode: NOT MEASURED (SectionTimeout: timed out" in open(tmp_path / "gpu_check.md").read()


def test_measuring_processes_get_the_users_environment(tmp_path, monkeypatch):
  """The parent turns off jax's preallocation for itself only: a child that measures allocates as a
  user's run would (and a user's own setting passes through)."""
  from conftest import load_script
  gc = load_script("benchmarks/gpu_check.py")
  probe = [sys.executable, "-c", "import os; print(os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE'))"]
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  monkeypatch.setattr(gc, "_set_here", {"XLA_PYTHON_CLIENT_PREALLOCATE"})
  assert gc.run(probe, 30, str(tmp_path / "log")).strip() == "None"
  monkeypatch.setattr(gc, "_set_here", set())  # the user's own
  assert gc.run(probe, 30, str(tmp_path / "log")).strip() == "false"
