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

Qrels (`load_qrels`) are read from a BEIR TSV (header `query-id corpus-id score`), a TREC qrels file
(`qid iteration docid relevance`, whitespace-separated, as NIST publishes them), an hf: source with
those three BEIR columns, or an http(s) URL of either file kind, downloaded once into QRELS_CACHE.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import urllib.request

from starbucks_jax.config_lib import ConfigError
from starbucks_jax.data import fetch, sources
from starbucks_jax.data.sources import DataError, jsonl_rows

log = logging.getLogger(__name__)
QRELS_CACHE = os.path.join("~", ".cache", "starbucks_jax", "qrels")  # downloaded qrels files
URLS = ("http://", "https://", "file://")


def passage_text(title: str | None, text: str | None) -> str:
  """A passage as the encoder reads it, in training (Tevatron groups) and evaluation (BEIR corpora)
  alike: "title text", each stripped, the title left out when empty."""
  return f"{(title or '').strip()} {(text or '').strip()}".strip()


def check_folder(key: str, folder: str, split: str, *, corpus: bool) -> None:
  """A ConfigError naming `key` unless `folder` has qrels/<split>.tsv (and corpus.jsonl with `corpus`)."""
  path = os.path.expanduser(folder)
  has_qrels = os.path.isfile(os.path.join(path, "qrels", f"{split}.tsv"))
  if corpus and not (has_qrels and os.path.isfile(os.path.join(path, "corpus.jsonl"))):
    raise ConfigError(
        f"{key}: {folder} is not a BEIR folder with corpus.jsonl and qrels/{split}.tsv"
        f"{fetch.missing_hint(path)}")
  if not has_qrels:
    raise ConfigError(f"{key}: {folder} has no qrels/{split}.tsv{fetch.missing_hint(path)}")


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
    raise DataError(f"{path}: no such file (a BEIR folder has corpus.jsonl, queries.jsonl, "
                    f"qrels/){fetch.missing_hint(path)}")
  for line_no, row in jsonl_rows(path):
    missing = [k for k in fields if k not in row]
    if missing:
      raise DataError(f"{path}:{line_no}: no field {missing[0]!r}")
    yield line_no, row


def read_qrels(path: str) -> dict[str, dict[str, int]]:
  """A qrels file: BEIR TSV (3 tab-separated fields, a `query-id` header) or TREC (4 fields:
  query, iteration, document, relevance; the iteration is ignored)."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file")
  qrels: dict[str, dict[str, int]] = {}
  with sources.open_text(path, newline="") as f:
    for line_no, line in enumerate(f, 1):
      row, trec = line.rstrip("\r\n").split("\t"), line.split()
      if not trec or (line_no == 1 and row[0] == "query-id"):
        continue
      if len(row) != 3 and len(trec) == 4:
        row = [trec[0], trec[2], trec[3]]
      elif len(row) != 3:
        raise DataError(
            f"{path}:{line_no}: expected 3 tab-separated fields (query-id, corpus-id, score) or "
            "4 of TREC qrels (query, iteration, document, relevance)")
      try:
        qrels.setdefault(row[0], {})[row[1]] = int(row[2])
      except ValueError:
        raise DataError(f"{path}:{line_no}: score {row[2]!r} is not an integer") from None
  return qrels


def _download(url: str, cache: str | None = None) -> str:
  """The local copy of `url` in the qrels cache, downloaded on first use."""
  folder = os.path.expanduser(cache or QRELS_CACHE)
  path = os.path.join(folder,
                      hashlib.sha1(url.encode()).hexdigest()[:10] + "-" + os.path.basename(url))
  if not os.path.isfile(path):
    os.makedirs(folder, exist_ok=True)
    try:
      with urllib.request.urlopen(url, timeout=120) as response, open(path + ".tmp", "wb") as f:
        f.write(response.read())
    except OSError as e:
      raise DataError(f"{url}: could not download ({e}); offline, save the file and name its path "
                      "instead") from None
    os.replace(path + ".tmp", path)
    log.info("downloaded %s to %s", url, path)
  return path


def load_qrels(spec: str, *, cache: str | None = None) -> dict[str, dict[str, int]]:
  """Qrels from a local file, an http(s)/file URL (cached) or an hf: source with BEIR's columns."""
  if spec.startswith(URLS):
    return read_qrels(_download(spec, cache))
  if spec.startswith("hf:"):
    qrels: dict[str, dict[str, int]] = {}
    for row in sources.read_rows(spec,
                                 {"query-id": identifier, "corpus-id": identifier, "score": float}):
      if row["score"] != int(row["score"]):
        raise DataError(f"{spec}: score {row['score']} is not an integer")
      qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels
  return read_qrels(os.path.expanduser(spec))


def identifier(value) -> str:
  """An id column (text or integer) as text."""
  if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
    raise TypeError(f"is {value!r:.40}, not an id (a text or an integer)")
  return str(value)


