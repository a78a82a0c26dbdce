"""Retrieval evaluation in Tevatron's layout: a corpus of {docid, title, text}, queries {query_id, query}
per split, and qrels: how the authors encode MS MARCO for dev, DL19 and DL20.

An eval.retrieval source `tevatron:...` names the three parts, in one of two forms:

    tevatron:CORPUS+QUERIES+QRELS   each part a source: a local .jsonl (.gz) file or hf:OWNER/NAME/FILE;
                                    QRELS also a BEIR/TREC qrels file, hf:NAME@SPLIT or an http(s) URL
    tevatron:FOLDER                 FOLDER/corpus.jsonl[.gz], FOLDER/<split>.jsonl[.gz] (the queries),
                                    FOLDER/qrels/<split>.{tsv,txt} (a local copy of the same parts)

e.g. MS MARCO DL20 as the paper evaluates it (configs/retrieval.py):
`tevatron:hf:Tevatron/msmarco-passage-corpus/corpus.jsonl.gz+hf:Tevatron/msmarco-passage/dl20.jsonl.gz
+https://trec.nist.gov/data/deep/2020qrels-pass.txt`. A passage reads "title text" (beir.passage_text,
the joining training groups use too); only judged queries are evaluated.
"""

from __future__ import annotations

import functools
import os

from starbucks_jax.config_lib import ConfigError
from starbucks_jax.data import beir, sources
from starbucks_jax.data.sources import DataError

PREFIX = "tevatron:"


def _first_file(*paths: str) -> str:
  return next((p for p in paths if os.path.isfile(p)), paths[0])


def parts(source: str, split: str) -> tuple[str, str, str]:
  """(corpus, queries, qrels) specs of a `tevatron:` source for `split`."""
  if not source.startswith(PREFIX):
    raise DataError(f"{source}: not a {PREFIX} source")
  body = source[len(PREFIX):]
  if "+" in body:
    named = body.split("+")
    if len(named) != 3 or not all(named):
      raise DataError(
          f"{source}: expected {PREFIX}CORPUS+QUERIES+QRELS (three sources) or {PREFIX}FOLDER")
    return named[0], named[1], named[2]
  folder = os.path.expanduser(body)
  return (_first_file(os.path.join(folder, "corpus.jsonl"), os.path.join(folder,
                                                                         "corpus.jsonl.gz")),
          _first_file(os.path.join(folder, f"{split}.jsonl"),
                      os.path.join(folder, f"{split}.jsonl.gz")),
          _first_file(os.path.join(folder, "qrels", f"{split}.tsv"),
                      os.path.join(folder, "qrels", f"{split}.txt")))


def check(key: str, source: str, split: str) -> None:
  """A ConfigError naming `key` when a part is malformed or a local part is missing (before any compute)."""
  try:
    corpus, queries, qrels = parts(source, split)
    sources.resolve_spec(corpus)
    sources.resolve_spec(queries)
    if qrels.startswith("hf:"):
      sources.resolve_spec(qrels)
    elif not qrels.startswith(beir.URLS) and not os.path.isfile(os.path.expanduser(qrels)):
      raise DataError(f"{qrels}: no such qrels file")
  except DataError as e:
    raise ConfigError(f"{key}: {e}") from None


def _optional_text(value) -> str:
  if value is not None and not isinstance(value, str):
    raise TypeError(f"is {value!r:.40}, not a text")
  return value or ""


@functools.lru_cache(maxsize=1)
def read_corpus(spec: str) -> tuple[list[str], list[str]]:
  """(doc ids, "title text" passages) of a Tevatron corpus (the last one read is kept: dev, DL19 and
  DL20 share one)."""
  doc_ids, docs, seen = [], [], set()
  for row in sources.read_rows(
      spec, {"docid": beir.identifier, "title": _optional_text, "text": _optional_text},
      optional=("title",)):
    if row["docid"] in seen:
      raise DataError(f"{spec}: duplicate docid {row['docid']!r}")
    passage = beir.passage_text(row["title"], row["text"])
    if not passage:
      raise DataError(f"{spec}: docid {row['docid']!r} has an empty title and text")
    seen.add(row["docid"])
    doc_ids.append(row["docid"])
    docs.append(passage)
  if not docs:
    raise DataError(f"{spec}: no passages")
  return doc_ids, docs


def load(source: str, split: str, name: str | None = None) -> beir.Collection:
  """The judged queries of `split` against the corpus, as a beir.Collection."""
  corpus, queries_spec, qrels_spec = parts(source, split)
  qrels = beir.load_qrels(qrels_spec)
  queries = {
      row["query_id"]: row["query"]
      for row in sources.read_rows(queries_spec, {"query_id": beir.identifier, "query": str})
  }
  doc_ids, docs = read_corpus(corpus)
  return beir.collection(name or "tevatron", split, doc_ids, docs, queries, qrels,
                         where=f"{source} ({split})")
