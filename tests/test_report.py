"""Sweeps and reports: runs listed, skipped when done, printed for a cluster; results collected from
workdirs into the paper-style table (best in bold, mean) and pictures."""

import json
import os
import shutil

import pytest

from starbucks_jax import report, sweep
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.evaluate import results

from conftest import load_script

PAIRS = ((1, 16), (2, 32), (4, 64))


def fake_run(workdir, method, values, *, dataset="stsb", metric="spearman_cosine", name="final",
             grid=None):
  os.makedirs(workdir, exist_ok=True)
  json.dump({"schedule": {"method": method}}, open(os.path.join(workdir, "config.json"), "w"))
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for step in (10, 20):
      f.write(json.dumps({"step": step, "loss": 3.0 - step / 10}) + "\n")
  pairs = grid or PAIRS
  results.write(
      str(workdir), name,
      [results.record(dataset, "test", metric, n, d, v) for (n, d), v in zip(pairs, values)])


def test_collect_table_and_pictures(tmp_path):
  root = tmp_path / "sweep"
  fake_run(root / "starbucks", "starbucks", [0.5, 0.7, 0.9])
  fake_run(root / "full", "full", [0.4, 0.6, 0.91])
  with open(root / "full" / "metrics.jsonl", "a") as f:  # a crash cut the last row; not resumed
    f.write('{"step": 30, "lo')
  assert [r["step"]
          for r in workdir_lib.read_metrics(str(root / "full" / "metrics.jsonl"))] == [10, 20]
  fake_run(root / "separate_1_16", "separate", [0.45], grid=((1, 16),))
  fake_run(root / "separate_2_32", "separate", [0.72], grid=((2, 32),))
  grid = tuple((n, d) for n in (1, 2, 4) for d in (16, 32, 64))
  fake_run(root / "grid", "starbucks", [n / 100 + d / 10000 for n, d in grid], name="grid",
           grid=grid)
  records = report.collect([str(root)], {str(root / "grid"): "starbucks grid"})
  assert {r["label"] for r in records} == {"starbucks", "full", "separate", "starbucks grid"}
  files = report.write(records, str(tmp_path / "out"), dataset="stsb", metric="spearman_cosine",
                       title="t")
  table = open(files["table"]).read()
  assert "| starbucks | **0.5000** | 0.7000 | 0.9000 | 0.7000 |" in table
  assert "| full | 0.4000 | 0.6000 | **0.9100** | 0.6367 |" in table
  # one row from its per-pair runs, no mean
  assert "| separate | 0.4500 | **0.7200** |  |  |" in table
  # the schedule's cells of the grid
  assert "| starbucks grid | 0.0116 | 0.0232 | 0.0464 | 0.0271 |" in table
  assert "| layers \\ dims | 16 | 32 | 64 |" in table and "| 2 | 0.0216 | 0.0232 | 0.0264 |" in table
  assert set(files) == {"table", "sizes", "grid", "curves"}
  for kind in ("sizes", "grid", "curves"):
    assert open(files[kind], "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(
        files[kind]) > 5000
  with pytest.raises(
      ValueError, match=r"no records for dataset='scifact'.*\('stsb', 'test', 'spearman_cosine'\)"):
    report.write(records, str(tmp_path / "o2"), dataset="scifact", metric="nDCG@10")
  with pytest.raises(FileNotFoundError, match="nowhere: no such run"):
    report.collect([str(tmp_path / "nowhere")])


def test_a_demo_run_reports_without_options_and_leaves_its_start_out(tmp_path, capsys):
  """A run's one dataset and metric are the defaults; its results/start.json (the starting model,
  eval.before_training) is not the run's result."""
  fake_run(tmp_path / "demo", "starbucks", [0.5, 0.7, 0.9], dataset="demo")
  fake_run(tmp_path / "demo", "starbucks", [0.1, 0.2, 0.3], dataset="demo", name="start")
  report.main([str(tmp_path / "demo"), "--out", str(tmp_path / "out")])
  assert "| starbucks | **0.5000** | **0.7000** | **0.9000** | 0.7000 |" in capsys.readouterr().out


