"""Training examples and deterministic, resumable batches of token ids.

An example set has R text roles (triplets: anchor, positive, negative; pairs: anchor, positive;
scored_pairs: sentence1, sentence2 plus a score, 0..5 unless data.score_range says otherwise). Batches are a pure function of
(seed, epoch, index): a resumed run sees exactly the batches the uninterrupted run would have.
Each epoch is a seeded shuffle; with `no_duplicates`, an example whose text is already in the batch
waits for a later batch (an in-batch duplicate would be a false negative). The last incomplete
batch of an epoch is dropped (static shapes). Every batch is padded to a length bucket, or with
`pack_length` packed: its texts share rows of that many tokens (`pack_texts`), each text attending
only to itself, so a step pays for the tokens it has rather than for the batch's longest text.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Iterator, Mapping

import numpy as np

from starbucks_jax.config_lib import ConfigError, check_choice, check_range
from starbucks_jax.data.packing import fill_rows, pack_texts
from starbucks_jax.data.sources import DataError, check_spec, read_rows, typed
from starbucks_jax.data.tokenize import BUCKETS, bucket_length, fit_buckets, tokenize

log = logging.getLogger(__name__)

SCORE_RANGE = (0.0, 5.0)  # STS-B's similarity scale
FORMATS = {
    "triplets": ("anchor", "positive", "negative"), "pairs": ("anchor", "positive"),
    "scored_pairs": ("sentence1", "sentence2")
}


def check_config(data) -> None:
  """The data block of a run on examples (data.format triplets, pairs or scored_pairs:
  config_blocks.ExampleData)."""
  check_choice("data.length_buckets", data.length_buckets, BUCKETS + ("auto",))
  check_range("data.num_buckets", data.num_buckets, 1)
  check_range("data.pack_length", data.pack_length, 0)
  low, high = data.score_range
  check_range("data.score_range", low)
  check_range("data.score_range", high, low, low_open=True)
  if data.train.startswith("beir:"):
    raise ConfigError(f"data.train={data.train!r} (BEIR qrels) needs data.format='groups'")
  check_spec("data.train", data.train)


@dataclasses.dataclass
class Examples:
  roles: tuple[str, ...]
  texts: list[list[str]]  # [R][num_examples]
  scores: np.ndarray | None  # [num_examples] for scored pairs

  def __len__(self) -> int:
    return len(self.texts[0])

  def with_prompts(self, query: str, passage: str) -> Examples:
    """The examples with `query` before each anchor and `passage` before each positive and negative;
    scored pairs are symmetric: `query` before both sentences."""
    if not (query or passage):
      return self
    symmetric = self.roles == FORMATS["scored_pairs"]
    prompts = [query if r == 0 or symmetric else passage for r in range(len(self.roles))]
    return dataclasses.replace(
        self, texts=[[p + t for t in texts] for p, texts in zip(prompts, self.texts)])


def load_examples(spec: str, fmt: str, columns: Mapping[str, str] | None = None,
                  score_range: tuple[float, float] = SCORE_RANGE) -> Examples:
  """Rows of `spec` as examples of `fmt`; scored pairs' scores must lie in `score_range` (data.score_range)."""
  if fmt not in FORMATS:
    raise DataError(f"data format {fmt!r}; expected one of {sorted(FORMATS)}")
  roles = FORMATS[fmt]
  fields = {r: str for r in roles}
  if fmt == "scored_pairs":
    low, high = score_range

    def score(value) -> float:
      x = typed(value, float)
      if not low <= x <= high:
        raise ValueError(f"is outside data.score_range [{low:g}, {high:g}]")
      return x

    fields["score"] = score
  rows = list(read_rows(spec, fields, columns))
  if not rows:
    raise DataError(f"{spec}: no examples")
  scores = np.array([r["score"] for r in rows], np.float32) if fmt == "scored_pairs" else None
  return Examples(roles, [[r[role] for r in rows] for role in roles], scores)


