"""The fine-tuning step of any method's plan (SRL or a baseline: docs/method.md, "SRL fine-tuning").

One encoder forward (stopping at the deepest layer the plan needs) over every text of the batch,
pooled at each needed layer; the loss is `losses.plan_loss` over the plan. The gradient cache and
split forwards change how the texts are encoded, never the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from starbucks_jax import losses, schedule
from starbucks_jax import step as step_lib
from starbucks_jax.data import batching
from starbucks_jax.models.encoders import EncoderConfig, param_logical_axes
from starbucks_jax.models.pooling import pooled_layers, pooled_layers_packed


def split_forward(embed, ids, mask, rng, k: int) -> dict[int, jax.Array]:
  """`embed(ids, mask, rng) -> {layer: [rows, D]}` over ids/mask [rows, T] as k independent calls on
  strided splits (split c = rows c, c+k, c+2k, ..., so each keeps the rows' data-parallel sharding;
  dropout key fold_in(rng, c)), put back in row order: one program with k independent encoder
  graphs, equal to one call up to float summation order (dropout masks aside). A CPU throughput
  setting: XLA's CPU runtime runs the splits' operations side by side (experiments/bench_vs_pytorch.md)."""
  if k == 1:
    return embed(ids, mask, rng)
  rows, T = ids.shape
  if rows % k:
    raise ValueError(f"train.forward_splits={k} does not divide the step's {rows} texts")
  ids, mask = ids.reshape(rows // k, k, T), mask.reshape(rows // k, k, T)
  parts = [embed(ids[:, c], mask[:, c], jax.random.fold_in(rng, c)) for c in range(k)]
  return {n: jnp.stack([p[n] for p in parts], axis=1).reshape(rows, -1) for n in parts[0]}


# The examples axis of each batch array: roles batches' ids/mask are [R, B, T] (axis 1); every other
# array, groups batches' and packed rows included, has its examples on axis 0.
ROLE_AXES = {"ids": 1, "mask": 1}


@dataclasses.dataclass(frozen=True)
class Packing:
  """A packed batch's texts: `roles` x `batch` examples, each of `shards` shards packed on its own."""
  roles: int
  batch: int
  shards: int = 1


def batch_axes(data) -> dict[str, int]:
  """Each batch array's examples axis under the data block (config_blocks.ExampleData)."""
  return {} if data.packing else ROLE_AXES


def packing(data, shards: int) -> Packing | None:
  """The packed layout of the data block's batches over `shards` devices (None: not packed)."""
  if not data.packing:
    return None
  return Packing(len(batching.FORMATS[data.format]), data.batch_size, shards)


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


def _split_rngs(rng):
  """A step's rng -> (dropout rngs of the two text streams, the sampled methods' rng)."""
  dropout_rng, sample_rng = jax.random.split(rng)
  return [jax.random.fold_in(dropout_rng, i) for i in range(2)], sample_rng


def _flat(batch, ids_key, mask_key):
  """A stream's ids and mask as rows [texts, T]."""
  ids, mask = batch[ids_key], batch[mask_key]
  return ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1])


def _grad_cache(embed_rows, loss_of_pooled, k: int):
  """value_and_grad of the SRL loss by the gradient cache in `k` chunks (make_srl_step): every
  text embedded without gradients, the loss's gradient w.r.t. the pooled vectors, then each chunk's
  forward recomputed and its cotangent pulled through it."""
  def cached_value_and_grad(params, batch, rng):
    stream_rngs, sample_rng = _split_rngs(rng)
    chunked = []
    for keys in _streams(batch):
      ids, mask = _flat(batch, *keys)
      if ids.shape[0] % k:
        raise ValueError(
            f"train.grad_cache_chunks={k} does not divide the {ids.shape[0]} texts of {keys[0]}")
      chunked.append((ids.reshape(k, -1, ids.shape[-1]), mask.reshape(k, -1, mask.shape[-1])))

    def embed_chunks(p, ids, mask, r):  # [k, rows/k, T] -> {layer: [rows, D]}, one chunk at a time
      out = jax.lax.map(lambda a: embed_rows(p, a[0], a[1], jax.random.fold_in(r, a[2])),
                        (ids, mask, jnp.arange(k)))
      return {n: v.reshape(-1, v.shape[-1]) for n, v in out.items()}

    outs = [
        embed_chunks(jax.lax.stop_gradient(params), ids, mask, r)
        for (ids, mask), r in zip(chunked, stream_rngs)
    ]
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

  return cached_value_and_grad


