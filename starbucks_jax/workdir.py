"""A run's folder: the name of each file in it, and what a rerun in it may change.

    config.json    the run's config (write_config), checked by a rerun (check_resume)
    run.json       provenance: commit, command, versions, devices; one entry per start (run_info)
    metrics.jsonl  the logged metrics (metrics.MetricsWriter)
    timing.json    start-up, compile, train, checkpoint and eval seconds (timing)
    checkpoints/   orbax checkpoints, one folder per step (checkpoint)
    model/         the model's HF / sentence-transformers description without weights (checkpoint)
    results/       evaluation records, one JSON per evaluation (evaluate.results)
    costs/         cost per query of each retrieval pair and funnel (evaluate.cost)
    index/         retrieval indexes of the corpus (evaluate.retrieval)
    lock           held by the run writing here: its host, pid and start (lock / unlock)
    data.json      the training data's identity: its files' sizes and hashes (data_identity)

jax is imported only by the functions that start a run: the report tools read workdirs without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from typing import IO, Any, Callable

import ml_collections

from starbucks_jax.config_lib import ConfigError, InputError

log = logging.getLogger(__name__)

CONFIG = "config.json"
RUN = "run.json"
METRICS = "metrics.jsonl"
TIMING = "timing.json"
CHECKPOINTS = "checkpoints"
UNREADABLE = "checkpoints_unreadable"  # steps that did not read back, kept for inspection
MODEL = "model"
RESULTS = "results"
COSTS = "costs"
CROSS_DEPTH = "cross_depth"  # evaluate/cross_depth.py
INDEX = "index"
LOCK = "lock"
DATA = "data.json"
# with results/*.json: a run's record, without its weights
RECORD_FILES = (CONFIG, METRICS, RUN, TIMING)


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl; a row a crash cut short (not JSON, or without a step) is left out."""
  rows = []
  with open(path, encoding="utf8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict) and "step" in row:
        rows.append(row)
  return rows


def is_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, CHECKPOINTS)) and os.path.isdir(os.path.join(path, MODEL))


# Keys a rerun in the same workdir may change: how the run is logged, saved, evaluated or laid out
# in memory; every other key changes what the checkpoints mean. Not train.max_steps or epochs: the
# learning-rate warmup and decay are laid over the run's total steps, so a new total moves the rate.
RESUMABLE_CHANGES = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.profile_steps", "log.", "train.microbatches", "train.grad_cache_chunks",
                     "train.forward_splits", "model.remat", "mesh.", "eval.", "resume")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out


def config_changes(saved: dict[str, Any],
                   config: ml_collections.ConfigDict) -> list[tuple[str, Any, Any]]:
  """(key, saved value, new value) for every key whose value differs, blocks flattened to dotted keys."""
  old, new = _flat(saved), _flat(json.loads(config.to_json_best_effort()))
  return [(k, old.get(k, "<absent>"), new.get(k, "<absent>"))
          for k in sorted(old.keys() | new.keys())
          if old.get(k, "<absent>") != new.get(k, "<absent>")]


