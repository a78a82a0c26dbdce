"""STS evaluation: Spearman correlation of cosine similarity with gold scores, per (layer, dim).

Each distinct sentence is encoded once, in one pass to the deepest layer of the schedule; every
(layer, dim) is a slice of that pass.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
from scipy import stats

from starbucks_jax.data.sources import DataError, read_rows
from starbucks_jax.evaluate.results import record


def read_sts(
    spec: str, columns: Mapping[str, str] | None = None, score_range: tuple[float, float] = (0, 5)
) -> tuple[list[str], list[str], np.ndarray]:
  rows = list(read_rows(spec, {"sentence1": str, "sentence2": str, "score": float}, columns))
  if len(rows) < 3:
    raise DataError(f"{spec}: {len(rows)} scored pairs; an STS evaluation needs at least 3")
  scores = np.array([r["score"] for r in rows], np.float64)
  return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], scores


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
  return (a * b).sum(1)


def spearman(pred: np.ndarray, gold: np.ndarray) -> float:
  return float(stats.spearmanr(pred, gold).statistic)


def evaluate_sts(embedder, sentences1: list[str], sentences2: list[str], scores: np.ndarray,
                 pairs: Iterable[tuple[int, int]], *, dataset: str, split: str,
                 pooling: str | None = None) -> list[dict[str, Any]]:
  """Spearman (cosine) for every (layer, dim) of `pairs`, from one encoding pass; both sentences
  of a pair are alike (symmetric), so both get the query prompt, if the model has one."""
  pairs = list(pairs)
  unique = sorted(set(sentences1) | set(sentences2))
  index = {t: i for i, t in enumerate(unique)}
  i1 = np.array([index[t] for t in sentences1])
  i2 = np.array([index[t] for t in sentences2])
  pooled = embedder.encode_layers(unique, tuple(layer for layer, _ in pairs), pooling=pooling,
                                  prompt=embedder.prompt("query"))
  out = []
  for layer, dim in sorted(pairs):
    full = pooled[layer]
    value = spearman(cosine(full[i1, :dim], full[i2, :dim]), scores)
    out.append(record(dataset, split, "spearman_cosine", layer, dim, value))
  return out


def evaluate_sets(embedder, eval_sets: list[tuple[str, str, str]], pairs, *,
                  pooling: str | None = None) -> list[dict[str, Any]]:
  """Every (dataset, split, source) of `eval_sets` at every pair; records for results.write."""
  out = []
  for dataset, split, spec in eval_sets:
    s1, s2, scores = read_sts(spec)
    out += evaluate_sts(embedder, s1, s2, scores, pairs, dataset=dataset, split=split,
                        pooling=pooling)
  return out


def notes(eval_sets: list[tuple[str, str, str]]) -> list[str]:
  """A line per set for the results table: what its column is."""
  return [
      f"{dataset}/{split}: Spearman of cosine similarity against the gold scores, "
      f"{len(read_sts(spec)[2])} pairs of {spec}" for dataset, split, spec in eval_sets
  ]
