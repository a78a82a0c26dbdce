"""Cross-depth retrieval: queries at n_q layers against passages at n_doc >= n_q layers
(eval.retrieval_cross_depth) equal a hand computation, the diagonal the per-size evaluation; its
training terms (loss.cross_depth_weight) equal their equations; quantized (int8, binary) first stages
of a funnel (issue 46) equal a NumPy search."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_retrieval import PAIRS, write_beir

from starbucks_jax import embed, losses
from starbucks_jax.config_lib import ConfigError, InputError
from starbucks_jax.data import beir
from starbucks_jax.evaluate import cost, cross_depth, retrieval, search
from starbucks_jax.evaluate import index as index_lib


def test_cells_equal_a_hand_computation_and_the_diagonal_the_sizes(tiny_hf_dir, tmp_path):
  embedder = embed.Embedder.load(tiny_hf_dir, batch_size=8)
  col = beir.load(write_beir(tmp_path / "toy"), "test")
  work = str(tmp_path / "w")
  records = retrieval.evaluate_collection(embedder, col, PAIRS, work, passage_max_length=32,
                                          query_max_length=16, k=10, normalize=True,
                                          cross_depth=True)
  cells = json.load(open(os.path.join(work, "cross_depth", "toy_test.json")))
  metrics = set(retrieval.metrics_for(col.qrels, num_docs=len(col.doc_ids)))
  # layers 1, 2, 4 and dims 8, 16, 32: 6 (n_q <= n_doc) x 3 cells, each metric
  assert len(cells) == 6 * 3 * len(metrics)
  assert {(r["query_layer"], r["layer"]) for r in cells} == {(1, 1), (1, 2), (1, 4), (2, 2), (2, 4),
                                                             (4, 4)}
  # the diagonal at the schedule's pairs is the per-size evaluation
  sizes = {(r["layer"], r["dim"], r["metric"]): r["value"] for r in records}
  for r in cells:
    if r["query_layer"] == r["layer"] and (r["layer"], r["dim"]) in PAIRS:
      assert r["value"] == pytest.approx(sizes[(r["layer"], r["dim"], r["metric"])], abs=1e-9)
  # (query layer 1, passage layer 4, dim 16) by hand: cosine of the two sub-models' vectors, top 10
  q = embedder.encode(col.queries, layer=1, dim=16, normalize=True, max_length=16)
  docs = embedder.encode(col.docs, layer=4, dim=16, normalize=True, max_length=32)
  scores = q @ docs.T
  top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
  run = {
      qid: {col.doc_ids[j]: float(scores[i, j]) for j in top[i]}
      for i, qid in enumerate(col.query_ids)
  }
  want = retrieval.measure(col.qrels, run, ("nDCG@10", "R@10"))
  got = {
      r["metric"]: r["value"] for r in cells
      if (r["query_layer"], r["layer"], r["dim"]) == (1, 4, 16)
  }
  assert got["nDCG@10"] == pytest.approx(want["nDCG@10"], abs=1e-5)
  assert got["R@10"] == pytest.approx(want["R@10"], abs=1e-5)
  # the query encoder's cost depends on the query's layers only
  lengths = cost.query_lengths(embedder, col.queries, 16)
  flops = {r["query_layer"]: r["query_flops"] for r in cells}
  assert flops == {n: cost.query_flops(embedder.config, lengths, n) for n in (1, 2, 4)}
  assert flops[1] < flops[2] < flops[4]
  # the table and a heat-map per metric beside the records
  table = open(os.path.join(work, "cross_depth", "toy_test.md")).read()
  assert "nDCG@10, dim 16 (rows: query layers, columns: passage layers)" in table
  assert len(list((tmp_path / "w" / "cross_depth").glob("toy_test_*.png"))) == len(metrics)
  assert not os.path.exists(os.path.join(work, "results", "cross_depth"))  # apart from the sizes'
  assert cross_depth.cells(PAIRS)[:3] == [(1, 1, 8), (1, 2, 8), (2, 2, 8)]


def test_cells_carry_their_costs_and_the_front_chooses_on_dev(tiny_hf_dir, tmp_path):
  """With eval.retrieval_costs, each cell has the query's encoder cost at n_q, the search's at d
  (2 d N FLOPs, each size's measured ms); the Pareto tool lists the cells as `qQ@NxD` and, with
  --select-on dev, reports on test the configuration the dev split chose."""
  import shutil

  from starbucks_jax.evaluate import pareto
  embedder = embed.Embedder.load(tiny_hf_dir, batch_size=8)
  folder = write_beir(tmp_path / "toy")
  shutil.copyfile(tmp_path / "toy" / "qrels" / "test.tsv", tmp_path / "toy" / "qrels" / "dev.tsv")
  work = str(tmp_path / "w")
  for split in ("dev", "test"):
    retrieval.evaluate_collection(embedder, beir.load(folder, split), PAIRS, work,
                                  passage_max_length=32, query_max_length=16, k=10, normalize=True,
                                  costs=True, cross_depth=True)
  cells = json.load(open(os.path.join(work, "cross_depth", "toy_test.json")))
  sizes = {r["configuration"]: r for r in cost.read(work)[("toy", "test")]}
  for r in cells:
    assert r["search_flops"] == 2.0 * r["dim"] * 23
    q_size = next(c for c in sizes.values() if c["layers"] == r["query_layer"])
    d_size = next(c for c in sizes.values() if c["configuration"].endswith(f"x{r['dim']}"))
    assert r["query_ms"] == q_size["query_ms"] and r["search_ms"] == d_size["search_ms"]
  assert "| query layers | encoder MFLOPs | encoder ms |" in open(
      os.path.join(work, "cross_depth", "toy_test.md")).read()
  rows = pareto.rows_of(work, "nDCG@10")[("toy", "test")]
  names = {r["configuration"] for r in rows}
  # 3 sizes, 3 more diagonal cells (1x16, 1x32, ...: 6 diagonal cells less the sizes), 9 shallow
  assert len(rows) == 3 + 6 + 9 and {"q1@4x16", "q2@4x32", "1x32"} <= names
  assert pareto.rows_of(work, "nDCG@10", 1000)[("toy", "test")][-1]["search_flops"] == \
      2.0 * rows[-1]["index_bytes"] / 4 * 1000
  pareto.write([work], str(tmp_path / "p"), tolerance=1.0, select_on="dev")
  full, best = pareto.cheapest_within(pareto.rows_of(work, "nDCG@10")[("toy", "dev")], 1.0)
  assert full["configuration"] == "4x32" and best["configuration"] == "1x8"  # any quality: cheapest
  test_md = open(tmp_path / "p" / "toy_test.md").read()
  assert f"chosen on dev ({best['configuration']}" in test_md
  assert "chosen on" not in open(tmp_path / "p" / "toy_dev.md").read()


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("layout", ["roles", "groups"])
def test_the_cross_depth_training_terms_equal_their_equations(layout):
  """loss.cross_depth_weight: for (1, 16) of ((1, 16), (2, 32)), w x [MNRL of layer 1's queries
  against layer 2's documents at 16 dims + beta x KL(full pair's scores || those scores)], in NumPy
  (float64); the full pair adds no term."""
  rng = np.random.default_rng(0)
  B, D = 4, 32
  if layout == "roles":  # anchor, positive, negative
    pooled = {n: rng.normal(size=(3, B, D)) for n in (1, 2)}
    queries, docs = (lambda n: pooled[n][0]), (lambda n: pooled[n][1:].reshape(-1, D))
    labels = np.arange(B)
  else:  # 4 queries, groups of 2 passages
    pooled = {n: (rng.normal(size=(B, D)), rng.normal(size=(2 * B, D))) for n in (1, 2)}
    queries, docs = (lambda n: pooled[n][0]), (lambda n: pooled[n][1])
    labels = np.arange(B) * 2
  cfg = losses.LossConfig(kl="scores", kl_detach=True, kl_temperature=0.5, kl_weight=0.7)
  weighted = dataclasses.replace(cfg, cross_depth_weight=0.25)
  as_jax = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), pooled)
  pairs = ((1, 16), (2, 32))
  base, _ = losses.srl_loss(as_jax, pairs, (2, 32), cfg)
  total, metrics = losses.srl_loss(as_jax, pairs, (2, 32), weighted)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  logits = lambda q, c: 20.0 * unit(q) @ unit(c).T
  student = logits(queries(1)[:, :16], docs(2)[:, :16])
  task = -np.mean(_log_softmax(student)[np.arange(B), labels])
  t, s = _log_softmax(logits(queries(2), docs(2)) / 0.5), _log_softmax(student / 0.5)
  kl = np.sum(np.exp(t) * (t - s)) / B
  assert float(metrics["cross/1_16"]) == pytest.approx(task, rel=1e-5)
  assert float(metrics["cross_kl/1_16"]) == pytest.approx(kl, rel=1e-4)
  assert float(total - base) == pytest.approx(0.25 * (task + 0.7 * kl), rel=1e-4)
  assert "cross/2_32" not in metrics


def test_cross_depth_training_refuses_what_it_cannot_pair():
  with pytest.raises(ConfigError, match="loss.cross_depth_weight pairs queries with documents"):
    losses.LossConfig(task="cosent", cross_depth_weight=1.0).check()
  with pytest.raises(ConfigError, match="schedule.method='2dmse' samples its own"):
    losses.LossConfig(cross_depth_weight=1.0).check_plan(2, "2dmse")
  with pytest.raises(ConfigError, match="loss.cross_depth_weight"):
    losses.LossConfig(cross_depth_weight=-1.0).check()


def test_quantized_first_stages_equal_a_numpy_search(tiny_hf_dir, tmp_path):
  """'2x16i8:K': float queries against each passage's int8 vector (per-dimension scale: the corpus'
  largest |value| / 127) dequantized, cosine; '2x16b:K': the signs of both (d - 2 x Hamming). Both
  equal NumPy on the stored float vectors, and read files stored once in the index."""
  embedder = embed.Embedder.load(tiny_hf_dir, batch_size=8)
  col = beir.load(write_beir(tmp_path / "toy", n_docs=40), "test")
  folder = str(tmp_path / "index")
  index_lib.encode_corpus(embedder, col.doc_ids, col.docs, PAIRS, folder, max_length=32,
                          shard_size=15)
  q = embedder.encode_layers(col.queries, (1, 2, 4), max_length=16)
  kept = np.concatenate([b for _, b in index_lib.shards(folder, 2, 16)]).astype(np.float64)
  scale = np.abs(kept).max(0) / 127
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  reference = {
      "i8": unit(q[2][:, :16].astype(np.float64)) @ unit(np.rint(kept / scale) * scale).T,
      "b": np.where(q[2][:, :16] > 0, 1.0, -1.0) @ np.where(kept > 0, 1.0, -1.0).T
  }
  for suffix, want in reference.items():
    stages = search.parse_funnel(f"2x16{suffix}:7")
    assert cost.name_of(stages) == f"2x16{suffix}"
    scores, rows = search.funnel_topk(q, folder, stages, normalize=True)
    np.testing.assert_allclose(scores, -np.sort(-want, axis=1)[:, :7], rtol=1e-5, atol=1e-5)
    # each returned row scores what NumPy gives it (binary scores tie: any order among equals)
    np.testing.assert_allclose(np.take_along_axis(want, rows, 1), scores, rtol=1e-5, atol=1e-5)
  assert np.load(os.path.join(folder, "layer_2", "int8", "1.npy")).dtype == np.int8
  assert np.load(os.path.join(folder, "layer_2", "binary", "0.npy")).shape == (15, 2)  # 16 bits
  # a quantized shortlist rescored by float vectors, and what the cost model counts
  funnel = search.parse_funnel("2x16b:20,4x32:5")
  rows = search.funnel_topk(q, folder, funnel, normalize=True)[1]
  first = search.funnel_topk(q, folder, funnel[:1], normalize=True)[1]
  assert all(set(r) <= set(f) for r, f in zip(rows, first))
  assert cost.index_bytes(funnel) == 2 + 4 * 32 and cost.search_flops(funnel, 40) == 2 * 1 * 40 + \
      2 * 32 * 20
  assert cost.index_bytes(search.parse_funnel("2x16i8:20,2x16:5")) == 16 + 4 * 16
  with pytest.raises(InputError, match="only the first stage searches quantized"):
    search.parse_funnel("2x16:20,4x32b:5")


def test_seed_table_of_shallow_queries_against_deep_passages(tmp_path, capsys):
  """`python -m starbucks_jax.evaluate.cross_depth`: per label, the cells (n_q -> deepest layer, at
  the widest dim) averaged over its runs with their sample sd, and the differences from a baseline;
  other passage depths and dims left out."""
  def run(name, values):
    folder = tmp_path / name / "cross_depth"
    folder.mkdir(parents=True)
    rows = [{
        "dataset": "c", "split": "test", "metric": "nDCG@10", "layer": n_doc, "dim": d,
        "query_layer": q, "value": values[q - 1] if (n_doc, d) == (2, 8) else 0.99
    } for q in (1, 2) for n_doc in (1, 2) for d in (4, 8) if q <= n_doc]
    (folder / "c_test.json").write_text(json.dumps(rows))
    return str(tmp_path / name)

  a0, a1, b0 = run("a0", [0.2, 0.6]), run("a1", [0.4, 0.8]), run("b0", [0.1, 0.9])
  out = tmp_path / "table"
  cross_depth.main([
      "--workdir", a0, "--label", "A", "--workdir", a1, "--label", "A", "--workdir", b0, "--label",
      "B", "--collection", "c", "--split", "test", "--out",
      str(out), "--baseline", "A"
  ])
  text = (out / "table.md").read_text()
  sd = float(np.std([0.2, 0.4], ddof=1))
  assert f"| A | **0.3000** ± {sd:.4f} (2) | 0.7000 ± {sd:.4f} (2) |" in text
  assert "| B | 0.1000 | **0.9000** |" in text and "(1,8) | (2,8)" in text
  assert "| B | -0.2000 | +0.2000 |" in text  # within 2 sd of A's: unmarked
  assert "0.99" not in text and text in capsys.readouterr().out
  with pytest.raises(FileNotFoundError, match="no cross-depth cells"):
    cross_depth.main(
        ["--workdir",
         str(tmp_path), "--collection", "c", "--split", "test", "--out",
         str(out)])
  with pytest.raises(InputError, match="--dim 5: no cells at that dim"):
    cross_depth.main(
        ["--workdir", a0, "--collection", "c", "--split", "test", "--out",
         str(out), "--dim", "5"])
  with pytest.raises(InputError, match="--baseline 'C': not one of the labels"):
    cross_depth.main([
        "--workdir", a0, "--collection", "c", "--split", "test", "--out",
        str(out), "--baseline", "C"
    ])
