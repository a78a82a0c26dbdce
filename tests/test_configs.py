"""Configs load, bad values fail before any compute naming the key, and main runs end to end."""

import glob
import json
import os
import subprocess
import sys

import pytest

from starbucks_jax import config_blocks, config_lib, finetune, model_dirs, schedule
from starbucks_jax.config_blocks import SentenceEval

from conftest import REPO, load_script

CONFIGS = sorted(glob.glob(str(REPO / "configs" / "*.py")))


def _variants(path):
  """Every variant a config file names in its docstring ('  name  description')."""
  src = open(path).read()
  doc = src.split('"""')[1]
  names = [
      line.split()[0] for line in doc.split("Variants:")[1].splitlines()
      if line.startswith("  ") and not line.startswith("   ") and line.strip()
  ]
  return [None] + names


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_and_variant_loads(path):
  for variant in _variants(path):
    cfg = config_lib.load_config(path + (f":{variant}" if variant else ""))
    assert cfg.is_locked
    with pytest.raises(AttributeError):
      cfg.modle = 1  # a locked config refuses new (misspelt) keys


def test_paper_recipes_keep_duplicate_texts_in_a_batch():
  """As the authors' runs (sentence-transformers' default batch sampler); no_duplicates is an option."""
  for variant in _variants(str(REPO / "configs" / "ft.py")):
    cfg = config_lib.load_config(
        str(REPO / "configs" / "ft.py") + (f":{variant}" if variant else ""))
    assert cfg.data.no_duplicates is False, variant


@pytest.mark.parametrize("method,weighting,detach,embedding_output",
                         [("2dmse", "linear", False, False), ("2dmse_st6", "uniform", True, True)])
def test_2dmse_presets(method, weighting, detach, embedding_output):
  cfg = config_lib.load_config(str(REPO / "configs" / "ft.py") + f":sts,method={method}")
  assert (cfg.schedule.method, cfg.loss.kl) == ("2dmse", "tempered_features")
  assert (cfg.loss.layer_weighting, cfg.loss.kl_detach) == (weighting, detach)
  assert cfg.schedule.sample_embedding_output is embedding_output


@pytest.mark.parametrize("method", ["starbucks_scores_1n", "recommended"])
def test_recommended_preset_is_the_ablation_it_rests_on(method):
  """method=starbucks_scores_1n sets what the ablation sweep's run of that variant overrode, and
  nothing else; method=recommended what the sweep's RECOMMENDED variant overrode."""
  sweep = load_script("experiments/sweep_ablations.py")
  label = "kl=scores (detached) + weights 1/n" if method != "recommended" else sweep.RECOMMENDED
  _, overrides = {**sweep.VARIANTS, **sweep.KEEP_FULL}[label]
  ft = str(REPO / "configs" / "ft.py")
  swept = config_lib.load_config(ft + ":sts_cpu")
  for override in overrides:
    key, value = override.removeprefix("--config.").split("=")
    section, field = key.split(".")
    with swept.unlocked():
      swept[section][field] = type(
          swept[section][field])(value == "True" if value in ("True", "False") else value)
  preset = config_lib.load_config(ft + f":sts_cpu,method={method}")
  assert preset.to_dict() == swept.to_dict() != config_lib.load_config(ft + ":sts_cpu").to_dict()
  assert (preset.schedule.method, preset.loss.kl, preset.loss.kl_detach) == ("starbucks", "scores",
                                                                             True)


def test_final_phases_train_the_full_size_from_a_recommended_run():
  sweep = load_script("experiments/sweep_ablations.py")
  start, *phases = sweep.phase_runs(1)
  recommended = sweep.run(sweep.RECOMMENDED, 1)
  assert (start.config, start.overrides) == (recommended.config, recommended.overrides)
  assert start.name != recommended.name and start.label != recommended.label  # counted apart
  assert len({p.name for p in phases}) == len(sweep.PHASES) and phases
  for phase in phases:
    assert phase.config == sweep.RECIPE + ",method=full" and phase.name.endswith("_seed1")
    command = phase.command("R")
    assert f"--config.model.init_from={start.workdir('R')}" in command
    assert "--config.seed=1" in command and "--config.train.max_steps=144" in command


