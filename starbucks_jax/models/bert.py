"""BERT encoder in flax.linen that returns every hidden state.

`BertEncoder.apply({'params': p}, input_ids, attention_mask, token_type_ids, num_layers=n)`
returns `[n + 1, batch, length, hidden]`: the embedding output followed by the output of each of
the first n layers, in Hugging Face order. With `segments` and `positions` a row holds several
texts (packing), each encoded as if alone. Running with `num_layers=n` executes only n layers
(early exit); its result equals the first n + 1 entries of a full run.

Parameter names mirror Hugging Face BERT (embeddings/word_embeddings, encoder/layer_3/attention/
self/query, ...) so that `models/hf.py` is a short key table. Every parameter carries logical axes
(t5x vocabulary: vocab, embed, heads, kv, mlp, norm) and activations carry logical constraints;
both are no-ops until a mesh and rules are in scope (`starbucks_jax/sharding.py`).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from starbucks_jax.models import attention
from starbucks_jax.models.dropout import Dropout
from starbucks_jax.models.layers import (
    DTYPES,
    Dense,
    RunSettings,
    gelu,
    layer_norm,
    normal_init,
)

# model.remat: what the backward pass keeps of each layer (the rest is recomputed). "none" keeps
# everything; "full" keeps only the layer's input; "dots" keeps the matmul outputs that have no
# batch dimension in their contraction (weights x activations), recomputing the cheap rest.
REMAT_POLICIES = {
    "none": None, "full": None, "dots": "dots_with_no_batch_dims_saveable",
    "dots_saveable": "dots_saveable"
}

# BertConfig fields that say how to run the model, not what it is (not in an HF config.json)
RUN_FIELDS = ("dtype", "param_dtype", "precision", "remat", "attention")
# 'pure': activations in dtype; 'amp': matmuls in dtype, embeddings, LayerNorms and the residual
# stream float32 (PyTorch autocast: half-precision linear outputs, float32 layer_norm and sums)
PRECISIONS = ("pure", "amp")


@dataclasses.dataclass(frozen=True)
class BertConfig(RunSettings):
  """Architecture (HF field names) plus how to run it (RUN_FIELDS: dtype, param_dtype, precision,
  remat, attention)."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  pad_token_id: int = 0
  initializer_range: float = 0.02
  # HF's model_type: "bert", or "roberta" / "xlm-roberta" (the same encoder; positions count from
  # pad_token_id + 1, as HF's RobertaEmbeddings number them): models/hf.py ARCHITECTURES
  model_type: str = "bert"
  dtype: str = "float32"  # compute dtype of matmuls and activations
  param_dtype: str = "float32"  # storage dtype of parameters
  precision: str = "pure"  # PRECISIONS: where activations other than matmul outputs live
  remat: bool | str = False  # False/'none', True/'full', 'dots', 'dots_saveable' (REMAT_POLICIES)
  # the attention core: models/attention.py (the fused ones drop attention dropout)
  attention: str = "standard"

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"BertConfig.remat={self.remat!r}; expected True, False or one of {sorted(REMAT_POLICIES)}"
      )
    if self.attention not in attention.ATTENTIONS:
      raise ValueError(
          f"BertConfig.attention={self.attention!r}; expected one of {attention.ATTENTIONS}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(
            f"BertConfig.{name}={getattr(self, name)!r}; expected one of {sorted(DTYPES)}")
    if self.precision not in PRECISIONS:
      raise ValueError(f"BertConfig.precision={self.precision!r}; expected one of {PRECISIONS}")
    if self.attention == "cudnn" and self.dtype not in ("bfloat16", "float16"):
      raise ValueError(
          f"BertConfig.attention='cudnn' computes in half precision (cuDNN's fused kernel); "
          f"dtype={self.dtype!r} needs 'bfloat16' or 'float16'")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"BertConfig: hidden_size={self.hidden_size} is not divisible by "
                       f"num_attention_heads={self.num_attention_heads}")

  # What the heads (models/heads.py) read of any encoder config: BERT's norms and dense layers all
  # have biases, its LayerNorm epsilon is layer_norm_eps.
  norm_bias = True
  classifier_bias = True
  decoder_bias = True

  @property
  def norm_eps(self) -> float:
    return self.layer_norm_eps

  @property
  def position_offset(self) -> int:
    """The position embedding row of a text's first token (RoBERTa reserves 0..pad_token_id)."""
    return self.pad_token_id + 1 if self.model_type in ("roberta", "xlm-roberta") else 0

  @property
  def max_tokens(self) -> int:
    """The longest text the position embeddings cover."""
    return self.max_position_embeddings - self.position_offset

  def matmul_flops(self, texts: int, length: int, train: bool = True) -> int:
    """Matmul FLOPs of encoding `texts` texts of `length` tokens through every layer (forward; x3
    with `train`: the backward pass does two matmuls per forward matmul). Per token and layer:
    Q, K, V, output projections 4 x 2D^2, feed-forward 2 x 2DI, attention scores and context
    2 x 2TD. Embedding lookups, norms, softmax, pooling and the loss are not counted (the usual
    model-FLOPs accounting for MFU)."""
    D, I, T = self.hidden_size, self.intermediate_size, length
    forward = self.num_hidden_layers * texts * T * (8 * D * D + 4 * D * I + 4 * T * D)
    return 3 * forward if train else forward

  @classmethod
  def preset(cls, name: str, **overrides) -> "BertConfig":
    """'bert-base' (uncased, 12 x 768), 'minilm-l6-h384' (all-MiniLM-L6-v2's shape), 'tiny' (tests)."""
    if name not in PRESETS:
      raise ValueError(f"unknown BertConfig preset {name!r}; expected one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


PRESETS = {
    "bert-base": BertConfig(),
    "minilm-l6-h384": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                 intermediate_size=1536),
    "tiny": BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=64),
}


