"""Hugging Face / sentence-transformers checkpoints <-> our parameter tree, both directions.

Our tree has up to three groups: `bert` (the encoder's params, models/encoders.py), `pooler` (HF's
BertPooler) and `mlm_head` (HF's `cls.predictions`, `lm_head` or ModernBERT's `head` + `decoder`).
Each architecture's key table maps a parameter path to its HF name; the transforms reshape kernels
between HF's [out, in] matrices and our tensors that keep heads (and ModernBERT's fused q/k/v and
GeGLU halves) as axes. config.json is hf_config.py's; reading and writing model directories (and
the Hub) is model_dirs.py's.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import numpy as np

from starbucks_jax.config_lib import InputError
from starbucks_jax.models import encoders
from starbucks_jax.models.bert import BertConfig
from starbucks_jax.models.encoders import EncoderConfig

PARAM_GROUPS = ("bert", "pooler", "mlm_head")  # the groups of our tree that HF checkpoints hold


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What one HF model_type's checkpoints are: its classes, the prefix of the encoder's weights
  inside its MLM class, its key table ((our path, HF name, transform) templates, {x}: one of
  _GROUPS), the HF names that carry no parameter of ours, and the MLM decoder's weight (tied to the
  token table)."""
  name: str
  model: str
  masked_lm: str
  prefix: str
  keys: tuple[tuple[str, str, str], ...]
  ignored: tuple[str, ...]
  decoder: str


class ModelError(InputError):
  """A model directory or checkpoint that cannot be used as it is; the message names the file."""


# ---------------------------------------------------------------------------------------------
# The key tables. {i}: layer index; {x}: one of the alternatives listed in _GROUPS.
# (our path under its group, HF name after the prefix, transform)
# ---------------------------------------------------------------------------------------------
_GROUPS = {
    "i": r"\d+", "qkv": "query|key|value", "emb": "word|position|token_type", "ln": "scale|bias",
    "norm": "attn_norm|mlp_norm"
}
_BERT_ENCODER = (
    ("bert/embeddings/{emb}_embeddings/embedding", "embeddings.{emb}_embeddings.weight", "copy"),
    ("bert/embeddings/LayerNorm/{ln}", "embeddings.LayerNorm.{ln}", "copy"),
    ("bert/encoder/layer_{i}/attention/self/{qkv}/kernel",
     "encoder.layer.{i}.attention.self.{qkv}.weight", "heads_in"),
    ("bert/encoder/layer_{i}/attention/self/{qkv}/bias",
     "encoder.layer.{i}.attention.self.{qkv}.bias", "heads_bias"),
    ("bert/encoder/layer_{i}/attention/output/dense/kernel",
     "encoder.layer.{i}.attention.output.dense.weight", "heads_out"),
    ("bert/encoder/layer_{i}/attention/output/dense/bias",
     "encoder.layer.{i}.attention.output.dense.bias", "copy"),
    ("bert/encoder/layer_{i}/attention/output/LayerNorm/{ln}",
     "encoder.layer.{i}.attention.output.LayerNorm.{ln}", "copy"),
    ("bert/encoder/layer_{i}/intermediate/dense/kernel",
     "encoder.layer.{i}.intermediate.dense.weight", "linear"),
    ("bert/encoder/layer_{i}/intermediate/dense/bias", "encoder.layer.{i}.intermediate.dense.bias",
     "copy"),
    ("bert/encoder/layer_{i}/output/dense/kernel", "encoder.layer.{i}.output.dense.weight",
     "linear"),
    ("bert/encoder/layer_{i}/output/dense/bias", "encoder.layer.{i}.output.dense.bias", "copy"),
    ("bert/encoder/layer_{i}/output/LayerNorm/{ln}", "encoder.layer.{i}.output.LayerNorm.{ln}",
     "copy"),
    ("pooler/dense/kernel", "pooler.dense.weight", "linear"),
    ("pooler/dense/bias", "pooler.dense.bias", "copy"),
)


def _mlm_head(dense: str, norm: str, bias: str) -> tuple[tuple[str, str, str], ...]:
  return (("mlm_head/transform/dense/kernel", dense + ".weight",
           "linear"), ("mlm_head/transform/dense/bias", dense + ".bias", "copy"),
          ("mlm_head/transform/LayerNorm/{ln}", norm + ".{ln}", "copy"), ("mlm_head/bias", bias,
                                                                          "copy"))