def check_resume(workdir: str, config: ml_collections.ConfigDict,
                 defaults: ml_collections.ConfigDict | None = None) -> None:
  """A rerun in a workdir must keep the run's meaning: a ConfigError lists the changed keys outside
  RESUMABLE_CHANGES, unless resume='force'. `defaults` (the config file's own values, without the
  command line's overrides): a key the saved config lacks (code newer than the run) that keeps its
  default is not a change; the run resumes and the log names it."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    return
  try:
    with open(path, encoding="utf8") as f:
      saved = json.load(f)
  except ValueError as e:
    raise ConfigError(
        f"{path}: not valid JSON ({e}); move the workdir aside or repair the file") from None
  changes = config_changes(saved, config)
  if defaults is not None:
    default = _flat(json.loads(defaults.to_json_best_effort()))
    added = [c for c in changes if c[1] == "<absent>" and c[0] in default and default[c[0]] == c[2]]
    if added:
      log.info("%s predates keys that keep their defaults here: %s", workdir,
               "; ".join(f"{k} = {v!r}" for k, _, v in added))
    changes = [c for c in changes if c not in added]
  changed = [c for c in changes if not c[0].startswith(RESUMABLE_CHANGES)]
  listed = lambda cs: "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in cs)
  if changed and config.resume != "force":
    more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
    total = [k for k, _, _ in changed if k in ("train.max_steps", "train.epochs")]
    why = (f" ({' and '.join(total)} set the total steps the learning rate's warmup and decay are "
           "laid over: resumed, the rate would jump to the new schedule's at that step)"
           if total else "")
    raise ConfigError(
        f"{workdir} holds a run with another config: {listed(changed[:8])}{more}{why}. Use a new "
        "--workdir, or --config.resume=force to continue it anyway")
  if changes:  # recorded: the log here, the new config.json and run.json once the run starts
    log.info("continuing %s with changed keys: %s", workdir, listed(changes))
  check_data(workdir, config)


def data_identity(spec: str) -> dict[str, Any]:
  """What a training source is: a Hub or TFDS name stands for itself; a local file or folder
  (`beir:FOLDER@SPLIT`, `demo:`) is each file's size, mtime and a SHA-256 of its first and last
  MiB (all of it when smaller)."""
  from starbucks_jax.data import sources
  if not spec or spec.startswith(("hf:", "tfds:")):
    return {"spec": spec}
  if spec.startswith("beir:"):
    path = os.path.expanduser(spec[len("beir:"):].partition("@")[0])
  else:
    try:
      path = sources.resolve_spec(spec)[1]
    except ValueError:  # checked elsewhere, with the key's name
      return {"spec": spec}
  files = [path] if os.path.isfile(path) else sorted(
      os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
  return {
      "spec": spec, "files": {
          os.path.relpath(f, path) if f != path else os.path.basename(f): _fingerprint(f)
          for f in files
      }
  }


def _fingerprint(path: str, block: int = 1 << 20) -> dict[str, Any]:
  size = os.path.getsize(path)
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    digest.update(f.read(block))
    if size > 2 * block:
      f.seek(size - block)
    digest.update(f.read())
  return {"size": size, "mtime": os.path.getmtime(path), "sha256": digest.hexdigest()}


def check_data(workdir: str, config: ml_collections.ConfigDict) -> None:
  """A rerun trains on the data the run started with: a file whose size or content changed (under
  the same data.train) is a ConfigError unless resume='force'; a new mtime alone is logged."""
  path = os.path.join(workdir, DATA)
  spec = config.get("data", {}).get("train", "")
  if not os.path.exists(path) or not spec:
    return
  saved = json.load(open(path, encoding="utf8")).get("data.train", {})
  if saved.get("spec") != spec:
    return  # a changed data.train is a config change (check_resume)
  now = data_identity(spec)
  old_files, new_files = saved.get("files", {}), now.get("files", {})
  changed = [
      f for f in sorted(old_files.keys() | new_files.keys())
      if {k: v for k, v in old_files.get(f, {}).items()
          if k != "mtime"} != {k: v for k, v in new_files.get(f, {}).items() if k != "mtime"}
  ]
  if changed and config.get("resume") != "force":
    f = changed[0]
    was, now_ = old_files.get(f, {}), new_files.get(f, {})
    content = "the same" if was.get("sha256") == now_.get("sha256") else "differs"
    more = f" (and {len(changed) - 1} more files)" if len(changed) > 1 else ""
    raise ConfigError(
        f"data.train={spec!r}: {f} changed since {workdir} started (size "
        f"{was.get('size', 'absent')} -> {now_.get('size', 'absent')}, content {content}){more}; "
        "the checkpoints were trained on the old data. Use a new --workdir, or "
        "--config.resume=force to continue on the new data")
  if changed:
    log.warning("data.train changed since the run started (%s); continuing (resume=force)", changed)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """WORKDIR/config.json, and WORKDIR/run.json: the code's commit, the command, versions, devices
  (a resumed run appends its own entry)."""
  from starbucks_jax import sharding
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG)
  if not sharding.is_primary():
    return path
  write_atomically(path, config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  run_path = os.path.join(workdir, RUN)
  history = json.load(open(run_path)) if os.path.exists(run_path) else []
  history.append(run_info())
  write_atomically(run_path, json.dumps(history, indent=1))
  train = config.get("data", {}).get("train", "")
  write_atomically(os.path.join(workdir, DATA),
                   json.dumps({"data.train": data_identity(train)}, indent=1) + "\n")
  return path


def write_atomically(path: str, content: str | Callable[[IO[bytes]], object]) -> None:
  """`content` (a text, or a function writing a binary file) into `path` through a temporary file
  renamed over it: a crash or a full disk leaves the old file whole (or none), never a half-written
  one, and the error names `path`."""
  tmp = f"{path}.tmp"
  try:
    with naming_errors(path), open(tmp, "wb") as f:
      content(f) if callable(content) else f.write(content.encode("utf8"))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def errno_of(e: BaseException) -> int | None:
  """The OS error behind `e`: an OSError's, or the one safetensors ("os error 28") or tensorstore
  ("os_error_code='28'") put in their text."""
  if isinstance(e, OSError) and e.errno:
    return e.errno
  found = re.search(r"os[ _]error[ _](?:code=')?(\d+)", str(e))
  return int(found[1]) if found else None


@contextlib.contextmanager
def naming_errors(path: str, *, rename: bool = False):
  """A write inside that fails for want of space or rights (an OSError without a file name, or a
  library's error carrying an errno; with `rename`, any OSError) raises an OSError naming `path`."""
  try:
    yield
  except Exception as e:  # noqa: BLE001 (safetensors raises its own type)
    code = errno_of(e)
    if code is None or (isinstance(e, OSError) and e.filename and not rename):
      raise
    raise OSError(code, os.strerror(code), path) from e


def run_info() -> dict[str, Any]:
  import jax
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                            text=True, timeout=10).stdout.strip()
    dirty = bool(
        subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                       capture_output=True, text=True, timeout=10).stdout.strip())
  except (OSError, subprocess.SubprocessError):
    commit, dirty = "", False
  return {
      "commit": commit + ("+changes" if dirty else "") if commit else "unknown",
      "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
      "jax": jax.__version__, "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "processes": jax.process_count()
  }


