"""What every objective shares: the model and train blocks of a config, the optimizer, the step
factory with gradient accumulation, and the fit loop (sharding, resume, metrics, checkpoints).

An objective (finetune.py: SRL and its baselines; pretrain.py: SMAE) supplies a
`loss_fn(params, batch, rng) -> (loss, aux)` and a batcher; `make_step` turns the loss into one pure
`update(state, batch, rng) -> (state, metrics)` and `train_model` runs it. The loop is resumable:
batches are a pure function of the step and dropout keys are `fold_in(seed, step)`, so a run
restored from its latest checkpoint ends with the parameters of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from starbucks_jax import checkpoint, schedule, sharding, timing
from starbucks_jax import metrics as metrics_lib
from starbucks_jax.config_lib import ConfigError, check_choice, check_range, config_errors
from starbucks_jax.data import batching
from starbucks_jax.models import hf
from starbucks_jax.models.bert import RUN_FIELDS, BertConfig

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


class TrainStep(NamedTuple):
  """A step factory's product: `update` is what the loop jits; the loss and its gradient alone are
  there for tests and benchmarks."""
  update: Callable  # (state, batch, rng) -> (state, metrics)
  loss_fn: Callable  # (params, batch, rng) -> (loss, aux)
  value_and_grad: Callable  # (params, batch, rng) -> ((loss, aux), grads), accumulation included


# ---------------------------------------------------------------------------------------------
# The model and train blocks
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The checked `model` block and schedule: what a run trains, read from config.json alone."""
  dir: str  # the directory holding the backbone's config.json
  config: BertConfig  # the backbone as the run computes it (model.dtype, param_dtype, remat)
  pairs: tuple[schedule.Pair, ...]  # schedule.pairs, checked against the backbone

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, backbone: BertConfig | None = None) -> "ModelSpec":
    """`backbone` replaces reading model.init_from's config.json (dir is then '')."""
    m = config.model
    check_choice("model.param_dtype", m.param_dtype, ("float32", "bfloat16"))  # AdamW state in float16 underflows
    check_range("model.max_length", m.max_length, 0)
    model_dir = ""
    if backbone is None:
      try:
        model_dir = checkpoint.model_config_dir(m.init_from)
        backbone = hf.config_from_hf(model_dir)
      except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"model.init_from={m.init_from!r}: {e}") from None
    for key in RUN_FIELDS:
      with config_errors(f"model.{key}: "):
        backbone = backbone.replace(**{key: m[key]})
    if m.max_length > backbone.max_position_embeddings:
      raise ConfigError(f"model.max_length={m.max_length} exceeds the backbone's "
                        f"max_position_embeddings={backbone.max_position_embeddings}")
    with config_errors():
      pairs = schedule.validate(config.schedule.pairs, backbone.num_hidden_layers, backbone.hidden_size,
                                key="schedule.pairs")
    return cls(dir=model_dir, config=backbone, pairs=pairs)


