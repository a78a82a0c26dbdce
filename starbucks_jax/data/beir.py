"""Retrieval collections in the BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.

    corpus.jsonl   {"_id", "title", "text"} per line (title may be empty)
    queries.jsonl  {"_id", "text"} per line
    qrels/SPLIT.tsv  header `query-id  corpus-id  score`, then one judgement per line

`load(folder, split)` returns a `Collection` with the judged queries of the split only. A
passage's text is "title text" (title omitted when empty), as BEIR's dense retrievers join them.
A malformed line is a DataError naming the file and line.

`load("hf:BeIR/NAME", split)` reads the same from the Hugging Face Hub: BeIR/NAME (configs
`corpus` and `queries`) and BeIR/NAME-qrels (the split), e.g. `hf:BeIR/msmarco` with split `dev`
(MS MARCO dev) or `test` (TREC DL 2019), `hf:BeIR/scifact` with `test`. Needs the network (or the
datasets cache).
"""

from __future__ import annotations

import csv
import dataclasses
import os

from starbucks_jax.config_lib import ConfigError
from starbucks_jax.data.sources import DataError, jsonl_rows


def passage_text(title: str | None, text: str | None) -> str:
  """A passage as the encoder reads it, in training (Tevatron groups) and evaluation (BEIR corpora)
  alike: "title text", each stripped, the title left out when empty."""
  return f"{(title or '').strip()} {(text or '').strip()}".strip()


def check_folder(key: str, folder: str, split: str, *, corpus: bool) -> None:
  """A ConfigError naming `key` unless `folder` has qrels/<split>.tsv (and corpus.jsonl with `corpus`)."""
  path = os.path.expanduser(folder)
  has_qrels = os.path.isfile(os.path.join(path, "qrels", f"{split}.tsv"))
  if corpus and not (has_qrels and os.path.isfile(os.path.join(path, "corpus.jsonl"))):
    raise ConfigError(f"{key}: {folder} is not a BEIR folder with corpus.jsonl and qrels/{split}.tsv")
  if not has_qrels:
    raise ConfigError(f"{key}: {folder} has no qrels/{split}.tsv")


@dataclasses.dataclass
class Collection:
  name: str
  split: str
  doc_ids: list[str]
  docs: list[str]  # "title text"
  query_ids: list[str]
  queries: list[str]
  qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}


def _jsonl(path: str, fields: tuple[str, ...]):
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file (a BEIR folder has corpus.jsonl, queries.jsonl, qrels/)")
  for line_no, row in jsonl_rows(path):
    missing = [k for k in fields if k not in row]
    if missing:
      raise DataError(f"{path}:{line_no}: no field {missing[0]!r}")
    yield line_no, row


def read_qrels(path: str) -> dict[str, dict[str, int]]:
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file")
  qrels: dict[str, dict[str, int]] = {}
  with open(path, encoding="utf8", newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    for line_no, row in enumerate(reader, 1):
      if line_no == 1 and row and row[0] == "query-id":
        continue
      if len(row) != 3:
        raise DataError(f"{path}:{line_no}: expected 3 tab-separated fields (query-id, corpus-id, score)")
      try:
        qrels.setdefault(row[0], {})[row[1]] = int(row[2])
      except ValueError:
        raise DataError(f"{path}:{line_no}: score {row[2]!r} is not an integer") from None
  return qrels


def _load_hf(spec: str, split: str, name: str | None) -> Collection:
  try:
    import datasets
  except ImportError:
    raise DataError(f"{spec}: Hugging Face datasets need `pip install datasets`") from None
  repo = spec[len("hf:"):]
  try:
    corpus = datasets.load_dataset(repo, "corpus", split="corpus")
    queries = datasets.load_dataset(repo, "queries", split="queries")
    qrels_rows = datasets.load_dataset(f"{repo}-qrels", split=split)
  except Exception as e:  # offline, unknown name or split
    raise DataError(f"{spec}: could not load ({type(e).__name__}: {str(e).splitlines()[0]}); offline, "
                    "download the BEIR folder and point eval.retrieval at it") from None
  qrels: dict[str, dict[str, int]] = {}
  for row in qrels_rows:
    qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
  doc_ids = [str(x) for x in corpus["_id"]]
  docs = [passage_text(t, x) for t, x in zip(corpus["title"], corpus["text"])]
  text_of = {str(q): t for q, t in zip(queries["_id"], queries["text"])}
  missing = sorted(set(qrels) - set(text_of))
  if missing:
    raise DataError(f"{repo}-qrels ({split}): query ids {missing[:5]} are not in {repo} queries")
  query_ids = sorted(qrels, key=lambda q: (len(q), q))
  return Collection(name or repo.split("/")[-1], split, doc_ids, docs, query_ids,
                    [text_of[q] for q in query_ids], qrels)


def load(folder: str, split: str = "test", name: str | None = None) -> Collection:
  if folder.startswith("hf:"):
    return _load_hf(folder, split, name)
  folder = os.path.expanduser(folder)
  qrels = read_qrels(os.path.join(folder, "qrels", f"{split}.tsv"))
  doc_ids, docs, seen = [], [], set()
  path = os.path.join(folder, "corpus.jsonl")
  for line_no, row in _jsonl(path, ("_id", "text")):
    doc_id = str(row["_id"])
    if doc_id in seen:
      raise DataError(f"{path}:{line_no}: duplicate _id {doc_id!r}")
    seen.add(doc_id)
    title, text = row.get("title") or "", row["text"] if row["text"] is not None else ""
    if not isinstance(title, str) or not isinstance(text, str):
      raise DataError(f"{path}:{line_no}: title and text must be strings, got {type(title).__name__} and "
                      f"{type(text).__name__}")
    joined = passage_text(title, text)
    if not joined:
      raise DataError(f"{path}:{line_no}: empty title and text")
    doc_ids.append(doc_id)
    docs.append(joined)
  queries = {}
  for line_no, row in _jsonl(os.path.join(folder, "queries.jsonl"), ("_id", "text")):
    if not isinstance(row["text"], str) or not row["text"].strip():
      raise DataError(f"{folder}/queries.jsonl:{line_no}: text {row['text']!r} is not a non-empty string")
    queries[str(row["_id"])] = row["text"]
  missing = sorted(set(qrels) - set(queries))
  if missing:
    raise DataError(f"{folder}/qrels/{split}.tsv: query ids {missing[:5]} are not in queries.jsonl")
  query_ids = sorted(qrels, key=lambda q: (len(q), q))
  return Collection(name or os.path.basename(os.path.normpath(folder)), split, doc_ids, docs, query_ids,
                    [queries[q] for q in query_ids], qrels)
