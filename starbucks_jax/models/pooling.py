"""Sentence pooling of one hidden state (mean over real tokens, or the [CLS] vector), and
`pooled_layers`, the one encode-and-pool function of training, evaluation and the Embedder."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from starbucks_jax.models.encoders import EncoderConfig, hidden_states

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


def pooled_layers(params, config: EncoderConfig, ids, mask, layers, pooling: str, *,
                  deterministic: bool = True, rng: jax.Array | None = None) -> dict[int, jax.Array]:
  """ONE encoder forward over ids/mask [..., T] (e.g. roles [R, B, T]), stopping at the deepest of
  `layers` -> {layer: pooled [..., D] float32}."""
  lead, T = ids.shape[:-1], ids.shape[-1]
  flat_ids, flat_mask = ids.reshape(-1, T), mask.reshape(-1, T)
  hidden = hidden_states(params, config, flat_ids, flat_mask, num_layers=max(layers),
                         deterministic=deterministic, rng=rng)
  return {n: pool(hidden[n], flat_mask, pooling).reshape(*lead, -1) for n in sorted(set(layers))}


def pool_packed(hidden, segments, positions, pooling: str, texts: int):
  """hidden [S, P, L, D] of packed rows in S shards, segments/positions [S, P, L] (each token's text
  within its shard, -1 padding) -> [S, texts, D] float32: text i of a shard pooled over its own
  tokens. One matmul with 0/1 (or 1/length) weights per shard: MXU work, local to each shard."""
  S, P, L, D = hidden.shape
  # [S, PL, texts]
  member = (segments.reshape(S, P * L, 1) == jnp.arange(texts)).astype(jnp.float32)
  if pooling == "cls":
    weights = member * (positions.reshape(S, P * L, 1) == 0)
  elif pooling == "mean":
    weights = member / jnp.maximum(member.sum(1, keepdims=True), 1.0)
  else:
    raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")
  return jnp.einsum("stn,std->snd", weights,
                    hidden.astype(jnp.float32).reshape(S, P * L, D),
                    precision=jax.lax.Precision.HIGHEST)


def pooled_layers_packed(params, config: EncoderConfig, ids, segments, positions, layers,
                         pooling: str, texts: int, shards: int = 1, *, deterministic: bool = True,
                         rng: jax.Array | None = None) -> dict[int, jax.Array]:
  """`pooled_layers` for packed rows: ids/segments/positions [P, L], the rows of shard s being
  P/shards consecutive rows holding its `texts` texts -> {layer: [shards, texts, D] float32}."""
  hidden = hidden_states(params, config, ids, None, num_layers=max(layers),
                         deterministic=deterministic, rng=rng, segments=segments,
                         positions=positions)
  P, L = ids.shape
  split = lambda x: x.reshape(shards, P // shards, L, *x.shape[2:])
  return {
      n: pool_packed(split(hidden[n]), split(segments), split(positions), pooling, texts)
      for n in sorted(set(layers))
  }