class WorkdirInUse(InputError):
  """Another run is writing to the workdir."""


def _holder() -> dict[str, Any]:
  return {
      "host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")
  }


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


def lock(workdir: str) -> None:
  """Marks `workdir` as written by this process (WORKDIR/lock, created atomically). Another live
  holder is a WorkdirInUse error naming it; a holder on this host whose process is gone is stale and
  replaced; a holder on another host cannot be checked from here, so the message says how to clear
  it. This process holding it already is fine (a library caller's second run). Readers (export,
  embed, evaluation of a finished run from elsewhere) take no lock."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  me = _holder()
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      held = _read_lock(path)
      if held is None:  # being written this moment, or left half-written: look again
        time.sleep(0.1)
        held = _read_lock(path)
      if held is None or (held.get("host") == me["host"] and not _alive(int(held.get("pid", 0)))):
        log.warning("%s: a stale lock (%s) replaced", path, held)
        os.remove(path)
        continue
      if held.get("host") == me["host"] and held.get("pid") == me["pid"]:
        return
      where = "" if held.get("host") == me["host"] else (
          "; it runs on another host, so if it is gone (a preempted VM), delete that file")
      raise WorkdirInUse(
          f"{workdir} is in use by pid {held.get('pid')} on {held.get('host')} since "
          f"{held.get('since')} ({path}){where}")
    with os.fdopen(fd, "w", encoding="utf8") as f:
      json.dump(me, f)
    return


def _read_lock(path: str) -> dict[str, Any] | None:
  try:
    return json.load(open(path, encoding="utf8"))
  except (OSError, ValueError):
    return None


def unlock(workdir: str) -> None:
  """Removes WORKDIR/lock if this process holds it."""
  path = os.path.join(workdir, LOCK)
  held = _read_lock(path)
  if held and (held.get("host"), held.get("pid")) == (socket.gethostname(), os.getpid()):
    os.remove(path)
