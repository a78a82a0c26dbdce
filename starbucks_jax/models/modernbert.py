"""ModernBERT encoder in flax.linen that returns every hidden state, as models/bert.py's BERT does.

ModernBERT (Warner et al. 2024; Granite Embedding R2, Ettin, mmBERT) differs from BERT in every
block: no position table but rotary embeddings (RoPE, theta 160k on global layers, 10k on local
ones); attention global every `global_attn_every_n_layers` layers (0, 3, 6, ...) and within a
window of +-local_attention/2 tokens elsewhere; pre-LayerNorm blocks (layer 0 has no attention
norm) without biases; a GeGLU feed-forward (Wi's first half through GELU, times its second half);
a final LayerNorm after the last layer.

`hidden_states(...)` returns num_layers + 1 states in HF's order: the embedding output, then each
layer's output. A sub-model of n layers is the first n layers and the final norm (what HF's
ModernBertModel with num_hidden_layers=n outputs): `normed=True` (the default) gives state n that
way, so pooling state n is the (n, d) model's embedding; `normed=False` gives the raw states.
Packed rows (`segments`, `positions`) encode each text as if alone: RoPE takes each text's own
positions and the local window never crosses a text's edge (the segment mask).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from starbucks_jax.models import attention, bert
from starbucks_jax.models.dropout import Dropout
from starbucks_jax.models.layers import DTYPES, Dense, RunSettings, gelu, layer_norm, normal_init

# model.attention on ModernBERT: models/attention.py's cores but cuDNN's ('flash': splash)
ATTENTIONS = ("standard", "dot_product", "flash")


@dataclasses.dataclass(frozen=True)
class ModernBertConfig(RunSettings):
  """Architecture (HF's ModernBertConfig field names) plus how to run it (as BertConfig's)."""

  vocab_size: int = 50368
  hidden_size: int = 768
  intermediate_size: int = 1152
  num_hidden_layers: int = 22
  num_attention_heads: int = 12
  max_position_embeddings: int = 8192
  norm_eps: float = 1e-5
  norm_bias: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  global_attn_every_n_layers: int = 3
  local_attention: int = 128  # the whole window: a local layer sees +-64 tokens
  global_rope_theta: float = 160000.0
  local_rope_theta: float = 10000.0
  embedding_dropout: float = 0.0
  attention_dropout: float = 0.0
  mlp_dropout: float = 0.0
  classifier_bias: bool = False  # the MLM head's dense layer (HF's ModernBertPredictionHead)
  decoder_bias: bool = True  # the MLM decoder's bias (its weight is tied to the token table)
  pad_token_id: int = 50283
  bos_token_id: int = 50281  # the special tokens' ids, kept for the config.json we write
  eos_token_id: int = 50282
  cls_token_id: int = 50281
  sep_token_id: int = 50282
  initializer_range: float = 0.02
  model_type: str = "modernbert"
  dtype: str = "float32"
  param_dtype: str = "float32"
  precision: str = "pure"
  remat: bool | str = False
  attention: str = "standard"

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"ModernBertConfig: hidden_size={self.hidden_size} is not divisible by "
                       f"num_attention_heads={self.num_attention_heads}")
    if self.attention not in ATTENTIONS:
      raise ValueError(f"ModernBertConfig.attention={self.attention!r}; expected one of "
                       f"{ATTENTIONS} (cuDNN's fused kernel has no two-sided window)")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"ModernBertConfig.{name}={getattr(self, name)!r}")
    if self.precision not in bert.PRECISIONS or self.remat_policy not in bert.REMAT_POLICIES:
      raise ValueError(f"ModernBertConfig: precision={self.precision!r}, remat={self.remat!r}")

  position_offset = 0  # RoPE: no position rows to reserve

  @property
  def max_tokens(self) -> int:
    return self.max_position_embeddings

  def is_global(self, layer: int) -> bool:
    """Layer `layer` (0-based) attends to the whole text; the others within the local window."""
    return layer % self.global_attn_every_n_layers == 0

  def matmul_flops(self, texts: int, length: int, train: bool = True) -> int:
    """As BertConfig.matmul_flops, for ModernBERT's blocks: Wqkv and Wo 4 x 2D^2, GeGLU 3 x 2DI,
    scores and context 2 x 2 x D x (the keys a query sees: the text, or the local window)."""
    D, I, T = self.hidden_size, self.intermediate_size, length
    forward = 0
    for i in range(self.num_hidden_layers):
      seen = T if self.is_global(i) else min(T, self.local_attention + 1)
      forward += texts * T * (8 * D * D + 6 * D * I + 4 * seen * D)
    return 3 * forward if train else forward


# ModernBERT's released shapes (answerdotai/ModernBERT-base, -large; granite-embedding-english-r2 is
# the base shape): the compile reports' --preset
PRESETS = {
    "modernbert-base": ModernBertConfig(),
    "modernbert-large": ModernBertConfig(hidden_size=1024, intermediate_size=2624,
                                         num_hidden_layers=28, num_attention_heads=16),
}


def rope(x, positions, theta: float):
  """x [B, T, heads, head_dim] rotated by its tokens' `positions` [B or 1, T] (HF's rotate_half
  form: the first and second halves of head_dim pair up), in float32."""
  k = x.shape[-1]
  inv_freq = 1.0 / (theta**(jnp.arange(0, k, 2, dtype=jnp.float32) / k))
  freqs = positions[..., None].astype(jnp.float32) * inv_freq
  angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., k // 2:], x32[..., :k // 2]], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


class ModernBertAttention(nn.Module):
  config: ModernBertConfig
  layer: int

  @nn.compact
  def __call__(self, x, mask, segment_ids, positions, deterministic: bool):
    cfg = self.config
    qkv = Dense(cfg, (3, cfg.num_attention_heads, cfg.head_dim), ("embed", None, "heads", "kv"),
                use_bias=cfg.attention_bias, name="Wqkv")(x)
    q, k, v = (qkv[:, :, i] for i in range(3))
    theta = cfg.global_rope_theta if cfg.is_global(self.layer) else cfg.local_rope_theta
    q, k = rope(q, positions, theta), rope(k, positions, theta)
    if cfg.attention == "dot_product":
      context = attention.dot_product(q, k, v, mask)
    elif cfg.attention == "flash":
      window = None if cfg.is_global(self.layer) else cfg.local_attention // 2
      context = attention.flash(q, k, v, segment_ids, window=window, splash=True)
    else:
      context = self.standard(q, k, v, mask, deterministic)
    context = nn.with_logical_constraint(context, ("batch", "length", "heads", "kv"))
    out = Dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), contract=2,
                use_bias=cfg.attention_bias, name="Wo")(context)
    return Dropout(cfg.attention_dropout)(out, deterministic=deterministic)

  def standard(self, q, k, v, mask, deterministic: bool):
    """HF's eager attention: scores and softmax in float32, dropout on the probabilities."""
    cfg = self.config
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.head_dim)
    scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
    probs = Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(cfg.compute_dtype))


