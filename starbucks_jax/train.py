"""Runs a config: validate everything first, then train (SRL and its baselines) and evaluate.

One factory builds one pure `train_step(state, batch, rng) -> (state, metrics)`: a single encoder
forward (stopping at the deepest layer the method needs) over every text of the batch, pooled at
each needed layer; the loss math is `losses.plan_loss`. The loop is resumable: batches are a pure
function of (seed, step) and dropout keys are `fold_in(seed, step)`, so a run restored from its
latest checkpoint ends with the parameters of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from starbucks_jax import checkpoint, config_lib, losses, report, schedule as schedule_lib, sharding
from starbucks_jax.data.batching import Batcher, load_examples
from starbucks_jax.data.groups import GroupBatcher, load_groups
from starbucks_jax.embed import Embedder
from starbucks_jax.data import beir
from starbucks_jax.evaluate import results, retrieval, sts
from starbucks_jax.models import hf
from starbucks_jax.models.bert import BertConfig, BertEncoder, param_logical_axes
from starbucks_jax.models.pooling import pool

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


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
  import subprocess
  import sys
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
# Optimiser
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
def pooled_layers(params, bert_cfg: BertConfig, ids, mask, layers: tuple[int, ...], pooling: str,
                  *, deterministic: bool, rng=None) -> dict[int, jax.Array]:
  """ONE encoder forward over ids [..., T] (e.g. roles [R, B, T]) -> {layer: pooled [..., D] float32}."""
  lead, T = ids.shape[:-1], ids.shape[-1]
  flat_ids, flat_mask = ids.reshape(-1, T), mask.reshape(-1, T)
  hidden = BertEncoder(bert_cfg).apply(
      {"params": params}, flat_ids, flat_mask, num_layers=max(layers), deterministic=deterministic,
      rngs=None if deterministic else {"dropout": rng}, method="hidden_states")
  return {n: pool(hidden[n], flat_mask, pooling).reshape(*lead, -1) for n in sorted(set(layers))}


def split_forward(embed, ids, mask, rng, k: int) -> dict[int, jax.Array]:
  """`embed(ids, mask, rng) -> {layer: [rows, D]}` over ids/mask [rows, T] as k independent calls on
  strided splits (split c = rows c, c+k, c+2k, ..., so each keeps the rows' data-parallel sharding;
  dropout key fold_in(rng, c)), put back in row order: one program with k independent encoder
  graphs. Equal to one call up to float summation order (dropout masks aside). On a CPU host XLA's
  runtime runs the splits' ops side by side, filling cores that one op at a time leaves idle: a
  64 x 64 MiniLM step measured ~10% faster at k=2-4 on 2 cores (experiments/bench_vs_pytorch.md).
  On GPU/TPU keep k=1."""
  if k == 1:
    return embed(ids, mask, rng)
  rows, T = ids.shape
  if rows % k:
    raise ValueError(f"train.forward_splits={k} does not divide the step's {rows} texts")
  ids, mask = ids.reshape(rows // k, k, T), mask.reshape(rows // k, k, T)
  parts = [embed(ids[:, c], mask[:, c], jax.random.fold_in(rng, c)) for c in range(k)]
  return {n: jnp.stack([p[n] for p in parts], axis=1).reshape(rows, -1) for n in parts[0]}


# The examples axis of each batch array: roles batches' ids/mask are [R, B, T] (axis 1); every other
# array, groups batches' included, has its examples on axis 0.
ROLE_AXES = {"ids": 1, "mask": 1}


def _streams(batch) -> tuple[tuple[str, str], ...]:
  """The (ids, mask) arrays a batch is encoded from: roles [R, B, T], or queries and passages."""
  if "query_ids" in batch:
    return (("query_ids", "query_mask"), ("passage_ids", "passage_mask"))
  return (("ids", "mask"),)


def _assemble(batch, outs: list[dict[int, jax.Array]]) -> dict[int, Any]:
  """Per-stream pooled rows -> the loss's layout: roles [R, B, D] or (queries, passages)."""
  if "query_ids" in batch:
    return {n: (outs[0][n], outs[1][n]) for n in outs[0]}
  R, B = batch["ids"].shape[:2]
  return {n: v.reshape(R, B, -1) for n, v in outs[0].items()}


