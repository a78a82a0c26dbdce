"""The shared trainer: optimizer and schedule, skipped non-finite updates, mixed precision, the
prefetched batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax import checkpoint, config_lib, loop, losses, model_dirs, schedule, sharding, srl
from starbucks_jax import step as step_lib
from starbucks_jax.data import batching

from conftest import REPO


def test_nonfinite_step_is_skipped(tiny_hf_dir):
  pre = checkpoint.load_model(tiny_hf_dir)
  cfg = config_lib.load_config(str(REPO / "configs" / "ft.py") + ":demo")
  tx = step_lib.make_optimizer(cfg.train, 10)
  params = pre.params["bert"]
  state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  plan = schedule.plan("full", ((4, 32),), 4, 32)
  ids = jnp.ones((3, 2, 6), jnp.int32)
  batch = {"ids": ids, "mask": jnp.ones_like(ids)}
  bad = srl.make_srl_step(pre.config, plan, losses.LossConfig(scale=float("nan")), tx, "mean",
                          dropout=False)
  new, metrics = jax.jit(bad.update)(state, batch,
                                     jax.random.key(0))  # eagerly: 40 s of op compiles
  assert not np.isfinite(float(metrics["loss"])) and int(metrics["skipped_steps"]) == 1
  jax.tree_util.tree_map(np.testing.assert_array_equal, new.params, state.params)


def test_bf16_step_keeps_float32_params_state_and_loss(tiny_hf_dir):
  """Mixed precision: bf16 matmuls and activations; params, Adam moments, pooled vectors, softmax
  and loss in float32; the loss stays near the float32 step's."""
  pre = checkpoint.load_model(tiny_hf_dir)
  cfg = config_lib.load_config(str(REPO / "configs" / "ft.py") + ":demo")
  tx = step_lib.make_optimizer(cfg.train, 10)
  params = pre.params["bert"]
  plan = schedule.plan("starbucks", ((1, 8), (2, 16), (4, 32)), 4, 32)
  ids = jax.random.randint(jax.random.key(0), (2, 4, 8), 5, pre.config.vocab_size)
  batch = {"ids": ids, "mask": jnp.ones_like(ids)}
  out = {}
  for dtype in ("float32", "bfloat16"):
    step = srl.make_srl_step(pre.config.replace(dtype=dtype), plan, losses.LossConfig(), tx, "mean",
                             dropout=False)
    state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    new, metrics = jax.jit(step.update)(state, batch, jax.random.key(1))
    out[dtype] = float(metrics["loss"])
    assert metrics["loss"].dtype == jnp.float32
    assert {str(x.dtype) for x in jax.tree_util.tree_leaves(new.params)} == {"float32"}
    floats = {
        str(x.dtype) for x in jax.tree_util.tree_leaves(new.opt_state)
        if jnp.issubdtype(x.dtype, jnp.floating)
    }
    assert floats == {"float32"}  # Adam moments (and clipping/skip state) in float32
  assert out["bfloat16"] == pytest.approx(out["float32"],
                                          rel=0.05) and out["bfloat16"] != out["float32"]


def test_low_precision_compute_that_xla_cpu_upcasts_is_reported(caplog):
  """XLA:CPU converts bf16/f16 products to float32: a bf16 config there is slower, not faster, and
  the run says so; a program that keeps a bf16 product (as GPU/TPU do) is not reported."""
  x = jnp.ones((8, 16), jnp.bfloat16)
  compiled = jax.jit(lambda a: a @ a.T).lower(x).compile()
  with caplog.at_level("WARNING", logger="starbucks_jax.trainer"):
    loop.warn_if_products_upcast(compiled, "float32")
    assert not caplog.records
    loop.warn_if_products_upcast(compiled, "bfloat16")
  assert "model.dtype=bfloat16, but XLA computes every matrix product" in caplog.text

  class KeepsBf16:  # the HLO text of a program whose product stays in bf16
    def as_text(self):
      return "ROOT %dot.1 = bf16[8,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={1}"

  caplog.clear()
  with caplog.at_level("WARNING", logger="starbucks_jax.trainer"):
    loop.warn_if_products_upcast(KeepsBf16(), "bfloat16")
  assert not caplog.records


def test_learning_rate_schedule():
  cfg = config_lib.load_config(str(REPO / "configs" / "ft.py") + ":demo").train
  lr = step_lib.learning_rate_schedule(cfg, 100)
  assert float(lr(0)) == 0.0
  assert float(lr(10)) == pytest.approx(cfg.lr)
  assert float(lr(55)) == pytest.approx(cfg.lr / 2)
  assert float(lr(100)) == pytest.approx(0.0, abs=1e-12)


def test_weight_decay_skips_biases_and_layer_norm(tiny_hf_dir):
  mask = step_lib.decay_mask(checkpoint.load_model(tiny_hf_dir).params["bert"])
  assert mask["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
  assert not mask["encoder"]["layer_0"]["intermediate"]["dense"]["bias"]
  assert not mask["embeddings"]["LayerNorm"]["scale"]


def test_prefetched_batches_keep_the_order_the_data_and_the_keys(tiny_hf_dir):
  ex = batching.Examples(("anchor", "positive"),
                         [[f"the cat {i}" for i in range(40)], [f"a dog {i}" for i in range(40)]],
                         None)
  batcher = batching.Batcher(ex, model_dirs.load_tokenizer(tiny_hf_dir), batch_size=8,
                             max_length=16, seed=1)
  mesh = sharding.make_mesh((1, 1, 1))
  base = jax.random.key(7)
  for start in (0, 6):  # a fresh run and one resumed at step 6 (into the second epoch)
    got = list(loop.device_batches(batcher, start, 12, mesh, None, base))
    want = list(batcher.batches(start, 12))
    assert [g[0] for g in got] == [w[0] for w in want] == list(range(start, 12))
    for (step, batch, _, key, tokens), (_, host) in zip(got, want):
      assert set(batch) == set(host) and all(
          np.array_equal(np.asarray(batch[k]), host[k]) for k in host)
      assert np.array_equal(jax.random.key_data(key),
                            jax.random.key_data(jax.random.fold_in(base, step)))
      assert tokens == (int(host["mask"].sum()), host["mask"].size)
