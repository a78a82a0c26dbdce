"""Config helpers: the `:variant,key=value` argument parser, loading a config file, and validation.

`validate(config)` (fine-tuning, configs/ft.py) and `validate_pretrain(config)` (SMAE, configs/pt.py)
run before any compute: enumerated fields, ranges, data specs, and the (layer, dim) schedule against
the backbone's config.json (read without loading weights). Every error is a ConfigError naming the
config key.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
from typing import Any

import ml_collections

from starbucks_jax import schedule as schedule_lib


class ConfigError(ValueError):
  """An invalid config value; the message starts with the key."""


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """'demo,task=sts' -> ConfigDict(demo=True, task='sts'), typed and checked against `defaults`.

  A bare name sets a boolean to True; name=value takes the default's type. Unknown names are errors.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    name, eq, value = item.partition("=")
    if name not in defaults:
      raise ConfigError(f"config argument {name!r} is unknown; expected one of {sorted(defaults)}")
    default = defaults[name]
    if not eq:
      if not isinstance(default, bool):
        raise ConfigError(f"config argument {name!r} needs a value ({name}=...)")
      out[name] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"config argument {name}={value!r}: expected true or false")
      out[name] = value.lower() in ("true", "1")
    elif isinstance(default, (int, float)):
      try:
        out[name] = type(default)(ast.literal_eval(value))
      except (ValueError, SyntaxError):
        raise ConfigError(f"config argument {name}={value!r}: expected {type(default).__name__}") from None
    else:
      out[name] = value
  return out


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'configs/ft.py:demo,lr=1' -> the locked ConfigDict, as `--config=` would give it."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} not found")
  module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None) if arg else module.get_config()
  config.lock()
  return config


def _check_choice(config, key: str, choices) -> None:
  value = _get(config, key)
  if value not in choices:
    raise ConfigError(f"{key}={value!r}; expected one of {tuple(choices)}")


def _check_range(config, key: str, low=None, high=None, *, low_open=False) -> None:
  value = _get(config, key)
  bad = (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high)
  if bad:
    lo = f"> {low}" if low_open else f">= {low}"
    rng = " and ".join(s for s in (lo if low is not None else "", f"<= {high}" if high is not None else "") if s)
    raise ConfigError(f"{key}={value!r}; must be {rng}")


def _get(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def parse_eval_sets(value: str, key: str) -> list[tuple[str, str, str]]:
  """'stsb/test=PATH,sick/test=PATH2' -> [(dataset, split, source spec)]."""
  out = []
  for item in filter(None, (s.strip() for s in value.split(","))):
    name, eq, spec = item.partition("=")
    dataset, slash, split = name.partition("/")
    if not eq or not slash or not dataset or not split or not spec:
      raise ConfigError(f"{key}: {item!r} is not of the form DATASET/SPLIT=SOURCE")
    out.append((dataset, split, spec))
  return out


def _validate_model(config) -> tuple[str, Any, tuple[tuple[int, int], ...]]:
  """model.* and schedule.pairs against the backbone's config.json -> (model dir, BertConfig, pairs)."""
  from starbucks_jax.checkpoint import model_config_dir
  from starbucks_jax.models import hf

  _check_choice(config, "model.dtype", ("float32", "bfloat16", "float16"))
  _check_choice(config, "model.param_dtype", ("float32", "bfloat16"))
  from starbucks_jax.models.bert import REMAT_POLICIES
  if not isinstance(config.model.remat, bool):
    _check_choice(config, "model.remat", tuple(REMAT_POLICIES))
  _check_range(config, "model.max_length", 0)
  try:
    model_dir = model_config_dir(config.model.init_from)
    backbone = hf.config_from_hf(model_dir)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"model.init_from={config.model.init_from!r}: {e}") from None
  if config.model.max_length > backbone.max_position_embeddings:
    raise ConfigError(f"model.max_length={config.model.max_length} exceeds the backbone's "
                      f"max_position_embeddings={backbone.max_position_embeddings}")
  try:
    pairs = schedule_lib.validate(config.schedule.pairs, backbone.num_hidden_layers,
                                  backbone.hidden_size, key="schedule.pairs")
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return model_dir, backbone, pairs


def start_processes(config: ml_collections.ConfigDict) -> None:
  """Check the mesh block's process keys and start jax.distributed when they ask for several
  processes; the first thing a run does (nothing in JAX may run before it)."""
  from starbucks_jax import sharding
  m = config.mesh
  coordinator = m.coordinator
  if coordinator and coordinator != "auto" and not re.fullmatch(r"[^\s:]+:\d+", coordinator):
    raise ConfigError(f"mesh.coordinator={coordinator!r}: expected 'host:port', 'auto' or '' (one process)")
  _check_range(config, "mesh.num_processes", 1)
  if not 0 <= m.process_id < m.num_processes:
    raise ConfigError(f"mesh.process_id={m.process_id} is not in 0..{m.num_processes - 1} "
                      f"(mesh.num_processes={m.num_processes})")
  if m.num_processes > 1 and not coordinator:
    raise ConfigError(f"mesh.num_processes={m.num_processes} needs mesh.coordinator (host:port of process 0)")
  sharding.initialize(m)


