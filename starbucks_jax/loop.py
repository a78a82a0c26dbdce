"""The loop every run shares: the state placed on the mesh, resumed from the workdir's latest
checkpoint, the step compiled once per batch shape and run on batches prepared ahead, metrics
logged and checkpoints saved on their schedules.

Batches are a pure function of the step and dropout keys are `fold_in(seed, step)`, so a run
restored from its latest checkpoint ends with the parameters of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from starbucks_jax import checkpoint, preemption, sharding, timing
from starbucks_jax import metrics as metrics_lib
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.data import prefetch as prefetch_lib
from starbucks_jax.step import TrainState

log = logging.getLogger(__name__)


def fit(config: ml_collections.ConfigDict, c, workdir: str, state: TrainState, train_step, batcher,
        total_steps: int, lr: optax.Schedule, *, tx: optax.GradientTransformation, param_specs,
        batch_axes: dict[str, int] | None = None) -> TrainState:
  """The loop every run shares, over the typed config `c` (`config`, as given, is written to the
  workdir and to W&B): place the state on the mesh (mesh.shape, mesh.rules; `param_specs`
  are the params' logical axes), resume from the workdir's latest checkpoint, jit the step with
  in/out shardings and the state donated, log metrics every train.log_every steps (with
  `data_wait_frac`, the share of the interval spent waiting for input), checkpoint every
  train.checkpoint_every steps and at the end. `batcher.batches(start, total)` yields (step, batch)
  as a pure function of the step, prepared and transferred ahead of the step (`device_batches`);
  each batch shape is compiled once, on its first step; `batch_axes` names each batch array's
  examples axis (default 0). Start-up, compile, train and checkpoint seconds go to timing.current()."""
  mesh = sharding.make_mesh(c.mesh.shape)
  rules = sharding.rules_from_config(c.mesh.rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), checkpoint.quiet_save_threads():
    state_sh = sharding.state_shardings(state, tx,
                                        sharding.param_shardings(param_specs, mesh, rules), mesh,
                                        c.mesh.shard_optimizer)
    return _fit(config, c, workdir, state, train_step, batcher, total_steps, lr, mesh, state_sh,
                batch_axes)


def jit_step(update, state_sh, batch_sh):
  """The step as every run jits it: sharded in and out, the state donated (also what
  starbucks_jax.compile compiles for a TPU topology)."""
  return jax.jit(update, in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None),
                 donate_argnums=(0,))


def warn_if_products_upcast(compiled, dtype: str) -> None:
  """Warns when model.dtype asks for low-precision compute but the compiled CPU step has no matrix
  product in that dtype (XLA:CPU converts bf16/f16 dots to float32): slower than float32, not faster."""
  # GPU/TPU dots are library calls in the HLO
  if dtype == "float32" or jax.default_backend() != "cpu":
    return
  hlo_type = {"bfloat16": "bf16", "float16": "f16"}[dtype]
  if not re.search(rf"= {hlo_type}\[[^\]]*\]\S* dot\(", compiled.as_text()):
    log.warning(
        "model.dtype=%s, but XLA computes every matrix product of the compiled step in float32 on "
        "this CPU (it converts to and from %s around them): slower than model.dtype='float32' here; "
        "%s compute is for GPU/TPU", dtype, dtype, dtype)


def check_skipped(train_cfg, metrics, done: int, mngr) -> None:
  """Stops a run, before it logs or saves, whose last train.max_consecutive_nonfinite steps (or every
  step so far) had non-finite gradients: optax would apply the next one anyway, so a poisoned state
  never reaches a checkpoint, and an untrained model never reaches a result."""
  if "consecutive_skipped" not in metrics:
    return
  skipped = int(metrics["consecutive_skipped"])
  if skipped >= min(train_cfg.max_consecutive_nonfinite, done):
    last = mngr.latest_step()
    raise FloatingPointError(
        f"the last {skipped} steps (to step {done}) had a non-finite loss or gradient "
        f"(train.max_consecutive_nonfinite={train_cfg.max_consecutive_nonfinite}); stopped. " +
        (f"The checkpoint at step {last} in {mngr.directory} is intact." if last is not None else
         "No checkpoint was written.") + " Check the data, train.lr and model.dtype.")


def _fit(config, c, workdir, state, train_step, batcher, total_steps, lr, mesh, state_sh,
         batch_axes):
  t = c.train
  mngr = checkpoint.manager(workdir, max_to_keep=t.keep_checkpoints,
                            save_interval_steps=t.checkpoint_every)
  start, state = _restore(mngr, sharding.shard_state(state, state_sh), state_sh)
  # the model, the data and the checkpoint have all loaded
  workdir_lib.write_config(workdir, config)
  log.info("mesh %s over %d devices", dict(mesh.shape), mesh.devices.size)
  timer = timing.current()
  base_rng = jax.random.key(c.seed)
  writer = metrics_lib.MetricsWriter(workdir, start, c.log, config)
  profile = timing.ProfileWindow(workdir, t.profile_steps)
  examples_per_step = c.data.batch_size
  # batch shapes -> the step compiled for them: each shape compiles once, ahead of its step
  executables = {}
  real = padded = 0
  lr_at = jax.jit(lr)  # compiled once: evaluated op by op, the schedule costs ~5 ms per log row
  watch = preemption.Watch().__enter__()  # SIGTERM / SIGINT: save the step, then stop
  try:
    interval = _Interval(time.time(), start)  # the first interval includes compilation
    progress = tqdm(total=total_steps, initial=start, desc="train", mininterval=5.0,
                    disable=None if sharding.is_primary() else True)
    batches = device_batches(batcher, start, total_steps, mesh, batch_axes, base_rng)
    before, loop_t0 = _timing_start(timer), time.perf_counter()
    while True:
      t_wait = time.time()
      item = next(batches, None)  # time the loop waits for input: ~0 when the data keeps up
      interval.waited += time.time() - t_wait
      if item is None:
        break
      step, batch, batch_sh, rng, tokens = item
      real, padded = real + tokens[0], padded + tokens[1]
      profile.before(step)
      step_fn = _executable(executables, train_step, state_sh, batch_sh, (state, batch, rng),
                            c.model.dtype)
      state, metrics = step_fn(state, batch, rng)
      done = step + 1
      profile.after(done, state)
      progress.update(1)
      _after_step(t, done, total_steps, state, metrics, interval, mngr=mngr, writer=writer,
                  progress=progress, lr_at=lr_at, examples_per_step=examples_per_step, watch=watch)
    # the data ended first (a stream's epoch): its last step stays
    if executables and done < total_steps:
      _save_last(done, state, metrics, interval, mngr=mngr, writer=writer, lr_at=lr_at)
    _wait_for_saves(state, mngr, timer)
    steps_run = done - start if executables else 0
    _record_timing(timer,
                   time.perf_counter() - loop_t0, before, steps=steps_run,
                   compiles=len(executables), examples=steps_run * examples_per_step,
                   tokens=(real, padded))
  finally:  # an interrupted run keeps every checkpoint it started to write, and its logged rows
    watch.__exit__()
    profile.stop(state)
    writer.close()
    progress.close()
    checkpoint.close(mngr)
  return state


def _executable(executables: dict, train_step, state_sh, batch_sh, args, dtype: str):
  """The step compiled for this batch's shapes: compiled (and timed) on the first batch of a shape."""
  shape = tuple(sorted((k, v.shape) for k, v in args[1].items()))
  if shape not in executables:
    executables[shape] = _compile(train_step, state_sh, batch_sh, args, timing.current(),
                                  f"step {len(executables) + 1} for batch {shape}")
    if len(executables) == 1:
      warn_if_products_upcast(executables[shape], dtype)
  return executables[shape]


@dataclasses.dataclass
class _Interval:
  """The logging interval under way: when it started, the step logged before it, seconds of input wait."""
  t0: float
  last_log: int
  waited: float = 0.0


def _after_step(t, done: int, total_steps: int, state: TrainState, metrics, interval: _Interval, *,
                mngr, writer, progress, lr_at, examples_per_step: int,
                watch: preemption.Watch) -> None:
  """After step `done`: a stop on a non-finite loss (train.skip_nonfinite=False); a metrics row every
  train.log_every steps and a checkpoint every train.checkpoint_every (both at the last step),
  neither of a state check_skipped refuses; on a signal (`watch`), the step saved and the run
  stopped (preemption.Stopped)."""
  if not t.skip_nonfinite and not np.isfinite(float(metrics["loss"])):
    raise FloatingPointError(
        f"non-finite loss at step {done - 1} (train.skip_nonfinite=False); the last "
        f"checkpoint in {mngr.directory} is intact")
  logging_now = done % t.log_every == 0 or done == total_steps
  saving_now = done % t.checkpoint_every == 0 or done == total_steps
  if logging_now or saving_now:
    check_skipped(t, metrics, done, mngr)
  if logging_now:
    metrics = dict(jax.device_get(metrics))  # waits for the device: the interval is real time
    elapsed = max(time.time() - interval.t0, 1e-9)
    metrics.update(lr=float(lr_at(done - 1)),
                   examples_per_sec=(done - interval.last_log) * examples_per_step / elapsed,
                   data_wait_frac=interval.waited / elapsed)
    writer.write(done, metrics)
    progress.set_postfix(loss=f"{float(metrics['loss']):.4f}")
    if progress.disable and sharding.is_primary():  # no terminal (nohup, ssh): a line in the log
      log.info("%s", progress_line(done, total_steps, metrics,
                                   elapsed / (done - interval.last_log)))
    interval.t0, interval.last_log, interval.waited = time.time(), done, 0.0
  if saving_now:
    _save(mngr, done, state, force=done == total_steps)
  signum = watch.signal(done)
  if signum is not None and done < total_steps:
    _save_last(done, state, metrics, interval, mngr=mngr, writer=writer, lr_at=lr_at)
    raise preemption.Stopped(done, signum)


def progress_line(done: int, total: int, metrics, seconds_per_step: float) -> str:
  """`step 40/200 loss 1.2345 52.1 ex/s ETA 0:02:13`: what the progress bar shows, for a log."""
  eta = int(round((total - done) * seconds_per_step))
  hms = f"{eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
  return (f"step {done}/{total} loss {float(metrics['loss']):.4f} "
          f"{metrics['examples_per_sec']:.1f} ex/s ETA {hms}")


def _save_last(done: int, state: TrainState, metrics, interval: _Interval, *, mngr, writer,
               lr_at) -> None:
  """The data ended before the planned steps, or a signal stops the run: step `done` is logged
  (if it was not) and saved (if it was not)."""
  if done != interval.last_log:
    writer.write(done, {**dict(jax.device_get(metrics)), "lr": float(lr_at(done - 1))})
  if mngr.latest_step() != done:  # not saved on schedule already
    _save(mngr, done, state, force=True)


def _wait_for_saves(state: TrainState, mngr, timer) -> None:
  """The last step computed and every checkpoint written, timed as checkpoint time."""
  jax.block_until_ready(state)
  with timer.phase("checkpoint"):
    checkpoint.wait(mngr)


def _save(mngr, done: int, state: TrainState, *, force: bool) -> None:
  """The state after step `done` as an orbax checkpoint (asynchronous), timed as checkpoint time."""
  with timing.current().phase("checkpoint"):
    checkpoint.save(mngr, done, params=state.params, opt_state=state.opt_state, meta={"step": done},
                    force=force)


def _restore(mngr, state: TrainState, state_sh) -> tuple[int, TrainState]:
  """(first step, state): the latest checkpoint's on the mesh, else step 0 and `state` as it is."""
  start, restored = checkpoint.restore_latest(mngr, params=state.params, opt_state=state.opt_state)
  if start is None:
    return 0, state
  log.info("resumed from %s at step %d", mngr.directory, start)
  return start, sharding.shard_state(
      TrainState(jnp.asarray(start, jnp.int32), restored["params"], restored["opt_state"]),
      state_sh)


def _compile(train_step, state_sh, batch_sh, args, timer, what: str):
  """The step compiled for one batch shape, timed as compile time (the steps before it run first),
  logged with its planned memory, which timing.json keeps (per device, beside device_peak_bytes)."""
  jax.block_until_ready(args[0])
  with timer.phase("compile"):
    compiled = jit_step(train_step, state_sh, batch_sh).lower(*args).compile()
  mem = compiled.memory_analysis()
  log.info(
      "compiled %s%s", what, "" if mem is None else
      f": temp {mem.temp_size_in_bytes / 2**20:.1f} MiB, arguments {mem.argument_size_in_bytes / 2**20:.1f} "
      f"MiB, output {mem.output_size_in_bytes / 2**20:.1f} MiB")
  if mem is not None:
    timer.set(
        compiled_step_bytes=max(compiled_bytes(mem), timer.values.get("compiled_step_bytes", 0)))
  return compiled


def _timing_start(timer) -> dict[str, float]:
  """Start-up seconds (the process's first fit; an evaluation before it, eval.before_training, is
  eval's), and the compile and checkpoint seconds of earlier fits, which this fit's train seconds
  leave out."""
  timer.seconds.setdefault("startup", timer.since_start() - timer.seconds.get("eval", 0.0))
  return {k: timer.seconds.get(k, 0.0) for k in ("compile", "checkpoint")}


def _record_timing(timer, loop_s: float, before: dict[str, float], *, steps: int, compiles: int,
                   examples: int, tokens: tuple[int, int]) -> None:
  """This fit's train seconds (its loop less its own compiles and checkpoints) and rates; `tokens`:
  (real, padded) tokens of its batches."""
  train_s = loop_s - sum(timer.seconds.get(k, 0.0) - v for k, v in before.items())
  real, padded = tokens
  timer.add("train", train_s)
  timer.set(steps=steps, compiles=compiles, examples_per_s=examples / loop_s,
            steady_examples_per_s=examples / max(train_s, 1e-9),
            padded_frac=1 - real / padded if padded else 0.0)
  peak = device_peak_bytes()
  if peak is not None:
    timer.set(device_peak_bytes=peak)


def compiled_bytes(mem) -> int:
  """Per-device memory of a compiled program (its memory_analysis()): arguments, outputs and
  temporaries, outputs that reuse an argument's buffer counted once."""
  return mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes


def device_peak_bytes() -> int | None:
  """The most memory any of this process's devices has held so far (the allocator's peak_bytes_in_use:
  GPUs and TPUs report it; None where the backend keeps no statistics, as on a CPU)."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def device_batches(batcher, start: int, total: int, mesh, batch_axes, base_rng, prefetch: int = 2):
  """(step, batch on the mesh, its shardings, dropout key, (real tokens, padded tokens)) for steps
  start .. total - 1 in order, prepared on one background thread `prefetch` steps ahead of the loop:
  the host batch, its shardings (built once per layout), the transfer and the step's key
  fold_in(seed, step)."""
  layouts = {}
  fold_in = jax.jit(jax.random.fold_in)  # one dispatch; op by op it costs ~0.3 ms a step

  def prepare():
    for step, batch in batcher.batches(start, total):
      layout = tuple((k, np.ndim(v)) for k, v in batch.items())
      if layout not in layouts:
        layouts[layout] = sharding.batch_shardings(batch, mesh, batch_axes)
      masks = [v for k, v in batch.items() if k == "mask" or k.endswith("_mask")]
      masks += [batch["segments"] >= 0] if "segments" in batch else []  # packed rows
      tokens = (sum(int(m.sum()) for m in masks), sum(m.size for m in masks))
      yield (step, sharding.put_batch(batch,
                                      layouts[layout]), layouts[layout], fold_in(base_rng,
                                                                                 step), tokens)

  return prefetch_lib.in_background(prepare(), prefetch)
