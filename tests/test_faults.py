"""Bad inputs and faults: each gets one line naming the file, line or key, before any compute, and
changes nothing it should not (docs/running.md, "Reliability")."""

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from starbucks_jax import checkpoint, cli, config_lib, embed, export, finetune, metrics, model_dirs
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.data import batching, groups
from starbucks_jax.data.sources import DataError
from starbucks_jax.evaluate import results
from starbucks_jax.models import hf

from conftest import REPO, kill_at


def tree_digest(path) -> dict[str, str]:
  """{relative file: sha256} of a directory tree (what a fault must leave as it was)."""
  out = {}
  for folder, _, files in os.walk(path):
    for name in files:
      full = os.path.join(folder, name)
      out[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
  return out


def cli_error(capsys, main, argv) -> str:
  """The one line a command-line tool printed for a fault, after checking it exited with status 2."""
  with pytest.raises(SystemExit) as done:
    cli.run(lambda: main(argv))
  assert done.value.code == cli.EXIT_USAGE
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) >= 1 and err[-1].startswith("error: ") and "Traceback" not in "".join(err)
  return err[-1]


# ---------------------------------------------------------------------------------------------
# export: never over a model, a workdir or someone's files
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def model_copy(tiny_hf_dir, tmp_path):
  path = tmp_path / "source"
  shutil.copytree(tiny_hf_dir, path)
  return str(path)


@pytest.mark.parametrize("where", ["source", "inside_source", "workdir", "non_empty", "file"])
def test_export_refuses_an_output_it_would_destroy(model_copy, tmp_path, capsys, where):
  target = {
      "source": model_copy, "inside_source": os.path.join(model_copy,
                                                          "sub"), "workdir": str(tmp_path / "run"),
      "non_empty": str(tmp_path / "mine"), "file": str(tmp_path / "notes.txt")
  }[where]
  os.makedirs(tmp_path / "run" / workdir_lib.CHECKPOINTS)
  os.makedirs(tmp_path / "run" / workdir_lib.MODEL)
  os.makedirs(tmp_path / "mine")
  (tmp_path / "mine" / "keep.txt").write_text("mine")
  (tmp_path / "notes.txt").write_text("notes")
  before = tree_digest(tmp_path)
  line = cli_error(capsys, export.main, ["--model", model_copy, "--output", target, "--layer", "2"])
  assert f"--output {target}" in line
  assert {
      "source": "source model", "inside_source": "source model", "workdir": "training workdir",
      "non_empty": "--overwrite", "file": "is a file"
  }[where] in line
  assert tree_digest(tmp_path) == before


def test_export_overwrite_replaces_and_writes_readable_files(model_copy, tmp_path):
  out = tmp_path / "mine"
  out.mkdir()
  (out / "old.txt").write_text("old")
  export.main(
      ["--model", model_copy, "--output",
       str(out), "--layer", "2", "--dim", "16", "--overwrite"])
  assert not (out / "old.txt").exists() and (out / "model.safetensors").exists()
  modes = {
      os.path.relpath(os.path.join(d, f), out): os.stat(os.path.join(d, f)).st_mode & 0o777
      for d, _, fs in os.walk(out) for f in fs
  }
  assert set(modes.values()) == {0o644}, modes
  assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary folder left


# ---------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case",
    ["blank_line", "batch_size_0", "no_output_folder", "output_is_folder", "no_input", "bad_layer"])
def test_embed_bad_inputs_fail_before_encoding(tiny_hf_dir, tmp_path, capsys, case):
  texts = tmp_path / "in.txt"
  texts.write_text("a cat\n\nthe dog\n" if case == "blank_line" else "a cat\nthe dog\n")
  out = tmp_path / "v.npy"
  argv = ["--model", tiny_hf_dir, "--input", str(texts), "--output", str(out)]
  argv += {
      "batch_size_0": ["--batch-size",
                       "0"], "no_output_folder": ["--output",
                                                  str(tmp_path / "x" / "v.npy")],
      "output_is_folder": ["--output", str(tmp_path)],
      "no_input": ["--input", str(tmp_path / "none.txt")], "bad_layer": ["--layer", "9"]
  }.get(case, [])
  line = cli_error(capsys, embed.main, argv)
  want = {
      "blank_line": f"--input {texts}:2: blank line",
      "batch_size_0": "--batch-size=0: must be >= 1", "no_output_folder": "does not exist",
      "output_is_folder": "is a directory", "no_input": "none.txt: no such file",
      "bad_layer": "layer=9 is outside 1..4"
  }[case]
  assert want in line
  assert not out.exists()