def make_srl_step(bert_cfg: EncoderConfig, plan: schedule.Plan, loss_cfg: losses.LossConfig,
                  tx: optax.GradientTransformation, pooling: str, dropout: bool = True,
                  grad_cache_chunks: int = 0, microbatches: int = 1, forward_splits: int = 1,
                  packed: Packing | None = None) -> step_lib.TrainStep:
  """The fine-tuning step of any plan (SRL or a baseline). grad_cache_chunks > 0: the gradient cache
  (embed every text without gradients, chunk by chunk; take the loss gradient w.r.t. the pooled
  vectors of every layer; then backprop chunk by chunk), so the contrastive batch is not bounded by
  activation memory; same gradients. microbatches > 1: gradient accumulation (`step.make_step`);
  each microbatch is its own contrastive batch (fewer in-batch negatives), unlike the gradient cache.
  forward_splits > 1: the texts run as that many independent encoder forwards (`split_forward`).
  `packed`: batches of packed rows (`batching.Batcher` with pack_length), one forward; the loss sees
  the same [R, B, D] vectors as unpacked."""
  if packed and (grad_cache_chunks or microbatches > 1 or forward_splits > 1):
    raise ValueError(
        "packed batches are encoded in one forward: no gradient cache, microbatches or splits")

  def embed_rows(params, ids, mask, rng):  # [rows, T] -> {layer: pooled [rows, D]}
    return split_forward(
        lambda i, m, r: pooled_layers(params, bert_cfg, i, m, plan.layers, pooling,
                                      deterministic=not dropout, rng=r), ids, mask, rng,
        forward_splits)

  def loss_of_pooled(pooled, batch, sample_rng):
    teacher = batch.get("teacher")  # [B, R, D]: examples first in every batch layout
    with jax.named_scope("loss"):
      return losses.plan_loss(plan, pooled, loss_cfg, rng=sample_rng, scores=batch.get("scores"),
                              teacher=None if teacher is None else jnp.swapaxes(teacher, 0, 1))

  def embed_packed(params, batch, rng):  # packed rows -> {layer: [R, B, D]}
    R, B, S = packed.roles, packed.batch, packed.shards
    out = pooled_layers_packed(params, bert_cfg, batch["ids"], batch["segments"],
                               batch["positions"], plan.layers, pooling, R * B // S, S,
                               deterministic=not dropout, rng=rng)
    return {
        n: v.reshape(S, R, B // S, -1).transpose(1, 0, 2, 3).reshape(R, B, -1)
        for n, v in out.items()
    }

  def loss_fn(params, batch, rng):
    stream_rngs, sample_rng = _split_rngs(rng)
    if packed:
      return loss_of_pooled(embed_packed(params, batch, stream_rngs[0]), batch, sample_rng)
    outs = [
        embed_rows(params, *_flat(batch, *keys), r)
        for keys, r in zip(_streams(batch), stream_rngs)
    ]
    return loss_of_pooled(_assemble(batch, outs), batch, sample_rng)

  cached = _grad_cache(embed_rows, loss_of_pooled, grad_cache_chunks) if grad_cache_chunks else None
  return step_lib.make_step(loss_fn, tx, cached, microbatches=microbatches, batch_axes=ROLE_AXES,
                            param_specs=param_logical_axes(bert_cfg))
