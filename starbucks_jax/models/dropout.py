"""Dropout with masks from a counter-based hash of each element's position.

`Dropout(rate)(x, deterministic)` zeroes each element with probability `rate` and scales the rest
by 1 / (1 - rate), as nn.Dropout and PyTorch do. An element keeps its value when threefry-2x32
(the block cipher behind jax.random's default keys), keyed by the call's dropout key, maps the
element's index (two uint32 counters, `_counters`) to a word below (1 - rate) * 2^32.

Why not nn.Dropout: jax.random.bernoulli draws through the threefry primitive, which XLA:CPU runs
as a rolled loop over the whole array (its cost: experiments/bench_vs_pytorch.md). Here the 20
rounds are written as jnp integer ops that XLA fuses with the mask and the scaling into one
element-wise pass on every backend. The mask of an element depends only on the key and its index
(an iota, which SPMD partitions), so it is the same on one device or any mesh.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# threefry-2x32's rotation schedule (Salmon et al. 2011)
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x, d: int):
  return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry2x32(key, x0, x1):
  """threefry-2x32 (20 rounds) of the counters (x0, x1) under key = uint32[2]; element-wise over
  the counter arrays. Equals jax.extend.random.threefry_2x32 (tested)."""
  k0, k1 = key[0], key[1]
  ks = (k0, k1, k0 ^ k1 ^ _PARITY)
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = _rotate_left(x1, r) ^ x0
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def _counters(shape: tuple[int, ...], limit: int = 2**32):
  """Two uint32 arrays of `shape` that together number its elements: the flat index over the
  longest run of trailing axes with fewer than `limit` (2^32) elements, and over the axes before."""
  split = len(shape)
  while split > 0 and math.prod(shape[split - 1:]) < limit:
    split -= 1
  if math.prod(shape[:split]) >= limit:
    raise ValueError(f"dropout over shape {shape}: the elements cannot be numbered by two counters "
                     f"below {limit} (an axis of {limit} or more, or more than {limit}^2 elements)")

  def flat(axes):
    index = jnp.zeros(shape, jnp.uint32)
    for a in axes:
      index = index * np.uint32(shape[a]) + jax.lax.broadcasted_iota(jnp.uint32, shape, a)
    return index

  return flat(range(split, len(shape))), flat(range(split))


def keep_mask(rng: jax.Array, shape: tuple[int, ...], keep: float) -> jax.Array:
  """bool[shape], each element True with probability `keep` (to 2^-32), from the key `rng`."""
  key = jax.random.bits(rng, (2,), jnp.uint32)  # any key type (threefry, rbg; typed or raw)
  inner, outer = _counters(tuple(shape))
  word, _ = threefry2x32(key, inner, outer)
  return word < np.uint32(min(round(keep * 2**32), 2**32 - 1))


class Dropout(nn.Module):
  """nn.Dropout's contract (rng collection 'dropout'), masks from `keep_mask`."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep = 1.0 - self.rate
    mask = keep_mask(self.make_rng("dropout"), x.shape, keep)
    # the scale in float32: 1 / 0.9 rounded to bfloat16 (or x / 0.9 with 0.9 so rounded, as in
    # nn.Dropout) would shrink or grow every kept bfloat16 activation by ~0.2%
    kept = (x.astype(jnp.float32) * np.float32(1.0 / keep)).astype(x.dtype)
    return jnp.where(mask, kept, jnp.zeros((), x.dtype))
