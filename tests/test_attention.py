"""The fused attention cores (model.attention: models/attention.py) against the standard one, dropout
off: every real token's hidden state at every layer, packed rows, and the SRL step's loss and
gradients. The TPU flash kernel runs here in Pallas' interpreter (its TPU compile: test_compile.py);
the cuDNN core's call runs in XLA's implementation (its GPU compile: test_compile_gpu.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax import config_lib, finetune, losses, schedule, srl
from starbucks_jax import step as step_lib
from starbucks_jax.config_lib import ConfigError
from starbucks_jax.models import attention
from starbucks_jax.models.bert import BertConfig, attention_bias_mask
from starbucks_jax.models.encoders import hidden_states, init_params
from starbucks_jax.models.pooling import pooled_layers, pooled_layers_packed

from conftest import max_rel_diff

CORES = ("dot_product", "flash")


@pytest.fixture(autouse=True)
def on_this_cpu(monkeypatch):
  """The flash kernel is a TPU (Mosaic) kernel: on this CPU it runs in Pallas' interpreter. The cuDNN
  core's jax.nn.dot_product_attention call (lengths or segment mask) runs in XLA's implementation."""
  call = attention.fa.pl.pallas_call
  monkeypatch.setattr(attention.fa.pl, "pallas_call",
                      lambda *a, **k: call(*a, **{**k, "interpret": True}))
  monkeypatch.setattr(attention, "CUDNN_IMPLEMENTATION", "xla")


def tiny(core: str = "standard", dtype: str = "float32") -> BertConfig:
  return BertConfig.preset("tiny", num_hidden_layers=2, initializer_range=0.5, attention=core,
                           dtype=dtype)


def batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 128, (4, 16)).astype(np.int32)
  mask = (np.arange(16)[None] < np.array([[16], [11], [5], [9]])).astype(np.int32)
  return jnp.asarray(ids), jnp.asarray(mask)


@pytest.mark.parametrize("core", CORES)
def test_hidden_states_of_real_tokens_equal_the_standard_core(core):
  params = init_params(tiny(), jax.random.key(0))
  ids, mask = batch()
  want = hidden_states(params, tiny(), ids, mask)
  got = hidden_states(params, tiny(core), ids, mask)
  real = np.asarray(mask, bool)
  for n, (g, w) in enumerate(zip(got, want)):  # padding positions are read by no real token
    np.testing.assert_allclose(
        np.asarray(g)[real],
        np.asarray(w)[real], rtol=2e-5, atol=2e-5, err_msg=f"layer {n}")
  assert np.abs(np.asarray(want[2])[real]).max() > 0.1  # not a trivially small comparison


@pytest.mark.parametrize("core", CORES)
def test_packed_rows_pool_as_the_standard_core(core):
  """Two rows holding five texts (segments -1 for padding), pooled per text."""
  params = init_params(tiny(), jax.random.key(0))
  rng = np.random.default_rng(1)
  ids = rng.integers(5, 128, (2, 16)).astype(np.int32)
  segments = np.array([[0] * 6 + [1] * 7 + [-1] * 3, [2] * 5 + [3] * 4 + [4] * 5 + [-1] * 2],
                      np.int32)
  positions = np.zeros_like(segments)
  for r in range(2):
    for s in set(segments[r]) - {-1}:
      positions[r, segments[r] == s] = np.arange((segments[r] == s).sum())
  want = pooled_layers_packed(params, tiny(), ids, segments, positions, (1, 2), "mean", 5)
  got = pooled_layers_packed(params, tiny(core), ids, segments, positions, (1, 2), "mean", 5)
  for n in (1, 2):
    np.testing.assert_allclose(got[n], want[n], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("core", CORES)
def test_srl_step_loss_and_gradients_equal_the_standard_core(core):
  """The SRL step (dropout off: the fused cores have no attention dropout) gives the same loss and
  gradients in float32; in bfloat16 compute it is as close to the float32 step as the standard core
  in bfloat16 is (bf16 rounding, not a different function)."""
  plan = schedule.plan("starbucks", ((1, 16), (2, 32)), 2, 32)
  params = init_params(tiny(), jax.random.key(0))
  ids, mask = batch()
  b = {"ids": ids.reshape(2, 2, 16), "mask": mask.reshape(2, 2, 16)}
  tx = step_lib.make_optimizer(config_lib.load_config("configs/ft.py:demo").train, 10)

  def loss_and_grads(cfg):
    step = srl.make_srl_step(cfg, plan, losses.LossConfig(kl="scores"), tx, "mean", dropout=False)
    (loss, _), grads = jax.jit(step.value_and_grad)(params, b, jax.random.key(0))
    return float(loss), grads

  want, want_grads = loss_and_grads(tiny("standard"))
  got, got_grads = loss_and_grads(tiny(core))
  assert got == pytest.approx(want, rel=1e-5) and max_rel_diff(got_grads, want_grads)[0] < 1e-5
  bf16, bf16_grads = loss_and_grads(tiny(core, "bfloat16"))
  std16, std16_grads = loss_and_grads(tiny("standard", "bfloat16"))
  assert abs(bf16 - want) <= 2 * abs(std16 - want) + 1e-3 * abs(want)
  assert max_rel_diff(bf16_grads,
                      want_grads)[0] <= 1.5 * max_rel_diff(std16_grads, want_grads)[0] + 1e-3


def test_cudnn_core_sees_what_the_standard_core_sees():
  """The cuDNN core's inputs -- right-padded rows' lengths (an all-padding row included), packed rows'
  segment mask -- give every real token the standard core's context vector (float32 here: the call,
  not cuDNN's half-precision kernel); padding positions stay finite."""
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=(4, 16, 2, 8)), jnp.float32) for _ in range(3))

  def standard(mask):  # bert.BertSelfAttention's standard core, dropout off
    scores = jnp.where(mask,
                       jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8),
                       jnp.finfo(jnp.float32).min)
    return np.asarray(jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v))

  lengths = np.array([16, 11, 5, 0])
  padding = (np.arange(16)[None] < lengths[:, None]).astype(np.int32)
  got = np.asarray(attention.cudnn(q, k, v, jnp.asarray(padding), packed=False))
  want = standard(attention_bias_mask(jnp.asarray(padding)))
  real = padding.astype(bool)
  np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-6)
  assert np.isfinite(got).all()
  segments = np.array(
      [[0] * 6 + [1] * 7 + [-1] * 3, [2] * 16, [3] * 5 + [4] * 4 + [-1] * 7, [-1] * 16], np.int32)
  got = np.asarray(attention.cudnn(q, k, v, jnp.asarray(segments), packed=True))
  want = standard(attention_bias_mask(None, jnp.asarray(segments)))
  real = segments >= 0
  np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-6)
  assert np.isfinite(got).all()


