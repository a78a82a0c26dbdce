"""The CPU recipes' data, from the Hugging Face Hub into a local folder, in the layouts they read.

    python -m starbucks_jax.data.fetch NAME [NAME ...] [--to DIR]

NAME: stsb (STS Benchmark train/dev/test: sentence-transformers/stsb, scores put back on 0..5),
snli (SNLI dev/test pairs and the triplets derived from them: premise, an entailed hypothesis, a
contradicted one; stanfordnlp/snli), scifact (BEIR SciFact: BeIR/scifact and BeIR/scifact-qrels,
train and test qrels), mlm_text (one sentence a line, for SMAE pre-training: STS-B train's and SNLI
dev/test's sentences; needs stsb and snli first) or all (those: the CPU recipes' data). For the
paper's recipes offline: sts (STS12-16 and SICK-R test, mteb/*-sts; with stsb, the seven STS sets)
and allnli (AllNLI triplets train/dev/test, sentence-transformers/all-nli, 557,850 for training);
each prints the `--config.` override that reads it. DIR defaults to data_root(): the
STARBUCKS_DATA environment variable, else ~/.cache/starbucks_jax/data; the configs' CPU recipes
read from there. Each folder gets MANIFEST.json (source, rows, SHA-256 of every file): a second
fetch checks the files against it and downloads nothing when they match; a file that does not
match is an error naming it. Needs the network (or the datasets cache) and `datasets`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
from typing import Any, Callable

from starbucks_jax.config_lib import InputError

CACHE = os.path.join("~", ".cache", "starbucks_jax", "data")
MANIFEST = "MANIFEST.json"
SNLI_LABELS = {0: "entailment", 1: "neutral", 2: "contradiction"}


def data_root() -> str:
  """Where the CPU recipes' data lives: STARBUCKS_DATA, else the fetch cache (absolute)."""
  return os.path.abspath(os.path.expanduser(os.environ.get("STARBUCKS_DATA") or CACHE))


def missing_hint(path: str) -> str:
  """For a missing file under data_root(): the fetch command that writes it, else ''."""
  root = data_root()
  rel = os.path.relpath(os.path.abspath(os.path.expanduser(path)), root)
  if rel.startswith(".."):
    return ""
  name = {sub: name for name, (sub, _) in DATASETS.items()}.get(rel.split(os.sep)[0], "all")
  to = "" if root == os.path.abspath(os.path.expanduser(CACHE)) else f" --to {root}"
  return f"; fetch it with `python -m starbucks_jax.data.fetch {name}{to}`"


def _load(repo: str, *args, **kwargs):
  try:
    import datasets
  except ImportError:
    raise InputError("fetching needs `pip install datasets`") from None
  try:
    return datasets.load_dataset(repo, *args, **kwargs)
  except Exception as e:  # offline, moved or renamed on the Hub
    raise InputError(f"{repo}: could not download ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}); fetching needs the network")


