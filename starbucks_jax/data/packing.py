"""Packing texts into shared rows: where each text goes (first fit) and the packed arrays (ids,
segments, positions) a packed encoder forward reads. Used by the training batches (batching.py)
and by embedding (embed.py)."""

from __future__ import annotations

from typing import Iterator

import numpy as np


def pack_texts(lengths: np.ndarray, row_length: int) -> tuple[np.ndarray, np.ndarray, int]:
  """First-fit decreasing: each text (longest first) goes to the first row with room for it.
  Returns (row, offset) of every text and the number of rows used; every length <= row_length."""
  lengths = np.asarray(lengths)
  order = np.argsort(-lengths, kind="stable")
  _, placed_row, placed_offset = next(
      pack_in_order(lengths[order], row_length, len(lengths), len(lengths)))
  row, offset = np.empty(len(lengths), np.int64), np.empty(len(lengths), np.int64)
  row[order], offset[order] = placed_row, placed_offset
  return row, offset, int(placed_row.max()) + 1


def pack_in_order(lengths, row_length: int, rows: int,
                  max_texts: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Texts in the given order (longest first packs best) into batches of `rows` rows of `row_length`
  tokens: each text goes to the first row of the open batch with room; the batch closes when a text
  fits no row and every row is taken, or at `max_texts` texts. Yields (texts, row, offset) per batch."""
  texts, row, offset = [], [], []
  free = np.full(rows, row_length)
  used = 0
  for i, n in enumerate(lengths):
    fits = free[:used] >= n
    r = int(fits.argmax()) if fits.any() else used
    if r == rows or len(texts) == max_texts:  # the batch is full: emit it, start the next
      yield np.array(texts), np.array(row), np.array(offset)
      texts, row, offset, used = [], [], [], 0
      free[:] = row_length
      r = 0
    texts.append(i)
    row.append(r)
    offset.append(row_length - free[r])
    free[r] -= n
    used = max(used, r + 1)
  if texts:
    yield np.array(texts), np.array(row), np.array(offset)


def fill_rows(flat: np.ndarray, starts, counts, slots, segments, size: int,
              pad_id: int) -> dict[str, np.ndarray]:
  """Flat packed arrays of `size` tokens: text i's `counts[i]` tokens, read from `flat` at
  `starts[i]`, written from slot `slots[i]` on with segment id `segments[i]` and positions 0.."""
  counts = np.asarray(counts)
  within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  dst = np.repeat(slots, counts) + within
  out = {
      "ids": np.full(size, pad_id, np.int32), "segments": np.full(size, -1, np.int32),
      "positions": np.zeros(size, np.int32)
  }
  out["ids"][dst] = flat[np.repeat(starts, counts) + within]
  out["segments"][dst], out["positions"][dst] = np.repeat(segments, counts), within
  return out