def _dense(config: BertConfig, features, axes, name: str, contract: int = 1) -> Dense:
  return Dense(config, features, tuple(axes), contract, name=name)


def _constrain(x, axes):
  return nn.with_logical_constraint(x, axes)


class BertEmbeddings(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, deterministic: bool, positions=None):
    cfg = self.config
    embed = lambda n, rows, axes: nn.Embed(rows, cfg.hidden_size, dtype=cfg.stream_dtype,
                                           param_dtype=cfg.storage_dtype,
                                           embedding_init=normal_init(cfg, axes), name=n)
    if positions is None:
      positions = jnp.arange(input_ids.shape[1])[None, :]
    positions = positions + cfg.position_offset
    x = (embed("word_embeddings", cfg.vocab_size, ("vocab", "embed"))(input_ids) +
         embed("position_embeddings", cfg.max_position_embeddings,
               (None, "embed"))(positions) + embed("token_type_embeddings", cfg.type_vocab_size,
                                                   (None, "embed"))(token_type_ids))
    x = layer_norm(cfg, "LayerNorm")(x)
    x = Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
    return _constrain(x, ("batch", "length", "embed"))


def attention_bias_mask(attention_mask, segments=None):
  """Which keys each query sees, broadcastable to [B, heads, Tq, Tk]. Unpacked: the padding mask
  masks keys only (as in HF). Packed rows (`segments` [B, T]: each token's text, -1 padding): a token
  sees the tokens of its own text only, so each text is encoded as if it were alone in its row."""
  if segments is None:
    return attention_mask[:, None, None, :].astype(bool)
  return ((segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] >= 0))[:, None]


class BertSelfAttention(nn.Module):
  """Multi-head attention over the keys each query may see: `keys` = (attention_bias_mask's
  [B, 1, Tq or 1, Tk] mask, segment ids [B, T]: tokens attend within their segment), the core as
  config.attention picks it (models/attention.py)."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, keys, deterministic: bool):
    cfg = self.config
    attention_mask, segment_ids = keys
    heads = (cfg.num_attention_heads, cfg.head_dim)
    q, k, v = (_dense(cfg, heads, ("embed", "heads", "kv"), n)(x)
               for n in ("query", "key", "value"))
    q = _constrain(q, ("batch", "length", "heads", "kv"))
    k = _constrain(k, ("batch", "length", "heads", "kv"))
    v = _constrain(v, ("batch", "length", "heads", "kv"))
    if cfg.attention == "dot_product":
      return _constrain(attention.dot_product(q, k, v, attention_mask),
                        ("batch", "length", "heads", "kv"))
    if cfg.attention == "flash":
      return _constrain(attention.flash(q, k, v, segment_ids), ("batch", "length", "heads", "kv"))
    if cfg.attention == "cudnn":
      packed = attention_mask.shape[2] > 1  # attention_bias_mask: [B, 1, T, T] for packed rows
      return _constrain(attention.cudnn(q, k, v, segment_ids, packed),
                        ("batch", "length", "heads", "kv"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.head_dim)
    scores = jnp.where(attention_mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
    probs = Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return _constrain(context, ("batch", "length", "heads", "kv"))


class BertOutput(nn.Module):
  """dense -> dropout -> LayerNorm(residual + .); HF's BertSelfOutput and BertOutput alike."""
  config: BertConfig
  kernel_axes: tuple[str, ...]
  contract: int = 1  # trailing input axes contracted (2 for the attention output: heads, kv)

  @nn.compact
  def __call__(self, h, residual, deterministic: bool):
    cfg = self.config
    h = _dense(cfg, cfg.hidden_size, self.kernel_axes, "dense", contract=self.contract)(h)
    h = Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
    return layer_norm(cfg, "LayerNorm")(residual + h)


