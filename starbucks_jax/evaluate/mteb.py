"""MTEB evaluation of every (layer, dim) sub-model, each its own MTEB model named NAME-{layer}x{dim}.

    python -m starbucks_jax.evaluate.mteb --model SRC --output DIR [--tasks STSBenchmark,SciFact,...]
        [--sts NAME[:SPLIT]=SOURCE ...] [--retrieval NAME[:SPLIT]=SOURCE ...] [--pairs 2x32,4x64,...]

--tasks are MTEB's own tasks by name (their data comes from the Hub, or from the datasets cache with
HF_HUB_OFFLINE=1). --sts and --retrieval make MTEB tasks of local data this project reads (an STS
file or hf: source; a BEIR folder, hf:BeIR/NAME or tevatron: collection), so MTEB runs offline too.
Pairs default to the workdir's schedule, else the model's own (layer, dim), else the Starbucks
schedule of its shape, else the whole model.

The sub-models share their encodings: a list of texts is encoded once, through the deepest layer
asked for, and every (layer, dim) is sliced from that pass while it fits in --cache-gb. Writes MTEB's
result files to DIR/mteb/results/NAME-{layer}x{dim}/REVISION/TASK.json (`mteb.ResultCache(DIR/mteb)`
reads them; a rerun evaluates only what is missing) and the main score of each task, split and
pair to DIR/results/mteb.json. Needs the `mteb` extra (pip install "starbucks_jax[mteb]").
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import os
import re
from typing import Any

import numpy as np

from starbucks_jax import checkpoint, cli, model_dirs, schedule
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.config_lib import InputError
from starbucks_jax.evaluate import index as index_lib
from starbucks_jax.evaluate import mteb_tasks as tasks_lib
from starbucks_jax.evaluate import results

log = logging.getLogger(__name__)
RESULTS_NAME = "mteb"  # DIR/results/mteb.json
CACHE_DIR = "mteb"  # DIR/mteb: MTEB's ResultCache
NAME_PREFIX = "starbucks_jax"  # MTEB model names are ORG/NAME


# ---------------------------------------------------------------------------------------------
# The model side: one shared encoding pass, one MTEB encoder per (layer, dim).
# ---------------------------------------------------------------------------------------------
class SharedEncodings:
  """Pooled encodings of text lists at every layer of `layers`, from one pass through the deepest;
  kept (most recent first) while they fit in `budget_bytes`, so sub-models reuse them. A list too
  large to keep at every layer is encoded at the one layer asked for."""
  def __init__(self, embedder, layers, budget_bytes: float, max_length: int | None = None):
    self.embedder = embedder
    self.layers = tuple(sorted(set(layers)))
    self.budget = budget_bytes
    self.max_length = max_length
    self.passes = 0  # encoder passes run (each over one list of texts)
    self._kept: collections.OrderedDict[str, dict[int, np.ndarray]] = collections.OrderedDict()

  @staticmethod
  def key(texts: list[str]) -> str:
    h = hashlib.sha1()
    for t in texts:
      h.update(t.encode("utf8"))
      h.update(b"\0")
    return f"{len(texts)}:{h.hexdigest()}"

  def pooled(self, texts: list[str], layer: int) -> np.ndarray:
    """[len(texts), hidden] pooled, unnormalised output of the first `layer` layers."""
    key = self.key(texts)
    if key in self._kept and layer in self._kept[key]:
      self._kept.move_to_end(key)
      return self._kept[key][layer]
    size = len(texts) * self.embedder.config.hidden_size * 4
    layers = self.layers if size * len(self.layers) <= self.budget else (layer,)
    out = self.embedder.encode_layers(texts, layers, max_length=self.max_length)
    self.passes += 1
    if size * len(layers) <= self.budget:
      self._kept[key] = out
      while sum(a.nbytes for v in self._kept.values() for a in v.values()) > self.budget:
        self._kept.popitem(last=False)
    return out[layer]


def model_meta(name: str, layer: int, dim: int, *, revision: str | None, max_tokens: int):
  from mteb.models.model_meta import ModelMeta
  return ModelMeta(loader=None, name=f"{name}-{layer}x{dim}", revision=revision, release_date=None,
                   languages=None, n_parameters=None, memory_usage_mb=None, max_tokens=max_tokens,
                   embed_dim=dim, license=None, open_weights=True, public_training_code=None,
                   public_training_data=None, framework=["JAX"], similarity_fn_name="cosine",
                   use_instructions=False, training_datasets=None)


def sub_model(shared: SharedEncodings, layer: int, dim: int, meta, normalize: bool):
  """An MTEB encoder (EncoderProtocol) for the (layer, dim) sub-model; cosine similarity."""
  from mteb.models.abs_encoder import AbsEncoder, get_prompt_name

  # the names MTEB reads a prompt under (it leaves out others, e.g. 'passage')
  prompts, _ = AbsEncoder.validate_task_to_prompt_name(shared.embedder.pretrained.sentence.prompts,
                                                       raise_for_invalid_keys=False)

  class SubModel(AbsEncoder):
    def __init__(self):
      self.model = None
      self.mteb_model_meta = meta

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
      # the model's named prompt by MTEB's own rule (task name, task type, then query / document:
      # STS, which has no prompt type, gets none), as MTEB runs a sentence-transformers model
      name = get_prompt_name(prompts, task_metadata, prompt_type)
      prompt = prompts[name] if name else ""
      texts = [prompt + t for batch in inputs for t in batch["text"]]
      vecs = np.array(shared.pooled(texts, layer)[:, :dim])
      if normalize:
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
      return vecs

  return SubModel()


# ---------------------------------------------------------------------------------------------
# Pairs, names, evaluation.
# ---------------------------------------------------------------------------------------------
def parse_pairs(value: str, num_layers: int, hidden: int) -> tuple[schedule.Pair, ...]:
  """'2x32,4x64' -> ((2, 32), (4, 64)), each a sub-model of the backbone."""
  out = []
  for part in value.split(","):
    n, d = schedule.parse_pair(part, where=f"--pairs {value}: ")
    schedule.check_pair(n, d, num_layers, hidden, where=f"--pairs {part.strip()}: ")
    out.append((n, d))
  return tuple(sorted(set(out)))


def default_pairs(source: str, pretrained) -> tuple[schedule.Pair, ...]:
  cfg, s = pretrained.config, pretrained.sentence
  path = os.path.join(os.path.expanduser(source), workdir_lib.CONFIG)
  if workdir_lib.is_workdir(os.path.expanduser(source)) and os.path.exists(path):
    pairs = json.load(open(path)).get("schedule", {}).get("pairs")
    if pairs:
      return tuple((int(n), int(d)) for n, d in pairs)
  if s.layer or s.dim:
    return ((s.layer or cfg.num_hidden_layers, s.dim or cfg.hidden_size),)
  for pairs in schedule.STARBUCKS.values():
    if pairs[-1] == (cfg.num_hidden_layers, cfg.hidden_size):
      return pairs
  return ((cfg.num_hidden_layers, cfg.hidden_size),)


def revision_of(embedder, max_length: int | None) -> str:
  """The MTEB revision of a model: a hash of its weights and sentence settings, so that results kept
  in DIR/mteb are reused only for the same model."""
  weights = index_lib.fingerprint(embedder.pretrained.params["bert"])
  return hashlib.sha1(repr(
      (weights, embedder.pretrained.sentence, max_length)).encode()).hexdigest()[:12]


def default_name(source: str) -> str:
  base = os.path.basename(os.path.normpath(os.path.expanduser(source))) or "model"
  return f"{NAME_PREFIX}/{re.sub(r'[^A-Za-z0-9._-]+', '-', base)}"


def scores_to_records(task_result, main_score: str, layer: int, dim: int) -> list[dict[str, Any]]:
  """The main score of each split (and language subset) of an MTEB TaskResult as our records."""
  out = []
  for split, rows in task_result.scores.items():
    for row in rows:
      subset = row.get("hf_subset", "default")
      dataset = task_result.task_name + ("" if subset == "default" else f"/{subset}")
      out.append(results.record(dataset, split, main_score, layer, dim, row["main_score"]))
  return out


def evaluate(embedder, tasks, pairs, output: str, *, name: str, revision: str | None = None,
             cache_gb: float = 4.0, max_length: int | None = None, normalize: bool | None = None,
             overwrite: bool = False) -> list[dict[str, Any]]:
  """Every task at every pair; MTEB's files under OUTPUT/mteb, our records in OUTPUT/results/mteb.json.
  Tasks run in the outer loop so that the pairs share each task's encodings."""
  mteb = tasks_lib.mteb_package()
  shared = SharedEncodings(embedder, [n for n, _ in pairs], cache_gb * 2**30, max_length)
  normalize = embedder.pretrained.sentence.normalize if normalize is None else normalize
  cache = mteb.ResultCache(cache_path=os.path.join(output, CACHE_DIR))
  models = {(n, d): sub_model(
                shared, n, d,
                model_meta(name, n, d, revision=revision, max_tokens=max_length or
                           embedder.max_length), normalize) for n, d in pairs}
  records = []
  for task in tasks:
    loaded_here = not task.data_loaded  # loaded once for all pairs (MTEB would load it for each)
    if loaded_here:
      tasks_lib.load_data(task)
    for (n, d), model in models.items():
      result = mteb.evaluate(
          model, task, cache=cache, overwrite_strategy="always" if overwrite else "only-missing",
          show_progress_bar=False,
          encode_kwargs={"batch_size": embedder.batch_size, "show_progress_bar": False})
      for task_result in result.task_results:
        new = scores_to_records(task_result, task.metadata.main_score, n, d)
        records += new
        for r in new:
          log.info("%s/%s %dx%d %s %.4f", r["dataset"], r["split"], n, d, r["metric"], r["value"])
    if loaded_here:
      task.unload_data()
  log.info("%d tasks x %d pairs from %d encoder passes", len(tasks), len(pairs), shared.passes)
  results.write(output, RESULTS_NAME, records)
  return records


