"""Orbax checkpoints of a run's workdir, and loading a model from a workdir or an HF directory.

A workdir holds `checkpoints/<step>/` (items: `params`, `opt_state`, `meta`) and `model/`: the
HF/sentence-transformers description of the model (config, tokenizer, pooling) without weights.
`load_model(source)` takes either a workdir (its latest step) or anything `model_dirs.load_pretrained` takes.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from starbucks_jax import model_dirs
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.models import hf

log = logging.getLogger(__name__)


def model_config_dir(source: str) -> str:
  """The directory holding config.json for `source` (a workdir, HF dir, or Hub id); reads no weights."""
  if workdir_lib.is_workdir(os.path.expanduser(source)):
    return os.path.join(os.path.expanduser(source), workdir_lib.MODEL)
  return model_dirs.transformer_dir(model_dirs.resolve_model_dir(source))


def manager(workdir: str, *, max_to_keep: int | None = 3, save_interval_steps: int = 1,
            read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         save_interval_steps=save_interval_steps,
                                         create=not read_only, read_only=read_only,
                                         enable_async_checkpointing=not read_only)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, workdir_lib.CHECKPOINTS)),
                               options=options, item_names=("params", "opt_state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, *, params: Any, opt_state: Any = None,
         meta: dict[str, Any] | None = None, force: bool = False) -> bool:
  items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta or {})}
  if opt_state is not None:
    items["opt_state"] = ocp.args.StandardSave(opt_state)
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore_latest(mngr: ocp.CheckpointManager, *, params: Any,
                   opt_state: Any = None) -> tuple[int | None, dict[str, Any] | None]:
  """(step, restored) of the newest checkpoint that reads back, or (None, None) when there is none.
  Unreadable newer steps (a truncated or corrupt file) are logged with their error and moved to
  WORKDIR/checkpoints_unreadable/ (kept, out of the way of the step's next save). A run none of
  whose checkpoints reads is an error that moves nothing, never a silent start from scratch."""
  steps = sorted(mngr.all_steps(), reverse=True)
  failed = []
  for step in steps:
    try:
      restored = restore(mngr, step, params=params, opt_state=opt_state)
    except Exception as e:  # noqa: BLE001 (orbax, tensorstore and JSON raise their own errors)
      failed.append(step)
      log.warning("checkpoint step %d is unreadable: %s: %s", step,
                  type(e).__name__, " ".join(str(e).split())[:300])
      continue
    # one process moves them (shared storage)
    for bad in failed if jax.process_index() == 0 else ():
      aside = os.path.join(os.path.dirname(str(mngr.directory)), workdir_lib.UNREADABLE,
                           f"{bad}-{int(time.time())}")
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      os.rename(os.path.join(str(mngr.directory), str(bad)), aside)
      log.warning("moved unreadable step %d to %s; resuming from step %d", bad, aside, step)
    if failed:
      mngr.reload()
    return step, restored
  if steps:
    raise hf.ModelError(
        f"{mngr.directory}: no checkpoint reads back (steps {steps}; the log has each "
        "error); restore the files or start a new --workdir")
  return None, None


def restore(mngr: ocp.CheckpointManager, step: int, *, params: Any = None,
            opt_state: Any = None) -> dict[str, Any]:
  """Restore `step`; `params`/`opt_state` are targets (arrays or ShapeDtypeStructs with shardings),
  or None for params as host numpy arrays."""
  items = {"params": ocp.args.StandardRestore(params), "meta": ocp.args.JsonRestore()}
  if opt_state is not None:
    items["opt_state"] = ocp.args.StandardRestore(opt_state)
  out = mngr.restore(step, args=ocp.args.Composite(**items))
  return {k: out[k] for k in items}


def host_target(item_dir: str) -> Any:
  """A restore target for a saved tree on this process's first device, whatever mesh (devices,
  hosts) saved it: a TPU pod's checkpoint loads on a laptop."""
  metadata = ocp.StandardCheckpointer().metadata(item_dir).item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                dict(metadata))


def write_model_dir(workdir: str, pretrained: model_dirs.Pretrained) -> str:
  """The weightless model description of a run (config, tokenizer, sentence settings)."""
  return model_dirs.save_pretrained(os.path.join(workdir, workdir_lib.MODEL), pretrained.config,
                                    pretrained.params, pretrained.tokenizer,
                                    sentence=pretrained.sentence, weights=False)


def load_model(source: str, *, step: int | None = None,
               dtype: str = "float32") -> model_dirs.Pretrained:
  """A model from a project workdir (latest or given step) or from an HF / sentence-transformers dir."""
  if not workdir_lib.is_workdir(os.path.expanduser(source)):
    return model_dirs.load_pretrained(source, dtype=dtype)
  model_dir = os.path.join(source, workdir_lib.MODEL)
  mngr = manager(source, read_only=True)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{source}/{workdir_lib.CHECKPOINTS}: the run has no checkpoint yet")
  if step not in mngr.all_steps():
    raise FileNotFoundError(
        f"{source}/{workdir_lib.CHECKPOINTS}: no step {step} (have {mngr.all_steps()})")
  params = restore(mngr, step,
                   params=host_target(os.path.join(str(mngr.directory), str(step),
                                                   "params")))["params"]
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
  for name, x in hf.flatten(params).items():
    hf.check_finite_weight(f"{source}/{workdir_lib.CHECKPOINTS}/{step}", name, x)
  if "bert" not in params:  # a fine-tuning run checkpoints the encoder alone
    params = {"bert": params}
  # an SMAE run also holds its MAE decoder: not part of the exported model
  params = {k: v for k, v in params.items() if k in hf.PARAM_GROUPS}
  config = model_dirs.config_from_hf(model_dir, dtype=dtype)
  sentence = model_dirs.sentence_settings(model_dir)
  return model_dirs.Pretrained(config=config, params=params,
                               tokenizer=model_dirs.load_tokenizer(model_dir), sentence=sentence,
                               path=source)