def test_embed_skip_empty_counts_and_drops_blank_lines(tiny_hf_dir, tmp_path, capsys):
  texts = tmp_path / "in.txt"
  texts.write_text("a cat\n   \nthe dog\n\n")
  embed.main([
      "--model", tiny_hf_dir, "--input",
      str(texts), "--output",
      str(tmp_path / "v.npy"), "--skip-empty"
  ])
  assert "skipped 2 blank line(s)" in capsys.readouterr().err
  assert np.load(tmp_path / "v.npy").shape == (2, 32)


def test_nan_weights_fail_at_load_naming_the_tensor(model_copy, tmp_path, capsys):
  from safetensors.numpy import load_file, save_file
  file = os.path.join(model_copy, "model.safetensors")
  state = load_file(file)
  name = next(k for k in state if k.endswith("encoder.layer.1.output.dense.weight"))
  state[name][0, 0] = np.nan
  save_file(state, file, metadata={"format": "pt"})
  with pytest.raises(hf.ModelError, match=rf"{name}' has 1 NaN or infinite value"):
    model_dirs.load_pretrained(model_copy)
  texts = tmp_path / "in.txt"
  texts.write_text("a cat\n")
  line = cli_error(
      capsys, embed.main,
      ["--model", model_copy, "--input",
       str(texts), "--output",
       str(tmp_path / "v.npy")])
  assert name in line and model_copy in line


# ---------------------------------------------------------------------------------------------
# config values: NaN and infinity fail everywhere, as does a value of the wrong kind
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [
    ("train.lr", float("nan")),
    ("train.lr", float("inf")),
    ("train.warmup_ratio", float("nan")),
    ("loss.scale", float("nan")),
    ("loss.kl_weight", float("-inf")),
    ("train.adam_eps", float("nan")),
    ("data.score_range", (0.0, float("nan"))),
    ("loss.pair_weights", (1.0, float("nan"))),
])
def test_non_finite_config_values_name_the_key(tiny_run, key, value):
  """Whatever the key's own checks, a NaN or infinity anywhere in the config fails before compute."""
  section, name = key.split(".")
  with tiny_run.unlocked():
    tiny_run[section][name] = value
  with pytest.raises(config_lib.ConfigError,
                     match=rf"^{key}=.*; must be finite \(no NaN or infinity\)"):
    finetune.describe(tiny_run)


def test_max_length_one_names_the_key(tiny_run):
  with tiny_run.unlocked():
    tiny_run.model.max_length = 1
  with pytest.raises(config_lib.ConfigError,
                     match=r"^model.max_length=1: expected 0 .* at least 2"):
    finetune.describe(tiny_run)


def test_layer_weighting_names_the_method_it_needs(tiny_run):
  with tiny_run.unlocked():
    tiny_run.loss.layer_weighting = "linear"
  with pytest.raises(
      config_lib.ConfigError, match=r"^loss.layer_weighting='linear' weighs the sampled layer "
      r"of schedule.method='2dmse'; schedule.method='starbucks' has none"):
    finetune.describe(tiny_run)
  with tiny_run.unlocked():
    tiny_run.schedule.method = "2dmse"
  assert finetune.describe(tiny_run).loss.layer_weighting == "linear"
  with tiny_run.unlocked():
    tiny_run.loss.layer_weighting = "inverse"
  with pytest.raises(config_lib.ConfigError, match=r"^loss.layer_weighting='inverse'"):
    finetune.describe(tiny_run)