def check_train(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """The `train` block's optimizer and loop keys, and the batch's split into microbatches over the
  mesh's data-parallel devices."""
  t = config.train
  check_choice("resume", config.get("resume", "check"), ("check", "force"))
  check_range("train.epochs", t.epochs, 1)
  check_range("train.max_steps", t.max_steps, 0)
  check_range("train.lr", t.lr, 0, low_open=True)
  check_range("train.warmup_ratio", t.warmup_ratio, 0, 1)
  check_choice("train.decay", t.decay, ("linear", "cosine"))
  check_range("train.weight_decay", t.weight_decay, 0)
  check_range("train.clip_grad_norm", t.clip_grad_norm, 0)
  check_range("train.log_every", t.log_every, 1)
  check_range("train.checkpoint_every", t.checkpoint_every, 1)
  check_range("train.keep_checkpoints", t.keep_checkpoints, 1)
  check_range("train.microbatches", t.microbatches, 1)
  window = tuple(t.get("profile_steps", ()))
  if window and not (len(window) == 2 and all(isinstance(s, int) for s in window) and 0 <= window[0] < window[1]):
    raise ConfigError(f"train.profile_steps={window}: expected (START, END) steps with 0 <= START < END, or ()")
  metrics_lib.check_config(config)
  k, batch = t.microbatches, config.data.batch_size
  if batch % k:
    raise ConfigError(f"train.microbatches={k} does not divide data.batch_size={batch}")
  data = sharding.data_parallel_size(mesh)
  if (batch // k) % data:
    raise ConfigError(f"data.batch_size={batch}" + (f" / train.microbatches={k}" if k > 1 else "")
                      + f" does not split over the mesh's {data} data-parallel devices "
                      f"(mesh.shape={tuple(config.mesh.shape)})")


def check_attention_platform(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """model.attention='cudnn' is a kernel of NVIDIA GPUs: elsewhere the first step would fail to lower."""
  platform = mesh.devices.flat[0].platform
  if config.model.attention == "cudnn" and platform != "gpu":
    raise ConfigError(f"model.attention='cudnn' is cuDNN's kernel for NVIDIA GPUs; this run's devices are "
                      f"{platform}: use 'dot_product' (XLA's fused core) or 'standard'")


# Keys a rerun in the same workdir may change: how the run is logged, saved, evaluated, laid out in
# memory or extended; every other key changes what the checkpoints mean.
RESUMABLE_CHANGES = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.max_steps",
                     "train.profile_steps", "log.",
                     "train.microbatches", "train.grad_cache_chunks", "train.forward_splits", "model.remat",
                     "mesh.", "eval.", "resume")


def start(config: ml_collections.ConfigDict, workdir: str, describe: Callable[[ml_collections.ConfigDict], Any],
          defaults: ml_collections.ConfigDict | None = None):
  """A run's first steps: jax.distributed (when several processes), `describe(config)` (the
  objective's checks, before any compute; its result is the run's description), and, in a workdir
  that has a run, the check that this config continues it (`defaults`: check_resume). Writes nothing
  (fit writes the config once the model, the data and any checkpoint have loaded)."""
  sharding.start_processes(config.mesh)
  run = describe(config)
  check_resume(workdir, config, defaults)
  return run


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out


def config_changes(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[tuple[str, Any, Any]]:
  """(key, saved value, new value) for every key whose value differs, blocks flattened to dotted keys."""
  old, new = _flat(saved), _flat(json.loads(config.to_json_best_effort()))
  return [(k, old.get(k, "<absent>"), new.get(k, "<absent>")) for k in sorted(old.keys() | new.keys())
          if old.get(k, "<absent>") != new.get(k, "<absent>")]


def check_resume(workdir: str, config: ml_collections.ConfigDict,
                 defaults: ml_collections.ConfigDict | None = None) -> None:
  """A rerun in a workdir must keep the run's meaning: a ConfigError lists the changed keys outside
  RESUMABLE_CHANGES, unless resume='force'. `defaults` (the config file's own values, without the
  command line's overrides): a key the saved config lacks (code newer than the run) that keeps its
  default is not a change; the run resumes and the log names it."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path, encoding="utf8") as f:
      saved = json.load(f)
  except ValueError as e:
    raise ConfigError(f"{path}: not valid JSON ({e}); move the workdir aside or repair the file") from None
  changes = config_changes(saved, config)
  if defaults is not None:
    default = _flat(json.loads(defaults.to_json_best_effort()))
    added = [c for c in changes if c[1] == "<absent>" and c[0] in default and default[c[0]] == c[2]]
    if added:
      log.info("%s predates keys that keep their defaults here: %s", workdir,
               "; ".join(f"{k} = {v!r}" for k, _, v in added))
    changes = [c for c in changes if c not in added]
  changed = [c for c in changes if not c[0].startswith(RESUMABLE_CHANGES)]
  listed = lambda cs: "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in cs)  # noqa: E731
  if changed and config.get("resume", "check") != "force":
    more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
    raise ConfigError(f"{workdir} holds a run with another config: {listed(changed[:8])}{more}. Use a new "
                      "--workdir, or --config.resume=force to continue it anyway")
  if changes:  # recorded: the log here, the new config.json and run.json once the run starts
    log.info("continuing %s with changed keys: %s", workdir, listed(changes))


def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """WORKDIR/config.json, and WORKDIR/run.json: the code's commit, the command, versions, devices
  (a resumed run appends its own entry)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  if not sharding.is_primary():
    return path
  with open(path, "w", encoding="utf8") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  run_path = os.path.join(workdir, "run.json")
  history = json.load(open(run_path)) if os.path.exists(run_path) else []
  history.append(run_info())
  with open(run_path, "w", encoding="utf8") as f:
    json.dump(history, f, indent=1)
  return path


def run_info() -> dict[str, Any]:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                            timeout=10).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=10).stdout.strip())
  except (OSError, subprocess.SubprocessError):
    commit, dirty = "", False
  return {"commit": commit + ("+changes" if dirty else "") if commit else "unknown",
          "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
          "jax": jax.__version__, "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
          "processes": jax.process_count()}


