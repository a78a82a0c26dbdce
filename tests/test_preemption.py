"""SIGTERM / SIGINT mid-run: the step in flight is saved, the run stops with one line, and the rerun
ends bit-identical to an uninterrupted run (starbucks_jax/preemption.py); one run per workdir."""

import json
import logging
import os
import re
import signal
import socket
import subprocess

import jax
import numpy as np
import pytest

from starbucks_jax import checkpoint, cli, finetune, loop, preemption
from starbucks_jax import workdir as workdir_lib


def _rows(work):
  """metrics.jsonl without its timings (examples_per_sec, data_wait_frac)."""
  rows = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
  return [{k: v for k, v in r.items() if k not in ("examples_per_sec", "data_wait_frac")}
          for r in rows]


def _signal_after(monkeypatch, at: int, signum: int, seen: dict):
  """Sends `signum` to this process as step `at` completes (as a VM's shutdown would, mid-loop)."""
  after_step = loop._after_step

  def hooked(t, done, *args, **kw):
    if done == at:
      os.kill(os.getpid(), signum)
      seen["handler_after_first"] = signal.getsignal(signum)
    after_step(t, done, *args, **kw)

  monkeypatch.setattr(loop, "_after_step", hooked)


def test_a_signal_saves_the_step_and_the_rerun_is_bit_identical(tiny_run, tmp_path, monkeypatch,
                                                                caplog):
  signum = signal.SIGTERM
  with tiny_run.unlocked():
    tiny_run.train.max_steps = 5
    tiny_run.train.checkpoint_every = 2
  straight = str(tmp_path / "straight")
  caplog.set_level(logging.INFO, logger="starbucks_jax.loop")
  finetune.run(tiny_run, straight)
  # no terminal here: the progress bar's line goes to the log every train.log_every steps
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  assert len(lines) == 5 and re.fullmatch(r"step 5/5 loss \d+\.\d{4} [\d.]+ ex/s ETA 0:00:00",
                                          lines[-1]), lines
  before = signal.getsignal(signum)
  seen = {}
  _signal_after(monkeypatch, 3, signum, seen)
  work = str(tmp_path / "stopped")
  with pytest.raises(preemption.Stopped) as stopped:
    finetune.run(tiny_run, work)
  assert str(stopped.value) == (f"stopped at step 3 by {signal.Signals(signum).name}; rerun the "
                                "same command to resume")
  assert stopped.value.exit_status == 128 + signum
  assert seen["handler_after_first"] == signal.SIG_DFL  # a second signal ends the process at once
  assert signal.getsignal(signum) is before  # the loop's handlers are gone with it
  # the scheduled save of step 2 (perhaps still being written) and the signal's step 3 both kept
  mngr = checkpoint.manager(work, read_only=True)
  assert mngr.all_steps() == [2, 3]
  assert [r["step"] for r in _rows(work)] == [1, 2, 3]
  assert not os.path.exists(os.path.join(work, workdir_lib.RESULTS))  # no results of a stopped run
  assert not os.path.exists(os.path.join(work, workdir_lib.LOCK))  # free for the rerun
  _write_lock(work, pid=os.getppid())  # while a run holds the workdir, readers (export, embed) read
  assert checkpoint.load_model(work).params["bert"]
  os.remove(os.path.join(work, workdir_lib.LOCK))

  monkeypatch.undo()
  finetune.run(tiny_run, work)  # the same command: resumes at step 3
  a, b = checkpoint.load_model(straight).params, checkpoint.load_model(work).params
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  assert _rows(work) == _rows(straight)
  assert json.load(open(os.path.join(work, "results", "final.json"))) == json.load(
      open(os.path.join(straight, "results", "final.json")))


def test_ctrl_c_on_a_scheduled_save_is_not_saved_twice(tiny_run, tmp_path, monkeypatch):
  with tiny_run.unlocked():
    tiny_run.train.max_steps = 4
    tiny_run.train.checkpoint_every = 2
  _signal_after(monkeypatch, 2, signal.SIGINT, {})
  work = str(tmp_path / "run")
  with pytest.raises(preemption.Stopped, match="stopped at step 2 by SIGINT"):
    finetune.run(tiny_run, work)
  assert checkpoint.manager(work, read_only=True).all_steps() == [2]


def test_progress_line():
  line = loop.progress_line(40, 200, {"loss": 1.23456, "examples_per_sec": 52.14}, 0.84)
  assert line == "step 40/200 loss 1.2346 52.1 ex/s ETA 0:02:14"


def test_the_command_line_prints_the_line_and_exits_128_plus_the_signal(capsys):
  with pytest.raises(SystemExit) as done:
    cli.run(lambda: (_ for _ in ()).throw(preemption.Stopped(7, signal.SIGTERM)))
  assert done.value.code == 143
  assert capsys.readouterr().err == ("stopped at step 7 by SIGTERM; rerun the same command to "
                                     "resume\n")


# ---------------------------------------------------------------------------------------------
# One run per workdir
# ---------------------------------------------------------------------------------------------
def _write_lock(work, **holder):
  os.makedirs(work, exist_ok=True)
  with open(os.path.join(work, workdir_lib.LOCK), "w") as f:
    json.dump({"host": socket.gethostname(), "since": "2026-01-01 00:00:00", **holder}, f)


def test_the_workdir_lock(tmp_path, caplog):
  work = str(tmp_path / "w")
  workdir_lib.lock(work)
  held = json.load(open(os.path.join(work, workdir_lib.LOCK)))
  assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
  workdir_lib.lock(work)  # this process again: a library caller's second run
  workdir_lib.unlock(work)
  assert not os.path.exists(os.path.join(work, workdir_lib.LOCK))
  # a live process on this host (the one that started us) holds it
  _write_lock(work, pid=os.getppid())
  with pytest.raises(
      workdir_lib.WorkdirInUse,
      match=rf"{work} is in use by pid {os.getppid()} on {socket.gethostname()} "
      r"since 2026-01-01 00:00:00 \(.*/lock\)$"):
    workdir_lib.lock(work)
  workdir_lib.unlock(work)  # not ours: left alone
  assert os.path.exists(os.path.join(work, workdir_lib.LOCK))
  # its process is gone: stale, replaced
  dead = subprocess.Popen(["true"])
  dead.wait()
  _write_lock(work, pid=dead.pid)
  workdir_lib.lock(work)
  assert json.load(open(os.path.join(work, workdir_lib.LOCK)))["pid"] == os.getpid()
  assert "stale lock" in caplog.text
  # another host: cannot be checked from here
  _write_lock(work, pid=1, host="tpu-vm-worker-7")
  with pytest.raises(workdir_lib.WorkdirInUse, match="another host, so if it is gone .* delete"):
    workdir_lib.lock(work)


def test_a_second_run_on_a_workdir_in_use_changes_nothing(tiny_run, tmp_path, capsys):
  from test_faults import cli_error, tree_digest
  work = str(tmp_path / "run")
  _write_lock(work, pid=os.getppid())
  before = tree_digest(work)
  from starbucks_jax import main
  line = cli_error(capsys, lambda _: main.run(tiny_run, work), None)
  assert line.startswith(f"error: {work} is in use by pid {os.getppid()}")
  assert tree_digest(work) == before