def test_check_range_rejects_nan_and_non_numbers():
  for value in (float("nan"), "1e-4", None, True):
    with pytest.raises(config_lib.ConfigError, match="must be a finite number"):
      config_lib.check_range("train.lr", value, 0, low_open=True)
  config_lib.check_range("train.lr", 1e-4, 0, low_open=True)


# ---------------------------------------------------------------------------------------------
# data rows: every text a non-empty string, every score finite and in range, passages as documented
# ---------------------------------------------------------------------------------------------
GOOD_TRIPLET = {"anchor": "a cat", "positive": "the cat", "negative": "a dog"}


@pytest.mark.parametrize("row,message", [
    ({**GOOD_TRIPLET, "anchor": None}, "column 'anchor' = None is null, not a text"),
    ({**GOOD_TRIPLET, "positive": 3}, "column 'positive' = 3 is a int, not a text"),
    ({**GOOD_TRIPLET, "negative": ["a", "b"]
     }, "column 'negative' = ['a', 'b'] is a list, not a text"),
    ({**GOOD_TRIPLET, "anchor": "  "}, "column 'anchor' = '  ' is an empty text"),
    ({"anchor": "a cat", "positive": "the cat"}, "no column 'negative'"),
])
def test_bad_triplet_rows_name_file_and_line(tmp_path, row, message):
  path = tmp_path / "train.jsonl"
  path.write_text(json.dumps(GOOD_TRIPLET) + "\n" + json.dumps(row) + "\n")
  with pytest.raises(DataError) as e:
    batching.load_examples(str(path), "triplets")
  assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)


@pytest.mark.parametrize("suffix", ["jsonl", "txt", "tsv", "jsonl.gz"])
def test_a_byte_that_is_not_utf8_names_file_line_and_column(tmp_path, suffix):
  import gzip

  from starbucks_jax.data import sources
  good = {"jsonl": json.dumps(GOOD_TRIPLET), "txt": "a cat", "tsv": "a cat\tthe cat"}
  head = {"tsv": "anchor\tpositive\n"}.get(suffix, "")
  kind = suffix.split(".")[0]
  data = (head + (good[kind] + "\n") * 2).encode() + b'{"anchor": "caf\xe9"}\n'
  path = tmp_path / f"train.{suffix}"
  path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
  line = 4 if kind == "tsv" else 3  # after the header (tsv) and two good rows
  with pytest.raises(DataError, match=rf"^{path}:{line}: byte 0xe9 at column \d+ is not UTF-8"):
    list(sources.read_rows(str(path), {"anchor": str} if kind != "txt" else {"text": str}))


@pytest.mark.parametrize("score,message", [
    ("NaN", "is not a finite number"),
    ("Infinity", "is not a finite number"),
    ("7.5", "is outside data.score_range [0, 5]"),
    ("-1", "is outside data.score_range [0, 5]"),
    ('"high"', "is not a number"),
    ("null", "is null, not a number"),
    ("true", "is a bool, not a number"),
])
def test_bad_scores_name_file_line_and_value(tmp_path, score, message):
  path = tmp_path / "sts.jsonl"
  good = '{"sentence1": "a cat", "sentence2": "the cat", "score": 4.2}'
  path.write_text(good + "\n" + good.replace("4.2", score) + "\n")
  with pytest.raises(DataError) as e:
    batching.load_examples(str(path), "scored_pairs")
  assert str(e.value).startswith(f"{path}:2: column 'score'") and message in str(e.value)


def test_score_range_is_the_configs(tmp_path):
  path = tmp_path / "sts.jsonl"
  path.write_text('{"sentence1": "a cat", "sentence2": "the cat", "score": 0.9}\n')
  assert batching.load_examples(str(path), "scored_pairs",
                                score_range=(0.0, 1.0)).scores.tolist() == [pytest.approx(0.9)]
  with pytest.raises(DataError, match=r"outside data.score_range \[0, 0.5\]"):
    batching.load_examples(str(path), "scored_pairs", score_range=(0.0, 0.5))


