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
      seq = seq[: max_length - 1] + seq[-1:]
      truncated += 1
    ids.append(seq)
  return ids, truncated


BUCKETS = ("pow2", "linear")


def bucket_length(length: int, max_length: int, multiple: int = 16, buckets: str = "pow2") -> int:
  """Pad length for a batch whose longest row is `length`, capped at `max_length`.

  'pow2': the next power of two from `multiple` up (a handful of shapes, so jit compiles a handful
  of programs: the choice for TPU). 'linear': the next multiple of `multiple` (more shapes, less
  padding on short texts such as STS-B: the choice for CPU and GPU)."""
  if buckets == "linear":
    bucket = -(-length // multiple) * multiple
  elif buckets == "pow2":
    bucket = multiple
    while bucket < length:
      bucket *= 2
  else:
    raise ValueError(f"buckets must be one of {BUCKETS}, got {buckets!r}")
  return min(bucket, max_length)


def pad_batch(seqs: list[list[int]], length: int, rows: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """[rows, length] int32 ids and attention mask; rows beyond len(seqs) are all padding."""
  ids = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), np.int32)
  for i, s in enumerate(seqs):
    ids[i, : len(s)] = s
    mask[i, : len(s)] = 1
  return ids, mask