@pytest.mark.parametrize("packed", [False, True])
def test_cudnn_core_in_the_encoder_is_as_close_as_the_standard_core_in_half_precision(packed):
  """The cuDNN core runs in bfloat16 only: every real token's last hidden state is as close (RMS) to
  the float32 standard encoder's as the bfloat16 standard encoder's is, and is the bfloat16
  dot_product core's (the same call, with a mask instead of lengths)."""
  params = init_params(tiny(), jax.random.key(0))
  ids, mask = batch()
  kw = {}
  if packed:
    segments = jnp.asarray(
        np.where(np.asarray(mask) > 0,
                 np.arange(16)[None] // 6 + 10 * np.arange(4)[:, None], -1))
    kw = {"segments": segments, "positions": jnp.asarray(np.tile(np.arange(16) % 6, (4, 1)))}
  last = lambda cfg: np.asarray(hidden_states(params, cfg, ids, mask, **kw)[-1], np.float32)
  real = np.asarray(mask, bool)
  want = last(tiny())[real]
  got, std, fused = (last(tiny(core, "bfloat16"))[real]
                     for core in ("cudnn", "standard", "dot_product"))
  rms = lambda x: float(np.sqrt(np.mean(x**2)))
  assert rms(got - want) <= 1.5 * rms(std - want) and rms(want) > 0.5
  np.testing.assert_allclose(got, fused, atol=1e-6)


def test_pooled_layers_take_the_core_from_the_config():
  params = init_params(tiny(), jax.random.key(0))
  ids, mask = batch()
  a = pooled_layers(params, tiny(), ids, mask, (2,), "cls")[2]
  b = pooled_layers(params, tiny("dot_product"), ids, mask, (2,), "cls")[2]
  np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_a_bad_core_is_named():
  with pytest.raises(ValueError, match="attention='fast'"):
    BertConfig(attention="fast")
  config = config_lib.load_config("configs/ft.py:demo")
  with config.unlocked():
    config.model.attention = "fast"
  with pytest.raises(ConfigError, match=r"model\.attention"):
    finetune.describe(config, backbone=BertConfig.preset("tiny"))


def test_cudnn_core_is_refused_where_it_cannot_run():
  """Half precision only; NVIDIA GPUs only: a config asking otherwise fails before any compute."""
  with pytest.raises(ValueError, match="attention='cudnn' computes in half precision"):
    BertConfig(attention="cudnn")
  for dtype, match in (("float32", r"model\.attention: .*half precision"),
                       ("bfloat16",
                        r"model\.attention='cudnn' is cuDNN's kernel for NVIDIA GPUs; .* cpu")):
    config = config_lib.load_config("configs/ft.py:demo")
    with config.unlocked():
      config.model.attention, config.model.dtype = "cudnn", dtype
    with pytest.raises(ConfigError, match=match):
      finetune.describe(config, backbone=BertConfig.preset("minilm-l6-h384"))
