"""Retrieval training groups (Tevatron's layout): a query, its positive passages, its negatives.

Sources:
- Tevatron JSONL / `hf:Tevatron/msmarco-passage`: {query, positive_passages, negative_passages},
  passages as {docid, title, text} (text = "title text");
- `beir:FOLDER@SPLIT`: the judged (relevance >= 1) pairs of a BEIR folder's qrels; negatives are
  drawn at random from the corpus (no model needed; mine hard ones into a Tevatron file for more).

A step takes B queries; each brings a group of G passages: one positive (rotating through its
positives from epoch to epoch) then G - 1 negatives (its list shuffled once, seeded, and read as a
window that moves by G - 1 each epoch, so negatives rotate across epochs; a short list is sampled
with replacement). Batches: query_ids/query_mask [B, Tq] and passage_ids/passage_mask [B * G, Tp],
group-major, so query i's positive is passage i * G (losses.queries_and_candidates). Queries and
passages have their own maximum lengths. Batches are a pure function of (seed, step).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterator

import numpy as np

from starbucks_jax.config_lib import check_choice, check_range
from starbucks_jax.data import beir
from starbucks_jax.data.sources import DataError, check_spec, read_rows, typed
from starbucks_jax.data.tokenize import BUCKETS, bucket_length, pad_batch, tokenize

log = logging.getLogger(__name__)


def check_config(data_cfg) -> None:
  """The data block of a retrieval run (data.format='groups')."""
  check_choice("data.length_buckets", data_cfg.length_buckets, BUCKETS)
  check_range("data.group_size", data_cfg.group_size, 1)
  check_range("data.query_max_length", data_cfg.query_max_length, 3)
  check_range("data.passage_max_length", data_cfg.passage_max_length, 3)
  if data_cfg.train.startswith("beir:"):
    folder, _, split = data_cfg.train[len("beir:"):].partition("@")
    beir.check_folder("data.train", folder, split or "train", corpus=False)
  else:
    check_spec("data.train", data_cfg.train)


@dataclasses.dataclass
class Groups:
  queries: list[str]
  positives: list[list[int]]  # per query: indices into passages
  negatives: list[list[int]]  # per query: indices into passages ([] = draw from the whole corpus)
  passages: list[str]

  def with_prompts(self, query: str, passage: str) -> Groups:
    """The groups with `query` before each query and `passage` before each passage."""
    return dataclasses.replace(self, queries=[query + t for t in self.queries],
                               passages=[passage + t for t in self.passages])


def passage_texts(value) -> list[str]:
  """A Tevatron passage list: each item a text or a {'title', 'text'} object (docid and others ignored)."""
  texts = []
  for j, p in enumerate(typed(value, list)):
    if isinstance(p, dict) and isinstance(p.get("text", ""), str) and isinstance(
        p.get("title") or "", str):
      texts.append(beir.passage_text(p.get("title"), p.get("text")))
    elif isinstance(p, str):
      texts.append(p.strip())
    else:
      raise TypeError(
          f"has item {j} = {p!r:.40}, not a passage text or a {{'title', 'text'}} object")
  return texts


def positive_texts(value) -> list[str]:
  texts = passage_texts(value)
  if not texts or not all(texts):
    raise ValueError("needs at least one positive passage, none empty")
  return texts


def load_tevatron(spec: str) -> Groups:
  """Tevatron-layout rows -> Groups (passages deduplicated by text)."""
  table: dict[str, int] = {}
  passages: list[str] = []
  out = Groups([], [], [], passages)

  def index(text: str) -> int:
    if text not in table:
      table[text] = len(passages)
      passages.append(text)
    return table[text]

  fields = {"query": str, "positive_passages": positive_texts, "negative_passages": passage_texts}
  for row in read_rows(spec, fields):
    out.queries.append(row["query"])
    out.positives.append([index(t) for t in row["positive_passages"]])
    # an empty negative is dropped
    out.negatives.append([index(t) for t in row["negative_passages"] if t])
  if not out.queries:
    raise DataError(f"{spec}: no training groups")
  return out


def load_beir_train(spec: str) -> Groups:
  """'beir:FOLDER@SPLIT' -> Groups of the split's judged pairs; negatives drawn from the corpus."""
  folder, _, split = spec[len("beir:"):].partition("@")
  col = beir.load(folder, split or "train")
  row_of = {d: i for i, d in enumerate(col.doc_ids)}
  out = Groups([], [], [], col.docs)
  for q, text in zip(col.query_ids, col.queries):
    pos = [row_of[d] for d, rel in col.qrels[q].items() if rel >= 1 and d in row_of]
    if pos:
      out.queries.append(text)
      out.positives.append(pos)
      out.negatives.append([])
  return out


