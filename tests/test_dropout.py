"""Dropout masks from the counter hash: the hash is threefry-2x32, the keep rate is exact, masks are
uncorrelated across positions and keys, and every element gets its own counter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from starbucks_jax.models import dropout


def test_hash_is_threefry_2x32():
  rng = np.random.default_rng(0)
  for _ in range(3):
    key = rng.integers(0, 2**32, 2, dtype=np.uint32)
    x0, x1 = (rng.integers(0, 2**32, 1000, dtype=np.uint32) for _ in range(2))
    want = np.asarray(threefry_2x32(jnp.asarray(key), jnp.asarray(np.concatenate([x0, x1]))))
    got = jax.jit(dropout.threefry2x32)(jnp.asarray(key), jnp.asarray(x0), jnp.asarray(x1))
    np.testing.assert_array_equal(np.concatenate([np.asarray(g) for g in got]), want)


def test_counters_number_every_element_once():
  for shape, limit in (((3, 5, 7), 2**32), ((3, 5, 7), 16), ((2, 3, 4, 5), 30), ((11,), 16)):
    inner, outer = dropout._counters(shape, limit)
    pairs = {(int(i), int(o)) for i, o in zip(np.ravel(inner), np.ravel(outer))}
    assert len(pairs) == np.prod(shape) and max(max(p) for p in pairs) < limit, (shape, limit)
  with pytest.raises(ValueError, match=r"shape \(20, 20\).*below 16"):
    dropout._counters((20, 20), 16)
  abstract = jax.eval_shape(lambda: dropout._counters((2**17, 2**17, 2)))  # 2^35 elements
  assert [a.shape for a in abstract] == [(2**17, 2**17, 2)] * 2


def test_keep_rate_and_independence():
  shape = (64, 12, 64, 64)  # 3.1M elements: the keep rate's standard error is 1.7e-4
  a = np.asarray(dropout.keep_mask(jax.random.key(0), shape, 0.9))
  b = np.asarray(dropout.keep_mask(jax.random.key(1), shape, 0.9))
  assert a.dtype == bool and a.shape == shape
  assert abs(a.mean() - 0.9) < 1e-3 and abs(b.mean() - 0.9) < 1e-3
  corr = lambda x, y: np.corrcoef(x.ravel().astype(np.float32), y.ravel().astype(np.float32))[0, 1]
  assert abs(corr(a, b)) < 5e-3  # another key: another mask
  assert abs(corr(a[..., 1:], a[..., :-1])) < 5e-3  # neighbours along the inner counter
  assert abs(corr(a[1:], a[:-1])) < 5e-3  # and along the leading axes
  assert abs(np.asarray(dropout.keep_mask(jax.random.key(0), (1000, 1000), 0.3)).mean() -
             0.3) < 2e-3
  np.testing.assert_array_equal(a, np.asarray(dropout.keep_mask(jax.random.key(0), shape, 0.9)))


def test_dropout_module_zeroes_and_rescales():
  x = jax.random.normal(jax.random.key(0), (32, 16, 8)) + 3.0
  layer = dropout.Dropout(0.3)
  y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
  kept = np.asarray(y) != 0
  np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.7, rtol=1e-6)
  assert 0.6 < kept.mean() < 0.8
  assert layer.apply({}, x, deterministic=True) is x
  assert dropout.Dropout(0.0).apply({}, x, deterministic=False) is x
  assert not np.asarray(dropout.Dropout(1.0).apply({}, x, deterministic=False)).any()
  bf16 = layer.apply({}, x.astype(jnp.bfloat16), deterministic=False,
                     rngs={"dropout": jax.random.key(3)})
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(bf16) != 0, kept)
  # kept bfloat16 values are x / 0.7 rounded once (not x times a rounded 1 / 0.7)
  want = (np.asarray(x.astype(jnp.bfloat16), np.float32) / np.float32(0.7)).astype(jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(bf16)[kept], want[kept])