class BertAttention(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, keys, deterministic: bool):
    context = BertSelfAttention(self.config, name="self")(x, keys, deterministic)
    return BertOutput(self.config, ("heads", "kv", "embed"), 2, name="output")(context, x,
                                                                               deterministic)


class BertIntermediate(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h = _dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "dense")(x)
    h = gelu(h)
    return _constrain(h, ("batch", "length", "mlp"))


class BertLayer(nn.Module):
  """One post-LN transformer block, named as HF's BertLayer; `keys` as BertSelfAttention's."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, keys, deterministic: bool):
    cfg = self.config
    x = BertAttention(cfg, name="attention")(x, keys, deterministic)
    h = BertIntermediate(cfg, name="intermediate")(x)
    x = BertOutput(cfg, ("mlp", "embed"), name="output")(h, x, deterministic)
    return _constrain(x, ("batch", "length", "embed"))


def remat_layer(config, layer_cls=None, static_argnums=(3,)):
  """`layer_cls` (BertLayer), or its rematerialised form under config.remat (REMAT_POLICIES; the
  same parameter names); `static_argnums`: its `deterministic` argument."""
  layer_cls = BertLayer if layer_cls is None else layer_cls
  saveable = REMAT_POLICIES[config.remat_policy]
  if config.remat_policy == "none":
    return layer_cls
  return nn.remat(layer_cls, static_argnums=static_argnums,
                  policy=getattr(jax.checkpoint_policies, saveable) if saveable else None)


class BertLayerStack(nn.Module):
  """HF's BertEncoder: layer_0 .. layer_{N-1}; runs the first `num_layers` of them."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, keys, num_layers: int, deterministic: bool):
    cfg = self.config
    layer_cls = remat_layer(cfg)
    hidden_states = [x]
    for i in range(num_layers):  # static Python loop: only the first n layers are traced and run
      x = layer_cls(cfg, name=f"layer_{i}")(x, keys, deterministic)
      hidden_states.append(x)
    return hidden_states


class BertEncoder(nn.Module):
  """Embeddings + layers; returns all hidden states [num_layers + 1, B, T, D] in HF order.

  `apply(..., method="hidden_states")` (or encoders.hidden_states) returns the same states as
  a tuple of num_layers + 1 arrays [B, T, D]: losses pick layers from the tuple, since the gradient
  of `stacked[n]` is a zero-padded copy of the whole stack, which XLA does not fold away.
  """
  config: BertConfig

  def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
               num_layers: int | None = None, deterministic: bool = True, segments=None,
               positions=None):
    return jnp.stack(
        self.hidden_states(input_ids, attention_mask, token_type_ids, num_layers=num_layers,
                           deterministic=deterministic, segments=segments, positions=positions))

  @nn.compact
  def hidden_states(self, input_ids, attention_mask, token_type_ids=None, *,
                    num_layers: int | None = None, deterministic: bool = True, segments=None,
                    positions=None) -> tuple[jax.Array, ...]:
    cfg = self.config
    n = cfg.num_hidden_layers if num_layers is None else num_layers
    if not 0 <= n <= cfg.num_hidden_layers:
      raise ValueError(f"num_layers={n} is outside 0..{cfg.num_hidden_layers} for this encoder")
    if input_ids.shape[1] > cfg.max_position_embeddings:
      raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings="
                       f"{cfg.max_position_embeddings}")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if (segments is None) != (positions is None):
      raise ValueError("packed rows need both segments and positions")
    x = BertEmbeddings(cfg, name="embeddings")(input_ids, token_type_ids, deterministic, positions)
    keys = (attention_bias_mask(attention_mask,
                                segments), attention_mask if segments is None else segments)
    return tuple(BertLayerStack(cfg, name="encoder")(x, keys, n, deterministic))