class Batcher:
  """Tokenises once, then serves batch(epoch, index) -> {'ids', 'mask': [R, B, T] int32, 'scores'};
  packed (`pack_length`), {'ids', 'segments', 'positions': [P, pack_length] int32, 'scores'}: the
  texts of shard s (its B/shards examples, role by role) fill rows s*P/shards .. (s+1)*P/shards - 1;
  `segments` numbers a token's text within its shard (role r, example b: r * B/shards + b), -1 padding."""
  def __init__(self, examples: Examples, tokenizer, *, batch_size: int, max_length: int, seed: int,
               no_duplicates: bool = False, length_buckets: str = "pow2", num_buckets: int = 3,
               pack_length: int | None = None, shards: int = 1):
    if len(examples) < batch_size:
      raise DataError(f"{len(examples)} examples are fewer than one batch of {batch_size}")
    if batch_size % shards:
      raise DataError(f"batch of {batch_size} does not split over {shards} data-parallel shards")
    self.examples, self.batch_size, self.max_length = examples, batch_size, max_length
    self.seed, self.no_duplicates, self.length_buckets = seed, no_duplicates, length_buckets
    self.num_buckets, self.shards = num_buckets, shards
    self.pad_id = tokenizer.pad_token_id
    flat, lengths, truncated = [], [], 0  # each role's token ids end to end, and each text's length
    for texts in examples.texts:
      ids, n = tokenize(tokenizer, texts, max_length)
      lengths.append(np.fromiter(map(len, ids), np.int64, len(ids)))
      flat.append(np.fromiter((t for s in ids for t in s), np.int32, int(lengths[-1].sum())))
      truncated += n
    self.flat, self.lengths = flat, np.stack(lengths)  # [R] x [sum of lengths], [R, N]
    self.starts = np.concatenate(
        [np.zeros((len(flat), 1), np.int64),
         np.cumsum(self.lengths, 1)[:, :-1]], 1)
    if truncated:
      log.warning("%d training texts are longer than max_length=%d and were truncated", truncated,
                  max_length)
    self._epochs: dict[int, list[np.ndarray]] = {}
    # [N, R, D] vectors served as batch['teacher'] [B, R, D] (loss.teacher=frozen)
    self.teacher: np.ndarray | None = None
    self._buckets = None
    self.pack_length = None
    if pack_length is not None:  # 0: the longest text, rounded up to a multiple of 8
      longest = int(self.lengths.max())
      self.pack_length = pack_length or -(-longest // 8) * 8
      if longest > self.pack_length:
        raise DataError(f"data.pack_length={pack_length} is shorter than the longest training text "
                        f"({longest} tokens with max_length={max_length}); raise it or set it to 0")
      # every role's ids end to end, and each text's start there
      self.flat_all = np.concatenate(flat)
      self.starts_all = self.starts + np.cumsum([0] + [len(f) for f in flat[:-1]])[:, None]

  @property
  def buckets(self) -> str | tuple[int, ...]:
    """length_buckets, or for 'auto' the num_buckets pad lengths that pad epoch 0's batches least,
    the largest holding the longest text of the data (so no epoch needs another shape). Packed: the
    num_buckets row counts (per shard) that pad epoch 0's batches least."""
    if self.pack_length is not None:
      if self._buckets is None:
        needs = [self._placement(rows)[2] for rows in self.epoch_batches(0)]
        self._buckets = fit_buckets(needs, max(needs), self.num_buckets, multiple=1)
        slots = sum(self.shards * self.pack_length * min(b for b in self._buckets if b >= n)
                    for n in needs)
        real = sum(int(self.lengths[:, rows].sum()) for rows in self.epoch_batches(0))
        log.info(
            "packed rows of %d tokens, %s rows per shard fitted to epoch 0 (data.num_buckets=%d): "
            "%.3f of its tokens are padding", self.pack_length, self._buckets, self.num_buckets,
            1 - real / slots)
      return self._buckets
    if self.length_buckets != "auto":
      return self.length_buckets
    if self._buckets is None:
      batches = self.epoch_batches(0)
      longest = [int(self.lengths[:, rows].max()) for rows in batches]
      top = min(-(-int(self.lengths.max()) // 8) * 8, self.max_length)
      self._buckets = fit_buckets(longest, top, self.num_buckets)
      padded = sum(self.lengths.shape[0] * self.batch_size *
                   bucket_length(n, self.max_length, buckets=self._buckets) for n in longest)
      real = sum(int(self.lengths[:, rows].sum()) for rows in batches)
      log.info(
          "length buckets %s fitted to epoch 0 (data.num_buckets=%d): %.3f of its tokens are padding",
          self._buckets, self.num_buckets, 1 - real / padded)
    return self._buckets

  def epoch_batches(self, epoch: int) -> list[np.ndarray]:
    """The example indices of every batch of `epoch` (cached)."""
    if epoch not in self._epochs:
      order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
      B = self.batch_size
      if not self.no_duplicates:
        batches = [order[i:i + B] for i in range(0, len(order) - B + 1, B)]
      else:
        batches, remaining = [], collections.deque(order.tolist())
        texts = self.examples.texts
        while len(remaining) >= B:
          batch, seen, skipped = [], set(), []
          while remaining and len(batch) < B:
            i = remaining.popleft()
            mine = {t[i] for t in texts}
            if seen & mine:
              skipped.append(i)
            else:
              batch.append(i)
              seen |= mine
          remaining.extendleft(reversed(skipped))
          if len(batch) < B:
            break
          batches.append(np.array(batch))
      if not batches:  # every epoch would be empty: a run would wait for a batch forever
        raise DataError(f"data.batch_size={B}: no batch can be made of {len(order)} examples" + (
            " whose texts repeat (data.no_duplicates=True keeps a text out of a batch that has "
            "it)" if self.no_duplicates and len(order) >= B else "") +
                        "; lower data.batch_size or add examples")
      self._epochs = {epoch: batches}  # keep one epoch in memory
    return self._epochs[epoch]

  def steps_in(self, epochs: int) -> int:
    return sum(len(self.epoch_batches(e)) for e in range(epochs))

  def position(self, step: int) -> tuple[int, int]:
    """(epoch, index) of the batch a global step reads."""
    epoch = 0
    while step >= len(self.epoch_batches(epoch)):
      step -= len(self.epoch_batches(epoch))
      epoch += 1
    return epoch, step

  def _placement(self, rows: np.ndarray):
    """Packing of a batch: per-shard text lengths [S, R * B/S] (role-major) and the (row, offset) of
    each text within its shard, and the most rows a shard needs."""
    R, S = self.lengths.shape[0], self.shards
    texts = self.lengths[:, rows].reshape(R, S, -1).transpose(1, 0, 2).reshape(S, -1)
    packed = [pack_texts(t, self.pack_length) for t in texts]
    return texts, packed, max(p[2] for p in packed)

  def _packed_batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    S, L = self.shards, self.pack_length
    lengths, packed, need = self._placement(rows)
    fits = [b for b in self.buckets if b >= need]
    per_shard = min(fits) if fits else lengths.shape[1]  # beyond epoch 0's largest: one text a row
    if not fits:
      log.warning(
          "a batch needs %d packed rows per shard, more than the fitted %s: padded to %d rows "
          "(one more compile)", need, self.buckets, per_shard)
    n = lengths.shape[1]  # texts per shard
    examples = np.asarray(rows).reshape(S, -1)
    src = self.starts_all[:, examples].transpose(1, 0, 2).reshape(S, n)  # [S, n] start in flat_all
    dst = np.stack([(s * per_shard + p[0]) * L + p[1] for s, p in enumerate(packed)])
    batch = {
        k: v.reshape(S * per_shard, L)
        for k, v in fill_rows(self.flat_all, src.ravel(), lengths.ravel(), dst.ravel(),
                              np.tile(np.arange(n), S), S * per_shard * L, self.pad_id).items()
    }
    if self.examples.scores is not None:
      batch["scores"] = self.examples.scores[rows]
    if self.teacher is not None:
      batch["teacher"] = self.teacher[rows]
    return batch

  def make_batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    rows = np.asarray(rows)
    if self.pack_length is not None:
      return self._packed_batch(rows)
    lengths = self.lengths[:, rows]  # [R, B]
    length = bucket_length(int(lengths.max()), self.max_length, buckets=self.buckets)
    mask = np.arange(length) < lengths[..., None]  # [R, B, T]
    ids = np.full(mask.shape, self.pad_id, np.int32)
    for r, flat in enumerate(self.flat):  # each row's tokens gathered from the role's flat ids
      ids[r][mask[r]] = flat[(self.starts[r, rows][:, None] + np.arange(length))[mask[r]]]
    batch = {"ids": ids, "mask": mask.astype(np.int32)}
    if self.examples.scores is not None:
      batch["scores"] = self.examples.scores[rows]
    if self.teacher is not None:
      batch["teacher"] = self.teacher[rows]
    return batch

  def batches(self, start_step: int, num_steps: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(step, batch) for steps start_step .. num_steps - 1, in order."""
    epoch, index = self.position(start_step)
    for step in range(start_step, num_steps):
      batches = self.epoch_batches(epoch)
      if index >= len(batches):
        epoch, index = epoch + 1, 0
        batches = self.epoch_batches(epoch)
      yield step, self.make_batch(batches[index])
      index += 1
