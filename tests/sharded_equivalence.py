"""Run by tests/test_sharding.py in a subprocess with 8 fake CPU devices (XLA_FLAGS must be set before
JAX starts): the SRL step on a (data, fsdp, tensor) mesh equals the single-device step, dropout on (its
masks hash each element's index, so they do not depend on the mesh)."""

import dataclasses
import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from starbucks_jax import losses, schedule, sharding, srl
from starbucks_jax import step as step_lib
from starbucks_jax.models import attention
from starbucks_jax.models.bert import BertConfig
from starbucks_jax.models.encoders import init_params, param_logical_axes

from conftest import max_abs_diff, max_rel_diff  # tests/ is this script's directory


def main():
  jax.config.update("jax_default_matmul_precision", "highest")
  assert jax.device_count() == 8, jax.devices()
  # 2 layers, 2 pairs: the smallest SRL step with a sub-model and a KL term (compiles dominate this test)
  cfg = BertConfig.preset("tiny", num_hidden_layers=2)  # dropout 0.1
  params = init_params(cfg, jax.random.key(0))
  plan = schedule.plan("starbucks", ((1, 16), (2, 32)), 2, 32)
  # adam_eps 1e-6: with 1e-8, AdamW's first update is ~lr * sign(g) and float noise in near-zero
  # gradients (units dropout zeroed) would decide the update check, not the sharding.
  tcfg = ml_collections.ConfigDict(
      dict(lr=1e-3, warmup_ratio=0.0, decay="linear", clip_grad_norm=1.0, adam_b1=0.9,
           adam_b2=0.999, adam_eps=1e-6, weight_decay=0.01, skip_nonfinite=False,
           max_consecutive_nonfinite=1))
  tx = step_lib.make_optimizer(tcfg, 10)
  step = srl.make_srl_step(cfg, plan, losses.LossConfig(kl="scores"), tx, "mean", dropout=True)
  rng = np.random.default_rng(0)
  batch = {
      "ids": rng.integers(5, cfg.vocab_size, (3, 8, 12)).astype(np.int32),
      "mask": (np.arange(12)[None, None] < rng.integers(4, 13, (3, 8, 1))).astype(np.int32)
  }
  state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  key = jax.random.key(1)

  ref_state, ref_metrics = jax.jit(step.update)(state, batch, key)
  grad_fn = jax.grad(lambda p, b, k: step.loss_fn(p, b, k)[0])
  ref_grads = jax.jit(grad_fn)(params, batch, key)
  specs = param_logical_axes(cfg)  # metadata only; outside the rules (DenseGeneral's init is flat)
  results = {}
  # fsdp, data x tensor, and data parallel with the AdamW moments split over the devices (ZeRO-1;
  # data parallel alone: the cases below)
  for shape, zero in (((1, 8, 1), False), ((4, 1, 2), False), ((8, 1, 1), True)):
    mesh = sharding.make_mesh(shape)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      p_sh = sharding.param_shardings(specs, mesh)
      s_sh = sharding.state_shardings(state, tx, p_sh, mesh, shard_optimizer=zero)
      b_sh = sharding.batch_shardings(batch, mesh, {"ids": 1, "mask": 1})
      sharded_step = jax.jit(step.update, in_shardings=(s_sh, b_sh, None),
                             out_shardings=(s_sh, None))
      new_state, metrics = sharded_step(sharding.shard_state(state, s_sh),
                                        sharding.put_batch(batch, b_sh), key)
      grad_diff = None
      if shape == (4, 1, 2):  # gradients on the richest mesh (the others check loss, norm, update)
        grads = jax.jit(grad_fn, in_shardings=(p_sh, b_sh, None),
                        out_shardings=p_sh)(sharding.shard_state(params, p_sh),
                                            sharding.put_batch(batch, b_sh), key)
        grad_diff = max_rel_diff(grads, ref_grads)[0]
    kernel = new_state.params["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
    results[str(shape) + (" shard_optimizer" if zero else "")] = {
        "loss": [float(metrics["loss"]), float(ref_metrics["loss"])],
        "grad_norm": [float(metrics["grad_norm"]),
                      float(ref_metrics["grad_norm"])],
        "max_param_diff": max_abs_diff(new_state.params, ref_state.params),
        "max_grad_diff_rel": grad_diff,
        "kernel_sharding": str(kernel.sharding.spec),
        "mu_sharding": str(new_state.opt_state[1][0].mu["encoder"]["layer_0"]["intermediate"]
                           ["dense"]["kernel"].sharding.spec),
    }
  big = {
      "ids": rng.integers(5, cfg.vocab_size, (3, 16, 12)).astype(np.int32),
      "mask": (np.arange(12)[None, None] < rng.integers(4, 13, (3, 16, 1))).astype(np.int32)
  }
  mesh = sharding.make_mesh((8, 1, 1))

  def on_data_mesh(step, ref_step, batch=big, axes=srl.ROLE_AXES):
    # `step`'s loss and gradients data-parallel on 8 devices vs `ref_step`'s on one (on `big`)
    # (the optimizer update given the gradients is checked on the meshes above: not compiled again here)
    (ref_loss, _), ref_grads = jax.jit(ref_step.value_and_grad)(params, big, key)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      p_sh = sharding.param_shardings(specs, mesh)
      b_sh = sharding.batch_shardings(batch, mesh, axes)
      (loss, _), grads = jax.jit(step.value_and_grad, in_shardings=(p_sh, b_sh, None),
                                 out_shardings=(None, p_sh))(sharding.shard_state(params, p_sh),
                                                             sharding.put_batch(batch, b_sh), key)
    return {
        "loss": [float(loss), float(ref_loss)], "grad_norm": [norm(grads),
                                                              norm(ref_grads)],
        "max_grad_diff_rel": max_rel_diff(grads, ref_grads)[0]
    }

  def srl_step(**kw):
    return srl.make_srl_step(cfg, plan, losses.LossConfig(kl="scores"), tx, "mean", dropout=False,
                             **kw)

  # Gradient accumulation: 2 strided microbatches of 8, each split over 8 devices (vs itself on one).
  acc_step = srl_step(microbatches=2)
  results["accumulate (8, 1, 1)"] = on_data_mesh(acc_step, acc_step)
  # Two independent encoder forwards (strided splits of 8 of the 16 examples, each over the 8
  # devices) against the one-forward step on one device.
  plain = srl_step()  # one object: its reference program compiles once for both cases below
  results["forward splits (8, 1, 1)"] = on_data_mesh(srl_step(forward_splits=2), plain)
  # Packed rows: each device's 2 examples (6 texts) packed into its own rows of 24 tokens, against
  # the padded batch on one device.
  results["packed (8, 1, 1)"] = on_data_mesh(srl_step(packed=srl.Packing(3, 16, 8)), plain,
                                             packed(big, 8, 24), {})
  # The TPU flash kernel (in Pallas' interpreter on this CPU) in its shard_map over batch and heads, on
  # a data x tensor mesh, against the standard core on one device.
  call = attention.fa.pl.pallas_call
  attention.fa.pl.pallas_call = lambda *a, **k: call(*a, **{**k, "interpret": True})
  mesh = sharding.make_mesh((4, 1, 2))
  flash = srl.make_srl_step(dataclasses.replace(cfg, attention="flash"), plan,
                            losses.LossConfig(kl="scores"), tx, "mean", dropout=False)
  results["flash (4, 1, 2)"] = on_data_mesh(flash, plain)
  json.dump(results, sys.stdout)


def norm(tree) -> float:
  """The global L2 norm of a tree, in NumPy (float64; optax.global_norm eagerly would compile per shape)."""
  return float(
      np.sqrt(sum(np.sum(np.asarray(x, np.float64)**2) for x in jax.tree_util.tree_leaves(tree))))


def packed(batch, shards: int, length: int) -> dict:
  """The padded roles batch as packed rows, shard by shard (texts numbered role by role)."""
  from starbucks_jax.data.packing import pack_texts
  ids, mask = batch["ids"], batch["mask"]
  R, B, _ = ids.shape
  per = B // shards
  placed = []
  for s in range(shards):
    texts = [(r, b) for r in range(R) for b in range(s * per, (s + 1) * per)]
    lengths = np.array([mask[r, b].sum() for r, b in texts])
    placed.append((texts, lengths, *pack_texts(lengths, length)))
  P = max(p[-1] for p in placed)
  out = {
      "ids": np.zeros((shards * P, length), np.int32), "segments": np.full(
          (shards * P, length), -1, np.int32), "positions": np.zeros((shards * P, length), np.int32)
  }
  for s, (texts, lengths, row, offset, _) in enumerate(placed):
    for n, ((r, b), k, i, o) in enumerate(zip(texts, lengths, row, offset)):
      at = (s * P + i, slice(o, o + k))
      out["ids"][at], out["segments"][at], out["positions"][at] = ids[r, b, :k], n, np.arange(k)
  return out


if __name__ == "__main__":
  main()