def collection(name: str, split: str, doc_ids: list[str], docs: list[str], queries: dict[str, str],
               qrels: dict[str, dict[str, int]], *, where: str) -> Collection:
  """The judged queries of `qrels` (in a fixed order) with their texts; `where` names the sources in
  errors. A judged query without a text is an error; relevant documents missing from the corpus are
  an error when all are, a warning when some are."""
  missing = sorted(set(qrels) - set(queries))
  if missing:
    raise DataError(f"{where}: judged query ids {missing[:5]} have no query text")
  relevant = {d for judged in qrels.values() for d, rel in judged.items() if rel > 0}
  absent = relevant - set(doc_ids)
  if relevant and absent == relevant:
    raise DataError(
        f"{where}: none of the {len(relevant)} relevant document ids (e.g. {sorted(relevant)[:3]}) "
        "is in the corpus; the qrels belong to another corpus or its ids are spelled differently")
  if absent:
    log.warning("%s: %d of %d relevant documents are not in the corpus (e.g. %s)", where,
                len(absent), len(relevant),
                sorted(absent)[:3])
  query_ids = sorted(qrels, key=lambda q: (len(q), q))
  return Collection(name, split, doc_ids, docs, query_ids, [queries[q] for q in query_ids], qrels)


def _load_hf(spec: str, split: str, name: str | None) -> Collection:
  try:
    import datasets
  except ImportError:
    raise DataError(f"{spec}: Hugging Face datasets need `pip install datasets`") from None
  repo = spec[len("hf:"):]
  try:
    corpus = datasets.load_dataset(repo, "corpus", split="corpus")
    queries = datasets.load_dataset(repo, "queries", split="queries")
  except Exception as e:  # offline, unknown name or split
    raise DataError(
        f"{spec}: could not load ({type(e).__name__}: {str(e).splitlines()[0]}); offline, "
        "download the BEIR folder and point eval.retrieval at it") from None
  qrels = load_qrels(f"hf:{repo}-qrels@{split}")
  doc_ids = [str(x) for x in corpus["_id"]]
  docs = [passage_text(t, x) for t, x in zip(corpus["title"], corpus["text"])]
  text_of = {str(q): t for q, t in zip(queries["_id"], queries["text"])}
  return collection(name or repo.split("/")[-1], split, doc_ids, docs, text_of, qrels,
                    where=f"{spec} ({split})")


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
      raise DataError(
          f"{path}:{line_no}: title and text must be strings, got {type(title).__name__} and "
          f"{type(text).__name__}")
    joined = passage_text(title, text)
    if not joined:
      raise DataError(f"{path}:{line_no}: empty title and text")
    doc_ids.append(doc_id)
    docs.append(joined)
  queries = {}
  for line_no, row in _jsonl(os.path.join(folder, "queries.jsonl"), ("_id", "text")):
    if not isinstance(row["text"], str) or not row["text"].strip():
      raise DataError(
          f"{folder}/queries.jsonl:{line_no}: text {row['text']!r} is not a non-empty string")
    queries[str(row["_id"])] = row["text"]
  return collection(name or os.path.basename(os.path.normpath(folder)), split, doc_ids, docs,
                    queries, qrels, where=f"{folder} (qrels/{split}.tsv, queries.jsonl)")


def hold_out(folder: str, out: str, *, queries: int, split: str = "train", dev: str = "dev",
             seed: int = 0) -> str:
  """A BEIR folder at `out` whose qrels/<split>.tsv lacks `queries` judged queries drawn at random
  (seeded), written to qrels/<dev>.tsv instead: a dev split for selection where a collection has
  only train and test. The other qrels files are copied, corpus.jsonl and queries.jsonl linked.
  Writing the same again changes nothing; `out`."""
  import random
  import shutil
  folder, out = os.path.abspath(os.path.expanduser(folder)), os.path.expanduser(out)
  qrels = read_qrels(os.path.join(folder, "qrels", f"{split}.tsv"))
  if not 0 < queries < len(qrels):
    raise ConfigError(f"hold_out: {queries} queries of {folder}'s {len(qrels)} in {split}: "
                      f"hold out between 1 and {len(qrels) - 1}")
  held = set(random.Random(seed).sample(sorted(qrels, key=lambda q: (len(q), q)), queries))
  os.makedirs(os.path.join(out, "qrels"), exist_ok=True)
  for name in ("corpus.jsonl", "queries.jsonl"):
    link = os.path.join(out, name)
    if not os.path.exists(link):
      os.symlink(os.path.join(folder, name), link)
  for name in os.listdir(os.path.join(folder, "qrels")):
    if name not in (f"{split}.tsv", f"{dev}.tsv"):
      shutil.copyfile(os.path.join(folder, "qrels", name), os.path.join(out, "qrels", name))
  for name, keep in ((split, lambda q: q not in held), (dev, lambda q: q in held)):
    fetch.write_qrels(os.path.join(out, "qrels", f"{name}.tsv"),
                      ((q, d, rel) for q, judged in qrels.items() if keep(q)
                       for d, rel in judged.items()))
  return out


if __name__ == "__main__":
  import argparse
  p = argparse.ArgumentParser(
      description="Hold out judged queries of a BEIR folder's split as a dev split (hold_out).")
  p.add_argument("folder", help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
  p.add_argument("--to", required=True, help="the new folder")
  p.add_argument("--queries", type=int, required=True, help="judged queries held out")
  p.add_argument("--split", default="train", help="the split they come from")
  p.add_argument("--dev", default="dev", help="the held-out split's name")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  try:
    out = hold_out(a.folder, a.to, queries=a.queries, split=a.split, dev=a.dev, seed=a.seed)
  except (ConfigError, DataError) as e:
    p.exit(2, f"error: {e}\n")
  print(f"{out}: train on beir:{out}@{a.split}, select on {a.dev} "
        f"(--config.eval.retrieval=NAME/{a.dev}={out},NAME/test={out})")