def test_recommended_retrieval_is_the_recipe_with_the_recommended_loss():
  path = str(REPO / "configs" / "retrieval.py")
  base = config_lib.load_config(path + ":scifact").to_dict()
  recommended = config_lib.load_config(path + ":scifact,method=recommended").to_dict()
  assert recommended["loss"] == {**base["loss"], **config_blocks.RECOMMENDED_LOSS} != base["loss"]
  assert {k: v for k, v in recommended.items()
          if k != "loss"} == {k: v for k, v in base.items() if k != "loss"}


def test_retrieval_recipe_evaluates_as_the_authors():
  """MS MARCO dev, DL19 and DL20 in Tevatron's layout (title + text corpus), one index for the three;
  the check before compute passes with every part on the Hub (read when evaluating)."""
  cfg = config_lib.load_config(str(REPO / "configs" / "retrieval.py"))
  block = SentenceEval.from_config(cfg.eval)
  block.check()
  sets = block.retrieval_sets
  assert [(dataset, split) for dataset, split, _ in sets] == [("msmarco", "dev"),
                                                              ("msmarco", "dl19"),
                                                              ("msmarco", "dl20")]
  from starbucks_jax.data import tevatron
  parts = [tevatron.parts(source, split) for _, split, source in sets]
  assert {corpus
          for corpus, _, _ in parts} == {"hf:Tevatron/msmarco-passage-corpus/corpus.jsonl.gz"}
  assert [queries for _, queries, _ in parts
         ] == [f"hf:Tevatron/msmarco-passage/{s}.jsonl.gz" for s in ("dev", "dl19", "dl20")]
  assert [qrels for _, _, qrels in parts] == [
      "hf:BeIR/msmarco-qrels@dev", "https://trec.nist.gov/data/deep/2019qrels-pass.txt",
      "https://trec.nist.gov/data/deep/2020qrels-pass.txt"
  ]
  assert cfg.data.train == "hf:Tevatron/msmarco-passage/train.jsonl.gz"


def test_parse_arg():
  arg = config_lib.parse_arg("demo,steps=3,lr=0.5,name=x", demo=False, steps=0, lr=1.0, name="")
  assert (arg.demo, arg.steps, arg.lr, arg.name) == (True, 3, 0.5, "x")
  with pytest.raises(config_lib.ConfigError, match="'dmeo' is unknown"):
    config_lib.parse_arg("dmeo", demo=False)
  with pytest.raises(config_lib.ConfigError, match="steps='x': expected int"):
    config_lib.parse_arg("steps=x", steps=0)


@pytest.fixture
def tiny_config(tiny_hf_dir):
  cfg = config_lib.load_config(str(REPO / "configs" / "ft.py") + ":eval")
  with cfg.unlocked():
    cfg.model.init_from = tiny_hf_dir
    cfg.schedule.pairs = ((1, 8), (2, 16), (4, 32))
  return cfg


