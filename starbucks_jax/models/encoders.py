"""The encoder of a config, whatever its architecture: BERT, RoBERTa and XLM-R (models/bert.py's
BertConfig) or ModernBERT (models/modernbert.py's ModernBertConfig). Code outside models/ reaches an
encoder through these functions only, so every objective, step, export and report runs on each.

Our parameter tree keeps the encoder under `bert` whatever the architecture (the name the orbax
checkpoints have always used); the paths inside it are the architecture's own (HF's names).
"""

from __future__ import annotations

from typing import Any, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from starbucks_jax.models import bert, modernbert
from starbucks_jax.models.bert import BertConfig
from starbucks_jax.models.modernbert import ModernBertConfig

EncoderConfig = Union[BertConfig, ModernBertConfig]
RUN_FIELDS = bert.RUN_FIELDS  # the fields that say how to run a model, in every encoder config

PRESETS = {**bert.PRESETS, **modernbert.PRESETS}  # name -> config: shapes for compile reports


def preset(name: str, **overrides) -> EncoderConfig:
  """A named shape: 'bert-base', 'minilm-l6-h384', 'tiny', 'modernbert-base', 'modernbert-large'."""
  if name not in PRESETS:
    raise ValueError(f"unknown encoder preset {name!r}; expected one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def module(config: EncoderConfig) -> nn.Module:
  """The flax module of `config`'s architecture (BertEncoder or ModernBertEncoder)."""
  if isinstance(config, ModernBertConfig):
    return modernbert.ModernBertEncoder(config)
  return bert.BertEncoder(config)


def hidden_states(params, config: EncoderConfig, input_ids, attention_mask, *,
                  num_layers: int | None = None, deterministic: bool = True,
                  rng: jax.Array | None = None, segments=None,
                  positions=None) -> tuple[jax.Array, ...]:
  """The encoder's forward as a function: num_layers + 1 hidden states [B, T, D] (HF order), only
  the first num_layers layers run; `rng` is the dropout key when not deterministic. Packed rows
  (several texts per row): `segments` and `positions` [B, T] (bert.attention_bias_mask).
  ModernBERT's states past the embeddings come through its final norm: state n is the n-layer
  model's output."""
  return module(config).apply({"params": params}, input_ids, attention_mask, num_layers=num_layers,
                              deterministic=deterministic, segments=segments, positions=positions,
                              rngs=None if deterministic else {"dropout": rng},
                              method="hidden_states")


def init_params(config: EncoderConfig, rng: jax.Array, seq_len: int = 8) -> dict[str, Any]:
  """Random parameters (unboxed); HF's init: normal(initializer_range), LayerNorm ones / zeros."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return nn.meta.unbox(module(config).init(rng, ids, jnp.ones_like(ids))["params"])


def abstract_params(config: EncoderConfig) -> dict[str, Any]:
  """Shapes and dtypes of init_params' tree (no memory), in config.param_dtype."""
  return jax.eval_shape(lambda: jax.tree.map(lambda x: x.astype(config.storage_dtype),
                                             init_params(config, jax.random.key(0))))


def param_logical_axes(config: EncoderConfig) -> dict[str, Any]:
  """The logical axis names of every parameter, as a tree of PartitionSpec (no allocation)."""
  def init():  # inputs made inside: nothing runs eagerly (callable under any mesh)
    ids = jnp.zeros((1, 8), jnp.int32)
    return module(config).init(jax.random.key(0), ids, jnp.ones_like(ids))

  return nn.get_partition_spec(jax.eval_shape(init))["params"]


def word_embeddings(params: dict[str, Any], config: EncoderConfig):
  """The token embedding table [vocab, D] of an encoder's params (the MLM decoder is tied to it)."""
  if isinstance(config, ModernBertConfig):
    return params["embeddings"]["tok_embeddings"]["embedding"]
  return params["embeddings"]["word_embeddings"]["embedding"]


def first_layer(params: dict[str, Any], config: EncoderConfig) -> dict[str, Any]:
  """Layer 0's params (SMAE's decoder starts as a copy of it)."""
  if isinstance(config, ModernBertConfig):
    return params["layers_0"]
  return params["encoder"]["layer_0"]


def embed(params: dict[str, Any], config: EncoderConfig, input_ids, deterministic: bool = True,
          rng: jax.Array | None = None):
  """The embeddings' output [B, T, D] for `input_ids` (SMAE's decoder input), from the encoder's
  embedding params."""
  rngs = None if deterministic else {"dropout": rng}
  if isinstance(config, ModernBertConfig):
    return modernbert.Embeddings(config).apply({"params": params["embeddings"]}, input_ids,
                                               deterministic, rngs=rngs)
  return bert.BertEmbeddings(config).apply({"params": params["embeddings"]}, input_ids,
                                           jnp.zeros_like(input_ids), deterministic, rngs=rngs)


def layer_index(path: str) -> int | None:
  """The layer a parameter path (inside the encoder's tree) belongs to, else None."""
  for prefix in ("encoder/layer_", "layers_"):
    if path.startswith(prefix):
      return int(path[len(prefix):].split("/")[0])
  return None