def test_seeds_average_with_their_spread_and_splits_stay_apart(tmp_path):
  """Runs of one label (seeds) give mean ± sample sd (runs) per pair and for the mean over pairs;
  dev and test records of one dataset are reported apart."""
  root = tmp_path / "sweep"
  for seed, values in enumerate(([0.5, 0.7, 0.9], [0.6, 0.7, 0.8], [0.7, 0.7, 0.7])):
    fake_run(root / f"srl_{seed}", "starbucks", values)
    with open(root / f"srl_{seed}" / "results" / "final.json") as f:
      test = json.load(f)
    dev = [dict(r, split="dev", value=r["value"] - 0.1) for r in test]
    results.write(str(root / f"srl_{seed}"), "final", test + dev)
  fake_run(root / "full", "full", [0.4, 0.6, 0.95])
  records = report.collect([str(root)], {str(root / f"srl_{s}"): "SRL" for s in range(3)})
  table = open(
      report.write(records, str(tmp_path / "t"), dataset="stsb", metric="spearman_cosine",
                   split="test")["table"]).read()
  # (1,16): 0.5 0.6 0.7 -> 0.6 ± 0.1; (4,64): 0.9 0.8 0.7 -> 0.8 ± 0.1; means over pairs 0.7 0.7 0.7 -> sd 0
  assert "| SRL | **0.6000** ± 0.1000 (3) | **0.7000** ± 0.0000 (3) | 0.8000 ± 0.1000 (3) | 0.7000 ± 0.0000 (3) |" in table
  assert "| full | 0.4000 | 0.6000 | **0.9500** | 0.6500 |" in table and "stsb/test spearman_cosine" in table
  dev = open(
      report.write(records, str(tmp_path / "d"), dataset="stsb", metric="spearman_cosine",
                   split="dev")["table"]).read()
  assert "| SRL | **0.5000** ± 0.1000 (3) |" in dev and "full" not in dev  # full has no dev records
  with pytest.raises(ValueError, match="stsb spearman_cosine has splits dev, test: choose one"):
    report.write(records, str(tmp_path / "b"), dataset="stsb", metric="spearman_cosine")


def test_differences_from_a_baseline_are_marked_beyond_the_seed_spread(tmp_path):
  """Δ = label - baseline per pair and for the mean; marked where |Δ| > 2 x the larger seed sd."""
  root = tmp_path / "sweep"
  # sd 0.1, 0, 0.1; mean sd 0
  for seed, values in enumerate(([0.5, 0.7, 0.9], [0.6, 0.7, 0.8], [0.7, 0.7, 0.7])):
    fake_run(root / f"srl_{seed}", "starbucks", values)
  fake_run(root / "mine", "full", [0.85, 0.7, 0.75])
  records = report.collect(
      [str(root)],
      {**{str(root / f"srl_{s}"): "SRL" for s in range(3)},
       str(root / "mine"): "mine"})
  table = open(
      report.write(records, str(tmp_path / "t"), dataset="stsb", metric="spearman_cosine",
                   baseline="SRL")["table"]).read()
  # +0.25 > 2 x 0.1: marked; 0 at sd 0: not; -0.05 within 0.2: not; mean +0.0667 at sd 0: marked
  assert "Difference from SRL per (layer, dim); + or - where it is beyond 2 x the larger seed sd" in table
  assert "| mine | +0.2500 + | +0.0000 | -0.0500 | +0.0667 + |" in table
  assert open(tmp_path / "t" / "differences.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  one = open(
      report.write(records, str(tmp_path / "o"), dataset="stsb", metric="spearman_cosine",
                   baseline="mine")["table"]).read()
  assert "mine has one run, so its spread is unknown and nothing is marked" in one
  assert "| SRL | -0.2500 | +0.0000 | +0.0500 | -0.0667 |" in one
  with pytest.raises(ValueError,
                     match="baseline 'paper' is not a label of the report; labels: mine, SRL"):
    report.write(records, str(tmp_path / "b"), dataset="stsb", metric="spearman_cosine",
                 baseline="paper")