def _write_jsonl(path: str, rows) -> int:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  n = 0
  with open(path + ".tmp", "w", encoding="utf8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
      n += 1
  os.replace(path + ".tmp", path)
  return n


def fetch_stsb(folder: str) -> dict[str, Any]:
  rows = {}
  for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
    data = _load("sentence-transformers/stsb", split=split)
    rows[f"{name}.jsonl"] = _write_jsonl(
        os.path.join(folder, f"{name}.jsonl"),
        ({"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": 5.0 * r["score"]}
         for r in data))
  return {"source": "hf:sentence-transformers/stsb (scores x 5: 0..5)", "rows": rows}


def snli_triplets(pairs) -> list[dict[str, str]]:
  """(premise, an entailed hypothesis, a contradicted one) per premise that has both (the first of
  each, in order), as AllNLI's triplets are made."""
  by_premise: dict[str, dict[str, str]] = {}
  for r in pairs:
    by_premise.setdefault(r["premise"], {}).setdefault(r["label"], r["hypothesis"])
  return [{"anchor": p, "positive": h["entailment"], "negative": h["contradiction"]}
          for p, h in by_premise.items() if "entailment" in h and "contradiction" in h]


def fetch_snli(folder: str) -> dict[str, Any]:
  rows = {}
  for split, name in (("validation", "dev"), ("test", "test")):
    pairs = [{
        "premise": r["premise"], "hypothesis": r["hypothesis"], "label": SNLI_LABELS[r["label"]]
    } for r in _load("stanfordnlp/snli", split=split) if r["label"] in SNLI_LABELS]
    rows[f"{name}_pairs.jsonl"] = _write_jsonl(os.path.join(folder, f"{name}_pairs.jsonl"), pairs)
    rows[f"{name}_triplets.jsonl"] = _write_jsonl(os.path.join(folder, f"{name}_triplets.jsonl"),
                                                  snli_triplets(pairs))
  return {"source": "hf:stanfordnlp/snli (gold-labelled pairs; triplets derived)", "rows": rows}


def fetch_scifact(folder: str) -> dict[str, Any]:
  corpus = _load("BeIR/scifact", "corpus", split="corpus")
  queries = _load("BeIR/scifact", "queries", split="queries")
  rows = {
      "corpus.jsonl": _write_jsonl(os.path.join(folder, "corpus.jsonl"),
                                   ({"_id": str(r["_id"]), "title": r["title"], "text": r["text"]}
                                    for r in corpus)),
      "queries.jsonl": _write_jsonl(os.path.join(folder, "queries.jsonl"),
                                    ({"_id": str(r["_id"]), "text": r["text"]} for r in queries))
  }
  for split in ("train", "test"):
    rows[f"qrels/{split}.tsv"] = write_qrels(os.path.join(folder, "qrels", f"{split}.tsv"),
                                             ((r["query-id"], r["corpus-id"], int(r["score"]))
                                              for r in _load("BeIR/scifact-qrels", split=split)))
  return {"source": "hf:BeIR/scifact + hf:BeIR/scifact-qrels", "rows": rows}


def write_qrels(path: str, judgements) -> int:
  """BEIR's qrels TSV (header, then query-id, corpus-id, score a line) from (query, doc, score)."""
  lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{score}" for q, d, score in judgements]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf8") as f:
    f.write("\n".join(lines) + "\n")
  return len(lines) - 1


def fetch_mlm_text(folder: str) -> dict[str, Any]:
  """Every distinct sentence of the fetched STS-B train and SNLI dev/test, shuffled (seed 0)."""
  root = os.path.dirname(folder)
  sources = [
      os.path.join(root, "stsb", "train.jsonl"),
      *(os.path.join(root, "snli", f"{s}_pairs.jsonl") for s in ("dev", "test"))
  ]
  sentences: dict[str, None] = {}
  for path in sources:
    if not os.path.isfile(path):
      raise InputError(f"{path}: mlm_text is made from stsb and snli; fetch them first")
    for line in open(path, encoding="utf8"):
      row = json.loads(line)
      for key in ("sentence1", "sentence2", "premise", "hypothesis"):
        if row.get(key):
          sentences[row[key].strip()] = None
  lines = list(sentences)
  random.Random(0).shuffle(lines)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "sentences.txt"), "w", encoding="utf8") as f:
    f.write("\n".join(lines) + "\n")
  return {
      "source": "stsb/train.jsonl, snli/{dev,test}_pairs.jsonl (fetched)",
      "rows": {"sentences.txt": len(lines)}
  }


STS_SUITE = ("sts12", "sts13", "sts14", "sts15", "sts16", "sickr")  # beside STS-B: the paper's 7


def fetch_sts(folder: str) -> dict[str, Any]:
  rows = {}
  for name in STS_SUITE:
    rows[f"{name}_test.jsonl"] = _write_jsonl(
        os.path.join(folder, f"{name}_test.jsonl"),
        ({"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": float(r["score"])}
         for r in _load(f"mteb/{name}-sts", split="test")))
  return {"source": "hf:mteb/{sts12,sts13,sts14,sts15,sts16,sickr}-sts (test)", "rows": rows}