@pytest.mark.parametrize("field,value,message", [
    ("positive_passages", "a passage", "is a str, not a list"),
    ("negative_passages", "a passage", "is a str, not a list"),
    ("positive_passages", [], "needs at least one positive passage"),
    ("positive_passages", [{"text": ""}], "needs at least one positive passage, none empty"),
    ("negative_passages", [7], "has item 0 = 7, not a passage text"),
    ("negative_passages", [{"title": 3, "text": "x"}], "has item 0"),
])
def test_bad_passage_lists_name_file_and_line(tmp_path, field, value, message):
  good = {
      "query": "what is a cat",
      "positive_passages": [{"title": "Cat", "text": "a cat is an animal"}],
      "negative_passages": ["a dog is an animal"]
  }
  path = tmp_path / "groups.jsonl"
  path.write_text(json.dumps(good) + "\n" + json.dumps({**good, field: value}) + "\n")
  with pytest.raises(DataError) as e:
    groups.load_tevatron(str(path))
  assert str(e.value).startswith(f"{path}:2: column '{field}'") and message in str(e.value)
  path.write_text(json.dumps(good) + "\n")
  assert groups.load_tevatron(
      str(path)).passages == ["Cat a cat is an animal", "a dog is an animal"]


# ---------------------------------------------------------------------------------------------
# runs: a workdir's run is never overwritten by another config, never poisoned, never restarted
# ---------------------------------------------------------------------------------------------
def test_a_changed_config_on_rerun_stops_before_writing(tiny_run, tmp_path):
  work = str(tmp_path / "run")
  finetune.run(tiny_run, work)
  before = tree_digest(work)
  with tiny_run.unlocked():
    tiny_run.train.lr = 1e-3
    tiny_run.data.batch_size = 4
  with pytest.raises(config_lib.ConfigError) as e:
    finetune.run(tiny_run, work)
  assert "train.lr: 5e-05 -> 0.001" in str(e.value) and "data.batch_size: 8 -> 4" in str(e.value)
  assert "--config.resume=force" in str(e.value)
  assert tree_digest(work) == before
  # what does not change the run's meaning is allowed (here: logging and saving less often)
  with tiny_run.unlocked():
    tiny_run.train.lr, tiny_run.data.batch_size = 5e-5, 8
    tiny_run.train.log_every, tiny_run.train.checkpoint_every = 3, 3
  workdir_lib.check_resume(work, tiny_run)
  # a new total of steps moves the learning-rate schedule under the resumed run: refused, and why
  with tiny_run.unlocked():
    tiny_run.train.max_steps = 3
  with pytest.raises(
      config_lib.ConfigError,
      match=r"train.max_steps: 2 -> 3 \(train.max_steps set the total steps the "
      r"learning rate's warmup and decay are laid over: resumed, the rate would jump"):
    workdir_lib.check_resume(work, tiny_run)
  with tiny_run.unlocked():
    tiny_run.train.max_steps = 2
  # a run older than a key: absent -> the config file's default is no change; anything else is
  saved = json.load(open(os.path.join(work, "config.json")))
  del saved["train"]["adam_eps"]
  json.dump(saved, open(os.path.join(work, "config.json"), "w"))
  defaults = copy.deepcopy(tiny_run)
  with pytest.raises(config_lib.ConfigError, match=r"train.adam_eps: '<absent>' -> 1e-08"):
    workdir_lib.check_resume(work, tiny_run)  # no defaults known (a run started from Python)
  workdir_lib.check_resume(work, tiny_run, defaults)
  with tiny_run.unlocked():
    tiny_run.train.adam_eps = 1e-6
  with pytest.raises(config_lib.ConfigError, match=r"train.adam_eps: '<absent>' -> 1e-06"):
    workdir_lib.check_resume(work, tiny_run, defaults)


