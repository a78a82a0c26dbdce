"""Exact top-k search over an index, batched in JAX, memory-bounded; optional FAISS; TREC run files.

`exact_topk(queries, blocks, k)` scores query batches against the corpus one block (index shard) at
a time and keeps a running top-k, so memory is bounded by query_batch x block rows, not by the
corpus. Similarity is the inner product of the truncated vectors, or their cosine
(`normalize=True`: truncate, then L2-normalise, as a Matryoshka cosine model is used).
"""

from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from starbucks_jax.config_lib import InputError
from starbucks_jax.evaluate import index as index_lib
from starbucks_jax.schedule import parse_pair


def _normalise(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _merge_block(best_scores, best_rows, queries, block, offset, *, k: int, normalize: bool):
  if normalize:
    queries, block = _normalise(queries), _normalise(block)
  scores = jnp.dot(queries, block.T, precision=jax.lax.Precision.HIGHEST)
  kk = min(k, block.shape[0])
  top_scores, top_rows = jax.lax.top_k(scores, kk)
  all_scores = jnp.concatenate([best_scores, top_scores], axis=1)
  all_rows = jnp.concatenate([best_rows, top_rows + offset], axis=1)
  keep_scores, pick = jax.lax.top_k(all_scores, k)
  return keep_scores, jnp.take_along_axis(all_rows, pick, axis=1)


def exact_topk(queries: np.ndarray, blocks: Iterable[tuple[int, np.ndarray]], k: int, *,
               normalize: bool = False, query_batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """(scores [Q, k], rows [Q, k]) best first; rows index the corpus. `blocks` yields (first row,
  [rows, d]) as `index.shards` does; it is read once. Fewer than k documents: rows -1, scores -inf."""
  queries = np.asarray(queries, np.float32)
  Q = len(queries)
  best_scores = np.full((Q, k), -np.inf, np.float32)
  best_rows = np.full((Q, k), -1, np.int64)
  for offset, block in blocks:
    block = jnp.asarray(np.asarray(block, np.float32))
    for s in range(0, Q, query_batch):
      sl = slice(s, s + query_batch)
      sc, rw = _merge_block(jnp.asarray(best_scores[sl]), jnp.asarray(best_rows[sl], jnp.int32),
                            jnp.asarray(queries[sl]), block, offset, k=k, normalize=normalize)
      best_scores[sl], best_rows[sl] = np.asarray(sc), np.asarray(rw)
  return best_scores, best_rows


@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _rescore_each(queries, candidates, valid, *, k: int, normalize: bool):
  """Scores of each query's candidate vectors [Q, C, d] (invalid: -inf), the best k first."""
  if normalize:
    queries, candidates = _normalise(queries), _normalise(candidates)
  scores = jnp.einsum("qd,qcd->qc", queries, candidates, precision=jax.lax.Precision.HIGHEST)
  return jax.lax.top_k(jnp.where(valid, scores, -jnp.inf), k)


@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _rescore_shared(queries, vecs, where, valid, *, k: int, normalize: bool):
  """The same from one matmul against the batch's distinct candidates `vecs` [U, d]; `where` [Q, C]
  says which of them each candidate is."""
  if normalize:
    queries, vecs = _normalise(queries), _normalise(vecs)
  scores = jnp.dot(queries, vecs.T, precision=jax.lax.Precision.HIGHEST)
  return jax.lax.top_k(jnp.where(valid, jnp.take_along_axis(scores, where, axis=1), -jnp.inf), k)


def rescore(queries: np.ndarray, vectors, rows: np.ndarray, k: int, *, normalize: bool = False,
            query_batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """(scores [Q, k], rows [Q, k]) best first among each query's candidate `rows` [Q, C] (-1: none),
  rescored with `vectors(rows) -> [..., d]` (another sub-model's stored vectors); rows -1 where fewer.
  Where a batch's candidates overlap (a long shortlist over a small corpus), its distinct rows are
  read once and scored in one matmul (padded to a power of two: few shapes compile)."""
  queries = np.asarray(queries, np.float32)
  Q, C = rows.shape
  k = min(k, C)
  out_scores, out_rows = np.full((Q, k), -np.inf, np.float32), np.full((Q, k), -1, np.int64)
  for s in range(0, Q, query_batch):
    sl = slice(s, s + query_batch)
    cand = np.maximum(rows[sl], 0)
    valid = jnp.asarray(rows[sl] >= 0)
    distinct, where = np.unique(cand, return_inverse=True)
    if len(distinct) <= 16 * C:  # CPU: the matmul is 3x faster than the gather at 16x its FLOPs
      vecs = vectors(distinct)
      padded = np.zeros((1 << (len(distinct) - 1).bit_length(), vecs.shape[-1]), np.float32)
      padded[:len(vecs)] = vecs
      sc, pick = _rescore_shared(jnp.asarray(queries[sl]), jnp.asarray(padded),
                                 jnp.asarray(where.reshape(cand.shape)), valid, k=k,
                                 normalize=normalize)
    else:
      sc, pick = _rescore_each(jnp.asarray(queries[sl]), jnp.asarray(vectors(cand)), valid, k=k,
                               normalize=normalize)
    sc, pick = np.asarray(sc), np.asarray(pick)
    out_scores[sl] = sc
    out_rows[sl] = np.where(np.isfinite(sc), np.take_along_axis(rows[sl], pick, 1), -1)
  return out_scores, out_rows


Stage = tuple[tuple[int, int], int]  # ((layer, dim), documents kept)
SUFFIXES = {"i8": "int8", "b": "binary"}  # a quantized first stage: '2x64b:2000,6x384:10'


class QuantizedPair(tuple):
  """The (layer, dim) of a funnel's first stage searched over quantized vectors (`kind`: 'int8' or
  'binary', index.quantized_shards); a (layer, dim) tuple everywhere else."""
  def __new__(cls, pair, kind: str):
    out = super().__new__(cls, pair)
    out.kind = kind
    return out


def kind_of(pair) -> str:
  """'float', or a QuantizedPair's quantization."""
  return getattr(pair, "kind", "float")


def pair_name(pair) -> str:
  """'2x64', '2x64i8' or '2x64b'."""
  suffix = {v: k for k, v in SUFFIXES.items()}.get(kind_of(pair), "")
  return f"{pair[0]}x{pair[1]}{suffix}"


def parse_funnel(spec: str) -> tuple[Stage, ...]:
  """'2x32:1000,4x128:100,6x384:10' -> (((2, 32), 1000), ((4, 128), 100), ((6, 384), 10)): the first
  stage retrieves, each next one rescores the previous stage's documents and keeps no more of them.
  The first stage may search int8 ('2x64i8:2000') or binary ('2x64b:2000') vectors; rescoring is
  float."""
  stages = []
  for i, part in enumerate(spec.split(",")):
    pair, colon, k = part.partition(":")
    if not (colon and k.strip().isdigit()):
      raise InputError(f"funnel {spec!r}: {part!r} is not LAYERxDIM:K (e.g. 2x32:1000,6x384:10)")
    pair = pair.strip()
    suffix = next((s for s in SUFFIXES if pair.endswith(s) and pair[:-len(s)][-1:].isdigit()), "")
    if suffix and i:
      raise InputError(f"funnel {spec!r}: {part!r}: only the first stage searches quantized "
                       "vectors (i8, b); rescoring stages are float")
    size = parse_pair(pair[:len(pair) - len(suffix)], where=f"funnel {spec!r}: ")
    stages.append((QuantizedPair(size, SUFFIXES[suffix]) if suffix else size, int(k)))
  for i, ((n, d), k) in enumerate(stages):
    if k < 1 or n < 1 or d < 1:
      raise InputError(f"funnel {spec!r}: stage {i + 1} needs a layer, dim and k of at least 1")
    if i and k > stages[i - 1][1]:
      raise InputError(
          f"funnel {spec!r}: stage {i + 1} keeps {k} of the previous stage's {stages[i - 1][1]}")
  return tuple(stages)


def funnel_topk(query_vecs: dict[int, np.ndarray], folder: str, stages, *,
                normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Funnel search over an index (evaluate/index.py): exact top-k1 with the first stage's (layer, dim)
  vectors (float, or quantized: parse_funnel), then each stage rescores the survivors with its own
  stored float vectors. `query_vecs[layer]`
  are the queries' pooled vectors (one early-exit pass gives every layer the funnel needs)."""
  (n, d), k = stages[0]
  kind, queries = kind_of(stages[0][0]), query_vecs[n][:, :d]
  if kind == "float":
    scores, rows = exact_topk(queries, index_lib.shards(folder, n, d), k, normalize=normalize)
  else:  # int8: float queries against dequantized passages; binary: signs both sides (d - 2 x Hamming)
    queries = np.where(queries > 0, 1.0, -1.0).astype(np.float32) if kind == "binary" else queries
    scores, rows = exact_topk(queries, index_lib.quantized_shards(folder, n, d, kind), k,
                              normalize=normalize and kind == "int8")
  for (n, d), k in stages[1:]:
    scores, rows = rescore(query_vecs[n][:, :d],
                           lambda r, n=n, d=d: index_lib.gather(folder, n, d, r), rows, k,
                           normalize=normalize)
  return scores, rows


def faiss_topk(queries: np.ndarray, corpus: np.ndarray, k: int, *,
               normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """The same search with FAISS's exact inner-product index (IndexFlatIP), when installed."""
  try:
    import faiss
  except ImportError:
    raise ImportError("FAISS is optional: pip install faiss-cpu (or faiss-gpu)") from None
  q, c = np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(corpus, np.float32)
  if normalize:
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
  index = faiss.IndexFlatIP(c.shape[1])
  index.add(c)
  return index.search(q, k)


def run_dict(query_ids: list[str], doc_ids: list[str], scores: np.ndarray,
             rows: np.ndarray) -> dict[str, dict[str, float]]:
  """{query id: {doc id: score}} from a top-k result (rows -1 dropped)."""
  return {
      q: {doc_ids[r]: float(s) for s, r in zip(scores[i], rows[i]) if r >= 0}
      for i, q in enumerate(query_ids)
  }


def without_self(run: dict[str, dict[str, float]], k: int) -> dict[str, dict[str, float]]:
  """The run without each query's own id among its documents, k kept (BEIR's ignore_identical_ids)."""
  return {
      q: dict(sorted(((d, s) for d, s in docs.items() if d != q), key=lambda t: -t[1])[:k])
      for q, docs in run.items()
  }


def write_trec(path: str, run: dict[str, dict[str, float]], tag: str) -> str:
  """A TREC run file: `qid Q0 docid rank score tag`, best first."""
  with open(path, "w", encoding="utf8") as f:
    for q, docs in run.items():
      for rank, (doc, score) in enumerate(sorted(docs.items(), key=lambda t: (-t[1], t[0])), 1):
        f.write(f"{q} Q0 {doc} {rank} {score:.6f} {tag}\n")
  return path