_MODERNBERT = (
    ("bert/embeddings/tok_embeddings/embedding", "embeddings.tok_embeddings.weight", "copy"),
    ("bert/embeddings/norm/{ln}", "embeddings.norm.{ln}", "copy"),
    ("bert/layers_{i}/{norm}/{ln}", "layers.{i}.{norm}.{ln}", "copy"),
    ("bert/layers_{i}/attn/Wqkv/kernel", "layers.{i}.attn.Wqkv.weight", "qkv"),
    ("bert/layers_{i}/attn/Wqkv/bias", "layers.{i}.attn.Wqkv.bias", "qkv_bias"),
    ("bert/layers_{i}/attn/Wo/kernel", "layers.{i}.attn.Wo.weight", "heads_out"),
    ("bert/layers_{i}/attn/Wo/bias", "layers.{i}.attn.Wo.bias", "copy"),
    ("bert/layers_{i}/mlp/Wi/kernel", "layers.{i}.mlp.Wi.weight", "glu"),
    ("bert/layers_{i}/mlp/Wi/bias", "layers.{i}.mlp.Wi.bias", "glu_bias"),
    ("bert/layers_{i}/mlp/Wo/kernel", "layers.{i}.mlp.Wo.weight", "linear"),
    ("bert/layers_{i}/mlp/Wo/bias", "layers.{i}.mlp.Wo.bias", "copy"),
    ("bert/final_norm/{ln}", "final_norm.{ln}", "copy"),
) + _mlm_head("head.dense", "head.norm", "decoder.bias")
_ROBERTA = _BERT_ENCODER + _mlm_head("lm_head.dense", "lm_head.layer_norm", "lm_head.bias")
_ROBERTA_IGNORED = (r"(roberta\.)?embeddings\.position_ids", r"lm_head\.decoder\.(weight|bias)")
# The one registry of the architectures the project loads and writes, keyed by HF's model_type.
# RoBERTa and XLM-RoBERTa are BERT's encoder with positions counted from pad_token_id + 1
# (BertConfig.position_offset) and one token type; ModernBERT is models/modernbert.py's.
ARCHITECTURES = {
    "bert": Architecture(
        "BERT", "BertModel", "BertForMaskedLM", "bert.",
        _BERT_ENCODER + _mlm_head("cls.predictions.transform.dense",
                                  "cls.predictions.transform.LayerNorm", "cls.predictions.bias"),
        (r"(bert\.)?embeddings\.position_ids", r"cls\.predictions\.decoder\.(weight|bias)",
         r"cls\.seq_relationship\.(weight|bias)"), "cls.predictions.decoder.weight"),
    "roberta": Architecture("RoBERTa", "RobertaModel", "RobertaForMaskedLM", "roberta.", _ROBERTA,
                            _ROBERTA_IGNORED, "lm_head.decoder.weight"),
    "xlm-roberta": Architecture("XLM-RoBERTa", "XLMRobertaModel", "XLMRobertaForMaskedLM",
                                "roberta.", _ROBERTA, _ROBERTA_IGNORED, "lm_head.decoder.weight"),
    "modernbert": Architecture("ModernBERT", "ModernBertModel", "ModernBertForMaskedLM", "model.",
                               _MODERNBERT, (r"decoder\.weight",), "decoder.weight"),
}
KEY_TABLE = ARCHITECTURES["bert"].keys


def architecture(model_type: str, where: str = "") -> Architecture:
  """The registry's entry; an unsupported model_type is a ModelError listing the supported ones."""
  if model_type not in ARCHITECTURES:
    raise ModelError(f"{where}model_type={model_type!r} is not supported; starbucks_jax loads "
                     f"{', '.join(repr(t) for t in ARCHITECTURES)}")
  return ARCHITECTURES[model_type]


# Legacy TF-converted names (bert-base-uncased's own files): LayerNorm.gamma / .beta.
_LEGACY = ((re.compile(r"LayerNorm\.gamma$"), "LayerNorm.weight"), (re.compile(r"LayerNorm\.beta$"),
                                                                    "LayerNorm.bias"))

# LayerNorm parameters are named scale/bias here and weight/bias in HF.
_LN_TO_HF = {"scale": "weight", "bias": "bias"}
_LN_FROM_HF = {v: k for k, v in _LN_TO_HF.items()}


def _pattern(template: str, groups: dict[str, str]) -> re.Pattern:
  out, pos = [], 0
  for m in re.finditer(r"\{(\w+)\}", template):
    out.append(re.escape(template[pos:m.start()]))
    out.append(f"(?P<{m.group(1)}>{groups[m.group(1)]})")
    pos = m.end()
  out.append(re.escape(template[pos:]))
  return re.compile("".join(out) + "$")