def test_changed_training_data_on_rerun_is_refused(tiny_run, tmp_path, caplog):
  work = str(tmp_path / "run")
  with tiny_run.unlocked():
    tiny_run.train.max_steps = 1
  finetune.run(tiny_run, work)
  data = tiny_run.data.train
  recorded = json.load(open(os.path.join(work, workdir_lib.DATA)))["data.train"]
  assert recorded["spec"] == data and list(recorded["files"]) == ["train.jsonl"]
  os.utime(data, (1, 1))  # touched (copied, restored from a backup): the same data
  workdir_lib.check_resume(work, tiny_run)
  size = os.path.getsize(data)
  with open(data, "a") as f:
    f.write(json.dumps({"anchor": "new", "positive": "row", "negative": "here"}) + "\n")
  with pytest.raises(
      config_lib.ConfigError,
      match=rf"data.train='{data}': train.jsonl changed since {work} started \(size "
      rf"{size} -> {os.path.getsize(data)}, content differs\); the checkpoints were "
      "trained on the old data"):
    workdir_lib.check_resume(work, tiny_run)
  with tiny_run.unlocked():
    tiny_run.resume = "force"
  workdir_lib.check_resume(work, tiny_run)
  assert "data.train changed since the run started" in caplog.text


def test_truncated_newest_checkpoint_resumes_from_the_one_before(tiny_run, tmp_path):
  work = str(tmp_path / "run")
  with tiny_run.unlocked():
    tiny_run.train.max_steps = 3
  finetune.run(tiny_run, work)
  straight = checkpoint.load_model(work).params  # the uninterrupted run's step 3
  newest = os.path.join(work, workdir_lib.CHECKPOINTS, "3", "params")
  for folder, _, files in os.walk(newest):  # every data file of step 3's params cut short
    for name in files:
      if not name.endswith(".json") and "_METADATA" not in name:
        path = os.path.join(folder, name)
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
  finetune.run(tiny_run, work)  # resumes from step 2: step 3 again
  assert os.listdir(os.path.join(work, workdir_lib.UNREADABLE))[0].startswith("3-")
  resumed = checkpoint.load_model(work).params
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
                         resumed, straight)
  steps = [json.loads(line)["step"] for line in open(os.path.join(work, "metrics.jsonl"))]
  assert steps == [1, 2, 3]  # the lost step's row replaced, not repeated
  # none readable: an error that moves nothing, never a silent restart
  for folder, _, files in os.walk(os.path.join(work, workdir_lib.CHECKPOINTS)):
    for name in files:
      if not name.endswith(".json") and "_METADATA" not in name:
        open(os.path.join(folder, name), "wb").close()
  before = tree_digest(work)
  with pytest.raises(hf.ModelError, match="no checkpoint reads back"):
    finetune.run(tiny_run, work)
  assert tree_digest(work) == before


def test_a_run_whose_steps_are_all_non_finite_stops_without_results(tiny_run, tmp_path,
                                                                    monkeypatch):
  """A loss that is NaN from the start (as a broken dtype or data would make it): the run stops at
  the first log, writes no checkpoint and no result (never an untrained model reported as trained)."""
  real = finetune.run_step
  monkeypatch.setattr(
      finetune, "run_step", lambda run, tx: real(
          dataclasses.replace(run, loss=dataclasses.replace(run.loss, scale=float("nan"))), tx))
  work = tmp_path / "run"
  with pytest.raises(FloatingPointError, match=r"the last 1 steps \(to step 1\) had a non-finite"):
    finetune.run(tiny_run, str(work))
  assert not (work / workdir_lib.RESULTS).exists()
  assert checkpoint.manager(str(work), read_only=True).latest_step() is None


def test_a_bad_eval_set_fails_before_training(tiny_run, tmp_path):
  bad = tmp_path / "sts.jsonl"
  bad.write_text(
      '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a", "sentence2": null, "score": 2}\n'
  )
  with tiny_run.unlocked():
    tiny_run.eval.sts = f"mine/test={bad}"
  work = tmp_path / "run"
  with pytest.raises(DataError, match=rf"{bad}:2: column 'sentence2' = None is null"):
    finetune.run(tiny_run, str(work))
  assert not (work / workdir_lib.CHECKPOINTS).exists() and not (work / "config.json").exists()