def make_train_step(bert_cfg: BertConfig, plan: schedule_lib.Plan, loss_cfg: losses.LossConfig,
                    tx: optax.GradientTransformation, pooling: str, dropout: bool = True,
                    pair_weights: tuple[float, ...] = (), grad_cache_chunks: int = 0, microbatches: int = 1,
                    forward_splits: int = 1):
  """The SRL step. grad_cache_chunks > 0: the gradient cache (embed every text without gradients,
  chunk by chunk; take the loss gradient w.r.t. the pooled vectors of every layer; then backprop
  chunk by chunk), so the contrastive batch is not bounded by activation memory; same gradients.
  microbatches > 1: gradient accumulation (`make_step`); each microbatch is its own contrastive
  batch (fewer in-batch negatives), unlike the gradient cache. forward_splits > 1: the texts run as
  that many independent encoder forwards in the one program (`split_forward`), the loss over them
  all: the same loss and gradients, a throughput setting for CPU hosts."""

  def embed_rows(params, ids, mask, rng):  # [rows, T] -> {layer: pooled [rows, D]}
    return split_forward(
        lambda i, m, r: pooled_layers(params, bert_cfg, i, m, plan.layers, pooling, deterministic=not dropout, rng=r),
        ids, mask, rng, forward_splits)

  def split_rngs(rng):
    dropout_rng, sample_rng = jax.random.split(rng)
    return [jax.random.fold_in(dropout_rng, i) for i in range(2)], sample_rng

  def loss_of_pooled(pooled, batch, sample_rng):
    return losses.plan_loss(plan, pooled, loss_cfg, rng=sample_rng, scores=batch.get("scores"),
                            weights=pair_weights or None)

  def flat(batch, ids_key, mask_key):
    ids, mask = batch[ids_key], batch[mask_key]
    return ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1])

  def loss_fn(params, batch, rng):
    stream_rngs, sample_rng = split_rngs(rng)
    outs = [embed_rows(params, *flat(batch, *keys), r) for keys, r in zip(_streams(batch), stream_rngs)]
    return loss_of_pooled(_assemble(batch, outs), batch, sample_rng)

  def cached_value_and_grad(params, batch, rng):
    stream_rngs, sample_rng = split_rngs(rng)
    k = grad_cache_chunks
    chunked = []
    for keys in _streams(batch):
      ids, mask = flat(batch, *keys)
      if ids.shape[0] % k:
        raise ValueError(f"train.grad_cache_chunks={k} does not divide the {ids.shape[0]} texts of {keys[0]}")
      chunked.append((ids.reshape(k, -1, ids.shape[-1]), mask.reshape(k, -1, mask.shape[-1])))

    def embed_chunks(p, ids, mask, r):  # [k, rows/k, T] -> {layer: [rows, D]}, one chunk at a time
      out = jax.lax.map(lambda a: embed_rows(p, a[0], a[1], jax.random.fold_in(r, a[2])),
                        (ids, mask, jnp.arange(k)))
      return {n: v.reshape(-1, v.shape[-1]) for n, v in out.items()}

    outs = [embed_chunks(jax.lax.stop_gradient(params), ids, mask, r)
            for (ids, mask), r in zip(chunked, stream_rngs)]
    (loss, aux), g_outs = jax.value_and_grad(
        lambda o: loss_of_pooled(_assemble(batch, o), batch, sample_rng), has_aux=True)(outs)

    def backprop(grads, chunk):  # recompute one chunk's forward and pull its cotangent through it
      ids, mask, i, cot, r = chunk
      _, vjp = jax.vjp(lambda p: embed_rows(p, ids, mask, jax.random.fold_in(r, i)), params)
      return jax.tree_util.tree_map(jnp.add, grads, vjp(cot)[0]), None

    grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    for (ids, mask), r, g in zip(chunked, stream_rngs, g_outs):
      cot = {n: v.reshape(k, -1, v.shape[-1]) for n, v in g.items()}
      grads, _ = jax.lax.scan(backprop, grads, (ids, mask, jnp.arange(k), cot, jnp.stack([r] * k)))
    return (loss, aux), grads

  return make_step(loss_fn, tx, cached_value_and_grad if grad_cache_chunks else None,
                   microbatches=microbatches, batch_axes=ROLE_AXES)