class ModernBertMLP(nn.Module):
  """GeGLU: Wi gives the input and the gate; GELU(input) * gate, then Wo."""
  config: ModernBertConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.config
    h = Dense(cfg, (2, cfg.intermediate_size), ("embed", None, "mlp"), use_bias=cfg.mlp_bias,
              name="Wi")(x)
    h = gelu(h[:, :, 0]) * h[:, :, 1]
    h = Dropout(cfg.mlp_dropout)(nn.with_logical_constraint(h, ("batch", "length", "mlp")),
                                 deterministic=deterministic)
    return Dense(cfg, cfg.hidden_size, ("mlp", "embed"), use_bias=cfg.mlp_bias, name="Wo")(h)


class ModernBertLayer(nn.Module):
  """Pre-LN block: x + attn(attn_norm(x)), then + mlp(mlp_norm(.)); layer 0's attn_norm is the
  identity (the embeddings were just normed)."""
  config: ModernBertConfig
  layer: int

  @nn.compact
  def __call__(self, x, masks, positions, deterministic: bool):
    cfg = self.config
    mask = masks[0] if cfg.is_global(self.layer) else masks[1]
    h = x if self.layer == 0 else layer_norm(cfg, "attn_norm")(x)
    x = x + ModernBertAttention(cfg, self.layer, name="attn")(h, mask, masks[2], positions,
                                                              deterministic)
    x = x + ModernBertMLP(cfg, name="mlp")(layer_norm(cfg, "mlp_norm")(x), deterministic)
    return nn.with_logical_constraint(x.astype(cfg.stream_dtype), ("batch", "length", "embed"))


class ModernBertEncoder(nn.Module):
  """Embeddings, layers_0 .. layers_{N-1} and the final norm; HF's ModernBertModel's names."""
  config: ModernBertConfig

  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               num_layers: int | None = None, deterministic: bool = True, segments=None,
               positions=None, normed: bool = True):
    return jnp.stack(
        self.hidden_states(input_ids, attention_mask, token_type_ids, num_layers=num_layers,
                           deterministic=deterministic, segments=segments, positions=positions,
                           normed=normed))

  @nn.compact
  def hidden_states(self, input_ids, attention_mask, token_type_ids=None, *,
                    num_layers: int | None = None, deterministic: bool = True, segments=None,
                    positions=None, normed: bool = True) -> tuple[jax.Array, ...]:
    del token_type_ids  # ModernBERT has none
    cfg = self.config
    n = cfg.num_hidden_layers if num_layers is None else num_layers
    if not 0 <= n <= cfg.num_hidden_layers:
      raise ValueError(f"num_layers={n} is outside 0..{cfg.num_hidden_layers} for this encoder")
    if (segments is None) != (positions is None):
      raise ValueError("packed rows need both segments and positions")
    T = input_ids.shape[1]
    if positions is None:
      positions = jnp.arange(T)[None, :]
    x = Embeddings(cfg, name="embeddings")(input_ids, deterministic)
    full = bert.attention_bias_mask(attention_mask, segments)
    near = jnp.abs(jnp.arange(T)[:, None] - jnp.arange(T)[None, :]) <= cfg.local_attention // 2
    # (global, local, segment ids: the fused cores' form of the first)
    masks = (full, full & near[None, None], attention_mask if segments is None else segments)
    states, layer_cls = [x], bert.remat_layer(cfg, ModernBertLayer, static_argnums=(4,))
    for i in range(n):  # static: only the first n layers are traced and run
      x = layer_cls(cfg, i, name=f"layers_{i}")(x, masks, positions, deterministic)
      states.append(x)
    if normed and n:  # each state past the embeddings as the sub-model of its depth outputs it
      final = layer_norm(cfg, "final_norm")
      states[1:] = [final(h) for h in states[1:]]
    return tuple(states)


class Embeddings(nn.Module):
  """HF's ModernBertEmbeddings: the token table, its LayerNorm, dropout (no positions: RoPE)."""
  config: ModernBertConfig

  @nn.compact
  def __call__(self, input_ids, deterministic: bool):
    cfg = self.config
    x = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.stream_dtype,
                 param_dtype=cfg.storage_dtype, embedding_init=normal_init(cfg, ("vocab", "embed")),
                 name="tok_embeddings")(input_ids)
    x = Dropout(cfg.embedding_dropout)(layer_norm(cfg, "norm")(x), deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))
