"""Heads on top of the encoder: HF's pooler, the MLM head with input-dim slicing, the MAE decoder.

The MLM head of a sub-model (n, d) reads `hidden_states[n][..., :d]` and uses only the first d
input columns of its dense weight (HF's `W[:, :d]`, our kernel `[:d, :]`); GELU, LayerNorm and
the decoder tied to the word embeddings are shared by every pair (docs/method.md, SMAE). The SMAE
decoder is one layer of the encoder's kind (initialised from its layer 0) over the embedded decoder
copy whose position 0 is replaced by the head transform of the sub-model's
`hidden_states[n][:, 0, :d]`.
The heads read any encoder config (BertConfig, ModernBertConfig): its norm_eps, norm_bias,
classifier_bias (the transform's dense) and decoder_bias (ModernBERT's head has no dense bias).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from starbucks_jax.models import modernbert
from starbucks_jax.models.bert import BertConfig, attention_bias_mask, remat_layer
from starbucks_jax.models.layers import gelu, layer_norm, normal_init, zeros_init


class SlicedDense(nn.Module):
  """A [in, out] dense layer that accepts inputs narrower than `in` by using kernel[:d]."""
  config: BertConfig
  features: int
  kernel_axes: tuple[str, str] = ("embed", "mlp")
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kernel = self.param("kernel", normal_init(cfg, self.kernel_axes),
                        (cfg.hidden_size, self.features), cfg.storage_dtype)
    d = x.shape[-1]
    if d > cfg.hidden_size:
      raise ValueError(f"input dim {d} exceeds hidden_size={cfg.hidden_size}")
    y = jnp.dot(x.astype(cfg.compute_dtype), jnp.asarray(kernel[:d], cfg.compute_dtype))
    if not self.use_bias:
      return y
    bias = self.param("bias", zeros_init(self.kernel_axes[1:]), (self.features,), cfg.storage_dtype)
    return y + jnp.asarray(bias, cfg.compute_dtype)


class MlmTransform(nn.Module):
  """HF's BertPredictionHeadTransform (ModernBertPredictionHead): dense (sliced) -> exact GELU ->
  LayerNorm."""
  config: BertConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h = SlicedDense(cfg, cfg.hidden_size, use_bias=cfg.classifier_bias, name="dense")(x)
    return layer_norm(cfg, "LayerNorm")(gelu(h))


class MlmHead(nn.Module):
  """HF's BertLMPredictionHead: transform, then the decoder tied to the word embeddings + bias.

  Call with the positions to score already gathered (never [B, T, vocab] for every pair).
  """
  config: BertConfig

  def setup(self):
    self.transform = MlmTransform(self.config)
    if self.config.decoder_bias:
      self.bias = self.param("bias", zeros_init(("vocab",)), (self.config.vocab_size,),
                             self.config.storage_dtype)

  def __call__(self, x, word_embeddings):
    h = self.transform(x).astype(self.config.compute_dtype)  # a matmul: half precision under amp
    logits = jnp.dot(h, jnp.asarray(word_embeddings, h.dtype).T).astype(jnp.float32)
    return logits + self.bias.astype(jnp.float32) if self.config.decoder_bias else logits


class BertPooler(nn.Module):
  """HF's BertPooler (dense + tanh on [CLS]). Kept so HF checkpoints round-trip; SRL does not use it."""
  config: BertConfig

  @nn.compact
  def __call__(self, hidden):
    cfg = self.config
    dense = nn.Dense(cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
                     kernel_init=normal_init(cfg, ("embed", "mlp")), bias_init=zeros_init(
                         ("mlp",)), name="dense")
    return jnp.tanh(dense(hidden[:, 0]))


class MaeDecoder(nn.Module):
  """SMAE's one-layer decoder: `embedded` [B, T, D] (the decoder copy through the shared embeddings)
  with position 0 replaced by `first` [B, D] (the MLM head transform of the sub-model's position-0
  vector), through one layer of the encoder's kind with the text's padding mask -> [B, T, D]
  (ModernBERT's: its layer 0, global, RoPE from position 0). Rematerialised as the encoder's layers
  are (model.remat): each pair's pass keeps only its input for the backward pass."""
  config: BertConfig

  @nn.compact
  def __call__(self, embedded, first, attention_mask, deterministic: bool = True):
    cfg = self.config
    x = embedded.at[:, 0].set(first.astype(embedded.dtype))
    mask = attention_bias_mask(attention_mask)
    if isinstance(cfg, modernbert.ModernBertConfig):
      positions = jnp.arange(x.shape[1])[None, :]
      layer = remat_layer(cfg, modernbert.ModernBertLayer, static_argnums=(4,))
      return layer(cfg, 0, name="layer_0")(x, (mask, mask, attention_mask), positions,
                                           deterministic)
    return remat_layer(cfg)(cfg, name="layer_0")(x, (mask, attention_mask), deterministic)
