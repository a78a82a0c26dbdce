"""What a retrieval configuration costs per query: a single (layer, dim) or a funnel of them.

Analytic, per query: the encoder's matmul FLOPs to the deepest layer the configuration reads (the
query's real tokens; BertConfig.matmul_flops), the search's multiply-adds x 2 (2 d N for the first
stage over N passages, 2 d k for each rescoring stage over the previous stage's k), and the float32
bytes per passage of the index the configuration reads (the largest dim kept per layer). Measured
beside them: ms per query to encode the queries (early exit, after a warm-up pass) and to search
(every stage, after a warm-up call), on `sample` queries.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from starbucks_jax import schedule
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.data.tokenize import tokenize
from starbucks_jax.evaluate import index as index_lib
from starbucks_jax.evaluate import search

Stage = search.Stage


def name_of(stages) -> str:
  """'2x32' for one size, else the funnel's chain (as parse_funnel reads it)."""
  if len(stages) == 1:
    return search.pair_name(stages[0][0])
  return ",".join(f"{search.pair_name(pair)}:{k}" for pair, k in stages)


def query_flops(config, lengths, layer: int) -> float:
  """Mean encoder matmul FLOPs of one query of each token count in `lengths`, through `layer` layers."""
  cut = config.replace(num_hidden_layers=layer)
  return float(np.mean([cut.matmul_flops(1, int(t), train=False) for t in lengths]))


def query_lengths(embedder, queries: list[str], max_length: int) -> list[int]:
  """Each query's token count as the evaluation encodes it (its prompt included, cut at max_length)."""
  prompt = embedder.prompt("query")
  return [
      len(t) for t in tokenize(embedder.tokenizer, [prompt + q for q in queries], max_length)[0]
  ]


def search_flops(stages, num_docs: int) -> float:
  """Multiply-adds x 2 of one query's search: every passage at the first stage's dim (int8: as many
  integer ones; binary: an XOR and a popcount per 64 dims), then each rescoring stage's dim over the
  previous stage's survivors."""
  (_, d), k = stages[0]
  flops = 2.0 * (-(-d // 64) if search.kind_of(stages[0][0]) == "binary" else d) * num_docs
  for (_, d), k_next in stages[1:]:
    flops += 2.0 * d * min(k, num_docs)
    k = k_next
  return flops


def search_flops_at(configuration: str, num_docs: int) -> float:
  """search_flops of a row's configuration ('2x32', a funnel's chain, or a cross-depth cell
  'q2@6x64': passages' vectors at 6x64) over a corpus of `num_docs`."""
  configuration = configuration.split("@")[-1]
  stages = search.parse_funnel(configuration) if ":" in configuration else \
      ((schedule.parse_pair(configuration), num_docs),)
  return search_flops(stages, num_docs)


def index_bytes(stages) -> int:
  """Bytes per passage of the vectors the configuration reads: float32 at the largest dim per layer
  of the float stages, and a quantized first stage's own (int8: 1 a dim; binary: 1 bit a dim)."""
  floats = [pair for pair, _ in stages if search.kind_of(pair) == "float"]
  (_, d), kind = stages[0][0], search.kind_of(stages[0][0])
  quantized = {"float": 0, "int8": d, "binary": -(-d // 8)}[kind]
  return 4 * sum(index_lib.layer_dims(floats).values()) + quantized


def _ms_per_query(fn, count: int) -> float:
  fn()  # warm-up: compiles
  t = time.perf_counter()
  fn()
  return 1000 * (time.perf_counter() - t) / count


def measure(embedder, queries: list[str], query_vecs: dict[int, np.ndarray], folder: str,
            configurations, *, num_docs: int, max_length: int, pooling: str | None = None,
            normalize: bool = False, sample: int = 256) -> list[dict[str, Any]]:
  """One cost record per configuration (a tuple of stages): FLOPs, bytes and measured ms per query on
  the first `sample` queries; `query_vecs` are the queries' vectors the evaluation encoded."""
  queries = list(queries)[:sample]
  lengths = query_lengths(embedder, queries, max_length)
  deepest = {max(n for (n, _), _ in stages) for stages in configurations}
  encode_ms = {
      n: _ms_per_query(
          lambda n=n: embedder.encode_layers(queries, (
              n,), pooling=pooling, max_length=max_length, prompt=embedder.prompt("query")),
          len(queries)) for n in sorted(deepest)
  }
  vecs = {n: v[:len(queries)] for n, v in query_vecs.items()}
  out = []
  for stages in configurations:
    n_max = max(n for (n, _), _ in stages)
    searching = _ms_per_query(
        lambda s=stages: search.funnel_topk(vecs, folder, s, normalize=normalize), len(queries))
    out.append({
        "configuration": name_of(stages), "layers": n_max,
        "query_flops": query_flops(embedder.config, lengths,
                                   n_max), "search_flops": search_flops(stages, num_docs),
        "index_bytes": index_bytes(stages), "query_ms": encode_ms[n_max], "search_ms": searching,
        "queries_timed": len(queries), "num_docs": num_docs
    })
  return out


def write(workdir: str, dataset: str, split: str, rows: list[dict[str, Any]]) -> str:
  path = os.path.join(workdir, workdir_lib.COSTS, f"{dataset}_{split}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf8") as f:
    json.dump(rows, f, indent=1)
  return path


def read(workdir: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
  """{(dataset, split): cost rows} of a workdir."""
  folder = os.path.join(workdir, workdir_lib.COSTS)
  out = {}
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
    if name.endswith(".json"):
      dataset, split = name[:-5].rsplit("_", 1)
      out[(dataset, split)] = json.load(open(os.path.join(folder, name)))
  return out
