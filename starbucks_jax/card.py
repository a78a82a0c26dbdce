"""The model card (README.md) an export writes: what the model is, how it was trained, its results
per (layer, dim) and how to load it at a chosen size with sentence-transformers. Front matter holds
the Hub's model-card fields (library_name, pipeline_tag, tags, base_model)."""

from __future__ import annotations

import json
import os
from typing import Any

from starbucks_jax import metrics
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.evaluate import results

TAGS = ("sentence-transformers", "sentence-similarity", "feature-extraction", "matryoshka",
        "2d-matryoshka", "starbucks", "starbucks_jax")


def _run_facts(workdir: str) -> tuple[dict[str, Any], list[dict], int]:
  """(saved config, final evaluation records, last logged step) of a training workdir; each may be
  missing (a workdir another tool wrote holds only checkpoints and model/)."""
  path = os.path.join(workdir, workdir_lib.CONFIG)
  config = json.load(open(path)) if os.path.exists(path) else {}
  final = os.path.join(workdir, workdir_lib.RESULTS, "final.json")
  records = json.load(open(final)) if os.path.exists(final) else []
  return config, records, metrics.last_step(workdir)


def _training_rows(config: dict[str, Any], steps: int) -> list[tuple[str, str]]:
  get = lambda section, key: config.get(section, {}).get(key)
  rows = [("objective",
           "SMAE pre-training" if config.get("mode") == "pretrain" else "SRL fine-tuning"),
          ("method", get("schedule", "method")),
          ("(layer, dim) pairs", " ".join(f"({n},{d})" for n, d in get("schedule", "pairs") or ())),
          ("initialised from", get("model", "init_from")), ("pooling", get("model", "pooling")),
          ("training data", get("data", "train")), ("steps", steps),
          ("batch size", get("data", "batch_size")), ("learning rate", get("train", "lr")),
          ("loss", get("loss", "task")), ("KL", get("loss", "kl")), ("seed", config.get("seed"))]
  return [(k, str(v)) for k, v in rows if v not in (None, "", ())]


def _hub_id(name: str | None) -> str | None:
  """A Hub model id (owner/name) as base_model; a local path is not one."""
  if not name or os.path.exists(
      os.path.expanduser(name)) or name.count("/") != 1 or name.startswith((".", "/", "~")):
    return None
  return name


def model_card(source: str, *, num_layers: int, hidden: int, layer: int, dim: int, pooling: str,
               title: str, model_type: str = "bert", prompts: tuple[str, str] = ("", ""),
               normalize: bool = False) -> str:
  """The card of an export of `source` (a workdir or a model directory) at (layer, dim); with
  (query, document) `prompts`, its use shows encode_query / encode_document; `normalize`: the
  export ends in a Normalize module, which truncate_dim cuts after (the card says so)."""
  from starbucks_jax.models import hf  # local: the card needs no jax until here
  workdir = workdir_lib.is_workdir(source)
  config, records, steps = _run_facts(source) if workdir else ({}, [], 0)
  base = _hub_id(config.get("model", {}).get("init_from")) if workdir else _hub_id(source)
  front = [
      "---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:"
  ]
  front += [f"- {t}" for t in TAGS]
  if base:
    front.append(f"base_model: {base}")
  front.append("---")
  whole = (layer, dim) == (num_layers, hidden)
  lines = [*front, "", f"# {title}", ""]
  if whole:
    lines += [
        f"A 2D Matryoshka sentence embedding model (Starbucks): a {hf.architecture(model_type).name} encoder "
        f"of {num_layers} layers and "
        f"{hidden} dimensions whose first n layers, {pooling}-pooled and cut to the first d dimensions, "
        "are an embedding model of their own at each (n, d) it was trained at.", ""
    ]
  else:
    lines += [
        f"The ({layer}, {dim}) sub-model of a 2D Matryoshka (Starbucks) sentence embedding model of "
        f"{num_layers} layers x {hidden} dimensions: its first {layer} layers, embeddings cut to "
        f"{dim} dimensions, as a standalone model.", ""
    ]
  if config:
    lines += ["## Training", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _training_rows(config, steps)]
    lines += ["", "Made with starbucks_jax (JAX/Flax)."]
    lines += [""]
  if records:
    lines += ["## Results per (layer, dim)", "", results.table(records), ""]
  lines += _use(whole=whole, num_layers=num_layers, hidden=hidden, layer=layer, dim=dim,
                model_type=model_type, prompts=prompts, normalize=normalize)
  return "\n".join(lines)


def _use(*, whole: bool, num_layers: int, hidden: int, layer: int, dim: int, model_type: str,
         prompts: tuple[str, str], normalize: bool) -> list[str]:
  """The card's "Use" section: sentence-transformers lines that load the model (a whole export at
  any (n, d) it was trained at)."""
  lines: list[str] = []
  lines += ["## Use", "", "```python", "from sentence_transformers import SentenceTransformer", ""]
  encode = ["embeddings = model.encode([\"A man is playing a guitar.\"])"]
  if any(prompts):  # sentence-transformers puts the stored prompt before each text
    encode = [
        f"queries = model.encode_query([\"Who plays the guitar?\"])  # prompt {prompts[0]!r}",
        "passages = model.encode_document([\"A man is playing a guitar.\"])  # prompt "
        f"{prompts[1]!r}"
    ]
  if whole:
    n, d = num_layers, hidden
    layers = "layers" if model_type == "modernbert" else "encoder.layer"  # the HF module's list
    if normalize:  # sentence-transformers cuts after the model's Normalize: norms below 1
      encode = [line.replace("])", "], normalize_embeddings=True)", 1) for line in encode]
      lines += [
          "# truncate_dim cuts the vectors after this model's Normalize module, so they are no "
          "longer unit length;", "# normalize_embeddings=True makes them unit length again (as "
          "starbucks_jax's embed gives them): dot products are then cosines."
      ]
    lines += [
        f"n, d = {n}, {d}  # any trained size: the first n layers, the first d dimensions",
        "model = SentenceTransformer(\"PATH_OR_REPO_ID\", truncate_dim=d)",
        f"model[0].auto_model.{layers} = model[0].auto_model.{layers}[:n]", *encode
    ]
  else:
    lines += ["model = SentenceTransformer(\"PATH_OR_REPO_ID\")", *encode]
    lines[-1] += f"  # {dim} dimensions from {layer} layers"
  lines += ["```", ""]
  return lines
