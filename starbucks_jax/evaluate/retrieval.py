"""Retrieval evaluation of every (layer, dim) pair: encode the corpus once, search, score with ir-measures.

A collection is a BEIR folder, hf:BeIR/NAME (data/beir.py) or a `tevatron:` source (data/tevatron.py).
For each: the corpus is encoded once for all pairs (`index.encode_corpus`,
cached under WORKDIR/index/<name>, resumable), the queries once for all layers, then each pair
searches with its truncated vectors (`search.exact_topk`), writes its TREC run file to
WORKDIR/runs/<name>_<split>_<n>_<d>.trec and is scored with ir-measures (MRR@10 as RR@10, nDCG@10,
R@100, R@1000; with graded judgements also R(rel=2)@100 and @1000, as TREC DL reports recall)
into `{dataset, split, metric, layer, dim, value}` records. Funnels
(eval.retrieval_funnels, e.g. '2x32:1000,6x384:100') retrieve with one sub-model and rescore the
survivors with larger ones from the same index; their records carry `funnel`.
"""

from __future__ import annotations

import logging
import os

from starbucks_jax import workdir as workdir_lib
from starbucks_jax.data import beir, tevatron
from starbucks_jax.evaluate import cost, results, search
from starbucks_jax.evaluate import cross_depth as cross_depth_lib
from starbucks_jax.evaluate import index as index_lib

log = logging.getLogger(__name__)
METRICS = ("RR@10", "nDCG@10", "R@100", "R@1000")


def metrics_for(qrels: dict[str, dict[str, int]], metrics=METRICS,
                num_docs: int | None = None) -> tuple[str, ...]:
  """`metrics`, and with graded judgements (some grade >= 2, as TREC DL's 0-3) each recall also
  counting grade >= 2 only ('R(rel=2)@1000', TREC DL's and Pyserini's convention beside BEIR's
  >= 1). Over `num_docs` passages a recall at k >= num_docs is 1 by construction: it is left out, and R@10
  stands in when none is left that could tell sizes apart."""
  if num_docs is not None:
    kept = tuple(m for m in metrics if not (m.startswith("R@") and int(m[2:]) >= num_docs))
    if kept != tuple(metrics) and "R@10" not in kept:
      kept += ("R@10",)
    metrics = kept
  if not any(grade >= 2 for docs in qrels.values() for grade in docs.values()):
    return tuple(metrics)
  return tuple(metrics) + tuple(m.replace("R@", "R(rel=2)@") for m in metrics if m.startswith("R@"))


def check_source(key: str, source: str, split: str) -> None:
  """A ConfigError naming `key` when a collection's local parts are missing (Hub parts are read when
  evaluating)."""
  if source.startswith(tevatron.PREFIX):
    tevatron.check(key, source, split)
  elif not source.startswith("hf:"):  # a BEIR collection on the Hub is read when evaluating
    beir.check_folder(key, source, split, corpus=True)


def load_collection(source: str, split: str, name: str | None = None) -> beir.Collection:
  if source.startswith(tevatron.PREFIX):
    return tevatron.load(source, split, name)
  return beir.load(source, split, name)


def check_collections(sets) -> None:
  """Read every (dataset, split, source) of eval.retrieval once, so that a bad row fails before
  training; nothing is kept (a corpus is read again to evaluate)."""
  for dataset, split, source in sets:
    load_collection(source, split, name=dataset)
  tevatron.read_corpus.cache_clear()


def measure(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]],
            metrics=METRICS) -> dict[str, float]:
  """Mean of each metric over the judged queries (ir-measures; a query with no results scores 0)."""
  try:
    import ir_measures
  except ImportError:
    raise ImportError("retrieval metrics need ir-measures: pip install ir-measures") from None
  parsed = [ir_measures.parse_measure(m) for m in metrics]
  run = {q: run.get(q, {}) for q in qrels}
  per_query = {str(m): {} for m in parsed}
  for m in ir_measures.iter_calc(parsed, qrels, run):
    per_query[str(m.measure)][m.query_id] = m.value
  return {str(m): sum(per_query[str(m)].get(q, 0.0) for q in qrels) / len(qrels) for m in parsed}