def test_sweep_skips_done_runs_prints_commands_and_reports(tmp_path, capsys):
  root = str(tmp_path / "w")
  runs = [
      sweep.Run("a/starbucks", "configs/ft.py:demo", ("--config.train.max_steps=1",), label="SRL"),
      sweep.Run("a/full", "configs/ft.py:demo,method=full", ("--config.model.init_from={root}/x",))
  ]
  assert runs[1].command(root, "python")[-1] == f"--config.model.init_from={root}/x"
  sweep.main(runs, default_root=root, argv=["--print-only"])
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].startswith(
      "python") or "starbucks_jax.main --config=configs/ft.py:demo" in printed[0]
  assert len(printed) == 2 and f"--workdir={root}/a/full" in printed[1]
  fake_run(os.path.join(root, "a", "starbucks"), "starbucks", [0.5, 0.7, 0.9])
  fake_run(os.path.join(root, "a", "full"), "full", [0.4, 0.6, 0.8])
  assert all(r.done(root) for r in runs)
  out = str(tmp_path / "rep")
  sweep.main(runs, [sweep.Report(out, ("a/",), "stsb", "spearman_cosine")], default_root=root,
             argv=[])
  text = capsys.readouterr().out
  assert "skip a/starbucks: done" in text and "skip a/full: done" in text
  assert "| SRL | **0.5000** |" in open(os.path.join(out, "table.md")).read()
  # another root: its reports go under it, not over the recorded ones
  os.remove(os.path.join(out, "table.md"))
  other = str(tmp_path / "trial")
  shutil.copytree(root, other)
  sweep.main(runs, [sweep.Report(out, ("a/",), "stsb", "spearman_cosine")], default_root=root,
             argv=["--root", other])
  assert not os.path.exists(os.path.join(out, "table.md"))
  assert "| SRL | **0.5000** |" in open(os.path.join(other, "reports", "rep", "table.md")).read()
  with pytest.raises(SystemExit):
    sweep.main(runs, default_root=root, argv=["--only", "b/"])
  # an archive keeps each finished run's record: a fresh machine without the workdirs skips the run
  archive = str(tmp_path / "archive")
  sweep.main(runs, [sweep.Report(out, ("a/",), "stsb", "spearman_cosine")], default_root=root,
             argv=[], archive=archive)
  assert sorted(os.listdir(os.path.join(
      archive, "a", "starbucks"))) == ["config.json", "metrics.jsonl", "results"]
  shutil.rmtree(root)
  assert all(r.done(root, archive) and not r.done(root) for r in runs)
  os.remove(os.path.join(out, "table.md"))
  sweep.main(runs, [sweep.Report(out, ("a/",), "stsb", "spearman_cosine")], default_root=root,
             argv=[], archive=archive)
  assert "skip a/full: done" in capsys.readouterr().out
  assert "| SRL | **0.5000** |" in open(os.path.join(out, "table.md")).read()
  # a baseline not finished (yet): no table, no error
  for baseline, shown in (("SRL", True), ("paper", False)):
    sweep.main(runs, [sweep.Report(out, ("a/",), "stsb", "spearman_cosine", baseline=baseline)],
               default_root=root, argv=["--report-only"], archive=archive)
    assert ("| full | -0.1000 | -0.1000 | -0.1000 | -0.1000 |"
            in open(os.path.join(out, "table.md")).read()) == shown


def test_ablation_sweep_picks_its_extra_seeds_on_dev_only(tmp_path):
  """experiments/sweep_ablations.py: seed 0 of every variant and SRL's seeds; once every seed 0 has
  finished, seeds 1 and 2 of the two variants with the best STS-B dev mean (not test). The switches
  (SWITCHES: same function, other kernels) and the MNRL comparison run at every seed from the
  start; the keep-the-full-size variants (KEEP_FULL) pick their two extra seeds the same way (the
  full pair at 1 has its seeds from the start), and the final phases chain after their start."""
  sweep_ablations = load_script("experiments/sweep_ablations.py")
  root = str(tmp_path)
  first = sweep_ablations.runs(root, None)
  n_switches = 3 * len(sweep_ablations.SWITCHES)
  keep_full = len(sweep_ablations.KEEP_FULL) + len(sweep_ablations.SEEDS)  # + full pair at 1's
  phases = 1 + len(sweep_ablations.PHASES)  # their start, then each
  assert len(first) == len(sweep_ablations.VARIANTS) + 2 + n_switches + keep_full + 3 * len(
      sweep_ablations.MNRL_LABELS) + phases
  assert len({r.name for r in first}) == len(first)
  full_at_1 = [
      r.overrides[1] for r in first
      if r.label == sweep_ablations.FULL_AT_1 and r.name.startswith("ablations/")
  ]
  assert full_at_1 == [f"--config.seed={s}" for s in (0, 1, 2)]
  assert all("--config.eval.sts=stsb/dev=" in r.overrides[0] for r in first)
  mnrl = [r for r in first if r.name.startswith("ablations_nli/")]
  assert {r.label for r in mnrl} >= {"SRL", sweep_ablations.RECOMMENDED}
  assert {r.config for r in mnrl} == {"configs/ft.py:nli_cpu"}
  others = [label for label in sweep_ablations.VARIANTS if label != "SRL"]
  for i, label in enumerate(others):  # dev ranks the last two best; test ranks the first two best
    workdir = sweep_ablations.run(label, 0).workdir(root)
    results.write(workdir, "final", [
        results.record("stsb", "dev", "spearman_cosine", 6, 384, 0.5 + i / 100),
        results.record("stsb", "test", "spearman_cosine", 6, 384, 0.9 - i / 100)
    ])
  # a switch is not a variant: it never competes for the extra seeds
  for label in sweep_ablations.SWITCHES:
    results.write(
        sweep_ablations.run(label, 0).workdir(root), "final",
        [results.record("stsb", "dev", "spearman_cosine", 6, 384, 0.99)])
  names = {r.name for r in first}
  extra = [r for r in sweep_ablations.runs(root, None) if r.name not in names]
  assert [(r.label, r.overrides[1]) for r in extra] == [(others[-1], "--config.seed=1"),
                                                        (others[-1], "--config.seed=2"),
                                                        (others[-2], "--config.seed=1"),
                                                        (others[-2], "--config.seed=2")]
  keep = list(sweep_ablations.KEEP_FULL)
  for i, label in enumerate(keep):  # dev ranks the first two best
    results.write(
        sweep_ablations.run(label, 0).workdir(root), "final",
        [results.record("stsb", "dev", "spearman_cosine", 6, 384, 0.9 - i / 100)])
  names |= {r.name for r in extra}
  extra = [r for r in sweep_ablations.runs(root, None) if r.name not in names]
  assert keep[0] == sweep_ablations.FULL_AT_1  # its seeds were listed already, not twice
  assert {(r.label, r.overrides[1]) for r in extra} == {(keep[1], f"--config.seed={s}")
                                                        for s in (1, 2)}
  assert len({r.name for r in sweep_ablations.runs(root, None)}) == len(names) + 2


