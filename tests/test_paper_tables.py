"""Table A2 (BEIR): the beir presets, BEIR's self-match rule, and the paper's tables beside ours."""

import json
import os
import subprocess
import sys

import pytest

from starbucks_jax import config_lib, embed, finetune, paper
from starbucks_jax.data import beir
from starbucks_jax.evaluate import results, retrieval

from conftest import REPO


def test_the_paper_tables_average_as_published():
  """The transcribed rows reproduce the paper's own Average columns (to its 4-digit rounding) and
  the headline means: BERT + SRL 0.7682 and SMAE + SRL 0.7837 over the six sizes (Table A1)."""
  for table, sets, key in ((paper.TABLE_A1, paper.STS, "sts_average"), (paper.TABLE_A2, paper.BEIR,
                                                                        "average")):
    for method, columns in table.items():
      for i in range(6):
        mean = sum(columns[s][i] for s in sets) / len(sets)
        assert mean == pytest.approx(columns[key][i], abs=1.5e-4), (method, i)
  assert sum(paper.TABLE_A1["BERT-SRL"]["sts_average"]) / 6 == pytest.approx(0.7682, abs=1e-4)
  assert sum(paper.TABLE_A1["SMAE-SRL"]["sts_average"]) / 6 == pytest.approx(0.7837, abs=1e-4)
  assert paper.TABLE_A2["SMAE-SRL"]["scifact"] == (0.2717, 0.3857, 0.4333, 0.4538, 0.4629, 0.4715)


def test_markdown_lays_ours_beside_the_paper():
  recs = [
      {**results.record(s, "test", "spearman_cosine", 2, 32, 0.5 + i / 100), "label": "starbucks"}
      for i, s in enumerate(paper.STS)
  ]
  recs.append(
      {**results.record("stsb", "test", "spearman_cosine", 3, 64, 0.6), "label": "starbucks"})
  text = paper.markdown(recs, "a1")
  lines = text.splitlines()
  ours = next(l for l in lines if l.startswith("| Demi | (2, 32) | starbucks |"))
  cells = [c.strip() for c in ours.strip("|").split("|")]
  assert cells[3:11] == [
      "0.5000", "0.5100", "0.5200", "0.5300", "0.5400", "0.5500", "0.5600", "0.5300"
  ]  # the seven sets, then their average
  assert cells[11:] == ["–", "–", "–"]  # no MS MARCO run
  theirs = next(l for l in lines if l.startswith("| Demi | (2, 32) | paper BERT-SRL |"))
  assert "| 0.7413 |" in theirs and "| 0.7214 |" in theirs
  assert not any("paper" in l and "(3, 64)" in l for l in lines)  # not one of the paper's sizes
  assert "Mean of the Average over the six sizes, paper BERT-SRL: 0.7682" in text
  assert "Mean of the Average over 2 sizes" not in text  # (3, 64) has no average


def _self_matching_beir(folder, n=12):
  """Queries whose own id and text are also a corpus document (ArguAna's and Quora's layout)."""
  words = "the cat sat on a mat dog runs over lazy fox quick brown red blue car".split()
  os.makedirs(folder / "qrels")
  texts = [" ".join(words[(i + j) % len(words)] for j in range(5)) for i in range(n)]
  with open(folder / "corpus.jsonl", "w") as f:
    f.writelines(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(texts))
  with open(folder / "queries.jsonl", "w") as f:
    f.writelines(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(texts))
  with open(folder / "qrels" / "test.tsv", "w") as f:
    f.write("query-id\tcorpus-id\tscore\n")
    f.writelines(f"q{i}\tq{(i + 1) % n}\t1\n" for i in range(n))
  return str(folder)


def test_skip_self_drops_the_querys_own_document(tiny_hf_dir, tmp_path):
  embedder = embed.Embedder.load(tiny_hf_dir, batch_size=8)
  col = beir.load(_self_matching_beir(tmp_path / "argu"), "test")
  runs = {}
  for skip in (False, True):
    work = tmp_path / f"w{skip}"
    retrieval.evaluate_collection(embedder, col, ((4, 32),), str(work), k=5, passage_max_length=16,
                                  normalize=True, skip_self=skip)
    run = {}
    for line in open(work / "runs" / "argu_test_4_32.trec"):
      q, _, doc, rank, _, _ = line.split()
      run.setdefault(q, []).append(doc)
    runs[skip] = run
  # the same text is (about) its own nearest neighbour: found without the rule, absent with it,
  # and the rest of the ranking kept, with one more document to fill k
  assert sum(q in docs for q, docs in runs[False].items()) >= 10
  assert all(q not in docs and len(docs) == 5 for q, docs in runs[True].items())
  assert all(runs[True][q][:4] == [d for d in runs[False][q] if d != q][:4] for q in runs[True])


