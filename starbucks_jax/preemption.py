"""A run stopped from outside: SIGTERM (a preempted or spot TPU VM's notice) or SIGINT (Ctrl-C).

The step in flight finishes, its state is checkpointed (after any save still being written), the
metrics are flushed and the run ends with one line, `stopped at step N by SIGTERM; rerun the same
command to resume`, and exit status 128 + the signal's number. The first signal puts the default
action back, so a second one ends the process at once (the checkpoints already written stay).

One process: Python handlers set the flag the loop reads after each step. Several processes
(jax.distributed): a process cannot stop alone (the others would wait for it in the next
collective), so no handler is installed: SIGTERM is left to JAX's preemption sync manager, which
hears it on any host and names one step at which every process stops
(`reached_preemption_sync_point`): all save that step. Ctrl-C there ends the process as usual.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
  """The run stopped on a signal after checkpointing step `step`."""
  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    super().__init__(f"stopped at step {step} by {signal.Signals(signum).name}; rerun the same "
                     "command to resume")

  @property
  def exit_status(self) -> int:
    return 128 + self.signum


class Watch:
  """Within `with Watch() as watch:` (the training loop), `watch.signal(step)` is the signal to stop
  on after `step` (None: go on). Handlers are installed only from the main thread and put back on
  exit."""
  def __init__(self):
    self.received: int | None = None
    self._previous = {}
    self._multiprocess = jax.process_count() > 1

  def __enter__(self) -> "Watch":
    if threading.current_thread() is threading.main_thread() and not self._multiprocess:
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    self.received = signum
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once
    log.warning(
        "%s: finishing the step in flight, then saving a checkpoint (send it again to stop now)",
        signal.Signals(signum).name)

  def signal(self, step: int) -> int | None:
    if not self._multiprocess:
      return self.received
    from jax.experimental import multihost_utils
    return signal.SIGTERM if multihost_utils.reached_preemption_sync_point(step) else None

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