def fetch_allnli(folder: str) -> dict[str, Any]:
  rows = {}
  for split in ("train", "dev", "test"):
    rows[f"{split}_triplets.jsonl"] = _write_jsonl(
        os.path.join(folder, f"{split}_triplets.jsonl"),
        ({"anchor": r["anchor"], "positive": r["positive"], "negative": r["negative"]}
         for r in _load("sentence-transformers/all-nli", "triplet", split=split)))
  return {"source": "hf:sentence-transformers/all-nli (triplet)", "rows": rows}


# NAME -> (folder under the data root, writer); `all`: the first four, the CPU recipes' data
DATASETS: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "stsb": ("stsb", fetch_stsb), "snli": ("snli", fetch_snli),
    "scifact": ("beir_scifact", fetch_scifact), "mlm_text": ("mlm_text", fetch_mlm_text),
    "sts": ("sts", fetch_sts), "allnli": ("allnli", fetch_allnli)
}
CPU_RECIPES = ("stsb", "snli", "scifact", "mlm_text")


def override(name: str, root: str) -> str:
  """The `--config.` flag that points a paper recipe (configs/ft.py:nli, sts) at fetched data."""
  folder = lambda n: os.path.join(root, DATASETS[n][0])
  if name == "sts":
    sets = [f"stsb/test={folder('stsb')}/test.jsonl"
           ] + [f"{n}/test={folder('sts')}/{n}_test.jsonl" for n in STS_SUITE]
    return "--config.eval.sts=" + ",".join(sets)
  if name == "allnli":
    return f"--config.data.train={folder('allnli')}/train_triplets.jsonl"
  return ""


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def verify(folder: str) -> bool:
  """True when `folder`'s MANIFEST.json names every file with its SHA-256; False without one; an
  InputError naming a file that is missing or differs."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    return False
  for name, digest in json.load(open(path))["sha256"].items():
    file = os.path.join(folder, name)
    if not os.path.isfile(file):
      raise InputError(f"{file}: missing (listed in {path}); delete {folder} and fetch again")
    if sha256(file) != digest:
      raise InputError(f"{file}: its SHA-256 differs from {path}'s; delete {folder} and fetch "
                       "again")
  return True


def fetch(name: str, root: str | None = None) -> str:
  """Write dataset `name` under `root` (default data_root()) unless it is there and verified."""
  if name not in DATASETS:
    raise InputError(f"{name!r}: expected one of {', '.join(DATASETS)} or all ("
                     f"{', '.join(CPU_RECIPES)})")
  sub, writer = DATASETS[name]
  folder = os.path.join(os.path.abspath(os.path.expanduser(root or data_root())), sub)
  if verify(folder):
    print(f"{name}: {folder} (verified, nothing downloaded)")
    return folder
  info = writer(folder)
  files = sorted(
      os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs
      if f != MANIFEST)
  info["sha256"] = {f: sha256(os.path.join(folder, f)) for f in files}
  with open(os.path.join(folder, MANIFEST), "w") as f:
    json.dump(info, f, indent=1)
  print(f"{name}: {folder} ({', '.join(f'{k} {v:,}' for k, v in info['rows'].items())})")
  return folder


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.data.fetch",
                              description=__doc__.split("\n")[0])
  p.add_argument("names", nargs="+",
                 help=f"{', '.join(DATASETS)} or all ({', '.join(CPU_RECIPES)})")
  p.add_argument(
      "--to", help="the data root (default: $STARBUCKS_DATA, else ~/.cache/starbucks_jax/"
      "data)")
  args = p.parse_args(argv)
  names = [n for n in args.names if n != "all"]
  if "all" in args.names:
    names = [*CPU_RECIPES, *names]
  root = os.path.abspath(os.path.expanduser(args.to or data_root()))
  for name in dict.fromkeys(names):
    fetch(name, args.to)
    if flag := override(name, root):
      print(f"  the paper recipes read it with {flag}" +
            ("" if name != "sts" or verify(os.path.join(root, DATASETS["stsb"][0])) else
             " (fetch stsb too)"))
  if root != data_root():
    print(f"the configs read {data_root()}: run them with STARBUCKS_DATA={root}")


if __name__ == "__main__":
  from starbucks_jax import cli
  cli.run(main)