def test_beir_preset_is_table_a2(tmp_path):
  c = config_lib.load_config(f"{REPO}/configs/retrieval.py:beir")
  sets = config_lib.parse_eval_sets(c.eval.retrieval, "eval.retrieval")
  assert [s[0] for s in sets] == list(paper.BEIR) and {s[1] for s in sets} == {"test"}
  assert sets[6][2] == "hf:BeIR/webis-touche2020"
  assert (c.mode, c.eval.query_max_length, c.eval.passage_max_length) == ("eval", 512, 512)
  assert c.eval.retrieval_skip_self and c.eval.retrieval_similarity == "dot"
  local = config_lib.load_config(f"{REPO}/configs/retrieval.py:beir,beir_dir={tmp_path}")
  assert config_lib.parse_eval_sets(local.eval.retrieval,
                                    "")[0][2] == str(tmp_path / "dbpedia-entity")
  with local.unlocked():
    local.model.init_from = "all-MiniLM-L6-v2"
    local.schedule.pairs = ((6, 384),)
  with pytest.raises(
      config_lib.ConfigError,
      match=r"eval.retrieval \(dbpedia-entity/test\): .*dbpedia-entity is not a BEIR"):
    finetune.describe(local)


def test_beir_scifact_runs_from_main_and_reports_table_a2(shared_data, tiny2_hf_dir, tmp_path):
  """The cut-down preset as a user runs it, with a tiny model in place of all-MiniLM-L6-v2 (the
  recorded all-MiniLM run: experiments/elastic_retrieval.md)."""
  work = tmp_path / "beir"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  subprocess.run([
      sys.executable, "-m", "starbucks_jax.main", "--config=configs/retrieval.py:beir_scifact",
      f"--workdir={work}", f"--config.model.init_from={tiny2_hf_dir}",
      "--config.schedule.pairs=((1,16),(2,32))", "--config.eval.batch_size=1024",
      "--compilation_cache="
  ], cwd=REPO, env=env, check=True, capture_output=True)
  records = json.load(open(work / "results" / "eval.json"))
  ndcg = {(r["layer"], r["dim"]) for r in records if r["metric"] == "nDCG@10"}
  assert ndcg == {(1, 16), (2, 32)} and {r["dataset"] for r in records} == {"scifact"}
  out = subprocess.run([
      sys.executable, "-m", "starbucks_jax.paper", "a2",
      str(work), "--out",
      str(tmp_path / "a2.md")
  ], cwd=REPO, env=env, check=True, capture_output=True, text=True)
  ours = next(l for l in out.stdout.splitlines() if l.startswith("| Demi | (2, 32) | "))
  value = [r["value"] for r in records if (r["layer"], r["metric"]) == (2, "nDCG@10")][0]
  assert f"| {value:.4f} |" in ours and ours.count("–") == 12  # 11 sets and the average missing
  assert "| Demi | (2, 32) | paper BERT-SRL |" in out.stdout  # the run's label: starbucks
  assert open(tmp_path / "a2.md").read() == out.stdout.rstrip("\n") + "\n"


@pytest.mark.parametrize("topology", ["v5e-8", "v5p-8"])
def test_sweep_paper_runbook_for_a_topology(topology):
  out = subprocess.run(
      [sys.executable, "experiments/sweep_paper.py", "--topology", topology, "--print-only"],
      cwd=REPO, check=True, capture_output=True, text=True).stdout
  blocks = {b.splitlines()[0]: b for b in out.split("\n\n") if b.startswith("# ")}
  smae = next(b for head, b in blocks.items() if head.startswith("# smae/pt:"))
  remat = "--config.model.remat=full --config.train.microbatches=4"
  assert (remat in smae) == (topology != "v5p-8")  # a v5p-8 holds the SMAE step as is
  nli = blocks[next(h for h in blocks if h.startswith("# nli/starbucks/seed0:"))]
  assert "4358 steps x" in nli and "chip-hours" in nli and "(mean 0.7682)" in nli
  smae_nli = blocks[next(h for h in blocks if h.startswith("# smae/nli/seed0:"))]
  assert "SMAE-SRL 7-set STS average" in smae_nli and "(mean 0.7837)" in smae_nli
  beir_run = blocks[next(h for h in blocks if h.startswith("# beir/msmarco/starbucks/seed0:"))]
  assert "configs/retrieval.py:beir" in beir_run and remat not in beir_run
  assert "--worker=all" in out and "--config.mesh.coordinator=auto" in out
  assert out.rstrip().splitlines()[-1].startswith("# all runs: >= ")
