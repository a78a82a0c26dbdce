"""experiments/compare_runs.py: equal runs pass, a changed loss or result fails."""

import json

from conftest import load_script

compare_runs = load_script("experiments/compare_runs.py")


def workdir(path, loss=1.0, value=0.5, speed=10.0):
  (path / "results").mkdir(parents=True)
  rows = [{"step": 5, "loss": loss, "examples_per_sec": speed},
          {"step": 10, "loss": loss / 2, "examples_per_sec": speed}]
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  record = {
      "dataset": "d", "split": "test", "metric": "spearman_cosine", "layer": 1, "dim": 8,
      "value": value
  }
  (path / "results" / "final.json").write_text(json.dumps([record]))
  return str(path)


def test_equal_runs_pass_and_changes_fail(tmp_path):
  a = workdir(tmp_path / "a")
  # timings are not compared
  assert compare_runs.main([a, workdir(tmp_path / "b", speed=99.0)]) == 0
  assert compare_runs.main([a, workdir(tmp_path / "c", loss=1.0 + 1e-5)]) == 1
  assert compare_runs.main([a, workdir(tmp_path / "d", value=0.5 + 1e-5)]) == 1
  assert compare_runs.main([a, workdir(tmp_path / "e", value=0.5 + 1e-7)]) == 0