def test_results_and_metrics_never_hold_a_bare_nan(tmp_path):
  recs = [
      results.record("stsb", "test", "spearman", 1, 8, float("nan")),
      results.record("stsb", "test", "spearman", 2, 16, 0.5)
  ]
  path = results.write(str(tmp_path), "final", recs)
  strict = json.loads(
      open(path).read(), parse_constant=lambda c: pytest.fail(f"bare {c} in {path}"))
  assert strict[0]["value"] is None and strict[1]["value"] == 0.5
  assert "| 1 | 8 |" in results.table(recs)
  writer = metrics.MetricsWriter(str(tmp_path))
  writer.write(1, {"loss": float("nan"), "grad_norm": 2.0})
  row = json.loads(open(tmp_path / "metrics.jsonl").read(), parse_constant=lambda c: pytest.fail(c))
  assert row == {"step": 1, "loss": None, "grad_norm": 2.0}


def test_config_args_name_the_flag_and_the_closest_key(monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(
      config_lib.ConfigError,
      match=r"--config.train.lrr: no such key in configs/ft.py; did you mean --config.train.lr\?"):
    cli.check_config_args(["--config=configs/ft.py:demo", "--config.train.lrr=1"])
  with pytest.raises(config_lib.ConfigError,
                     match="--config=configs/nope.py: config file configs/nope.py not found"):
    cli.check_config_args(["--config=configs/nope.py"])
  with pytest.raises(config_lib.ConfigError, match="config argument 'dmeo' is unknown"):
    cli.check_config_args(["--config=configs/ft.py:dmeo"])
  cli.check_config_args(
      ["--config=configs/ft.py:demo", "--config.train.lr=1e-4", "--config.mesh.shape=(1,1,1)"])


@pytest.mark.parametrize("file,row,message", [
    ("corpus.jsonl", {"_id": "d2", "title": "T", "text": 5
                     }, "corpus.jsonl:2: title and text must be strings"),
    ("corpus.jsonl", {"_id": "d2", "title": None, "text": ""
                     }, "corpus.jsonl:2: empty title and text"),
    ("queries.jsonl", {"_id": "q2", "text": None
                      }, "queries.jsonl:2: text None is not a non-empty string"),
])
def test_bad_beir_rows_name_file_and_line(tmp_path, file, row, message):
  from starbucks_jax.data import beir
  (tmp_path / "qrels").mkdir()
  (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
  good = {
      "corpus.jsonl": {"_id": "d1", "title": "A", "text": "a cat"},
      "queries.jsonl": {"_id": "q1", "text": "cat?"}
  }
  for name, first in good.items():
    (tmp_path /
     name).write_text(json.dumps(first) + "\n" + (json.dumps(row) + "\n" if name == file else ""))
  with pytest.raises(DataError, match=message):
    beir.load(str(tmp_path), "test")


def test_commands_raise_the_stack_limit_before_jax_loads():
  """XLA's TPU compiler overflows an 8 MiB stack on the retrieval gradient-cache step (SIGSEGV):
  the commands re-execute themselves with the soft stack limit raised to the hard one, once."""
  code = ("import resource, sys; print(resource.getrlimit(resource.RLIMIT_STACK)[0], flush=True); "
          "from starbucks_jax import cli; cli.raise_stack_limit(); print('jax' in sys.modules)")
  hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
  if hard != resource.RLIM_INFINITY and hard <= 8 << 20:
    pytest.skip("the hard stack limit leaves nothing to raise")
  # the soft limit lowered by the shell (a preexec_fn would fork this multithreaded process)
  out = subprocess.run(
      ["bash", "-c", 'ulimit -S -s 8192 && exec "$0" -c "$1"', sys.executable, code], cwd=REPO,
      capture_output=True, text=True, check=True).stdout
  # the limit at each start: re-executed once
  assert out.split() == [str(8 << 20), str(hard), "False"]


def test_report_tools_on_an_empty_or_corrupt_folder_print_one_line(tmp_path, capsys):
  from starbucks_jax import paper, report
  empty = tmp_path / "empty"
  empty.mkdir()
  for main, argv in ((report.main, [str(empty), "--out",
                                    str(tmp_path / "o")]), (paper.main, ["a2", str(empty)])):
    assert cli_error(capsys, main, argv) == (f"error: {empty}: no results/*.json under them (a "
                                             "finished run has)")
  bad = tmp_path / "bad" / "results"
  bad.mkdir(parents=True)
  (bad / "final.json").write_text("[{")
  line = cli_error(capsys, report.main, [str(tmp_path / "bad"), "--out", str(tmp_path / "o")])
  assert line.startswith(f"error: {bad / 'final.json'}: not valid JSON (")


@pytest.mark.parametrize("key,value,weight", [
    ("vocab_size", 200, "embeddings.word_embeddings."),
    ("intermediate_size", 48, "encoder.layer.0.intermediate.dense."),
    ("max_position_embeddings", 128, "embeddings.position_embeddings."),
])
def test_a_config_json_of_another_model_names_the_weight(model_copy, key, value, weight):
  path = os.path.join(model_copy, "config.json")
  config = json.load(open(path))
  config[key] = value
  json.dump(config, open(path, "w"))
  with pytest.raises(
      hf.ModelError, match=rf"{model_copy}: weight '{re.escape(weight)}\w+' has shape "
      rf".* but config.json \(.*{key}={value}.*\) makes it .*: the config and the "
      "weights are not of one model"):
    model_dirs.load_pretrained(model_copy)


@pytest.mark.parametrize("file,cut", [("model.safetensors", 0.5), ("model.safetensors", 0.0),
                                      ("tokenizer.json", 0.5)])
def test_a_download_cut_short_names_the_file(model_copy, file, cut):
  path = os.path.join(model_copy, file)
  if not os.path.exists(path):
    pytest.skip(f"the tiny model has no {file}")
  with open(path, "r+b") as f:
    f.truncate(int(os.path.getsize(path) * cut))
  where = path if file.endswith(".safetensors") else model_copy
  with pytest.raises(hf.ModelError,
                     match=rf"^{re.escape(where)}: .*cannot be read .*a download cut "
                     "short"):
    model_dirs.load_pretrained(model_copy)


# ---------------------------------------------------------------------------------------------
# a full disk: one line naming the path, nothing half-written, nothing lost
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def file_size_limit(nbytes: int):
  """Writes past `nbytes` of any file fail as on a full disk (EFBIG; Python ignores SIGXFSZ)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_full_disk_during_a_save_says_so_once_and_loses_nothing(tiny_run, tmp_path, monkeypatch,
                                                                  capfd):
  with tiny_run.unlocked():
    tiny_run.train.max_steps = 3
  straight = str(tmp_path / "straight")
  finetune.run(tiny_run, straight)
  work = str(tmp_path / "run")
  kill_at(monkeypatch, batching.Batcher, 1)  # step 1 saved
  with pytest.raises(KeyboardInterrupt):
    finetune.run(tiny_run, work)
  monkeypatch.undo()
  capfd.readouterr()
  with file_size_limit(16 * 1024), pytest.raises(checkpoint.SaveFailed) as failed:
    finetune.run(tiny_run, work)  # resumes at step 1; step 2's save runs out of space
  folder = os.path.join(work, workdir_lib.CHECKPOINTS)
  assert cli.one_line(failed.value) == (
      f"{folder}: writing the checkpoint of step 2 failed (File too large); the checkpoint of step "
      "1 is intact: free space (or lift the limit) and rerun the same command to resume")
  err = capfd.readouterr().err  # orbax's threads' tracebacks and callbacks held back
  assert "Traceback" not in err and "Event loop is closed" not in err and "orbax" not in err
  assert os.listdir(folder) == ["1"]  # step 2's partial folder removed
  assert not os.path.exists(os.path.join(work, workdir_lib.LOCK))
  finetune.run(tiny_run, work)  # space again: the same command resumes at step 1
  a, b = checkpoint.load_model(straight).params, checkpoint.load_model(work).params
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  assert [r["step"]
          for r in workdir_lib.read_metrics(os.path.join(work, "metrics.jsonl"))] == [1, 2, 3]


class _FailingWrites:
  """A checkpoint manager whose writes in flight fail with a full disk, and whose threads leave a
  partial step folder behind (as orbax's may after the first removal)."""
  def __init__(self, directory):
    self.directory, self.closed = directory, False

  def wait_until_finished(self):
    os.makedirs(os.path.join(self.directory, "2.orbax-checkpoint-tmp", "params"), exist_ok=True)
    raise OSError(27, "File too large")

  def reload(self):
    pass

  def close(self):
    self.closed = True
    os.makedirs(os.path.join(self.directory, "2.orbax-checkpoint-tmp", "late"), exist_ok=True)


def test_close_after_a_failed_save_raises_it_once_and_removes_the_partial_step(tmp_path):
  os.makedirs(tmp_path / "1")
  mngr = _FailingWrites(str(tmp_path))
  with pytest.raises(checkpoint.SaveFailed, match="File too large"):
    checkpoint.close(mngr)  # nothing else propagating: the failure is the error
  assert mngr.closed and os.listdir(tmp_path) == ["1"]
  mngr = _FailingWrites(str(tmp_path))
  with pytest.raises(KeyboardInterrupt):  # another error propagating: not raised over it
    try:
      raise KeyboardInterrupt
    finally:
      checkpoint.close(mngr)
  assert mngr.closed and os.listdir(tmp_path) == ["1"]


def test_export_and_embed_on_a_full_disk_name_the_output_and_write_nothing(
    model_copy, tiny_hf_dir, tmp_path, capsys):
  out = tmp_path / "exported"
  with file_size_limit(16 * 1024), pytest.raises(OSError) as failed:
    export.export(model_copy, str(out))
  assert cli.one_line(failed.value) == f"{out}: File too large"
  assert os.listdir(tmp_path) == ["source"]  # no output, no temporary folder
  texts = tmp_path / "texts.txt"
  texts.write_text("".join(f"the cat sat on the mat {i}\n" for i in range(200)))
  vecs = tmp_path / "vecs.npy"
  with file_size_limit(4096):
    line = cli_error(capsys, embed.main,
                     ["--model", tiny_hf_dir, "--input",
                      str(texts), "--output",
                      str(vecs)])
  assert line == f"error: {vecs}: File too large"
  assert sorted(os.listdir(tmp_path)) == ["source", "texts.txt"]  # not a 0-byte .npy


def test_export_removes_what_a_cut_short_export_left(model_copy, tmp_path):
  out = tmp_path / "exported"
  export.export(model_copy, str(out))
  first = tree_digest(out)
  os.makedirs(tmp_path / ".exported.abc123")  # killed while writing
  (tmp_path / ".exported.abc123" / "config.json").write_text("{")
  aside = tmp_path / ".exported.old.def456"  # killed between moving the old export aside and
  os.makedirs(aside)  # moving the new one in: the old one goes back
  os.rename(out, aside / "model")
  with pytest.raises(FileExistsError, match="is not empty"):
    export.export(model_copy, str(out))
  assert sorted(os.listdir(tmp_path)) == ["exported", "source"] and tree_digest(out) == first
  os.makedirs(tmp_path / ".exported.ghi789")
  export.export(model_copy, str(out), overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ["exported", "source"]


def test_an_output_file_is_checked_before_compute(tmp_path):
  """`compile --out` and `embed --output`: refused before any compile or encoding."""
  (tmp_path / "file").write_text("")
  cli.check_output_file(str(tmp_path / "new" / "deeper" / "r.json"), "--out", make_folder=True)
  for path, make, message in [
      (tmp_path, True, f"--out {tmp_path}: is a directory; name a file"),
      (tmp_path / "file" / "r.json", True,
       f"--out {tmp_path / 'file' / 'r.json'}: {tmp_path / 'file'} is a file, not a folder"),
      (tmp_path / "new" / "r.json", False,
       f"--out {tmp_path / 'new' / 'r.json'}: the folder {tmp_path / 'new'} does not exist")
  ]:
    with pytest.raises(OSError) as refused:
      cli.check_output_file(str(path), "--out", make_folder=make)
    assert cli.one_line(refused.value) == message
  assert sorted(os.listdir(tmp_path)) == ["file"]  # nothing made