def test_tpu_sweep_tables_advice_and_comparison(tmp_path):
  """experiments/compile_tpu.py: table.md, breakdown.md and advice.md from the compile reports in a
  folder (advice: per paper recipe, the steps that fit, best MFU bound first; a refused step is left
  out), and compare.md pairing each (recipe, topology, program) of two folders."""
  compile_tpu = load_script("experiments/compile_tpu.py")
  step = {
      "program": "train_step", "topology": "v5e-8", "chip": "TPU v5 lite", "devices": 8,
      "batch": "b", "mesh": {"data": 8, "fsdp": 1, "tensor": 1}, "usable_hbm_bytes": 15.75 * 2**30,
      "argument_bytes": 2**30, "temp_bytes": 2**30, "total_bytes": 2 * 2**30, "fits": True,
      "flops": 2e12, "model_flops": 1e12, "hbm_bytes": 8e9, "bytes_accessed": 3e10,
      "ici_bytes": 1e9, "roofline_seconds": 0.02, "bound": "hbm", "mfu_bound": 0.25,
      "hfu_bound": 0.5, "mfu_bound_all_memories": 0.1,
      "breakdown": {"matmuls": {"bytes": 2e10, "hbm_bytes": 5e9, "flops": 2e12, "ici_bytes": 0.0}}
  }
  refused = {
      k: step[k]
      for k in ("program", "topology", "chip", "devices", "batch", "mesh", "usable_hbm_bytes")
  }
  reports = {
      "nli_v5e-8": ("", step),
      "nli_flash_v5e-8": (" --config.model.attention=flash", {**step, "mfu_bound": 0.5}),
      "nli_gc4_v5e-8":
          (" --config.train.grad_cache_chunks=4",
           {**refused, "total_bytes": 20 * 2**30, "fits": False, "compiler": "RESOURCE_EXHAUSTED"})
  }
  before, after = tmp_path / "before", tmp_path / "after"
  for folder, scale in ((before, 1.0), (after, 2.0)):
    folder.mkdir()
    for name, (flags, r) in reports.items():
      r = {**r, "mfu_bound": r["mfu_bound"] * scale} if r["fits"] else r
      json.dump({"command": f"compile.py --config=configs/ft.py:nli{flags}", "programs": [r]},
                open(folder / f"{name}.json", "w"))
  compile_tpu.write_table(str(after))
  table = (after / "table.md").read_text()
  assert "| nli_flash | model.attention=flash | v5e-8 (8 x TPU v5 lite) |" in table and "| NO |" in table
  assert "| matmuls | 5.00 | 20.00 | 2000 | 0.000 |" in (after / "breakdown.md").read_text()
  advice = (after / "advice.md").read_text().splitlines()
  rows = [
      line for line in advice if line.startswith("| (as configured)") or line.startswith("| model.")
  ]
  # best first
  assert [r.split(" | ")[0] for r in rows] == ["| model.attention=flash", "| (as configured)"]
  assert "grad_cache_chunks" not in "\n".join(advice)  # it did not fit
  # MFU, HFU, all memories, 8 chips x 20 ms
  assert "| 1.00 | 0.50 | 0.10 | 0.160 | 2.00 (15.75) |" in rows[0]
  compare = open(compile_tpu.compare(str(before), str(after))).read()
  assert "| nli_flash | v5e-8 | train_step | yes -> yes | 2.00 -> 2.00 |" in compare
  assert "| 0.50 -> 1.00 |" in compare