def evaluate_collection(embedder, collection: beir.Collection, pairs, workdir: str, *,
                        pooling: str | None = None, normalize: bool = False,
                        query_max_length: int = 64, passage_max_length: int = 256, k: int = 1000,
                        metrics=METRICS, funnels: tuple[str, ...] = (), costs: bool = False,
                        index_dir: str = "", skip_self: bool = False,
                        cross_depth: bool = False) -> list[dict]:
  """Records of every pair, and of every funnel (search.parse_funnel: its stages' vectors come from
  the same index, its queries from the same early-exit pass). `costs`: each configuration's cost per
  query (evaluate/cost.py) into WORKDIR/costs/NAME_SPLIT.json. `index_dir`: where NAME's index is
  kept (default WORKDIR/index), e.g. another run's of the same weights, to score more funnels on it.
  `skip_self`: a document with the query's own id is not a result (BEIR's ignore_identical_ids).
  `cross_depth`: every (query layer, passage layer, dim) cell too, into WORKDIR/cross_depth
  (evaluate/cross_depth.py)."""
  name, split = collection.name, collection.split
  folder = os.path.join(index_dir or os.path.join(workdir, workdir_lib.INDEX), name)
  chains = {spec: search.parse_funnel(spec) for spec in funnels}
  stored = tuple(pairs) + tuple(pair for stages in chains.values() for pair, _ in stages)
  stored += cross_depth_lib.stored_pairs(pairs) if cross_depth else ()
  index_lib.encode_corpus(embedder, collection.doc_ids, collection.docs, stored, folder,
                          max_length=passage_max_length, pooling=pooling)
  layers = tuple(sorted({n for n, _ in stored}))
  query_vecs = embedder.encode_layers(collection.queries, layers, pooling=pooling,
                                      max_length=query_max_length, prompt=embedder.prompt("query"))
  os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  k = min(k, len(collection.doc_ids))
  # a pair is a one-stage funnel; only a chain's records and run file carry its spec
  configurations = [(None, (((n, d), min(k + skip_self, len(collection.doc_ids))),))
                    for n, d in pairs] + list(chains.items())
  metrics = metrics_for(collection.qrels, metrics, len(collection.doc_ids))
  records = []
  for spec, stages in configurations:
    scores, rows = search.funnel_topk(query_vecs, folder, stages, normalize=normalize)
    run = search.run_dict(collection.query_ids, collection.doc_ids, scores, rows)
    if skip_self:
      run = search.without_self(run, k)
    (n, d), _ = stages[-1]
    if spec is None:
      tag, file = f"starbucks_{n}_{d}", f"{name}_{split}_{n}_{d}.trec"
    else:
      tag = "funnel_" + spec.replace(":", "-").replace(",", "_")
      file = f"{name}_{split}_{tag}.trec"
    search.write_trec(os.path.join(workdir, "runs", file), run, tag)
    for metric, value in measure(collection.qrels, run, metrics).items():
      records.append(results.record(name, split, metric, n, d, value, funnel=spec))
  rows = None
  if costs:
    rows = cost.measure(embedder, collection.queries, query_vecs, folder,
                        [stages for _, stages in configurations], num_docs=len(collection.doc_ids),
                        max_length=query_max_length, pooling=pooling, normalize=normalize)
    cost.write(workdir, name, split, rows)
  if cross_depth:
    path = cross_depth_lib.write(
        workdir,
        cross_depth_lib.evaluate(
            collection, query_vecs, folder, pairs, k=k, normalize=normalize, metrics=metrics,
            measure=measure, skip_self=skip_self, config=embedder.config,
            query_lengths=cost.query_lengths(embedder, collection.queries,
                                             query_max_length), cost_rows=rows))
    log.info("cross-depth cells (query layer x passage layer x dim): %s", path)
  return records
