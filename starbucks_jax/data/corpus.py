"""Documents for SMAE pre-training and the masked batches built from them.

Rows: each document is cut to a random window of at most max_length - 2 tokens, then [CLS] ...
[SEP] (docs/method.md; no packing). With `packing`, an epoch's documents are instead concatenated
([SEP] between them) and cut into full rows. Batches are B consecutive rows, padded to a length
bucket and masked by `masking.Masker`.

Two kinds of source:
- in memory (local files, hf: without streaming, tfds:): tokenised once; each epoch is a seeded
  shuffle and a batch is a pure function of (seed, step), so a resumed run reads exactly the batches
  of an uninterrupted one; the last incomplete batch of an epoch is dropped;
- streamed (`hf:` with streaming, the paper's FineWeb): one pass, tokenised on the fly, shuffled
  by a buffer: the stream is cut into blocks of `shuffle_buffer` documents and each block is read
  in a seeded permutation of its own (a resumed run skips to the block of its next row and
  permutes it again). One epoch is the stream's length (`sources.stream_length`: the dataset's
  metadata or a cached count) in whole batches; the run ends where the stream does.
Windows are seeded per (seed, epoch, row) and masks per (seed, step).
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np

from starbucks_jax.config_lib import ConfigError, check_choice, check_range
from starbucks_jax.data.masking import Masker
from starbucks_jax.data.prefetch import in_background
from starbucks_jax.data.sources import DataError, check_spec, read_rows, stream_length
from starbucks_jax.data.tokenize import BUCKETS, bucket_length

log = logging.getLogger(__name__)


def check_config(data_cfg) -> None:
  """The data block of a pre-training run (config_blocks.TextData)."""
  check_spec("data.train", data_cfg.train)
  check_range("data.shuffle_buffer", data_cfg.shuffle_buffer, 0)
  if data_cfg.streaming and not data_cfg.train.startswith("hf:"):
    raise ConfigError(f"data.streaming=True is for hf: sources, not {data_cfg.train!r}")
  if data_cfg.shuffle_buffer and not data_cfg.streaming:
    raise ConfigError(
        f"data.shuffle_buffer={data_cfg.shuffle_buffer} is for streamed sources; an in-memory "
        "source is shuffled whole every epoch: set it to 0")
  if data_cfg.packing and data_cfg.streaming:
    raise ConfigError("data.packing=True needs an in-memory source (data.streaming=False)")
  check_choice("data.length_buckets", data_cfg.length_buckets, BUCKETS)
  check_range("data.batch_size", data_cfg.batch_size, 1)


def window(ids: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """A uniformly placed window of at most `size` tokens (the whole text when it fits)."""
  if len(ids) <= size:
    return ids
  start = int(rng.integers(0, len(ids) - size + 1))
  return ids[start:start + size]


class TextBatcher:
  """Serves (step, batch) for SMAE: ids, dec_ids, mask [B, T]; mlm_/mae_ positions and labels."""
  def __init__(self, spec: str, tokenizer, masker: Masker, *, batch_size: int, max_length: int,
               seed: int, column: str = "text", streaming: bool = False, packing: bool = False,
               length_buckets: str = "pow2", tokenize_batch: int = 1024, shuffle_buffer: int = 0,
               count_rows: bool = False):
    if packing and streaming:
      raise DataError(f"{spec}: packing needs an in-memory source (streaming=False)")
    self.spec, self.tokenizer, self.masker = spec, tokenizer, masker
    self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
    self.column, self.streaming, self.packing = column, streaming, packing
    self.length_buckets, self.shuffle_buffer, self.count_rows = length_buckets, shuffle_buffer, count_rows
    self.cls, self.sep, self.pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    self.tokenize_batch = tokenize_batch
    self.tokens: list[np.ndarray] | None = None
    self._packed: dict[int, list[np.ndarray]] = {}
    if not streaming:
      texts = [r["text"] for r in read_rows(spec, {"text": str}, {"text": column})]
      if not texts:
        raise DataError(f"{spec}: no documents")
      self.tokens = self._tokenize(texts)
      if self.rows_per_epoch(0) < batch_size:
        raise DataError(
            f"{spec}: {self.rows_per_epoch(0)} rows are fewer than one batch of {batch_size}")

  def _tokenize(self, texts: list[str]) -> list[np.ndarray]:
    out = []
    for i in range(0, len(texts), self.tokenize_batch):
      enc = self.tokenizer(texts[i:i + self.tokenize_batch], add_special_tokens=False,
                           verbose=False, return_attention_mask=False,
                           return_token_type_ids=False)["input_ids"]
      out.extend(np.asarray(x, np.int32) for x in enc)
    return out

  # ----- rows -----
  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.tokens))

  def _packed_rows(self, epoch: int) -> list[np.ndarray]:
    if epoch not in self._packed:
      size = self.max_length - 2
      stream = []
      for i in self._order(epoch):
        stream.extend((self.tokens[i], np.array([self.sep], np.int32)))
      stream = np.concatenate(stream)[:-1]
      self._packed = {epoch: [stream[j:j + size] for j in range(0, len(stream), size)]}
    return self._packed[epoch]

  def rows_per_epoch(self, epoch: int) -> int:
    return len(self._packed_rows(epoch)) if self.packing else len(self.tokens)

  def steps_in(self, epochs: int) -> int:
    if self.streaming:
      rows = stream_length(self.spec, count=self.count_rows)
      if rows is None:
        raise DataError(
            f"{self.spec}: the stream's length is not in its metadata; set train.max_steps, "
            "or data.count_rows=True to count its rows once (cached)")
      if epochs != 1:
        raise DataError(
            f"{self.spec}: a streamed source is read once (train.epochs=1), not {epochs} times")
      return rows // self.batch_size
    return sum(self.rows_per_epoch(e) // self.batch_size for e in range(epochs))

  def _row(self, epoch: int, index: int, tokens: np.ndarray | None = None) -> np.ndarray:
    if self.packing:
      body = self._packed_rows(epoch)[index]
    else:
      tokens = self.tokens[self._order(epoch)[index]] if tokens is None else tokens
      body = window(tokens, self.max_length - 2, np.random.default_rng([self.seed, epoch, index]))
    return np.concatenate([[self.cls], body, [self.sep]]).astype(np.int32)

  def stream_rows(self, texts: list[str], first_row: int) -> list[np.ndarray]:
    """Rows of streamed documents (tokenised now), the first being row `first_row` of the stream."""
    return [self._row(0, first_row + j, tokens) for j, tokens in enumerate(self._tokenize(texts))]

  def _rows(self, start_step: int) -> Iterator[list[np.ndarray]]:
    """The rows of each batch from `start_step` on."""
    B = self.batch_size
    if self.streaming:
      row = start_step * B
      texts = self._shuffled(row)
      while True:
        chunk = [t for _, t in zip(range(B), texts)]
        if len(chunk) < B:
          return
        yield self.stream_rows(chunk, row)
        row += B
    epoch, step = 0, start_step
    while step >= self.rows_per_epoch(epoch) // B:
      step -= self.rows_per_epoch(epoch) // B
      epoch += 1
    while True:
      for index in range(step, self.rows_per_epoch(epoch) // B):
        yield [self._row(epoch, index * B + j) for j in range(B)]
      epoch, step = epoch + 1, 0

  def _shuffled(self, first: int) -> Iterator[str]:
    """The stream's texts from row `first` on, each block of `shuffle_buffer` rows in a seeded
    permutation of its own (block k: rng(seed, 2^21, k)); 0 keeps the stream's order."""
    W = self.shuffle_buffer
    block = first // W if W else 0
    texts = (r["text"] for r in read_rows(self.spec, {"text": str}, {"text": self.column},
                                          streaming=True, skip=block * W if W else first))
    if not W:
      yield from texts
      return
    skip = first - block * W
    while True:
      rows = [t for _, t in zip(range(W), texts)]
      if not rows:
        return
      for i in np.random.default_rng([self.seed, 1 << 21, block]).permutation(len(rows))[skip:]:
        yield rows[i]
      block, skip = block + 1, 0

  # ----- batches -----
  def make_batch(self, step: int, rows: list[np.ndarray]) -> dict[str, np.ndarray]:
    length = bucket_length(max(len(r) for r in rows), self.max_length, buckets=self.length_buckets)
    return self.masker.batch(rows, length, self.pad,
                             np.random.default_rng([self.seed, 1 << 20, step]))

  def batches(self, start_step: int, num_steps: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    step = start_step
    rows_iter = self._rows(start_step)
    if self.streaming:  # read + tokenise on a thread of its own: it overlaps the masking
      rows_iter = in_background(rows_iter, prefetch=2)
    for rows in rows_iter:
      if step >= num_steps:
        return
      yield step, self.make_batch(step, rows)
      step += 1
    # a stream shorter than train.max_steps (or its metadata): the epoch is over
    if step < num_steps:
      log.warning("%s: the stream ended after %d steps of the %d asked for; the run ends here",
                  self.spec, step, num_steps)
