"""benchmarks/gpu_check.sh --dry-run: the GPU slot's script, every section, on this CPU (MiniLM's shape,
tiny sizes); and a section that outlives its share is recorded as not measured."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def gpu_check(out, *args, timeout=300):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
  return subprocess.run(
      ["bash",
       str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out",
       str(out), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.newest_stack  # CI runs it on the stack nearest the GPU slot's (.ci/newest.sh)
def test_dry_run_measures_every_section(tmp_path):
  done = gpu_check(tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(tmp_path / "gpu_check.json"))
  assert results["dry_run"] and results["env"]["platform"] == "cpu"
  step, recipe, encode = (results["sections"][k] for k in ("step", "recipe", "encode"))
  # the step with --attention: cuDNN's stand-in
  assert [r["attention"] for r in step["rows"]] == ["dot_product"]
  for row in step["rows"]:
    assert row["loss"]["relative_difference"] < 1e-5  # ours and the authors' loss on the same batch
    assert row["examples_per_sec"]["jax/starbucks"] > 0 and row["examples_per_sec"][
        "torch/starbucks"] > 0
  timing = recipe["timing"]
  # CPU
  # the dry run's short texts fit one length bucket: one compile
  assert timing["compiles"] == 1
  assert timing["steps"] == 3 and timing[
      "compiled_step_bytes"] > 0 and "device_peak_bytes" not in timing
  assert recipe["result_rows"] >= 6  # the demo STS evaluation at every pair
  assert [(r["layer"], r["dim"]) for r in encode["rates"]] == [(1, 16), (2, 32), (3, 64), (4, 128),
                                                               (5, 256), (6, 384)]
  profile = results["sections"]["profile"]["summary"]
  # the traced steps ran XLA's ops (the CPU client's events stand in for the GPU's kernels)
  assert profile["kernels_per_step"] > 100 and 0 < profile["busy_ms_per_step"]
  assert profile["top"] and sum(profile["ms_per_step_by_kind"].values()) > 0
  # what a slot returns: at most 8 files (the step run's JSON, the trace, the summary, table, log)
  assert sorted(os.listdir(tmp_path)) == [
      "gpu_check.json", "gpu_check.log", "gpu_check.md", "profile_trace.json.gz",
      "step_b4_dot_product.json"
  ]
  table = open(tmp_path / "gpu_check.md").read()
  assert "| top kernel (HLO op) |" in table and "dry run" in table
  assert "| nli (generated triplets) | 3 x 8 |" in table and "NOT MEASURED" not in table


def test_a_section_past_its_share_is_not_measured(tmp_path, tiny_hf_dir, monkeypatch, capsys):
  """In-process, on the tiny model: the encode section's child outlives its share of a 0.1 s budget
  (1 s at least), is killed, and is recorded as not measured."""
  from conftest import load_script
  gc = load_script("benchmarks/gpu_check.py")
  import vs_pytorch  # on the path gpu_check set
  monkeypatch.setattr(vs_pytorch, "random_model_dir", lambda preset, out: tiny_hf_dir)
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  monkeypatch.setattr(
      gc.sys, "argv",
      ["gpu_check.py", "--dry-run", "--out",
       str(tmp_path), "--only", "encode", "--budget", "0.1"])
  with pytest.raises(SystemExit, match="encode not measured"):
    gc.main()
  results = json.load(open(tmp_path / "gpu_check.json"))
  assert "timed out" in results["sections"]["encode"]["error"]
  assert "- encode: NOT MEASURED (SectionTimeout: timed out" in open(tmp_path /
                                                                     "gpu_check.md").read()


def test_a_failed_step_run_is_a_row_of_its_own(tmp_path, monkeypatch):
  """A run that fails (cuDNN missing on the machine, say) costs its row only; all failing fails the section."""
  from conftest import load_script
  gc = load_script("benchmarks/gpu_check.py")

  def fake_run(cmd, timeout, log, env):
    assert "JAX_COMPILATION_CACHE_DIR" in env
    if "cudnn" in cmd:
      raise RuntimeError("exit 1: RuntimeError: cuDNN not found. | the line before")
    json.dump(
        {
            "batch_pairs": 1, "length": 8, "dtype": "bfloat16", "attention": "standard", "loss": {
                "relative_difference": 0.0
            }, "examples_per_sec": {"jax/starbucks": 2.0, "torch/starbucks": 1.0},
            "gflops_per_sec": {"jax/starbucks": 1.0}
        }, open(cmd[cmd.index("--out") + 1], "w"))

  monkeypatch.setattr(gc, "run", fake_run)
  size = {**gc.SIZES["gpu"], "step_runs": ((1, "standard"), (1, "cudnn"))}
  cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path)}
  rows = gc.step_section(size, "model", 989.0, str(tmp_path), "log", gc.time.time() + 60, cache)
  assert "examples_per_sec" in rows[0] and "cuDNN not found" in rows[1]["error"]
  table = gc.table({
      "dry_run": False, "date": "today", "peak_tflops": 989.0, "sections": {"step": {"rows": rows}}
  })
  (line,) = [x for x in table.splitlines() if "| cudnn |" in x]
  assert "NOT MEASURED (exit 1: RuntimeError: cuDNN not found. / the line before)" in line and line.count(
      "|") == 11
  with pytest.raises(RuntimeError, match="every run failed"):
    gc.step_section({**size, "step_runs": ((1, "cudnn"),)}, "model", 989.0, str(tmp_path), "log",
                    gc.time.time() + 60, cache)


def test_measuring_processes_get_the_users_environment(tmp_path, monkeypatch):
  """The parent turns off jax's preallocation for itself only: a child that measures allocates as a
  user's run would (and a user's own setting passes through)."""
  from conftest import load_script
  gc = load_script("benchmarks/gpu_check.py")
  probe = [
      sys.executable, "-c", "import os; print(os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE'))"
  ]
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  monkeypatch.setattr(gc, "_set_here", {"XLA_PYTHON_CLIENT_PREALLOCATE"})
  assert gc.run(probe, 30, str(tmp_path / "log")).strip() == "None"
  monkeypatch.setattr(gc, "_set_here", set())  # the user's own
  assert gc.run(probe, 30, str(tmp_path / "log")).strip() == "false"


def test_profile_summary_of_a_gpu_trace():
  """gpu_profile's summary on a hand-made trace shaped as jax's GPU ones: the stream's kernels only
  (not the derived 'XLA Ops' line, not the host), overlapping kernels merged for busy time."""
  from conftest import load_script
  gp = load_script("benchmarks/gpu_profile.py")
  meta = lambda pid, tid, kind, name: {
      "ph": "M", "pid": pid, "tid": tid, "name": kind, "args": {"name": name}
  }
  span = lambda pid, tid, ts, dur, name, op=None: {
      "ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name,
      **({"args": {"hlo_op": op}} if op else {})
  }
  trace = {
      "traceEvents": [
          meta(1, 0, "process_name", "/host:CPU"),
          meta(2, 0, "process_name", "/device:GPU:0"),
          meta(2, 7, "thread_name", "Stream #7(Compute)"),
          meta(2, 9, "thread_name", "XLA Ops"),
          span(1, 0, 0, 500, "PjitFunction(update)"),
          span(2, 7, 0, 100, "sm90_xmma_gemm_bf16", "dot.1"),
          span(2, 7, 50, 100, "loop_fusion", "fusion.3"),
          span(2, 7, 300, 40, "sm90_xmma_gemm_bf16", "dot.1"),
          span(2, 7, 400, 60, "threefry2x32"),
          span(2, 9, 0, 460, "fusion.3"),
      ]
  }
  events = gp.device_events(trace)
  assert len(events) == 4
  s = gp.summarise(events, steps=2, wall_ms=1.0, top=3)
  assert s["busy_ms_per_step"] == pytest.approx((150 + 40 + 60) / 1e3 / 2)
  assert s["kernels_per_step"] == 2
  assert s["ms_per_step_by_kind"] == pytest.approx(
      {"matmul": 0.07, "XLA fusions": 0.05, "random bits": 0.03})
  assert [t["name"] for t in s["top"]] == ["dot.1", "fusion.3", "threefry2x32"]
  assert s["top"][0]["calls_per_step"] == 1 and s["top"][0]["share"] == pytest.approx(140 / 300)