def make_step(loss_fn, tx: optax.GradientTransformation, value_and_grad=None, *, microbatches: int = 1,
              batch_axes: dict[str, int] | None = None, prepare=None):
  """`train_step(state, batch, rng) -> (state, metrics)` for `loss_fn(params, batch, rng) -> (loss, aux)`:
  one gradient, one optimizer update; metrics are the loss, its aux terms and the grad norm.
  `value_and_grad(params, batch, rng) -> ((loss, aux), grads)` replaces jax.value_and_grad(loss_fn).

  microbatches=k > 1: gradient accumulation inside the jitted step. The batch is split into k
  microbatches (`split_microbatches`), a scan takes each one's loss and gradient (dropout keys folded
  with the microbatch index), and the update uses their mean: the big batch's gradient exactly when
  the loss is a mean over examples. `prepare(batch, k) -> batch` runs on the whole batch first (SMAE
  adds its masked-token counts there, so token-mean losses are exact too); 0-d arrays it adds reach
  every microbatch whole."""
  value_and_grad = value_and_grad or jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches > 1:
    value_and_grad = _accumulate(value_and_grad, microbatches, batch_axes or {}, prepare)

  def train_step(state: TrainState, batch, rng):
    (loss, aux), grads = value_and_grad(state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
    if hasattr(opt_state, "total_notfinite"):
      metrics["skipped_steps"] = opt_state.total_notfinite
    return TrainState(state.step + 1, params, opt_state), metrics

  train_step.loss_fn = loss_fn  # for tests and benchmarks that need the loss alone
  train_step.value_and_grad = value_and_grad
  return train_step


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
class MetricsWriter:
  """JSON lines in WORKDIR/metrics.jsonl. A run resumed at step `start` continues the file after
  dropping the rows logged past `start` (steps the crash lost and the resumed run logs again; all
  of them when no checkpoint was saved; a row the crash cut short), so every step appears once."""

  def __init__(self, workdir: str, start: int = 0):
    self.path = os.path.join(workdir, "metrics.jsonl")
    if sharding.is_primary() and os.path.exists(self.path):
      kept = [row for row in report.read_metrics(self.path) if row["step"] <= start]
      with open(self.path + ".tmp", "w", encoding="utf8") as f:
        f.writelines(json.dumps(row) + "\n" for row in kept)
      os.replace(self.path + ".tmp", self.path)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not sharding.is_primary():
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a", encoding="utf8") as f:
      f.write(json.dumps(row) + "\n")


def _loss_config(config) -> losses.LossConfig:
  fields = {f.name for f in dataclasses.fields(losses.LossConfig)}
  return losses.LossConfig(**{k: v for k, v in config.loss.items() if k in fields})


def train(config: ml_collections.ConfigDict, workdir: str, facts: dict) -> tuple[hf.Pretrained, dict]:
  """Fine-tune from model.init_from (or resume the workdir); returns the trained model."""
  pre = checkpoint.load_model(config.model.init_from)
  bert_cfg = pre.config.replace(dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                                remat=config.model.remat)
  max_length = min(config.model.max_length or pre.sentence.max_seq_length, bert_cfg.max_position_embeddings)
  plan = facts["plan"]
  if config.data.format == "groups":
    groups = load_groups(config.data.train)
    examples = groups.queries
    batcher = GroupBatcher(groups, pre.tokenizer, batch_size=config.data.batch_size,
                           group_size=config.data.group_size, query_max_length=config.data.query_max_length,
                           passage_max_length=config.data.passage_max_length, seed=config.seed,
                           length_buckets=config.data.length_buckets)
  else:
    examples = load_examples(config.data.train, config.data.format, dict(config.data.columns))
    batcher = Batcher(examples, pre.tokenizer, batch_size=config.data.batch_size, max_length=max_length,
                      seed=config.seed, no_duplicates=config.data.no_duplicates,
                      length_buckets=config.data.length_buckets)
  total_steps = config.train.max_steps or batcher.steps_in(config.train.epochs)
  lr = learning_rate_schedule(config.train, total_steps)
  tx = make_optimizer(config.train, total_steps, lr)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, bert_cfg.storage_dtype), pre.params["bert"])
  sentence = dataclasses.replace(pre.sentence, pooling=config.model.pooling, max_seq_length=max_length,
                                 layer=None, dim=None)
  if sharding.is_primary():
    checkpoint.write_model_dir(workdir, dataclasses.replace(pre, sentence=sentence))
  step_fn = make_train_step(bert_cfg, plan, _loss_config(config), tx, config.model.pooling,
                            dropout=config.train.dropout, pair_weights=tuple(config.loss.pair_weights),
                            grad_cache_chunks=config.train.grad_cache_chunks,
                            microbatches=config.train.microbatches, forward_splits=config.train.forward_splits)
  if config.train.microbatches > 1:
    log.warning("train.microbatches=%d: each microbatch of %d is its own in-batch contrastive/CoSENT "
                "batch (fewer negatives than the batch of %d); train.grad_cache_chunks keeps the whole "
                "batch's negatives at the same memory", config.train.microbatches,
                config.data.batch_size // config.train.microbatches, config.data.batch_size)
  log.info("training %s for %d steps (%d examples, batch %d), plan: pairs=%s layers=%s", plan.method,
           total_steps, len(examples), config.data.batch_size, plan.pairs or "sampled", plan.layers)
  state = fit(config, workdir, TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), step_fn,
              batcher, total_steps, lr, tx=tx, param_specs=param_logical_axes(bert_cfg),
              batch_axes=ROLE_AXES)
  trained = jax.tree_util.tree_map(lambda x: x.astype(np.float32), sharding.to_host(state.params))
  return dataclasses.replace(pre, params={**pre.params, "bert": trained}), {"total_steps": total_steps}


