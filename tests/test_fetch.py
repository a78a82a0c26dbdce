"""data.fetch: the CPU recipes' data from a (here: fake, in-memory) Hub into the layouts they read,
verified by its manifest; a recipe without its data fails in one line naming the fetch command, and
runs from another directory once the data is fetched."""

import json
import os
import subprocess
import sys

import pytest

from starbucks_jax.config_lib import InputError
from starbucks_jax.data import beir, fetch, sources

from conftest import REPO


def fake_hub(calls):
  import datasets

  def load_dataset(repo, name=None, split=None):
    calls.append((repo, name, split))
    if repo == "sentence-transformers/stsb":
      rows = [{"sentence1": f"a {split} {i}", "sentence2": f"b {i}", "score": i / 4}
              for i in range(5)]
    elif repo == "stanfordnlp/snli":
      rows = [{"premise": "p1", "hypothesis": "h entailed",
               "label": 0}, {"premise": "p1", "hypothesis": "h neutral", "label": 1},
              {"premise": "p1", "hypothesis": "h contradicted",
               "label": 2}, {"premise": "p2", "hypothesis": "only entailed", "label": 0},
              {"premise": "p3", "hypothesis": "no gold label", "label": -1}]
    elif repo == "BeIR/scifact" and name == "corpus":
      rows = [{"_id": f"d{i}", "title": f"t{i}", "text": f"text {i}"} for i in range(4)]
    elif repo == "BeIR/scifact" and name == "queries":
      rows = [{"_id": str(i), "text": f"query {i}"} for i in range(3)]
    elif repo == "BeIR/scifact-qrels":
      rows = [{"query-id": 0 if split == "train" else 1, "corpus-id": "d1", "score": 1},
              {"query-id": 2, "corpus-id": "d3", "score": 1}]
    elif repo.startswith("mteb/") and repo.endswith("-sts"):
      rows = [{"sentence1": f"{repo} {i}", "sentence2": f"s {i}", "score": i * 1.5}
              for i in range(3)]
    elif repo == "sentence-transformers/all-nli" and name == "triplet":
      rows = [{"anchor": f"{split} a{i}", "positive": f"p{i}", "negative": f"n{i}"}
              for i in range(4)]
    else:
      raise ConnectionError(f"no network for {repo}")
    return datasets.Dataset.from_list(rows)

  return load_dataset


def test_fetch_writes_the_layouts_and_verifies_them(tmp_path, monkeypatch, capsys):
  import datasets
  calls = []
  monkeypatch.setattr(datasets, "load_dataset", fake_hub(calls))
  root = str(tmp_path / "data")
  fetch.main(["all", "--to", root])
  stsb = [json.loads(line) for line in open(f"{root}/stsb/test.jsonl")]
  assert [r["score"] for r in stsb] == [0.0, 1.25, 2.5, 3.75, 5.0]  # put back on 0..5
  assert sources.resolve_spec(f"{root}/stsb/dev.jsonl")[1].endswith("stsb/dev.jsonl")
  triplets = [json.loads(line) for line in open(f"{root}/snli/dev_triplets.jsonl")]
  assert triplets == [{"anchor": "p1", "positive": "h entailed", "negative": "h contradicted"}]
  pairs = [json.loads(line) for line in open(f"{root}/snli/test_pairs.jsonl")]
  assert [p["label"] for p in pairs] == ["entailment", "neutral", "contradiction", "entailment"]
  col = beir.load(f"{root}/beir_scifact", "test")
  assert col.query_ids == ["1", "2"] and col.docs[1] == "t1 text 1" and col.qrels["2"] == {"d3": 1}
  assert beir.load(f"{root}/beir_scifact", "train").query_ids == ["0", "2"]
  sentences = open(f"{root}/mlm_text/sentences.txt").read().split("\n")[:-1]
  assert len(sentences) == len(set(sentences)) == 5 + 5 + 1 + 5  # stsb train, snli's distinct
  manifest = json.load(open(f"{root}/stsb/MANIFEST.json"))
  assert manifest["rows"] == {"train.jsonl": 5, "dev.jsonl": 5, "test.jsonl": 5}
  assert set(manifest["sha256"]) == {"train.jsonl", "dev.jsonl", "test.jsonl"}
  assert "run them with STARBUCKS_DATA=" in capsys.readouterr().out
  # again: verified against the manifests, nothing downloaded
  calls.clear()
  fetch.main(["stsb", "scifact", "--to", root])
  assert calls == [] and "verified, nothing downloaded" in capsys.readouterr().out
  with open(f"{root}/stsb/dev.jsonl", "a") as f:
    f.write("{}\n")
  with pytest.raises(InputError, match=r"stsb/dev.jsonl: its SHA-256 differs from .*MANIFEST.json"):
    fetch.fetch("stsb", root)
  with pytest.raises(
      InputError, match="'stsx': expected one of stsb, snli, scifact, mlm_text, "
      r"sts, allnli or all \(stsb, snli, scifact, mlm_text\)"):
    fetch.fetch("stsx", root)


