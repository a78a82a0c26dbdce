"""Runs a config: validate everything first, then train (SRL) and/or evaluate per (layer, dim)."""

from __future__ import annotations

import dataclasses
import logging
import os

import ml_collections

from starbucks_jax import checkpoint, config_lib, schedule as schedule_lib
from starbucks_jax.embed import Embedder
from starbucks_jax.evaluate import results, sts

log = logging.getLogger(__name__)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path, "w", encoding="utf8") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  return path


def evaluate(config: ml_collections.ConfigDict, workdir: str, source: str, facts: dict, name: str
             ) -> list[dict]:
  """STS Spearman for every pair of the schedule (or the grid) of the model at `source`."""
  embedder = Embedder.load(source, batch_size=config.eval.batch_size, dtype=config.model.dtype)
  if config.model.max_length:
    embedder.pretrained.sentence = dataclasses.replace(embedder.pretrained.sentence,
                                                       max_seq_length=config.model.max_length)
  pairs = facts["pairs"]
  if config.eval.grid:
    cfg = facts["backbone"]
    pairs = schedule_lib.grid(cfg.num_hidden_layers, cfg.hidden_size, [d for _, d in pairs])
  records = sts.evaluate_sets(embedder, facts["eval_sets"], pairs, pooling=config.model.pooling)
  path = results.write(workdir, name, records)
  print(results.table(records))
  print(f"results: {path}")
  return records


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  facts = config_lib.validate(config)  # fails before any compute
  write_config(workdir, config)
  log.info("backbone %s: %d layers x %d dims; schedule %s", config.model.init_from,
           facts["backbone"].num_hidden_layers, facts["backbone"].hidden_size, facts["pairs"])
  if config.mode == "eval":
    return evaluate(config, workdir, config.model.init_from, facts, name="eval")
  raise config_lib.ConfigError(f"mode={config.mode!r} is not implemented yet")

