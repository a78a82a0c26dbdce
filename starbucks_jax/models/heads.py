"""Heads on top of the encoder: HF's pooler, the MLM head with input-dim slicing, the MAE decoder.

The MLM head of a sub-model (n, d) reads `hidden_states[n][..., :d]` and uses only the first d
input columns of its dense weight (HF's `W[:, :d]`, our kernel `[:d, :]`); GELU, LayerNorm and
the decoder tied to the word embeddings are shared by every pair (docs/method.md, SMAE). The SMAE
decoder is one BERT layer (initialised from the encoder's layer 0) over the embedded decoder copy
whose position 0 is replaced by the head transform of the sub-model's `hidden_states[n][:, 0, :d]`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from starbucks_jax.models.bert import BertConfig, _layer_norm, attention_bias_mask, remat_layer
from starbucks_jax.models.layers import gelu, normal_init, zeros_init


class SlicedDense(nn.Module):
  """A [in, out] dense layer that accepts inputs narrower than `in` by using kernel[:d]."""
  config: BertConfig
  features: int
  kernel_axes: tuple[str, str] = ("embed", "mlp")

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kernel = self.param("kernel", normal_init(cfg, self.kernel_axes),
                        (cfg.hidden_size, self.features), cfg.storage_dtype)
    bias = self.param("bias", zeros_init(self.kernel_axes[1:]), (self.features,), cfg.storage_dtype)
    d = x.shape[-1]
    if d > cfg.hidden_size:
      raise ValueError(f"input dim {d} exceeds hidden_size={cfg.hidden_size}")
    kernel = jnp.asarray(kernel[:d], cfg.compute_dtype)
    return jnp.dot(x.astype(cfg.compute_dtype), kernel) + jnp.asarray(bias, cfg.compute_dtype)


class MlmTransform(nn.Module):
  """HF's BertPredictionHeadTransform: dense (sliced) -> exact GELU -> LayerNorm."""
  config: BertConfig

  @nn.compact
  def __call__(self, x):
    h = SlicedDense(self.config, self.config.hidden_size, name="dense")(x)
    h = gelu(h)
    return _layer_norm(self.config, "LayerNorm")(h)


class MlmHead(nn.Module):
  """HF's BertLMPredictionHead: transform, then the decoder tied to the word embeddings + bias.

  Call with the positions to score already gathered (never [B, T, vocab] for every pair).
  """
  config: BertConfig

  def setup(self):
    self.transform = MlmTransform(self.config)
    self.bias = self.param("bias", zeros_init(("vocab",)), (self.config.vocab_size,),
                           self.config.storage_dtype)

  def __call__(self, x, word_embeddings):
    h = self.transform(x).astype(self.config.compute_dtype)  # a matmul: half precision under amp
    logits = jnp.dot(h, jnp.asarray(word_embeddings, h.dtype).T)
    return logits.astype(jnp.float32) + self.bias.astype(jnp.float32)


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
  vector), through one BERT layer with the text's padding mask -> [B, T, D]. Rematerialised as the
  encoder's layers are (model.remat): each pair's pass keeps only its input for the backward pass."""
  config: BertConfig

  @nn.compact
  def __call__(self, embedded, first, attention_mask, deterministic: bool = True):
    x = embedded.at[:, 0].set(first.astype(embedded.dtype))
    keys = (attention_bias_mask(attention_mask), attention_mask)
    return remat_layer(self.config)(self.config, name="layer_0")(x, keys, deterministic)
