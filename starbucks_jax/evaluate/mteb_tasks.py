"""MTEB's tasks for the adapter (evaluate/mteb.py): MTEB's own by name (their data loaded and
checked before any encoding) and MTEB tasks of local data this project reads (an STS file, a BEIR
folder or a Tevatron collection), so that MTEB runs offline too."""

from __future__ import annotations

import re

from starbucks_jax import cli
from starbucks_jax.config_lib import InputError
from starbucks_jax.evaluate import retrieval as retrieval_lib
from starbucks_jax.evaluate import sts as sts_lib


def mteb_package():
  try:
    import mteb
  except ImportError:
    raise InputError("MTEB evaluation needs the mteb package: pip install \"starbucks_jax[mteb]\" "
                     "(or pip install mteb)") from None
  return mteb


LOCAL = re.compile(r"^(?P<name>[^:=\s]+)(?::(?P<split>[^:=\s]+))?=(?P<source>.+)$")


def parse_local(flag: str, value: str) -> tuple[str, str, str]:
  """NAME[:SPLIT]=SOURCE -> (name, split, source); split defaults to test."""
  m = LOCAL.match(value)
  if not m:
    raise InputError(
        f"{flag} {value}: expected NAME[:SPLIT]=SOURCE, e.g. {flag} stsb:dev=data/stsb/dev.jsonl")
  return m["name"], m["split"] or "test", m["source"]


def _metadata(name: str, split: str, source: str, kind: str, main_score: str):
  from mteb.abstasks.task_metadata import TaskMetadata
  return TaskMetadata(
      name=name, dataset={"path": source, "revision": "local"}, type=kind, category="t2t",
      modalities=["text"], eval_splits=[split], eval_langs=["und"], main_score=main_score,
      description=f"{kind} task {name} ({split}) read from {source} by starbucks_jax")


def local_sts_task(name: str, split: str, source: str):
  """An MTEB STS task (cosine Spearman) of an STS source: rows {sentence1, sentence2, score 0..5}."""
  from datasets import Dataset
  from mteb.abstasks.sts import AbsTaskSTS
  s1, s2, scores = sts_lib.read_sts(source)

  class LocalSTS(AbsTaskSTS):
    # scores 0..5, as MTEB's STS
    metadata = _metadata(name, split, source, "STS", "cosine_spearman")

    def load_data(self, *args, **kwargs):
      self.dataset = {
          "default": {
              split: Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": scores.tolist()})
          }
      }
      self.data_loaded = True

  return LocalSTS()


def local_retrieval_task(name: str, split: str, source: str):
  """An MTEB retrieval task (nDCG@10) of a collection: passages as this project reads them."""
  from datasets import Dataset
  from mteb.abstasks.retrieval import AbsTaskRetrieval
  c = retrieval_lib.load_collection(source, split, name=name)

  class LocalRetrieval(AbsTaskRetrieval):
    metadata = _metadata(name, split, source, "Retrieval", "ndcg_at_10")

    def load_data(self, *args, **kwargs):
      self.dataset = {
          "default": {
              split: {
                  "corpus": Dataset.from_dict({"id": c.doc_ids, "text": c.docs}),
                  "queries": Dataset.from_dict({"id": c.query_ids, "text": c.queries}),
                  "relevant_docs": c.qrels, "top_ranked": None
              }
          }
      }
      self.data_loaded = True

  return LocalRetrieval()


def named_tasks(names: list[str], splits: list[str] | None):
  """MTEB's tasks by name (metadata only: data loads when evaluated); an unknown name is an InputError."""
  mteb = mteb_package()
  tasks = []
  for name in names:
    try:
      task = mteb.get_task(name)
    except KeyError as e:
      raise InputError(f"--tasks {name}: {str(e).strip(chr(34) + chr(39))}") from None
    if splits:
      missing = [s for s in splits if s not in task.metadata.eval_splits]
      if missing:
        raise InputError(f"--splits {','.join(splits)}: {name} has no split {missing[0]} "
                         f"(its splits: {','.join(task.metadata.eval_splits)})")
      task = task.filter_eval_splits(splits)
    tasks.append(task)
  return tasks


def load_data(task) -> None:
  """Loads a task's data; an unreachable Hub or a missing dataset is an InputError naming the task."""
  try:
    task.load_data()
  except (ConnectionError, OSError, ValueError) as e:
    path = task.metadata.dataset.get("path")
    raise InputError(
        f"MTEB task {task.metadata.name}: its data ({path}) did not load: {cli.one_line(e)}. Without "
        "network MTEB reads a datasets cache that holds it (HF_HUB_OFFLINE=1); or give the data as "
        "a local --sts/--retrieval task") from None


def check_data(tasks) -> None:
  """Every task's data loads (read, then let go): a task that cannot fails before any encoding."""
  for task in tasks:
    if not task.data_loaded:
      load_data(task)
      task.unload_data()
