"""Where a run's wall time goes: start-up, compiles, the training loop, evaluation, and the padding
of its batches; logged as one line at the end and written to WORKDIR/timing.json.

One record per process (a resumed run writes its own). The loop (loop.fit) adds the compiles and
the steps; the objective's run adds its evaluation; start-up is what the process spent before its
first step other than compiling."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

from starbucks_jax import workdir as workdir_lib

log = logging.getLogger(__name__)


class RunTiming:
  def __init__(self):
    self.started = time.perf_counter()
    self.seconds: dict[str, float] = {}  # phase -> seconds
    self.values: dict[str, float] = {}  # counts and rates

  def add(self, phase: str, seconds: float) -> None:
    self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

  @contextlib.contextmanager
  def phase(self, name: str):
    t = time.perf_counter()
    try:
      yield
    finally:
      self.add(name, time.perf_counter() - t)

  def since_start(self) -> float:
    return time.perf_counter() - self.started

  def set(self, **values) -> None:
    self.values.update(values)

  def record(self) -> dict[str, float]:
    total = time.perf_counter() - self.started
    return {**{f"{k}_s": v for k, v in self.seconds.items()}, "total_s": total, **self.values}

  def finish(self, workdir: str) -> dict[str, float]:
    """Logs the itemised line and writes WORKDIR/timing.json."""
    rec = self.record()
    log.info("timing: %s", ", ".join(f"{k} {v:.3g}" for k, v in rec.items()))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, workdir_lib.TIMING), "w", encoding="utf8") as f:
      json.dump(rec, f, indent=1)
    return rec


_current = RunTiming()


def begin() -> RunTiming:
  """A new record for the run this process starts now."""
  global _current
  _current = RunTiming()
  return _current


def current() -> RunTiming:
  return _current


PROFILE_DIR = "profile"


class ProfileWindow:
  """A JAX profiler trace of training steps [start, end) (train.profile_steps) into WORKDIR/profile,
  for XProf / TensorBoard's profile plugin: `tensorboard --logdir WORKDIR/profile` (with
  tensorboard-plugin-profile) or `xprof --logdir WORKDIR/profile`. The first step of a window is
  usually a compile: start after it to see steady steps."""
  def __init__(self, workdir: str, steps=()):
    self.folder = os.path.join(workdir, PROFILE_DIR)
    self.start, self.end = (int(steps[0]), int(steps[1])) if steps else (-1, -1)
    self.active = False

  def before(self, step: int) -> None:
    """Called before running `step`: starts the trace at the window's first step."""
    if step == self.start:
      import jax
      jax.profiler.start_trace(self.folder)
      self.active = True
      log.info("profiling steps %d..%d into %s", self.start, self.end - 1, self.folder)

  def after(self, done: int, state) -> None:
    """Called after a step with `done` steps finished: stops at the window's end."""
    if self.active and done >= self.end:
      self.stop(state)

  def stop(self, state=None) -> None:
    if self.active:
      import jax
      jax.block_until_ready(state)  # the window's steps have run on the device
      jax.profiler.stop_trace()
      self.active = False