@functools.lru_cache(maxsize=None)
def _patterns(model_type: str):
  """(ours -> HF, HF -> ours) compiled key tables of an architecture."""
  keys = architecture(model_type).keys
  return ([(_pattern(a, _GROUPS), b, t) for a, b, t in keys],
          [(_pattern(b, {**_GROUPS, "ln": "weight|bias"}), a, t) for a, b, t in keys])


def _is_encoder_key(our_path: str) -> bool:
  return our_path.startswith("bert/") or our_path.startswith("pooler/")


def _transforms(cfg: EncoderConfig) -> dict[str, tuple[Any, Any]]:
  """name -> (ours -> HF, HF -> ours): HF stores [out, in] matrices, we keep heads (and
  ModernBERT's q/k/v and GeGLU halves) as axes."""
  d, h, k, i = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size
  return {
      "copy": (lambda x: x, lambda x: x),
      "linear": (lambda x: x.T, lambda x: x.T),
      "heads_in": (lambda x: x.reshape(d, h * k).T, lambda x: x.T.reshape(d, h, k)),  # [D, H, K]
      "heads_bias": (lambda x: x.reshape(h * k), lambda x: x.reshape(h, k)),  # [H, K]
      "heads_out": (lambda x: x.reshape(h * k, d).T, lambda x: x.T.reshape(h, k, d)),  # [H, K, D]
      "qkv": (lambda x: x.reshape(d, 3 * h * k).T, lambda x: x.T.reshape(d, 3, h, k)),  # D 3 H K
      "qkv_bias": (lambda x: x.reshape(3 * h * k), lambda x: x.reshape(3, h, k)),
      "glu": (lambda x: x.reshape(d, 2 * i).T, lambda x: x.T.reshape(d, 2, i)),  # [D, 2, I]
      "glu_bias": (lambda x: x.reshape(2 * i), lambda x: x.reshape(2, i)),
  }


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else k
    out.update(flatten(v, path) if isinstance(v, dict) else {path: v})
  return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def hf_key(our_path: str, prefixed: bool, model_type: str = "bert") -> tuple[str, str]:
  """(HF name, transform) of one of our parameter paths in a `model_type` checkpoint; `prefixed`
  adds the MLM class's prefix ('bert.', 'roberta.', 'model.') to encoder keys."""
  for pat, template, transform in _patterns(model_type)[0]:
    m = pat.match(our_path)
    if m:
      groups = m.groupdict()
      if "ln" in groups:
        groups["ln"] = _LN_TO_HF[groups["ln"]]
      name = template.format(**groups)
      prefix = architecture(model_type).prefix
      return (prefix + name if prefixed and _is_encoder_key(our_path) else name), transform
  raise KeyError(f"parameter {our_path!r} has no Hugging Face name in the {model_type} key table")


def our_key(hf_name: str, model_type: str = "bert") -> tuple[str, str] | None:
  """(our path, transform) of a `model_type` checkpoint's weight name (with or without the MLM
  class's prefix), else None."""
  prefix = architecture(model_type).prefix
  name = hf_name.removeprefix(prefix)
  for pat, template, transform in _patterns(model_type)[1]:
    m = pat.match(name)
    if m:
      groups = m.groupdict()
      if "ln" in groups:
        groups["ln"] = _LN_FROM_HF[groups["ln"]]
      return template.format(**groups), transform
  return None


def params_to_hf(params: dict[str, Any], config: EncoderConfig,
                 prefixed: bool) -> dict[str, np.ndarray]:
  """Our tree -> HF state dict of config.model_type (float32 numpy, contiguous)."""
  out, transforms = {}, _transforms(config)
  for path, x in flatten(params).items():
    name, transform = hf_key(path, prefixed, config.model_type)
    out[name] = np.ascontiguousarray(transforms[transform][0](np.asarray(x, np.float32)))
  return out


def check_finite_weight(source: str, name: str, x) -> None:
  """A weight with a NaN or an infinity is an error naming the tensor (it would poison every step)."""
  x = np.asarray(x)
  if np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16":
    bad = int(x.size - np.isfinite(x.astype(np.float32)).sum())
    if bad:
      raise ModelError(f"{source}: weight {name!r} has {bad} NaN or infinite value(s) of {x.size}")


@functools.lru_cache(maxsize=16)
def _encoder_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
  """Each encoder parameter's shape under `config` (traced once per config)."""
  return {f"bert/{k}": tuple(v.shape) for k, v in flatten(encoders.abstract_params(config)).items()}


_SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                "max_position_embeddings", "type_vocab_size")


