"""Cross-depth retrieval (eval.retrieval_cross_depth): queries at n_q layers against passages at
n_doc >= n_q layers equal a hand computation; the diagonal equals the per-size evaluation; the files."""

import json
import os

import numpy as np
import pytest
from test_retrieval import PAIRS, write_beir

from starbucks_jax import embed
from starbucks_jax.data import beir
from starbucks_jax.evaluate import cost, cross_depth, retrieval


def test_cells_equal_a_hand_computation_and_the_diagonal_the_sizes(tiny_hf_dir, tmp_path):
  embedder = embed.Embedder.load(tiny_hf_dir, batch_size=8)
  col = beir.load(write_beir(tmp_path / "toy"), "test")
  work = str(tmp_path / "w")
  records = retrieval.evaluate_collection(embedder, col, PAIRS, work, passage_max_length=32,
                                          query_max_length=16, k=10, normalize=True,
                                          cross_depth=True)
  cells = json.load(open(os.path.join(work, "cross_depth", "toy_test.json")))
  metrics = set(retrieval.metrics_for(col.qrels))
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
  want = retrieval.measure(col.qrels, run, ("nDCG@10", "R@100"))
  got = {
      r["metric"]: r["value"] for r in cells
      if (r["query_layer"], r["layer"], r["dim"]) == (1, 4, 16)
  }
  assert got["nDCG@10"] == pytest.approx(want["nDCG@10"], abs=1e-5)
  assert got["R@100"] == pytest.approx(want["R@100"], abs=1e-5)
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
