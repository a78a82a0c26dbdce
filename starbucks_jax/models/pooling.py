"""Sentence pooling of one hidden state (mean over real tokens, or the [CLS] vector), and
`pooled_layers`, the one encode-and-pool function of training, evaluation and the Embedder."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from starbucks_jax.models.bert import BertConfig, hidden_states

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


def pooled_layers(params, config: BertConfig, ids, mask, layers, pooling: str, *, deterministic: bool = True,
                  rng: jax.Array | None = None) -> dict[int, jax.Array]:
  """ONE encoder forward over ids/mask [..., T] (e.g. roles [R, B, T]), stopping at the deepest of
  `layers` -> {layer: pooled [..., D] float32}."""
  lead, T = ids.shape[:-1], ids.shape[-1]
  flat_ids, flat_mask = ids.reshape(-1, T), mask.reshape(-1, T)
  hidden = hidden_states(params, config, flat_ids, flat_mask, num_layers=max(layers),
                         deterministic=deterministic, rng=rng)
  return {n: pool(hidden[n], flat_mask, pooling).reshape(*lead, -1) for n in sorted(set(layers))}