def fit(config: ml_collections.ConfigDict, workdir: str, state: TrainState, train_step, batcher,
        total_steps: int, lr: optax.Schedule, *, tx: optax.GradientTransformation, param_specs,
        batch_axes: dict[str, int] | None = None) -> TrainState:
  """The loop every run shares: place the state on the mesh (mesh.shape, mesh.rules; `param_specs`
  are the params' logical axes), resume from the workdir's latest checkpoint, jit the step with
  in/out shardings and the state donated, log metrics every train.log_every steps (with
  `data_wait_frac`, the share of the interval spent waiting for input), checkpoint every
  train.checkpoint_every steps and at the end. `batcher.iterate(start, total)` yields (step, batch)
  as a pure function of the step; `batch_axes` names each batch array's examples axis (default 0)."""
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.mesh.rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return _fit(config, workdir, state, train_step, batcher, total_steps, lr, mesh,
                sharding.state_shardings(state, tx, sharding.param_shardings(param_specs, mesh, rules), mesh),
                batch_axes)


def _warn_if_products_upcast(compiled, dtype: str) -> None:
  """Warns when model.dtype asks for low-precision compute but the compiled CPU step has no matrix
  product in that dtype (XLA:CPU converts bf16/f16 dots to float32): slower than float32, not faster."""
  if dtype == "float32" or jax.default_backend() != "cpu":  # GPU/TPU dots are library calls in the HLO
    return
  hlo_type = {"bfloat16": "bf16", "float16": "f16"}[dtype]
  if not re.search(rf"= {hlo_type}\[[^\]]*\]\S* dot\(", compiled.as_text()):
    log.warning("model.dtype=%s, but XLA computes every matrix product of the compiled step in float32 on "
                "this CPU (it converts to and from %s around them): slower than model.dtype='float32' here; "
                "%s compute is for GPU/TPU", dtype, dtype, dtype)


