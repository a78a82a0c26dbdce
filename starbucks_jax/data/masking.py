"""SMAE masking (docs/method.md, "SMAE pre-training"): two nested whole-word masks of each text.

Per text of L tokens (with [CLS] and [SEP]): the words (a token and the `##` pieces after it;
special tokens are never candidates) are visited in a random order and taken greedily while they
fit a budget of max(1, round(L * rate)) tokens; a word that would overflow is skipped and the walk
goes on. The decoder copy takes words up to its budget (rate 0.4); the encoder copy takes, among
the decoder's words and in the same order, those that fit its own budget (rate 0.2), so every word
masked for the encoder is also masked for the decoder. Each copy then gets its own 80% [MASK] /
10% random token / 10% unchanged replacement. Labels are gathered: `positions [B, K]` and
`labels [B, K]` (-1 = padding) with K = max(1, round(T * rate)) for a batch padded to T, so the
loss scores only masked positions and never builds [B, T, vocab].

Everything is a pure function of a numpy Generator: the caller seeds it per step.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  """SMAE's masking rates (the smae block's keys: config_blocks.Smae)."""
  encoder_rate: float = 0.2  # fraction of a text's tokens masked in the encoder copy
  decoder_rate: float = 0.4  # ... in the decoder copy (a superset of the encoder's words)
  mask_prob: float = 0.8  # a masked token becomes [MASK] with this probability,
  random_prob: float = 0.1  # a random vocabulary token with this one, else stays as it is

  def __post_init__(self):
    if not 0 < self.encoder_rate <= self.decoder_rate < 1:
      raise ValueError(f"masking rates need 0 < encoder_rate ({self.encoder_rate}) <= decoder_rate "
                       f"({self.decoder_rate}) < 1")
    if min(self.mask_prob, self.random_prob) < 0 or self.mask_prob + self.random_prob > 1:
      raise ValueError(f"mask_prob ({self.mask_prob}) + random_prob ({self.random_prob}) must be "
                       "within 0..1")


def budget(length: int, rate: float) -> int:
  """Tokens to mask in a text of `length` tokens (specials included), as BERT's whole-word masking."""
  return max(1, int(round(length * rate)))


def _greedy(lengths: np.ndarray, limit: int) -> np.ndarray:
  """Which of the words (in visiting order) the greedy walk takes: a word is taken when it fits in
  what is left of `limit`, skipped when it does not; the walk stops once the limit is reached.
  The prefix that fits is found with a cumulative sum; only the few words after it loop in Python."""
  taken = np.zeros(len(lengths), bool)
  fits = int(np.searchsorted(np.cumsum(lengths), limit, side="right"))
  taken[:fits] = True
  total = int(lengths[:fits].sum())
  for i in range(fits, len(lengths)):
    if total >= limit:
      break
    if total + lengths[i] <= limit:
      taken[i] = True
      total += int(lengths[i])
  return taken


class Masker:
  """Nested whole-word masks and 80/10/10 replacement for one tokenizer's vocabulary."""
  def __init__(self, tokenizer, config: MaskingConfig):
    self.config = config
    self.vocab_size = len(tokenizer)
    self.mask_id = tokenizer.mask_token_id
    if self.mask_id is None:
      raise ValueError(f"{type(tokenizer).__name__} has no [MASK] token; SMAE needs one")
    self.special = np.zeros(self.vocab_size, bool)
    self.special[list(tokenizer.all_special_ids)] = True
    self.continuation = np.zeros(self.vocab_size, bool)  # pieces that continue a word
    vocab = tokenizer.get_vocab()
    # WordPiece marks a continuation ('##ing'); SentencePiece ('\u2581the') and byte-level BPE
    # ('\u0120the') mark a word's start, so every other piece continues one
    start = next((m for m in ("\u2581", "\u0120") if any(t.startswith(m) for t in vocab)), None)
    for token, i in vocab.items():
      if i < self.vocab_size and not self.special[i]:
        self.continuation[i] = (token.startswith("##")
                                if start is None else not token.startswith(start))

  def words(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, word) of one unpadded text's maskable tokens: `word[i]` numbers the word the
    token at `positions[i]` belongs to (a token and the pieces continuing it)."""
    positions = np.flatnonzero(~self.special[ids])
    starts = ~self.continuation[ids[positions]]
    if positions.size:
      starts[0] = True
    return positions, np.cumsum(starts) - 1

  def word_masks(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(encoder, decoder) boolean masks over the tokens of one unpadded text; encoder <= decoder."""
    positions, word = self.words(ids)
    enc, dec = np.zeros(len(ids), bool), np.zeros(len(ids), bool)
    if not positions.size:
      return enc, dec
    order = rng.permutation(word[-1] + 1)  # the order words are visited in
    lengths = np.bincount(word)[order]
    dec_taken = _greedy(lengths, budget(len(ids), self.config.decoder_rate))
    enc_taken = np.zeros_like(dec_taken)
    enc_taken[dec_taken] = _greedy(lengths[dec_taken], budget(len(ids), self.config.encoder_rate))
    in_dec, in_enc = np.zeros(len(order), bool), np.zeros(len(order), bool)
    in_dec[order[dec_taken]] = True
    in_enc[order[enc_taken]] = True
    dec[positions] = in_dec[word]
    enc[positions] = in_enc[word]
    return enc, dec

  def replace(self, ids: np.ndarray, masked: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """80/10/10: [MASK], a random token, or unchanged at each masked position."""
    out = ids.copy()
    u = rng.random(ids.shape)
    to_mask = masked & (u < self.config.mask_prob)
    to_random = masked & (u >= self.config.mask_prob) & (u < self.config.mask_prob +
                                                         self.config.random_prob)
    out[to_mask] = self.mask_id
    out[to_random] = rng.integers(0, self.vocab_size, int(to_random.sum()))
    return out

  def batch(self, texts: list[np.ndarray], length: int, pad_id: int,
            rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Padded encoder and decoder inputs plus the gathered masked positions and their labels.

    texts: token ids with [CLS]/[SEP], each at most `length` long. Returns ids, dec_ids, mask
    [B, T]; mlm_positions, mlm_labels [B, Ke]; mae_positions, mae_labels [B, Kd] (label -1: none).
    """
    B, T = len(texts), length
    ke, kd = budget(T, self.config.encoder_rate), budget(T, self.config.decoder_rate)
    out = {
        "ids": np.full((B, T), pad_id, np.int32), "dec_ids": np.full((B, T), pad_id, np.int32),
        "mask": np.zeros((B, T), np.int32), "mlm_positions": np.zeros((B, ke), np.int32),
        "mlm_labels": np.full((B, ke), -1, np.int32), "mae_positions": np.zeros(
            (B, kd), np.int32), "mae_labels": np.full((B, kd), -1, np.int32)
    }
    for b, ids in enumerate(texts):
      ids = np.asarray(ids, np.int32)
      if len(ids) > T:
        raise ValueError(f"text {b} has {len(ids)} tokens, more than the batch length {T}")
      enc, dec = self.word_masks(ids, rng)
      L = len(ids)
      out["mask"][b, :L] = 1
      out["ids"][b, :L] = self.replace(ids, enc, rng)
      out["dec_ids"][b, :L] = self.replace(ids, dec, rng)
      for masked, key in ((enc, "mlm"), (dec, "mae")):
        pos = np.flatnonzero(masked)
        out[f"{key}_positions"][b, :len(pos)] = pos
        out[f"{key}_labels"][b, :len(pos)] = ids[pos]
    return out
