"""One training step as a pure function, and its optimizer: AdamW with warmup and decay, gradient
clipping, non-finite steps skipped, and gradient accumulation over microbatches.

An objective (finetune.py, pretrain.py) supplies `loss_fn(params, batch, rng) -> (loss, aux)`;
`make_step` turns it into `update(state, batch, rng) -> (state, metrics)`, which loop.fit jits.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


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


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
  """`cfg`: the train block (config_blocks.Train). Linear warmup over warmup_ratio of the steps, then linear or cosine decay to 0 (HF's schedules)."""
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


def make_optimizer(cfg, total_steps: int,
                   lr: optax.Schedule | None = None) -> optax.GradientTransformation:
  """AdamW as the train block (config_blocks.Train) sets it: clipping, decay mask, non-finite skips."""
  lr = learning_rate_schedule(cfg, total_steps) if lr is None else lr
  chain = []
  if cfg.clip_grad_norm > 0:
    chain.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
  chain.append(
      optax.adamw(lr, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps,
                  weight_decay=cfg.weight_decay, mask=decay_mask))
  tx = optax.chain(*chain)
  if cfg.skip_nonfinite:  # a step with a non-finite gradient leaves params and moments unchanged
    tx = optax.apply_if_finite(tx, max_consecutive_errors=cfg.max_consecutive_nonfinite)
  return tx


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------
def make_step(loss_fn, tx: optax.GradientTransformation, value_and_grad=None, *,
              microbatches: int = 1, batch_axes: dict[str, int] | None = None, prepare=None,
              param_specs=None) -> TrainStep:
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
    # a no-op without a mesh's rules in scope
    grads = nn.with_logical_constraint(grads, param_specs)
    # names the update's ops in the compiled program (hlo_costs.category)
    with jax.named_scope("optimizer"):
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