def test_invalid_pairs_fail_before_any_weight_is_read(tiny_config, tmp_path, monkeypatch):
  def no_weights(*a, **k):
    raise AssertionError("weights were read before the config was validated")

  monkeypatch.setattr(model_dirs, "read_state_dict", no_weights)
  cases = {((1, 8), (5, 16)): r"schedule.pairs\[1\]=\(5, 16\): layer=5 is outside 1..4",
           ((1, 8), (2, 64)): r"schedule.pairs\[1\]=\(2, 64\): dim=64 is outside 1..32",
           ((2, 8), (1, 16)): r"schedule.pairs\[0:2\].*strictly increase",
           (): "schedule.pairs is empty"}
  for pairs, msg in cases.items():
    tiny_config.schedule.pairs = pairs
    with pytest.raises(config_lib.ConfigError, match=msg):
      finetune.run(tiny_config, str(tmp_path / "w"))
  tiny_config.schedule.pairs = ((1, 8),)
  tiny_config.model.pooling = "max"
  with pytest.raises(config_lib.ConfigError, match="model.pooling='max'"):
    finetune.run(tiny_config, str(tmp_path / "w"))
  tiny_config.model.pooling = "mean"
  tiny_config.eval.sts = "demo/test=nowhere.jsonl"
  with pytest.raises(config_lib.ConfigError,
                     match=r"eval.sts \(demo/test\): nowhere.jsonl: no such file"):
    finetune.run(tiny_config, str(tmp_path / "w"))
  tiny_config.eval.sts = "demo=demo:sts_test.jsonl"
  with pytest.raises(config_lib.ConfigError, match="DATASET/SPLIT=SOURCE"):
    finetune.run(tiny_config, str(tmp_path / "w"))
  tiny_config.model.init_from = str(tmp_path / "no_model")
  with pytest.raises(config_lib.ConfigError, match="model.init_from=.*no model directory"):
    finetune.run(tiny_config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")  # nothing was written either


def test_eval_mode_writes_results(tiny_config, tmp_path):
  records = finetune.run(tiny_config, str(tmp_path / "w"))
  saved = json.load(open(tmp_path / "w" / "results" / "eval.json"))
  assert saved == records
  assert {(r["layer"], r["dim"]) for r in saved} == {(1, 8), (2, 16), (4, 32)}
  assert set(saved[0]) == {"dataset", "split", "metric", "layer", "dim", "value"}
  assert json.load(open(tmp_path / "w" / "config.json"))["schedule"]["pairs"] == [[1, 8], [2, 16],
                                                                                  [4, 32]]
  tiny_config.eval.grid = True
  grid = finetune.run(tiny_config, str(tmp_path / "g"))
  assert len(grid) == 4 * 3


def _main(*args):
  env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "starbucks_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_the_demo_run_is_quiet_and_shows_what_training_changed(tiny_hf_dir, tmp_path):
  """configs/ft.py:demo as a user runs it with its output piped (no terminal), on a CPU machine
  with the tpu and gpu extras (the test install), JAX_PLATFORMS unset: a progress line per
  train.log_every steps, none of libtpu's, the CUDA plugin's or orbax's notices; the table has the
  starting model's column and the change (eval.before_training), and the plot is beside it."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"} | {"HF_HUB_OFFLINE": "1"}
  done = subprocess.run([
      sys.executable, "-m", "starbucks_jax.main", "--config=configs/ft.py:demo",
      f"--workdir={tmp_path / 'w'}", f"--config.model.init_from={tiny_hf_dir}",
      "--config.schedule.pairs=((1,8),(4,32))", "--config.train.max_steps=4",
      "--config.train.log_every=2"
  ], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "step 2/4 loss" in done.stderr and "step 4/4 loss" in done.stderr
  for noise in ("libtpu", "hostname", "cuFFT", "Traceback", "WARNING:absl", "CheckpointManager"):
    assert noise not in done.stdout + done.stderr, noise
  head, *rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
  assert head.split("|")[3:6] == [" demo/test spearman_cosine ", "   start ", "  change "]
  start = json.load(open(tmp_path / "w" / "results" / "start.json"))
  final = json.load(open(tmp_path / "w" / "results" / "final.json"))
  row = next(r for r in rows if r.startswith("| 4 | 32 |")).split("|")
  now, then = (next(r["value"] for r in recs if r["layer"] == 4) for recs in (final, start))
  assert [float(x) for x in row[3:6]] == pytest.approx([now, then, now - then], abs=1e-4)
  assert os.path.getsize(tmp_path / "w" / "results" / "sizes.png") > 0
  assert "(plot: " in done.stdout
  # a line under the table says what the column is
  assert ("- demo/test: Spearman of cosine similarity against the gold scores, 100 pairs of "
          "demo:sts_test.jsonl") in done.stdout


def test_a_method_is_named_where_the_config_file_takes_it(tmp_path):
  """Presets are the config file's argument: --config.method says where it goes, an unknown
  method= lists every method and preset, and --config.schedule.method names the preset form."""
  from starbucks_jax import cli
  with pytest.raises(
      config_lib.ConfigError,
      match=r"--config.method: a method goes after the config file, as its argument: "
      r"--config=configs/ft.py:demo,method=NAME"):
    cli.check_config_args(["--config=configs/ft.py:demo", "--config.method=starbucks_scores_1n"])
  with pytest.raises(
      config_lib.ConfigError, match=r"method='foo': expected one of starbucks, .*, 2dmse_st6, "
      r"starbucks_scores_1n"):
    config_lib.load_config(str(REPO / "configs" / "ft.py") + ":demo,method=foo")
  with pytest.raises(
      ValueError, match=r"is the config file's argument: "
      r"--config=configs/ft.py:VARIANT,method=NAME"):
    schedule.plan("starbucks_scores_1n", ((1, 8), (2, 16)), 2, 16)


def test_a_value_of_the_wrong_type_is_one_line():
  """absl would print 'FATAL Flags parsing error' and a help hint; the check names the flag and
  the type first."""
  from starbucks_jax import cli
  for flag, want in (("--config.train.lr=abc", "expected float"), ("--config.train.max_steps=1.5",
                                                                   "expected int"),
                     ("--config.eval.before_training=maybe", "expected bool")):
    with pytest.raises(config_lib.ConfigError, match=f"{flag}: {want}"):
      cli.check_config_args(["--config=configs/ft.py:demo", flag])
  cli.check_config_args([
      "--config=configs/ft.py:demo", "--config.train.lr=1e-4", "--config.train.max_steps=3",
      "--config.eval.before_training=False"
  ])


def test_main_command_line(tiny_hf_dir, tmp_path):
  ok = _main("--config=configs/ft.py:eval", f"--workdir={tmp_path / 'w'}",
             f"--config.model.init_from={tiny_hf_dir}", "--config.schedule.pairs=((1,8),(4,32))")
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "| 4 | 32 |" in ok.stdout
  assert json.load(open(tmp_path / "w" / "timing.json"))["eval_s"] > 0  # where the time went
  # a workdir written before loss.full_weight existed: at its default the key is no change
  saved = json.load(open(tmp_path / "w" / "config.json"))
  del saved["loss"]["full_weight"]
  json.dump(saved, open(tmp_path / "w" / "config.json", "w"))
  again = _main("--config=configs/ft.py:eval", f"--workdir={tmp_path / 'w'}",
                f"--config.model.init_from={tiny_hf_dir}", "--config.schedule.pairs=((1,8),(4,32))")
  assert again.returncode == 0 and "predates keys that keep their defaults here: loss.full_weight = 1.0" in again.stderr
  typo = _main("--config=configs/ft.py:eval", f"--workdir={tmp_path / 'w'}",
               "--config.modle.pooling=cls")
  assert typo.returncode == 2 and typo.stderr.strip().splitlines()[-1] == (
      "error: --config.modle.pooling: no such key in configs/ft.py; did you mean --config.model.pooling?"
  )
  assert "Traceback" not in typo.stderr


def test_main_reports_a_bad_run_in_one_line(tiny_hf_dir, tmp_path, capsys):
  """What main does after parsing its flags (main.run inside cli.run), in this process: every user
  mistake is one `error:` line and exit status 2, before anything is written or compiled."""
  from starbucks_jax import cli, main

  def error_of(spec, workdir, **overrides):
    config = config_lib.load_config(str(REPO / "configs" / spec))
    with config.unlocked():
      config.model.init_from = tiny_hf_dir
      config.schedule.pairs = ((1, 8), (4, 32))
      for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
      cli.run(lambda: main.run(config, workdir))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and len(
        err.strip().splitlines()) == 1, err
    return err.strip()

  assert error_of("ft.py:eval", "") == "error: --workdir is empty; name the run's directory"
  assert error_of("ft.py:eval", str(tmp_path / "w"), **{"schedule.pairs": (
      (1, 8), (9, 16))}).startswith("error: schedule.pairs[1]=(9, 16)")
  rows = tmp_path / "train.jsonl"
  rows.write_text(
      '{"anchor": "a", "positive": "b", "negative": "c"}\n{"anchor": null, "positive": "b", "negative": "c"}\n'
  )
  assert error_of("ft.py:demo", str(tmp_path / "d"), **{
      "data.train": str(rows)
  }) == (f"error: {rows}:2: column 'anchor' = None is null, not a text; remove the row or fill it")
  assert not (tmp_path / "d" / "config.json").exists()
  # configs/pt.py goes to SMAE pre-training; a bad masking rate fails before any compute
  assert "error: smae.*: masking rates" in error_of("pt.py:tiny", str(tmp_path / "pt"),
                                                    **{"smae.decoder_mask_rate": 0.1})