def _validate_mesh(config) -> int:
  """Checks the mesh and the batch's split over it; returns the number of data-parallel devices."""
  from starbucks_jax import sharding
  try:
    mesh = sharding.make_mesh(tuple(config.mesh.shape))
  except ValueError as e:
    raise ConfigError(f"mesh.shape: {e}") from None
  data = mesh.shape["data"] * mesh.shape["fsdp"]
  _check_range(config, "train.microbatches", 1)
  k = config.train.microbatches
  if config.data.batch_size % k:
    raise ConfigError(f"train.microbatches={k} does not divide data.batch_size={config.data.batch_size}")
  if (config.data.batch_size // k) % data:
    raise ConfigError(f"data.batch_size={config.data.batch_size}"
                      + (f" / train.microbatches={k}" if k > 1 else "")
                      + f" does not split over the mesh's {data} data-parallel devices "
                      f"(mesh.shape={tuple(config.mesh.shape)})")
  return data


def _validate_optimizer(config) -> int:
  """The mesh and the optimizer's keys; returns the number of data-parallel devices."""
  data = _validate_mesh(config)
  _check_range(config, "train.epochs", 1)
  _check_range(config, "train.max_steps", 0)
  _check_range(config, "train.lr", 0, low_open=True)
  _check_range(config, "train.warmup_ratio", 0, 1)
  _check_choice(config, "train.decay", ("linear", "cosine"))
  _check_range(config, "train.weight_decay", 0)
  _check_range(config, "train.clip_grad_norm", 0)
  _check_range(config, "train.log_every", 1)
  _check_range(config, "train.checkpoint_every", 1)
  _check_range(config, "train.keep_checkpoints", 1)
  return data


def _check_source(config, key: str) -> None:
  from starbucks_jax.data.sources import resolve_spec
  try:
    resolve_spec(_get(config, key))
  except ValueError as e:
    raise ConfigError(f"{key}: {e}") from None


def validate_pretrain(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The SMAE config (configs/pt.py), before any compute; returns the backbone, schedule and the
  pairs the mode trains."""
  from starbucks_jax import losses
  from starbucks_jax.data.masking import MaskingConfig
  from starbucks_jax.data.tokenize import BUCKETS
  from starbucks_jax.pretrain import mode_pairs

  _check_choice(config, "mode", ("pretrain",))
  model_dir, backbone, pairs = _validate_model(config)
  _check_choice(config, "smae.mode", losses.SMAE_MODES)
  try:
    MaskingConfig(config.smae.encoder_mask_rate, config.smae.decoder_mask_rate,
                  config.smae.mask_token_prob, config.smae.random_token_prob)
  except ValueError as e:
    raise ConfigError(f"smae.*: {e}") from None
  _check_source(config, "data.train")
  if config.data.streaming and not config.data.train.startswith("hf:"):
    raise ConfigError(f"data.streaming=True is for hf: sources, not {config.data.train!r}")
  if config.data.streaming and not config.train.max_steps:
    raise ConfigError("train.max_steps=0: a streamed source (data.streaming=True) has no known length; "
                      "set the number of steps")
  if config.data.packing and config.data.streaming:
    raise ConfigError("data.packing=True needs an in-memory source (data.streaming=False)")
  _check_choice(config, "data.length_buckets", BUCKETS)
  _check_range(config, "data.batch_size", 1)
  _validate_optimizer(config)
  if config.eval.text:
    _check_source(config, "eval.text")
  _check_range(config, "eval.batch_size", 1)
  _check_range(config, "eval.max_batches", 0)
  return {"model_dir": model_dir, "backbone": backbone, "pairs": pairs,
          "train_pairs": mode_pairs(config.smae.mode, pairs, backbone)}


def validate(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Check everything that can be checked without compute; returns derived facts (backbone shape,
  validated schedule, eval sets) for the caller to reuse."""
  from starbucks_jax.models.pooling import POOLINGS

  _check_choice(config, "mode", ("train", "eval"))
  _check_choice(config, "model.pooling", POOLINGS)
  model_dir, backbone, pairs = _validate_model(config)
  try:
    plan = schedule_lib.plan(config.schedule.method, pairs, backbone.num_hidden_layers,
                             backbone.hidden_size, separate_pair=_separate_pair(config, backbone),
                             separate_train_dim=config.schedule.separate_train_dim)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  evals = parse_eval_sets(config.eval.sts, "eval.sts")
  from starbucks_jax.data.sources import resolve_spec
  for dataset, split, spec in evals:
    try:
      resolve_spec(spec)
    except ValueError as e:
      raise ConfigError(f"eval.sts ({dataset}/{split}): {e}") from None
  _check_range(config, "eval.batch_size", 1)
  retrieval_sets = parse_eval_sets(config.eval.retrieval, "eval.retrieval")
  for dataset, split, folder in retrieval_sets:
    if folder.startswith("hf:"):  # a BEIR collection on the Hub (data/beir.py); read when evaluating
      continue
    qrels = os.path.join(os.path.expanduser(folder), "qrels", f"{split}.tsv")
    if not os.path.isfile(qrels) or not os.path.isfile(os.path.join(os.path.expanduser(folder), "corpus.jsonl")):
      raise ConfigError(f"eval.retrieval ({dataset}/{split}): {folder} is not a BEIR folder with corpus.jsonl "
                        f"and qrels/{split}.tsv")
  if retrieval_sets:
    _check_choice(config, "eval.retrieval_similarity", ("dot", "cosine"))
    _check_range(config, "eval.query_max_length", 1)
    _check_range(config, "eval.passage_max_length", 1)
    _check_range(config, "eval.retrieval_k", 1)
  if config.mode == "train":
    _validate_training(config, pairs)
  return {"model_dir": model_dir, "backbone": backbone, "pairs": pairs, "plan": plan, "eval_sets": evals,
          "retrieval_sets": retrieval_sets}


def _separate_pair(config, backbone):
  if config.schedule.method != "separate":
    return None
  n, d = config.schedule.separate_pair
  try:
    schedule_lib.validate([(n, d)], backbone.num_hidden_layers, backbone.hidden_size,
                          key="schedule.separate_pair")
  except ValueError as e:
    raise ConfigError(f"{e} (method=separate trains one pair: set layer=N,dim=D)") from None
  return (n, d)


def _validate_training(config, pairs) -> None:
  from starbucks_jax import losses
  from starbucks_jax.data.batching import FORMATS
  from starbucks_jax.data.tokenize import BUCKETS
  _check_choice(config, "loss.task", losses.TASKS)
  _check_choice(config, "loss.similarity", losses.SIMILARITIES)
  _check_choice(config, "loss.kl", losses.KL_KINDS)
  _check_choice(config, "loss.reduction", losses.REDUCTIONS)
  _check_range(config, "loss.scale", 0, low_open=True)
  _check_range(config, "loss.temperature", 0, low_open=True)
  _check_range(config, "loss.kl_weight", 0)
  _check_range(config, "loss.kl_temperature", 0, low_open=True)
  if config.loss.pair_weights and len(config.loss.pair_weights) != len(pairs):
    raise ConfigError(f"loss.pair_weights has {len(config.loss.pair_weights)} weights for "
                      f"{len(pairs)} pairs in schedule.pairs")
  _check_choice(config, "data.format", tuple(FORMATS) + ("groups",))
  _check_choice(config, "data.length_buckets", BUCKETS)
  if config.data.format == "groups":
    _check_range(config, "data.group_size", 1)
    _check_range(config, "data.query_max_length", 3)
    _check_range(config, "data.passage_max_length", 3)
  wants_scores = config.loss.task == "cosent"
  if wants_scores != (config.data.format == "scored_pairs"):
    raise ConfigError(f"loss.task={config.loss.task!r} needs data.format="
                      f"{'scored_pairs' if wants_scores else 'triplets or pairs'}, not "
                      f"{config.data.format!r}")
  if config.data.train.startswith("beir:"):
    folder, _, split = config.data.train[len("beir:"):].partition("@")
    if config.data.format != "groups":
      raise ConfigError(f"data.train={config.data.train!r} (BEIR qrels) needs data.format='groups'")
    if not os.path.isfile(os.path.join(os.path.expanduser(folder), "qrels", f"{split or 'train'}.tsv")):
      raise ConfigError(f"data.train: {folder} has no qrels/{split or 'train'}.tsv")
  else:
    _check_source(config, "data.train")
  _check_range(config, "data.batch_size", 2)
  _check_range(config, "train.grad_cache_chunks", 0)
  if config.train.grad_cache_chunks and config.data.batch_size % config.train.grad_cache_chunks:
    raise ConfigError(f"train.grad_cache_chunks={config.train.grad_cache_chunks} does not divide "
                      f"data.batch_size={config.data.batch_size}")
  data = _validate_optimizer(config)
  _check_range(config, "train.forward_splits", 1)
  splits, k = config.train.forward_splits, config.train.microbatches
  micro = config.data.batch_size // k  # the examples one step encodes together (a microbatch)
  if micro % (splits * data):
    raise ConfigError(f"train.forward_splits={splits}: data.batch_size={config.data.batch_size}"
                      + (f" / train.microbatches={k}" if k > 1 else "")
                      + f" does not split into {splits} forwards over the mesh's {data} data-parallel devices")
  chunk = micro // (config.train.grad_cache_chunks or 1)  # the gradient cache encodes a chunk at a time
  if chunk % splits:
    raise ConfigError(f"train.forward_splits={splits} does not divide the {chunk} examples of each "
                      "train.grad_cache_chunks chunk" + (" of a microbatch" if k > 1 else ""))