# ---------------------------------------------------------------------------------------------
# Model set-up
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Setup:
  pretrained: hf.Pretrained  # the starting checkpoint, with this run's sentence settings
  config: BertConfig  # as the run computes it (ModelSpec.config)
  max_length: int  # tokens per text


def setup_model(config: ml_collections.ConfigDict, spec: ModelSpec, *, default_length: int | None = None,
                pooling: str | None = None) -> Setup:
  """Loads model.init_from with this run's sentence settings. Max length: model.max_length, else
  `default_length`, else the checkpoint's max_seq_length, capped at max_position_embeddings.
  `pooling` replaces the checkpoint's (None keeps it)."""
  pre = checkpoint.load_model(config.model.init_from)
  limit = spec.config.max_position_embeddings
  max_length = min(config.model.max_length or default_length or pre.sentence.max_seq_length, limit)
  sentence = dataclasses.replace(pre.sentence, max_seq_length=max_length, layer=None, dim=None,
                                 **({"pooling": pooling} if pooling else {}))
  return Setup(pretrained=dataclasses.replace(pre, sentence=sentence), config=spec.config, max_length=max_length)


def total_steps(train_cfg: ml_collections.ConfigDict, batcher) -> int:
  """train.max_steps, else train.epochs passes over the batcher's data."""
  return train_cfg.max_steps or batcher.steps_in(train_cfg.epochs)


def train_model(config: ml_collections.ConfigDict, workdir: str, setup: Setup, params,
                step_for: Callable[[optax.GradientTransformation], TrainStep], batcher, steps: int, *,
                param_specs, batch_axes: dict[str, int] | None = None):
  """Writes the run's weightless model description (WORKDIR/model), builds the optimizer for
  `steps`, fits `step_for(optimizer)` on the batcher's batches from `params` (cast to the storage
  dtype) and returns the trained parameters as float32 numpy on every process."""
  if sharding.is_primary():
    checkpoint.write_model_dir(workdir, setup.pretrained)
  lr = learning_rate_schedule(config.train, steps)
  tx = make_optimizer(config.train, steps, lr)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, setup.config.storage_dtype), params)
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  state = fit(config, workdir, state, step_for(tx).update, batcher, steps, lr, tx=tx,
              param_specs=param_specs, batch_axes=batch_axes)
  return jax.tree_util.tree_map(lambda x: x.astype(np.float32), sharding.to_host(state.params))


