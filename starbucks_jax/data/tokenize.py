"""Tokenisation with HF fast tokenizers, truncation that reports what it cut, and length buckets."""

from __future__ import annotations

import numpy as np


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
  """Token ids with [CLS] ... [SEP], cut to `max_length` the way HF truncation does (the text is cut,
  the closing [SEP] kept). Returns (ids, number of texts that were truncated)."""
  if max_length < 2:
    raise ValueError(f"max_length={max_length}; need room for [CLS] and [SEP]")
  backend = tokenizer.backend_tokenizer
  backend.no_truncation()
  backend.no_padding()
  ids, truncated = [], 0
  for enc in backend.encode_batch(list(texts)):
    seq = enc.ids
    if len(seq) > max_length:
      seq = seq[:max_length - 1] + seq[-1:]
      truncated += 1
    ids.append(seq)
  return ids, truncated


BUCKETS = ("pow2", "linear")


def bucket_length(length: int, max_length: int, multiple: int = 16,
                  buckets: str | tuple[int, ...] = "pow2") -> int:
  """Pad length for a batch whose longest row is `length`, capped at `max_length`; `buckets` a
  tuple: the smallest of those lengths that holds it (fit_buckets).

  'pow2': the next power of two from `multiple` up (a handful of shapes, so jit compiles a handful
  of programs: the choice for TPU). 'linear': the next multiple of `multiple` (more shapes, less
  padding on short texts such as STS-B: the choice for CPU and GPU)."""
  if isinstance(buckets, tuple):
    return min(b for b in buckets if b >= min(length, max_length))
  if buckets == "linear":
    bucket = -(-length // multiple) * multiple
  elif buckets == "pow2":
    bucket = multiple
    while bucket < length:
      bucket *= 2
  else:
    raise ValueError(f"buckets must be one of {BUCKETS}, got {buckets!r}")
  return min(bucket, max_length)


def fit_buckets(lengths, top: int, count: int, multiple: int = 8) -> tuple[int, ...]:
  """At most `count` pad lengths, multiples of `multiple` and the last `top`, that minimise the padded
  tokens of batches whose longest rows are `lengths` (each padded to the smallest bucket that holds
  it): an exact dynamic programme over the distinct rounded lengths. `top` must hold every length."""
  lengths = np.asarray(lengths, np.int64)
  if count < 1:
    raise ValueError(f"count={count}; need at least one bucket")
  if lengths.size and lengths.max() > top:
    raise ValueError(f"a batch of {lengths.max()} tokens does not fit the top bucket {top}")
  rounded = np.minimum(-(-lengths // multiple) * multiple, top)
  values, counts = np.unique(np.append(rounded, top), return_counts=True)
  counts[-1] -= 1  # `top` was appended only to be a candidate
  n = len(values)
  before = np.concatenate([[0], np.cumsum(counts)])  # batches at candidates < i
  # cost[k][j]: fewest padded tokens for candidates 0..j with k buckets, the largest at values[j]
  cost = np.full((count + 1, n), np.inf)
  choice = np.zeros((count + 1, n), np.int64)
  cost[1] = before[1:] * values
  for k in range(2, count + 1):
    for j in range(n):
      for i in range(j):
        c = cost[k - 1][i] + (before[j + 1] - before[i + 1]) * values[j]
        if c < cost[k][j]:
          cost[k][j], choice[k][j] = c, i
  k = int(np.argmin(cost[1:, n - 1])) + 1  # fewest padded tokens; ties: fewest buckets
  out, j = [], n - 1
  while k >= 1:
    out.append(int(values[j]))
    j, k = choice[k][j], k - 1
  return tuple(sorted(out))


def pad_batch(seqs: list[list[int]], length: int, rows: int,
              pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """[rows, length] int32 ids and attention mask; rows beyond len(seqs) are all padding."""
  ids = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), np.int32)
  for i, s in enumerate(seqs):
    ids[i, :len(s)] = s
    mask[i, :len(s)] = 1
  return ids, mask