def tasks_of(args) -> list:
  """The command line's tasks (--tasks, --sts, --retrieval), each with its data checked."""
  splits = [s for s in args.splits.split(",") if s]
  tasks = tasks_lib.named_tasks([t for t in args.tasks.split(",") if t], splits)
  tasks += [tasks_lib.local_sts_task(*tasks_lib.parse_local("--sts", v)) for v in args.sts]
  tasks += [
      tasks_lib.local_retrieval_task(*tasks_lib.parse_local("--retrieval", v))
      for v in args.retrieval
  ]
  if not tasks:
    raise InputError("no tasks: give --tasks, --sts or --retrieval")
  names = [t.metadata.name for t in tasks]
  if len(set(names)) != len(names):
    raise InputError(f"task names repeat: {names}; give each local task its own NAME")
  tasks_lib.check_data(tasks)
  return tasks


def parser() -> argparse.ArgumentParser:
  """The command line of `python -m starbucks_jax.evaluate.mteb`."""
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.evaluate.mteb",
                              description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True,
                 help="HF / sentence-transformers dir, Hub id, or workdir")
  p.add_argument("--output",
                 help="where to write results (default: the workdir, when --model is one)")
  p.add_argument("--tasks", default="",
                 help="MTEB task names, comma-separated (e.g. STSBenchmark,SciFact)")
  p.add_argument(
      "--sts", action="append", default=[], metavar="NAME[:SPLIT]=SOURCE",
      help="a local STS task: a JSONL/CSV/TSV file or hf: source of sentence1, sentence2, score")
  p.add_argument("--retrieval", action="append", default=[], metavar="NAME[:SPLIT]=SOURCE",
                 help="a local retrieval task: a BEIR folder, hf:BeIR/NAME or tevatron: collection")
  p.add_argument("--splits", default="",
                 help="only these splits of the --tasks (e.g. dev,validation)")
  p.add_argument("--pairs", help="LAYERxDIM sub-models, comma-separated (default: see above)")
  p.add_argument("--name", help=f"MTEB model name ORG/NAME (default: {NAME_PREFIX}/<folder name>)")
  p.add_argument("--step", type=int, help="checkpoint step of a workdir (default: latest)")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--max-length", type=int, help="tokens per text (default: the model's)")
  p.add_argument("--cache-gb", type=float, default=4.0,
                 help="memory for encodings shared by the pairs")
  p.add_argument("--overwrite", action="store_true", help="re-evaluate results already in DIR/mteb")
  for role, example in (("query", "query: "), ("passage", "passage: ")):
    p.add_argument(
        f"--{role}-prompt", default=model_dirs.STORED,
        help=f"text before each {role} (e.g. {example!r}; picked as MTEB picks a "
        "sentence-transformers model's prompts); default: the model's stored prompt; "
        "'' for none")
  return p


def main(argv: list[str] | None = None) -> None:
  p = parser()
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
  logging.getLogger("mteb").setLevel(logging.WARNING)  # its INFO lines repeat per task and pair
  logging.getLogger("datasets").setLevel(logging.WARNING)
  import datasets
  datasets.disable_progress_bars()  # MTEB maps each corpus once per pair
  workdir = workdir_lib.is_workdir(os.path.expanduser(args.model))
  output = args.output or (args.model if workdir else None)
  if not output:
    raise InputError("--output: required unless --model is a training workdir")
  if args.name and not re.fullmatch(r"[^/\s]+/[^/\s]+", args.name):
    raise InputError(f"--name {args.name}: expected ORG/NAME")
  if args.batch_size < 1:
    raise InputError(f"--batch-size={args.batch_size}: must be >= 1")
  tasks = tasks_of(args)
  from starbucks_jax.embed import Embedder
  embedder = Embedder.load(args.model, batch_size=args.batch_size) if args.step is None else \
      Embedder(checkpoint.load_model(args.model, step=args.step), batch_size=args.batch_size)
  embedder.pretrained.sentence = model_dirs.with_prompts(embedder.pretrained.sentence,
                                                         args.query_prompt, args.passage_prompt)
  cfg = embedder.config
  pairs = parse_pairs(args.pairs, cfg.num_hidden_layers, cfg.hidden_size) if args.pairs else \
      default_pairs(args.model, embedder.pretrained)
  name = args.name or default_name(args.model)
  print(f"evaluating {len(tasks)} task(s) at {len(pairs)} pair(s): " + " ".join(f"{n}x{d}"
                                                                                for n, d in pairs))
  records = evaluate(embedder, tasks, pairs, output, name=name,
                     revision=revision_of(embedder, args.max_length), cache_gb=args.cache_gb,
                     max_length=args.max_length, overwrite=args.overwrite)
  print(results.table(records))
  print(f"results: {os.path.join(output, workdir_lib.RESULTS, RESULTS_NAME + '.json')}; "
        f"MTEB's files: {os.path.join(output, CACHE_DIR, 'results')}")


if __name__ == "__main__":
  cli.run(main)
