"""Orbax checkpoints of a run's workdir, and loading a model from a workdir or an HF directory.

A workdir holds `checkpoints/<step>/` (items: `params`, `opt_state`, `meta`) and `model/`: the
HF/sentence-transformers description of the model (config, tokenizer, pooling) without weights.
`load_model(source)` takes either a workdir (its latest step) or anything `model_dirs.load_pretrained` takes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import shutil
import sys
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


# what orbax logs on every read-only load of a checkpoint it wrote itself: nothing to act on
READ_ONLY_NOTICES = ("Given directory is read only", "Metadata file does not exist")


class _ReadOnlyNotices(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno == logging.WARNING and str(record.msg).startswith(READ_ONLY_NOTICES))


def manager(workdir: str, *, max_to_keep: int | None = 3, save_interval_steps: int = 1,
            read_only: bool = False) -> ocp.CheckpointManager:
  if read_only:  # options a reader has no use for: orbax warns when they are set
    max_to_keep, save_interval_steps = None, 0
    absl_log = logging.getLogger("absl")
    if not any(isinstance(f, _ReadOnlyNotices) for f in absl_log.filters):
      absl_log.addFilter(_ReadOnlyNotices())
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         save_interval_steps=save_interval_steps,
                                         create=not read_only, read_only=read_only,
                                         enable_async_checkpointing=not read_only)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, workdir_lib.CHECKPOINTS)),
                               options=options, item_names=("params", "opt_state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, *, params: Any, opt_state: Any = None,
         meta: dict[str, Any] | None = None, force: bool = False) -> bool:
  """Starts writing `step` (after the save in flight, if any, is written); a write that fails is a
  SaveFailed."""
  items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta or {})}
  if opt_state is not None:
    items["opt_state"] = ocp.args.StandardSave(opt_state)
  with _save_errors(mngr):
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def wait(mngr: ocp.CheckpointManager) -> None:
  """Every save in flight written; a write that failed is a SaveFailed."""
  with _save_errors(mngr):
    mngr.wait_until_finished()


def close(mngr: ocp.CheckpointManager) -> None:
  """wait(), then the manager closed. While another error propagates (a failed save, a signal), a
  second failure of the same writes is not raised over it. After a failed save, the partial step
  folders are removed once more: orbax's other threads may have written into them after the first
  removal."""
  propagating = sys.exc_info()[1]
  failed = isinstance(propagating, SaveFailed)
  try:
    wait(mngr)
  except SaveFailed:
    failed = True
    if propagating is None:
      raise
  finally:
    with contextlib.suppress(Exception):  # noqa: BLE001 (its saves have failed or finished)
      mngr.close()
    if failed:
      _remove_partial(str(mngr.directory))


class SaveFailed(OSError):
  """A checkpoint could not be written (a full disk, a file-size limit, a read-only folder)."""


@contextlib.contextmanager
def _save_errors(mngr: ocp.CheckpointManager):
  """Orbax's error for a write that failed in its threads, as one SaveFailed."""
  try:
    yield
  except SaveFailed:
    raise
  except Exception as e:  # noqa: BLE001 (orbax and tensorstore raise ValueError, OSError, ...)
    raise save_failed(mngr, e) from e


def save_failed(mngr: ocp.CheckpointManager, e: BaseException) -> SaveFailed:
  """The SaveFailed for orbax's error `e`: the folder, the step, the reason and what is intact; the
  failed step's partial folder is removed (it holds the space the disk lacked)."""
  folder = str(mngr.directory)
  text = " ".join(str(e).split())
  errno = workdir_lib.errno_of(e)
  why = os.strerror(errno) if errno else (text[:300] or type(e).__name__)
  step = re.search(re.escape(folder) + r"/(\d+)", text)
  _remove_partial(folder)
  with contextlib.suppress(Exception):  # noqa: BLE001 (the folder may be unreadable)
    mngr.reload()
  done = [s for s in _finished_steps(folder) if not step or s != int(step[1])]
  intact = (f"the checkpoint of step {max(done)} is intact: free space (or lift the limit) and "
            "rerun the same command to resume"
            if done else "no checkpoint was written before it: a rerun starts from step 0")
  what = f"writing the checkpoint of step {step[1]}" if step else "writing a checkpoint"
  return SaveFailed(errno, f"{what} failed ({why}); {intact}", folder)


def _remove_partial(folder: str) -> None:
  """Removes the step folders orbax had not finished writing (they hold the space a disk lacked)."""
  partial = [
      os.path.join(folder, name) for name in os.listdir(folder) if ".orbax-checkpoint-tmp" in name
  ] if os.path.isdir(folder) else []
  for path in partial if jax.process_index() == 0 else ():  # one process (shared storage)
    shutil.rmtree(path, ignore_errors=True)


def _finished_steps(folder: str) -> list[int]:
  return [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []


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


@contextlib.contextmanager
def quiet_save_threads():
  """While a run trains: orbax's threads log each failed write with its traceback, tensorstore's
  callbacks into orbax's closed event loop print one more per write in flight, and asyncio logs
  each of its futures (~600 lines for one full disk). They are held back: a SaveFailed says it in
  one line (and the rest of that noise is dropped); without one they are logged after all.
  STARBUCKS_DEBUG=1 shows everything as it comes."""
  if os.environ.get("STARBUCKS_DEBUG"):
    yield
    return
  held, hook = [], sys.unraisablehook
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]

  def hold_log(record):
    if record.levelno >= logging.ERROR and _from_orbax(record):
      held.append(("log", record))
      return False
    return True

  def hold_unraisable(u):
    held.append(("unraisable", u)) if _closed_loop(u) else hook(u)

  for logger in loggers:
    logger.addFilter(hold_log)
  sys.unraisablehook = hold_unraisable
  try:
    yield
  except SaveFailed:  # said once: what orbax's pending writes print later is dropped too
    gc.collect()
    held.clear()
    for logger in loggers:
      logger.addFilter(lambda record: not (record.levelno >= logging.ERROR and _from_orbax(record)))
    hook = lambda u, hook=hook: None if _closed_loop(u) else hook(u)
    raise
  finally:
    sys.unraisablehook = hook
    for logger in loggers:
      logger.removeFilter(hold_log)
    for kind, item in held:
      logging.getLogger(item.name).handle(item) if kind == "log" else hook(item)


def _from_orbax(record: logging.LogRecord) -> bool:
  """A record of orbax's, or of asyncio about a future of orbax's."""
  text = record.pathname + str(record.msg) + repr(record.args) + repr(record.exc_info)
  return f"{os.sep}orbax{os.sep}" in text or ".orbax-checkpoint-tmp" in text


def _closed_loop(u) -> bool:
  """An unraisable error of a failed orbax write: a callback into its closed event loop, or one of
  its coroutines finalised."""
  code = getattr(u.object, "cr_code", None)
  return (u.exc_type is RuntimeError and str(u.exc_value) == "Event loop is closed") or (
      code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename)