def test_paper_sets_fetch_with_the_overrides_that_read_them(tmp_path, monkeypatch, capsys):
  """sts and allnli (not in `all`): the six STS sets and AllNLI's triplets, and the printed
  --config. flags make configs/ft.py:nli's blocks read them (every source checked)."""
  import datasets

  from starbucks_jax import config_blocks, config_lib
  calls = []
  monkeypatch.setattr(datasets, "load_dataset", fake_hub(calls))
  root = str(tmp_path / "data")
  fetch.main(["sts", "allnli", "--to", root])
  assert {c[0] for c in calls} == {f"mteb/{n}-sts"
                                   for n in fetch.STS_SUITE} | {"sentence-transformers/all-nli"}
  out = capsys.readouterr().out
  assert "(fetch stsb too)" in out
  flags = dict(
      line.split("with --config.", 1)[1].split(" ")[0].split("=", 1) for line in out.splitlines()
      if "with --config." in line)
  fetch.main(["stsb", "--to", root])
  config = config_lib.load_config(f"{REPO}/configs/ft.py:nli")
  with config.unlocked():
    config.eval.sts, config.data.train = flags["eval.sts"], flags["data.train"]
  sts = config_blocks.SentenceEval.from_config(config.eval)
  sts.check()
  assert [d for d, _, _ in sts.sts_sets] == ["stsb", *fetch.STS_SUITE]
  rows = list(sources.read_rows(sts.sts_sets[-1][2], {"sentence1": str, "score": float}))
  assert [r["score"] for r in rows] == [0.0, 1.5, 3.0]
  train = list(sources.read_rows(config.data.train, {"anchor": str, "negative": str}))
  assert train[0] == {"anchor": "train a0", "negative": "n0"}
  assert json.load(open(f"{root}/allnli/MANIFEST.json"))["rows"]["dev_triplets.jsonl"] == 4


def test_offline_fetch_and_mlm_text_alone_fail_in_one_line(tmp_path, monkeypatch):
  import datasets

  def offline(*args, **kwargs):
    raise ConnectionError("Couldn't reach 'sentence-transformers/stsb' on the Hub")

  monkeypatch.setattr(datasets, "load_dataset", offline)
  with pytest.raises(
      InputError, match="sentence-transformers/stsb: could not download "
      r"\(ConnectionError: .*\); fetching needs the network"):
    fetch.fetch("stsb", str(tmp_path))
  with pytest.raises(InputError, match="mlm_text is made from stsb and snli; fetch them first"):
    fetch.fetch("mlm_text", str(tmp_path))


def test_a_recipe_names_the_fetch_command_then_runs_from_elsewhere(tmp_path, monkeypatch,
                                                                   tiny_hf_dir):
  """From another directory, no data: one line naming the command; fetched into a folder named
  by STARBUCKS_DATA: the recipe runs (the tiny model, one step)."""
  import datasets
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "STARBUCKS_DATA"}
  env.update(HOME=str(tmp_path / "home"), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  main = [
      sys.executable, "-m", "starbucks_jax.main", f"--config={REPO}/configs/ft.py:sts_cpu",
      f"--workdir={tmp_path / 'w'}"
  ]
  done = subprocess.run(main, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith(
      "/.cache/starbucks_jax/data/stsb/test.jsonl: no such file; fetch it with "
      "`python -m starbucks_jax.data.fetch stsb`"), done.stderr[-2000:]
  monkeypatch.setattr(datasets, "load_dataset", fake_hub([]))
  fetch.fetch("stsb", str(tmp_path / "data"))
  done = subprocess.run(
      main + [
          f"--config.model.init_from={tiny_hf_dir}", "--config.schedule.pairs=((1,8),(4,32))",
          "--config.train.max_steps=1", "--config.data.batch_size=4"
      ], cwd=elsewhere, env=env | {"STARBUCKS_DATA": str(tmp_path / "data")}, capture_output=True,
      text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "| 4 | 32 |" in done.stdout and f"5 pairs of {tmp_path / 'data'}/stsb/test.jsonl" in done.stdout
