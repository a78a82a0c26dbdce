"""Where a run's numbers go: WORKDIR/metrics.jsonl (the source of truth that reports and resumes
read), TensorBoard event files in WORKDIR/tb (log.tensorboard; written by tensorboardX, so no
TensorFlow at run time) and, optionally, Weights & Biases (log.wandb=PROJECT).

    tensorboard --logdir WORKDIR/tb          # train/<metric> per logged step, eval/... at the end
                                             # ('@' in a tag becomes '_': nDCG_10)

A run resumed at step S keeps what was logged up to S and drops the rest in every sink: JSONL rows
past S are removed, TensorBoard hides later events (a purge marker at S + 1), W&B resumes its run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from typing import Any

from starbucks_jax import sharding
from starbucks_jax import workdir as workdir_lib

log = logging.getLogger(__name__)
TB_DIR = "tb"


def finite_or_none(value) -> float | None:
  """A metric as JSON allows it: a non-finite value is null (JSON has no NaN)."""
  value = float(value)
  return value if math.isfinite(value) else None


class MetricsWriter:
  """One row per logged step into every sink; `start` is the step a run resumes at (0: a new run)."""
  def __init__(self, workdir: str, start: int = 0, log_cfg=None, config=None):
    """`log_cfg`: the log block (config_blocks.Log; None: metrics.jsonl only); `config`: W&B's run config."""
    self.path = os.path.join(workdir, workdir_lib.METRICS)
    self.primary = sharding.is_primary()
    self.tb = self.wandb = None
    if not self.primary:
      return
    if os.path.exists(self.path):
      kept = [row for row in workdir_lib.read_metrics(self.path) if row["step"] <= start]
      workdir_lib.write_atomically(self.path, "".join(json.dumps(row) + "\n" for row in kept))
    if log_cfg and log_cfg.tensorboard:
      self.tb = tensorboard_writer(workdir, start)
    if log_cfg and log_cfg.wandb:
      self.wandb = wandb_run(workdir, log_cfg.wandb, config)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.primary:
      return
    row = {"step": int(step), **{k: finite_or_none(v) for k, v in metrics.items()}}
    with workdir_lib.naming_errors(self.path), open(self.path, "a", encoding="utf8") as f:
      f.write(json.dumps(row, allow_nan=False) + "\n")
    values = {tag_of(f"train/{k}"): v for k, v in row.items() if k != "step" and v is not None}
    if self.tb is not None:
      for tag, value in values.items():
        self.tb.add_scalar(tag, value, row["step"])
    if self.wandb is not None:
      self.wandb.log(values, step=row["step"])

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
    if self.wandb is not None:
      self.wandb.finish()


def tensorboard_writer(workdir: str, start: int = 0):
  """A tensorboardX writer on WORKDIR/tb; a resumed run marks steps after `start` as purged."""
  from tensorboardX import SummaryWriter
  folder = os.path.join(workdir, TB_DIR)
  earlier = os.path.isdir(folder) and any(n.startswith("events.") for n in os.listdir(folder))
  # the file name holds the second it was made in; the suffix (its nanoseconds) keeps two writers
  # of one second apart and in order (TensorBoard reads a folder's files sorted by name)
  return SummaryWriter(folder, purge_step=start + 1 if earlier else None, flush_secs=10,
                       filename_suffix=f".{time.time_ns() % 10**9:09d}")


def wandb_run(workdir: str, project: str, config=None):
  """A W&B run for this workdir (its id kept in WORKDIR/wandb_id, so a resumed run continues it);
  offline (synced later with `wandb sync`) when no API key is set or WANDB_MODE says so."""
  import wandb
  id_path = os.path.join(workdir, "wandb_id")
  if os.path.exists(id_path):
    run_id = open(id_path).read().strip()
  else:
    run_id = wandb.util.generate_id()
    with open(id_path, "w") as f:
      f.write(run_id)
  mode = os.environ.get("WANDB_MODE") or ("online"
                                          if os.environ.get("WANDB_API_KEY") else "offline")
  if mode == "offline":
    log.info("W&B logs offline into %s/wandb (no WANDB_API_KEY); `wandb sync` uploads them",
             workdir)
  return wandb.init(project=project, id=run_id, resume="allow", dir=workdir, mode=mode,
                    name=os.path.basename(os.path.normpath(workdir)),
                    config=config.to_dict() if config is not None else None)


def tag_of(name: str) -> str:
  """A TensorBoard tag: characters other than letters, digits, _ - . / become _ ('nDCG@10' ->
  'nDCG_10'), as TensorBoard would rename them (here without a log line for each)."""
  return re.sub(r"[^-/\w.]", "_", name)


def last_step(workdir: str) -> int:
  """The last logged training step of a workdir (0 when it has none: an evaluation-only run)."""
  path = os.path.join(workdir, workdir_lib.METRICS)
  rows = workdir_lib.read_metrics(path) if os.path.exists(path) else []
  return int(rows[-1]["step"]) if rows else 0


def write_results(workdir: str, records: list[dict], log_cfg=None) -> None:
  """A run's evaluation records (per dataset, split, metric and (layer, dim)) as TensorBoard scalars
  `eval/DATASET/SPLIT/METRIC/LxD` at the run's last step, and into the W&B run's summary."""
  if not sharding.is_primary() or not records or not (log_cfg and
                                                      (log_cfg.tensorboard or log_cfg.wandb)):
    return
  step = last_step(workdir)
  values = {
      tag_of(f"eval/{r['dataset']}/{r['split']}/{r['metric']}/{r['layer']}x{r['dim']}" + (f"/funnel_{r['funnel']}" if r.get("funnel") else "")):
          r["value"] for r in records if r["value"] is not None and math.isfinite(r["value"])
  }
  if log_cfg.tensorboard:
    from tensorboardX import SummaryWriter
    with SummaryWriter(os.path.join(workdir, TB_DIR), filename_suffix=".eval") as tb:
      for tag, value in values.items():
        tb.add_scalar(tag, value, step)
  if log_cfg.wandb:
    run = wandb_run(workdir, log_cfg.wandb)
    run.summary.update(values)
    run.finish()
