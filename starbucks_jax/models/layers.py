"""Building blocks the encoders share (models/bert.py, models/modernbert.py): HF's exact GELU, the
initialisers with logical axes, and a dense layer whose kernel keeps its real rank. `config` is any
encoder config with initializer_range, norm_eps, norm_bias, compute_dtype and storage_dtype."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class RunSettings:
  """What an encoder config derives from its run fields (dtype, param_dtype, precision, remat),
  shared by BertConfig and ModernBertConfig."""
  @property
  def remat_policy(self) -> str:
    if isinstance(self.remat, bool):
      return "full" if self.remat else "none"
    return self.remat

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def stream_dtype(self):
    """The residual stream's dtype (embeddings, LayerNorm outputs, hidden states)."""
    return jnp.float32 if self.precision == "amp" else self.compute_dtype

  @property
  def storage_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  def replace(self, **kw):
    return dataclasses.replace(self, **kw)


def gelu(x):
  """HF's "gelu", the exact erf form, written as PyTorch computes it: x / 2 * (1 + erf(x / sqrt 2)).
  (jax.nn.gelu's exact form goes through erfc, several times slower on XLA:CPU.)"""
  return x * (1 + jax.lax.erf(x * np.asarray(math.sqrt(0.5), x.dtype))) * np.asarray(0.5, x.dtype)


def layer_norm(config, name: str) -> nn.LayerNorm:
  """A LayerNorm of the config's norm_eps, with a bias when config.norm_bias; float32 under amp."""
  return nn.LayerNorm(
      epsilon=config.norm_eps, use_bias=config.norm_bias, dtype=config.stream_dtype,
      param_dtype=config.storage_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                              ("norm",)), bias_init=zeros_init(("norm",)))


def normal_init(config, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes)


def zeros_init(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


class Dense(nn.Module):
  """A dense layer over the trailing `contract` input axes into `features` (int or tuple) output
  axes, with its kernel created at its real rank, so the logical axes annotate the array they name
  (flax's DenseGeneral initialises a flattened 2-D kernel, which breaks logical sharding rules)."""
  config: Any
  features: int | tuple[int, ...]
  axes: tuple[str, ...]  # logical axes of the kernel: contracted input axes, then output axes
  contract: int = 1  # how many trailing input axes are contracted
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    shape = x.shape[x.ndim - self.contract:] + features
    kernel = self.param("kernel", normal_init(cfg, self.axes), shape, cfg.storage_dtype)
    x = x.astype(cfg.compute_dtype)
    y = jax.lax.dot_general(
        x, jnp.asarray(kernel, cfg.compute_dtype),
        ((tuple(range(x.ndim - self.contract, x.ndim)), tuple(range(self.contract))), ((), ())))
    if not self.use_bias:
      return y
    bias = self.param("bias", zeros_init(self.axes[-len(features):]), features, cfg.storage_dtype)
    return y + jnp.asarray(bias, cfg.compute_dtype)