def load_groups(spec: str) -> Groups:
  return load_beir_train(spec) if spec.startswith("beir:") else load_tevatron(spec)


class GroupBatcher:
  """(step, batch) for retrieval training; the interface of batching.Batcher."""
  def __init__(self, groups: Groups, tokenizer, *, batch_size: int, group_size: int,
               query_max_length: int, passage_max_length: int, seed: int,
               length_buckets: str = "pow2"):
    if len(groups.queries) < batch_size:
      raise DataError(f"{len(groups.queries)} queries are fewer than one batch of {batch_size}")
    self.groups, self.B, self.G, self.seed = groups, batch_size, group_size, seed
    self.q_len, self.p_len, self.length_buckets = query_max_length, passage_max_length, length_buckets
    self.pad_id = tokenizer.pad_token_id
    self.query_ids, _ = tokenize(tokenizer, groups.queries, query_max_length)
    self.passage_ids, _ = tokenize(tokenizer, groups.passages, passage_max_length)
    self.examples = groups.queries

  def steps_in(self, epochs: int) -> int:
    return epochs * (len(self.groups.queries) // self.B)

  def group(self, epoch: int, i: int) -> list[int]:
    """Passage indices of query i's group in `epoch`: its positive, then G - 1 negatives."""
    g = self.groups
    rng = np.random.default_rng([self.seed, 7, i])  # per query, fixed across epochs
    pos = g.positives[i][(int(rng.integers(1 << 30)) + epoch) % len(g.positives[i])]
    k = self.G - 1
    negs = [n for n in g.negatives[i] if n not in g.positives[i]]
    if k == 0:
      return [pos]
    if len(negs) >= k:
      order = [negs[j] for j in rng.permutation(len(negs))] * 2
      start = (epoch * k) % len(negs)
      return [pos] + order[start:start + k]
    draw = np.random.default_rng([self.seed, 8, epoch, i])
    if negs:
      return [pos] + [negs[j] for j in draw.integers(0, len(negs), k)]
    pool = [
        j for j in draw.choice(len(g.passages), k + len(g.positives[i]), replace=False)
        if j not in g.positives[i]
    ]
    return [pos] + pool[:k]

  def make_batch(self, epoch: int, rows: np.ndarray) -> dict[str, np.ndarray]:
    q = [self.query_ids[i] for i in rows]
    p = [self.passage_ids[j] for i in rows for j in self.group(epoch, int(i))]
    q_ids, q_mask = pad_batch(
        q, bucket_length(max(map(len, q)), self.q_len, buckets=self.length_buckets), len(q),
        self.pad_id)
    p_ids, p_mask = pad_batch(
        p, bucket_length(max(map(len, p)), self.p_len, buckets=self.length_buckets), len(p),
        self.pad_id)
    return {"query_ids": q_ids, "query_mask": q_mask, "passage_ids": p_ids, "passage_mask": p_mask}

  def batches(self, start_step: int, num_steps: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    per_epoch = len(self.groups.queries) // self.B
    for step in range(start_step, num_steps):
      epoch, index = divmod(step, per_epoch)
      order = np.random.default_rng([self.seed, epoch]).permutation(len(self.groups.queries))
      yield step, self.make_batch(epoch, order[index * self.B:(index + 1) * self.B])