def check_shapes(flat: dict[str, np.ndarray], config: EncoderConfig, source: str) -> None:
  """A ModelError naming the first encoder weight whose shape config.json's sizes do not give (a
  config.json from another model, or weights cut short): before any compute."""
  want = _encoder_shapes(config)
  for path, x in flat.items():
    if path in want and tuple(np.shape(x)) != want[path]:
      sizes = ", ".join(f"{k}={getattr(config, k)}" for k in _SIZE_FIELDS if hasattr(config, k))
      raise ModelError(f"{source}: weight {hf_key(path, False, config.model_type)[0]!r} has shape "
                       f"{tuple(np.shape(x))}, but config.json ({sizes}) makes it {want[path]}: "
                       "the config and the weights are not of one model")


def params_from_hf(state: dict[str, np.ndarray], config: EncoderConfig,
                   source: str = "<state dict>") -> dict[str, Any]:
  """HF state dict -> our tree. Unknown keys or missing encoder keys raise, listing them."""
  flat, unknown, renamed = {}, [], {}
  transforms, arch = _transforms(config), architecture(config.model_type)
  ignored = [re.compile(p) for p in arch.ignored]
  for name, x in state.items():
    for pat, repl in _LEGACY:
      name = pat.sub(repl, name)
    renamed[name] = x
  for name, x in renamed.items():
    if any(p.fullmatch(name) for p in ignored):
      continue
    mapped = our_key(name, config.model_type)
    if mapped is None:
      unknown.append(name)
      continue
    path, transform = mapped
    check_finite_weight(source, name, x)
    try:
      flat[path] = transforms[transform][1](np.asarray(x))
    except ValueError as e:
      raise ModelError(
          f"{source}: weight {name!r} of shape {np.shape(x)} does not fit the config "
          f"(hidden_size={config.hidden_size}, heads={config.num_attention_heads}): {e}")
  if unknown:
    raise ModelError(f"{source}: {len(unknown)} weight(s) are not part of a {arch.name} model: "
                     f"{sorted(unknown)[:20]}")
  expected = {p for p in expected_paths(config, pooler=False, mlm_head=False)}
  missing = sorted(expected - flat.keys())
  if missing:
    raise ModelError(f"{source}: {len(missing)} {arch.name} weight(s) are missing: "
                     f"{[hf_key(p, False, config.model_type)[0] for p in missing][:20]}")
  check_shapes(flat, config, source)
  extra_layers = sorted(p for p in flat if p.startswith("bert/") and p not in expected)
  if extra_layers:
    raise ModelError(f"{source}: weights beyond num_hidden_layers={config.num_hidden_layers}: "
                     f"{[hf_key(p, False, config.model_type)[0] for p in extra_layers][:20]}")
  for group in ("pooler", "mlm_head"):
    have = {p for p in flat if p.startswith(group + "/")}
    want = {
        p for p in expected_paths(config, pooler=True, mlm_head=True) if p.startswith(group + "/")
    }
    if have and have != want:
      raise ModelError(f"{source}: incomplete {group} weights; missing "
                       f"{[hf_key(p, False, config.model_type)[0] for p in sorted(want - have)]}")
  decoder = {k.removeprefix(arch.prefix): v for k, v in renamed.items()}.get(arch.decoder)
  if decoder is not None:
    words = encoders.word_embeddings(unflatten(flat)["bert"], config)
    if decoder.shape != words.shape or not np.array_equal(np.asarray(decoder), np.asarray(words)):
      raise ModelError(f"{source}: {arch.decoder} differs from the word embeddings; "
                       "only MLM heads tied to the embeddings (HF's default) are supported")
  return unflatten(flat)


def expected_paths(config: EncoderConfig, pooler: bool, mlm_head: bool) -> list[str]:
  """Every parameter path our modules create for `config` (the key-set the table must cover);
  ModernBERT has no pooler."""
  import jax  # local: keep this module importable without initialising a backend
  import jax.numpy as jnp

  from starbucks_jax.models.heads import BertPooler, MlmHead

  paths = ["bert/" + p for p in flatten(encoders.abstract_params(config))]
  if pooler and isinstance(config, BertConfig):
    tree = jax.eval_shape(lambda: BertPooler(config).init(jax.random.key(
        0), jnp.zeros((1, 2, config.hidden_size)))["params"])
    paths += ["pooler/" + p for p in flatten(tree)]
  if mlm_head:
    tree = jax.eval_shape(
        lambda: MlmHead(config).init(jax.random.key(0), jnp.zeros(
            (1, config.hidden_size)), jnp.zeros((config.vocab_size, config.hidden_size)))["params"])
    paths += ["mlm_head/" + p for p in flatten(tree)]
  return paths
