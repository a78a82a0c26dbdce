"""config.json <-> our encoder configs (BertConfig for BERT, RoBERTa and XLM-R; ModernBertConfig),
both directions, for every architecture models/hf.py's registry holds.

ModernBERT's files come in two spellings: transformers 4 wrote global_attn_every_n_layers and
global/local_rope_theta; transformers 5 writes layer_types (one 'full_attention' or
'sliding_attention' per layer) and rope_parameters. Both are read (layer_types must be the every-n
pattern our encoder computes) and both are written, so either version loads our exports.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from starbucks_jax.models.bert import RUN_FIELDS, BertConfig
from starbucks_jax.models.encoders import EncoderConfig
from starbucks_jax.models.hf import ModelError, architecture
from starbucks_jax.models.modernbert import ModernBertConfig


def _fields(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)} - set(RUN_FIELDS)


def config_from_json(raw: dict[str, Any], file: str, **overrides) -> EncoderConfig:
  """The encoder config of a config.json's fields; what the encoders do not compute is a ModelError
  naming `file` and the field."""
  model_type = raw.get("model_type")
  architecture(model_type, where=f"{file}: ")
  if model_type == "modernbert":
    return _modernbert(raw, file, overrides)
  if raw.get("hidden_act", "gelu") != "gelu":
    raise ModelError(f"{file}: hidden_act={raw['hidden_act']!r}; only exact 'gelu' is supported")
  if raw.get("position_embedding_type", "absolute") != "absolute":
    raise ModelError(f"{file}: position_embedding_type={raw['position_embedding_type']!r}; only "
                     "'absolute' is supported")
  kw = {k: raw[k] for k in _fields(BertConfig) if k in raw and raw[k] is not None}
  return BertConfig(**{**kw, **overrides})


def _modernbert(raw: dict[str, Any], file: str, overrides: dict[str, Any]) -> ModernBertConfig:
  for key in ("hidden_activation", "classifier_activation"):
    if raw.get(key, "gelu") != "gelu":
      raise ModelError(f"{file}: {key}={raw[key]!r}; only exact 'gelu' is supported")
  kw = {k: raw[k] for k in _fields(ModernBertConfig) if k in raw and raw[k] is not None}
  rope = raw.get("rope_parameters") or {}
  for kind, field in (("full_attention", "global_rope_theta"), ("sliding_attention",
                                                                "local_rope_theta")):
    params = rope.get(kind) or {}
    if params.get("rope_type", "default") != "default":
      raise ModelError(f"{file}: rope_parameters[{kind!r}] rope_type={params['rope_type']!r}; only "
                       "'default' (plain RoPE) is supported")
    if "rope_theta" in params:
      kw[field] = float(params["rope_theta"])
  if raw.get("rope_scaling"):
    raise ModelError(f"{file}: rope_scaling={raw['rope_scaling']!r} is not supported")
  config = ModernBertConfig(**{**kw, **overrides})
  types = raw.get("layer_types")
  if types is not None and list(types) != layer_types(config):
    raise ModelError(
        f"{file}: layer_types={types} is not global attention every "
        f"{config.global_attn_every_n_layers} layers from layer 0 (global_attn_every_n_layers); "
        "only that pattern is supported")
  return config


def layer_types(config: ModernBertConfig) -> list[str]:
  """transformers 5's layer_types of a ModernBERT config."""
  return [
      "full_attention" if config.is_global(i) else "sliding_attention"
      for i in range(config.num_hidden_layers)
  ]


def config_to_hf(config: EncoderConfig, masked_lm: bool = False) -> dict[str, Any]:
  """HF's config.json fields of `config` (its model_type's model class, or its MLM class)."""
  arch = architecture(config.model_type)
  out = {k: getattr(config, k) for k in sorted(_fields(type(config)))}
  out.update(architectures=[arch.masked_lm if masked_lm else arch.model], torch_dtype="float32")
  if isinstance(config, ModernBertConfig):
    out.update(
        hidden_activation="gelu", classifier_activation="gelu", tie_word_embeddings=True,
        layer_types=layer_types(config), rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": config.global_rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": config.local_rope_theta}
        })
  else:
    out.update(hidden_act="gelu", position_embedding_type="absolute")
  return out