# ---------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------
def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup over warmup_ratio of the steps, then linear or cosine decay to 0 (HF's schedules)."""
  warmup = int(math.ceil(cfg.warmup_ratio * total_steps))
  decay_steps = max(total_steps - warmup, 1)
  if cfg.decay == "linear":
    decay = optax.linear_schedule(cfg.lr, 0.0, decay_steps)
  else:
    decay = optax.cosine_decay_schedule(cfg.lr, decay_steps)
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def decay_mask(params) -> Any:
  """Weight decay on matrices only: no decay for biases and LayerNorm (as HF's Trainer)."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {k: not (k[-1] == "bias" or "LayerNorm" in k) for k in flat})


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int,
                   lr: optax.Schedule | None = None) -> optax.GradientTransformation:
  lr = learning_rate_schedule(cfg, total_steps) if lr is None else lr
  chain = []
  if cfg.clip_grad_norm > 0:
    chain.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
  chain.append(optax.adamw(lr, b1=cfg.adam_b1, b2=cfg.adam_b2,
                           eps=cfg.adam_eps, weight_decay=cfg.weight_decay, mask=decay_mask))
  tx = optax.chain(*chain)
  if cfg.skip_nonfinite:  # a step with a non-finite gradient leaves params and moments unchanged
    tx = optax.apply_if_finite(tx, max_consecutive_errors=cfg.max_consecutive_nonfinite)
  return tx


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------
def make_step(loss_fn, tx: optax.GradientTransformation, value_and_grad=None, *, microbatches: int = 1,
              batch_axes: dict[str, int] | None = None, prepare=None, param_specs=None) -> TrainStep:
  """The TrainStep of `loss_fn(params, batch, rng) -> (loss, aux)`: one gradient, one optimizer
  update; metrics are the loss, its aux terms and the grad norm. `value_and_grad(params, batch, rng)
  -> ((loss, aux), grads)` replaces jax.value_and_grad(loss_fn).

  microbatches=k > 1: gradient accumulation inside the jitted step. The batch is split into k
  microbatches (`split_microbatches`), a scan takes each one's loss and gradient (dropout keys folded
  with the microbatch index), and the update uses their mean: the big batch's gradient exactly when
  the loss is a mean over examples. `prepare(batch, k) -> batch` runs on the whole batch first (SMAE
  adds its masked-token counts there, so token-mean losses are exact too); 0-d arrays it adds reach
  every microbatch whole.

  `param_specs` (the parameters' logical axes) pins the gradients to the parameters' own layout
  under a mesh: with the optimizer's moments split over the data-parallel devices
  (mesh.shard_optimizer) the compiler would otherwise partition the backward matmuls to fit the
  moments' layout (nli on v5e-8: 30% more FLOPs); here the gradient is reduced as usual and each
  device updates its slice."""
  value_and_grad = value_and_grad or jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches > 1:
    value_and_grad = _accumulate(value_and_grad, microbatches, batch_axes or {}, prepare)

  def update(state: TrainState, batch, rng):
    (loss, aux), grads = value_and_grad(state.params, batch, rng)
    grads = nn.with_logical_constraint(grads, param_specs)  # a no-op without a mesh's rules in scope
    with jax.named_scope("optimizer"):  # names the update's ops in the compiled program (hlo_costs.category)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      grad_norm = optax.global_norm(grads)
    metrics = {"loss": loss, "grad_norm": grad_norm, **aux}
    if hasattr(opt_state, "total_notfinite"):
      metrics["skipped_steps"] = opt_state.total_notfinite
      metrics["consecutive_skipped"] = opt_state.notfinite_count
    return TrainState(state.step + 1, params, opt_state), metrics

  return TrainStep(update=update, loss_fn=loss_fn, value_and_grad=value_and_grad)


def split_microbatches(batch, k: int, batch_axes: dict[str, int] | None = None):
  """{name: [.., N, ..]} -> {name: [k, .., N/k, ..]}, microbatch j = examples j, j+k, j+2k, ...

  Each array's examples axis (`batch_axes`, default 0) is cut in units of N / (the smallest N in the
  batch): a query and its G passages (units of G rows) stay together, so microbatch j holds queries
  j, j+k, .. with their groups in the same order (query i's positive at row i*G). Strided, not
  contiguous, so every microbatch keeps the batch's data-parallel sharding. 0-d arrays are broadcast."""
  batch_axes = batch_axes or {}
  sizes = {key: v.shape[batch_axes.get(key, 0)] for key, v in batch.items() if v.ndim}
  examples = min(sizes.values())
  if examples % k:
    raise ValueError(f"train.microbatches={k} does not divide the batch's {examples} examples")
  out = {}
  for key, v in batch.items():
    if not v.ndim:
      out[key] = jnp.broadcast_to(v, (k,))
      continue
    axis, n = batch_axes.get(key, 0), sizes[key]
    unit = n // examples
    v = v.reshape(*v.shape[:axis], examples // k, k, unit, *v.shape[axis + 1:])
    v = jnp.moveaxis(v, axis + 1, 0)  # [k, .., examples/k, unit, ..]
    out[key] = v.reshape(k, *v.shape[1:axis + 1], (examples // k) * unit, *v.shape[axis + 3:])
  return out


def _accumulate(value_and_grad, k: int, batch_axes: dict[str, int], prepare):
  def accumulated(params, batch, rng):
    if prepare is not None:
      batch = prepare(batch, k)
    micro = split_microbatches(batch, k, batch_axes)

    def one(carry, xs):
      i, mb = xs
      (loss, aux), grads = value_and_grad(params, mb, jax.random.fold_in(rng, i))
      return jax.tree_util.tree_map(jnp.add, carry, (loss, aux, grads)), None

    first = jax.tree_util.tree_map(lambda v: v[0], micro)
    (loss, aux), grads = jax.eval_shape(value_and_grad, params, first, rng)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), (loss, aux, grads))
    total, _ = jax.lax.scan(one, zeros, (jnp.arange(k), micro))
    loss, aux, grads = jax.tree_util.tree_map(lambda x: x / k, total)
    return (loss, aux), grads

  return accumulated


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def fit(config: ml_collections.ConfigDict, workdir: str, state: TrainState, train_step, batcher,
        total_steps: int, lr: optax.Schedule, *, tx: optax.GradientTransformation, param_specs,
        batch_axes: dict[str, int] | None = None) -> TrainState:
  """The loop every run shares: place the state on the mesh (mesh.shape, mesh.rules; `param_specs`
  are the params' logical axes), resume from the workdir's latest checkpoint, jit the step with
  in/out shardings and the state donated, log metrics every train.log_every steps (with
  `data_wait_frac`, the share of the interval spent waiting for input), checkpoint every
  train.checkpoint_every steps and at the end. `batcher.batches(start, total)` yields (step, batch)
  as a pure function of the step, prepared and transferred ahead of the step (`device_batches`);
  each batch shape is compiled once, on its first step; `batch_axes` names each batch array's
  examples axis (default 0). Start-up, compile, train and checkpoint seconds go to timing.current()."""
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  rules = sharding.rules_from_config(config.mesh.rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state_sh = sharding.state_shardings(state, tx, sharding.param_shardings(param_specs, mesh, rules), mesh,
                                        config.mesh.shard_optimizer)
    return _fit(config, workdir, state, train_step, batcher, total_steps, lr, mesh, state_sh, batch_axes)


def jit_step(update, state_sh, batch_sh):
  """The step as every run jits it: sharded in and out, the state donated (also what
  starbucks_jax.compile compiles for a TPU topology)."""
  return jax.jit(update, in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None),
                 donate_argnums=(0,))


def warn_if_products_upcast(compiled, dtype: str) -> None:
  """Warns when model.dtype asks for low-precision compute but the compiled CPU step has no matrix
  product in that dtype (XLA:CPU converts bf16/f16 dots to float32): slower than float32, not faster."""
  if dtype == "float32" or jax.default_backend() != "cpu":  # GPU/TPU dots are library calls in the HLO
    return
  hlo_type = {"bfloat16": "bf16", "float16": "f16"}[dtype]
  if not re.search(rf"= {hlo_type}\[[^\]]*\]\S* dot\(", compiled.as_text()):
    log.warning("model.dtype=%s, but XLA computes every matrix product of the compiled step in float32 on "
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
        f"(train.max_consecutive_nonfinite={train_cfg.max_consecutive_nonfinite}); stopped. "
        + (f"The checkpoint at step {last} in {mngr.directory} is intact." if last is not None else
           "No checkpoint was written.") + " Check the data, train.lr and model.dtype.")


def _fit(config, workdir, state, train_step, batcher, total_steps, lr, mesh, state_sh, batch_axes):
  mngr = checkpoint.manager(workdir, max_to_keep=config.train.keep_checkpoints,
                            save_interval_steps=config.train.checkpoint_every)
  state = sharding.shard_state(state, state_sh)
  start, restored = checkpoint.restore_latest(mngr, params=state.params, opt_state=state.opt_state)
  if start is not None:
    state = sharding.shard_state(TrainState(jnp.asarray(start, jnp.int32), restored["params"],
                                            restored["opt_state"]), state_sh)
    log.info("resumed from %s at step %d", mngr.directory, start)
  else:
    start = 0
  write_config(workdir, config)  # the model, the data and the checkpoint have all loaded
  log.info("mesh %s over %d devices", dict(mesh.shape), mesh.devices.size)
  timer = timing.current()
  base_rng = jax.random.key(config.seed)
  writer = metrics_lib.MetricsWriter(workdir, start, config.get("log"), config)
  profile = timing.ProfileWindow(workdir, config.train.get("profile_steps", ()))
  examples_per_step = config.data.batch_size
  executables = {}  # batch shapes -> the step compiled for them: each shape compiles once, ahead of its step
  real = padded = 0
  lr_at = jax.jit(lr)  # compiled once: evaluated op by op, the schedule costs ~5 ms per log row
  try:
    t0, last_log = time.time(), start  # the first interval includes compilation
    progress = tqdm(total=total_steps, initial=start, desc="train", mininterval=5.0,
                    disable=None if sharding.is_primary() else True)
    batches, waited = device_batches(batcher, start, total_steps, mesh, batch_axes, base_rng), 0.0
    timer.seconds.setdefault("startup", timer.since_start())  # the process's first fit
    before = {k: timer.seconds.get(k, 0.0) for k in ("compile", "checkpoint")}  # earlier fits' seconds
    loop_t0 = time.perf_counter()
    while True:
      t_wait = time.time()
      item = next(batches, None)  # time the loop waits for input: ~0 when the data keeps up
      waited += time.time() - t_wait
      if item is None:
        break
      step, batch, batch_sh, rng, tokens = item
      real, padded = real + tokens[0], padded + tokens[1]
      profile.before(step)
      shape = tuple(sorted((k, v.shape) for k, v in batch.items()))
      step_fn = executables.get(shape)
      if step_fn is None:
        jax.block_until_ready(state)  # the steps before run first: the compile's time is its own
        with timer.phase("compile"):
          step_fn = executables[shape] = jit_step(train_step, state_sh, batch_sh).lower(state, batch, rng).compile()
        mem = step_fn.memory_analysis()
        log.info("compiled step %d for batch %s%s", len(executables), shape, "" if mem is None else
                 f": temp {mem.temp_size_in_bytes / 2**20:.1f} MiB, arguments "
                 f"{mem.argument_size_in_bytes / 2**20:.1f} MiB, output {mem.output_size_in_bytes / 2**20:.1f} MiB")
        if mem is not None:  # per device, as the compiler plans it; beside the measured peak (device_peak_bytes)
          timer.set(compiled_step_bytes=max(compiled_bytes(mem), timer.values.get("compiled_step_bytes", 0)))
        if len(executables) == 1:
          warn_if_products_upcast(step_fn, config.model.dtype)
      state, metrics = step_fn(state, batch, rng)
      done = step + 1
      profile.after(done, state)
      progress.update(1)
      if not config.train.skip_nonfinite and not np.isfinite(float(metrics["loss"])):
        raise FloatingPointError(f"non-finite loss at step {step} (train.skip_nonfinite=False); the last "
                                 f"checkpoint in {mngr.directory} is intact")
      logging_now = done % config.train.log_every == 0 or done == total_steps
      saving_now = done % config.train.checkpoint_every == 0 or done == total_steps
      if logging_now or saving_now:
        check_skipped(config.train, metrics, done, mngr)
      if logging_now:
        metrics = dict(jax.device_get(metrics))  # waits for the device: the interval is real time
        elapsed = time.time() - t0
        metrics["lr"] = float(lr_at(step))
        metrics["examples_per_sec"] = (done - last_log) * examples_per_step / max(elapsed, 1e-9)
        metrics["data_wait_frac"] = waited / max(elapsed, 1e-9)
        writer.write(done, metrics)
        progress.set_postfix(loss=f"{float(metrics['loss']):.4f}")
        t0, last_log, waited = time.time(), done, 0.0
      if saving_now:
        with timer.phase("checkpoint"):
          checkpoint.save(mngr, done, params=state.params, opt_state=state.opt_state,
                          meta={"step": done}, force=done == total_steps)
    if executables and done < total_steps:  # the data ended first (a stream's epoch): its last step stays
      if done != last_log:
        writer.write(done, {**dict(jax.device_get(metrics)), "lr": float(lr_at(done - 1))})
      with timer.phase("checkpoint"):
        checkpoint.save(mngr, done, params=state.params, opt_state=state.opt_state, meta={"step": done}, force=True)
    jax.block_until_ready(state)
    with timer.phase("checkpoint"):
      mngr.wait_until_finished()
    loop_s = time.perf_counter() - loop_t0
    steps_run = done - start if executables else 0
    train_s = loop_s - sum(timer.seconds.get(k, 0.0) - v for k, v in before.items())  # this fit's only
    timer.add("train", train_s)
    timer.set(steps=steps_run, compiles=len(executables), examples_per_s=steps_run * examples_per_step / loop_s,
              steady_examples_per_s=steps_run * examples_per_step / max(train_s, 1e-9),
              padded_frac=1 - real / padded if padded else 0.0)
    peak = device_peak_bytes()
    if peak is not None:
      timer.set(device_peak_bytes=peak)
  finally:  # an interrupted run keeps every checkpoint it started to write, and its logged rows
    profile.stop(state)
    writer.close()
    progress.close()
    mngr.wait_until_finished()
    mngr.close()
  return state


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
      yield (step, sharding.put_batch(batch, layouts[layout]), layouts[layout], fold_in(base_rng, step),
             tokens)

  return batching.in_background(prepare(), prefetch)