def _fit(config, workdir, state, train_step, batcher, total_steps, lr, mesh, state_sh, batch_axes):
  mngr = checkpoint.manager(workdir, max_to_keep=config.train.keep_checkpoints,
                            save_interval_steps=config.train.checkpoint_every)
  state = sharding.shard_state(state, state_sh)
  start = mngr.latest_step()
  if start is not None:
    restored = checkpoint.restore(mngr, start, params=state.params, opt_state=state.opt_state)
    state = sharding.shard_state(TrainState(jnp.asarray(start, jnp.int32), restored["params"],
                                            restored["opt_state"]), state_sh)
    log.info("resumed from %s at step %d", mngr.directory, start)
  else:
    start = 0
  log.info("mesh %s over %d devices", dict(mesh.shape), mesh.devices.size)
  step_fn = None
  base_rng = jax.random.key(config.seed)
  writer = MetricsWriter(workdir, start)
  examples_per_step = config.data.batch_size
  try:
    compiled_shapes = set()
    t0, last_log = time.time(), start  # the first interval includes compilation
    progress = tqdm(total=total_steps, initial=start, desc="train", mininterval=5.0,
                    disable=None if sharding.is_primary() else True)
    batches, waited = batcher.iterate(start, total_steps), 0.0
    while True:
      t_wait = time.time()
      item = next(batches, None)  # time the loop waits for input: ~0 when the data keeps up
      waited += time.time() - t_wait
      if item is None:
        break
      step, batch = item
      rng = jax.random.fold_in(base_rng, step)
      shape = tuple(sorted((k, v.shape) for k, v in batch.items()))
      batch_sh = sharding.batch_shardings(batch, mesh, batch_axes)
      batch = sharding.put_batch(batch, batch_sh)
      if step_fn is None:
        step_fn = jax.jit(train_step, in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None),
                          donate_argnums=(0,))
      if not compiled_shapes:  # compile ahead of time once and report the memory it needs
        compiled = step_fn.lower(state, batch, rng).compile()
        mem = compiled.memory_analysis()
        if mem is not None:
          log.info("compiled step for batch %s: temp %.1f MiB, arguments %.1f MiB, output %.1f MiB", shape,
                   mem.temp_size_in_bytes / 2**20, mem.argument_size_in_bytes / 2**20,
                   mem.output_size_in_bytes / 2**20)
        _warn_if_products_upcast(compiled, config.model.dtype)
      compiled_shapes.add(shape)
      state, metrics = step_fn(state, batch, rng)
      done = step + 1
      progress.update(1)
      if not config.train.skip_nonfinite and not np.isfinite(float(metrics["loss"])):
        raise FloatingPointError(f"non-finite loss at step {step} (train.skip_nonfinite=False); the last "
                                 f"checkpoint in {mngr.directory} is intact")
      if done % config.train.log_every == 0 or done == total_steps:
        metrics = dict(jax.device_get(metrics))  # waits for the device: the interval is real time
        elapsed = time.time() - t0
        metrics["lr"] = lr(step)
        metrics["examples_per_sec"] = (done - last_log) * examples_per_step / max(elapsed, 1e-9)
        metrics["data_wait_frac"] = waited / max(elapsed, 1e-9)
        writer.write(done, metrics)
        progress.set_postfix(loss=f"{float(metrics['loss']):.4f}")
        t0, last_log, waited = time.time(), done, 0.0
      if done % config.train.checkpoint_every == 0 or done == total_steps:
        checkpoint.save(mngr, done, params=state.params, opt_state=state.opt_state,
                        meta={"step": done}, force=done == total_steps)
  finally:  # an interrupted run keeps every checkpoint it started to write
    progress.close()
    mngr.wait_until_finished()
    mngr.close()
  return state


# ---------------------------------------------------------------------------------------------
# Evaluation and the entry point
# ---------------------------------------------------------------------------------------------
def eval_pairs(config: ml_collections.ConfigDict, facts: dict) -> tuple[tuple[int, int], ...]:
  plan, cfg = facts["plan"], facts["backbone"]
  if config.eval.grid:
    return schedule_lib.grid(cfg.num_hidden_layers, cfg.hidden_size, [d for _, d in facts["pairs"]])
  if plan.method == "separate":
    return (tuple(config.schedule.separate_pair),)
  return facts["pairs"]


def evaluate(config: ml_collections.ConfigDict, workdir: str, model: hf.Pretrained, facts: dict,
             name: str) -> list[dict]:
  """STS Spearman (eval.sts) and retrieval metrics (eval.retrieval) for every pair of the schedule (or
  the grid) -> WORKDIR/results/<name>.json."""
  embedder = Embedder(model, batch_size=config.eval.batch_size)
  if config.model.max_length:
    embedder.pretrained.sentence = dataclasses.replace(embedder.pretrained.sentence,
                                                       max_seq_length=config.model.max_length)
  pairs = eval_pairs(config, facts)
  records = sts.evaluate_sets(embedder, facts["eval_sets"], pairs, pooling=config.model.pooling)
  for dataset, split, folder in facts["retrieval_sets"]:
    records += retrieval.evaluate_collection(
        embedder, beir.load(folder, split, name=dataset), pairs, workdir, pooling=config.model.pooling,
        normalize=config.eval.retrieval_similarity == "cosine", query_max_length=config.eval.query_max_length,
        passage_max_length=config.eval.passage_max_length, k=config.eval.retrieval_k)
  path = results.write(workdir, name, records)
  print(results.table(records))
  print(f"results: {path}")
  return records


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  config_lib.start_processes(config)  # jax.distributed first, when several processes
  facts = config_lib.validate(config)  # fails before any compute
  write_config(workdir, config)
  log.info("backbone %s: %d layers x %d dims; schedule %s", config.model.init_from,
           facts["backbone"].num_hidden_layers, facts["backbone"].hidden_size, facts["pairs"])
  if config.mode == "eval":
    return evaluate(config, workdir, checkpoint.load_model(config.model.init_from), facts, name="eval")
  model, _ = train(config, workdir, facts)
  if not sharding.is_primary():  # the primary process evaluates and writes the results
    return []
  return evaluate(config, workdir, model, facts, name="final")
