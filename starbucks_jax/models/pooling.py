"""Sentence pooling of one hidden state: mean over real tokens, or the [CLS] vector."""

from __future__ import annotations

import jax.numpy as jnp

POOLINGS = ("mean", "cls")


def pool(hidden, attention_mask, pooling: str):
  """hidden [..., B, T, D], attention_mask [B, T] -> [..., B, D] in float32."""
  hidden = hidden.astype(jnp.float32)
  if pooling == "cls":
    return hidden[..., 0, :]
  if pooling == "mean":
    mask = attention_mask.astype(jnp.float32)[..., None]
    return (hidden * mask).sum(-2) / jnp.maximum(mask.sum(-2), 1e-9)
  raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")


def embed_pair(pooled, dim: int, normalize: bool):
  """Keep the first `dim` features, then (optionally) L2-normalise: truncate first, as the method says."""
  x = pooled[..., :dim]
  if normalize:
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  return x
