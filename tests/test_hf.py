"""HF checkpoint import/export: the key table, lossless round trips, and clear errors."""

import json
import os
import re
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from starbucks_jax import model_dirs
from starbucks_jax.models import bert, hf, modernbert

from conftest import make_hf_bert

TINY = bert.BertConfig.preset("tiny")


@pytest.mark.parametrize("model_type", list(hf.ARCHITECTURES))
def test_key_table_covers_every_parameter_both_ways(model_type):
  """Every path our modules create has one HF name and back; the HF side is exactly what
  transformers builds for the same shapes (its model class and its MLM class), less what the
  architecture's entry ignores (buffers, the tied decoder, BERT's NSP head)."""
  transformers = pytest.importorskip("transformers")
  arch = hf.ARCHITECTURES[model_type]
  sizes = dict(vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=64)
  if model_type == "modernbert":
    ours_cfg = modernbert.ModernBertConfig(**sizes, pad_token_id=0)
    theirs_cfg = transformers.ModernBertConfig(**sizes, pad_token_id=0, bos_token_id=1,
                                               eos_token_id=2, cls_token_id=1, sep_token_id=2)
  else:
    ours_cfg = bert.BertConfig(**sizes, model_type=model_type)
    theirs_cfg = transformers.AutoConfig.for_model(model_type, **sizes)
  ours = set(hf.expected_paths(ours_cfg, pooler=True, mlm_head=True))
  theirs = {hf.hf_key(p, True, model_type)[0] for p in ours}
  assert len(theirs) == len(ours)
  assert {hf.our_key(k, model_type)[0] for k in theirs} == ours
  mlm_keys = set(getattr(transformers, arch.masked_lm)(theirs_cfg).state_dict())
  base_keys = set(getattr(transformers, arch.model)(theirs_cfg).state_dict())
  ignored = lambda k: any(re.fullmatch(p, k) for p in arch.ignored)
  assert {k for k in mlm_keys if not ignored(k)
         } == {hf.hf_key(p, True, model_type)[0] for p in ours if not p.startswith("pooler/")}
  assert {k for k in base_keys if not ignored(k)
         } == {hf.hf_key(p, False, model_type)[0] for p in ours if not p.startswith("mlm_head/")}


def test_round_trip_is_lossless(tiny_hf_dir, tmp_path):
  pre = model_dirs.load_pretrained(tiny_hf_dir)
  assert set(pre.params) == {"bert", "pooler"}
  model_dirs.save_pretrained(str(tmp_path), pre.config, pre.params, pre.tokenizer,
                             sentence=pre.sentence)
  before = load_file(os.path.join(tiny_hf_dir, "model.safetensors"))
  after = load_file(str(tmp_path / "model.safetensors"))
  assert before.keys() == after.keys()
  for k in before:
    np.testing.assert_array_equal(before[k], after[k], err_msg=k)
  cfg_in = json.load(open(os.path.join(tiny_hf_dir, "config.json")))
  cfg_out = json.load(open(tmp_path / "config.json"))
  for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "vocab_size", "layer_norm_eps", "max_position_embeddings", "type_vocab_size"):
    assert cfg_in[k] == cfg_out[k], k


def test_transformers_loads_the_export(tiny_hf_dir, tmp_path):
  torch = pytest.importorskip("torch")
  import transformers
  pre = model_dirs.load_pretrained(tiny_hf_dir)
  model_dirs.save_pretrained(str(tmp_path), pre.config, pre.params, pre.tokenizer,
                             sentence=pre.sentence)
  a = transformers.AutoModel.from_pretrained(tiny_hf_dir).eval()
  b = transformers.AutoModel.from_pretrained(str(tmp_path)).eval()
  ids = torch.tensor([[2, 40, 41, 42, 3, 0]])
  with torch.no_grad():
    np.testing.assert_array_equal(
        a(ids).last_hidden_state.numpy(),
        b(ids).last_hidden_state.numpy())
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert tok("the cat sat")["input_ids"] == pre.tokenizer("the cat sat")["input_ids"]


def test_masked_lm_checkpoint_keeps_its_head(tmp_path):
  torch = pytest.importorskip("torch")
  model = make_hf_bert(tmp_path / "mlm", mlm=True)
  pre = model_dirs.load_pretrained(str(tmp_path / "mlm"))
  assert set(pre.params) == {"bert", "mlm_head"}
  np.testing.assert_array_equal(pre.params["mlm_head"]["bias"],
                                model.cls.predictions.bias.detach().numpy())
  # Our MLM head on HF's last hidden state equals HF's logits.
  from starbucks_jax.models.heads import MlmHead
  ids = torch.tensor([[2, 40, 41, 42, 3]])
  with torch.no_grad():
    out = model(ids, output_hidden_states=True)
  words = pre.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
  ours = MlmHead(pre.config).apply({"params": pre.params["mlm_head"]},
                                   out.hidden_states[-1].numpy(), words)
  np.testing.assert_allclose(ours, out.logits.numpy(), atol=1e-4, rtol=1e-5)
  # Export as BertForMaskedLM and back: identical tensors under HF names.
  model_dirs.save_pretrained(str(tmp_path / "out"), pre.config, pre.params, pre.tokenizer,
                             sentence=pre.sentence)
  assert json.load(open(tmp_path / "out" / "config.json"))["architectures"] == ["BertForMaskedLM"]
  import transformers
  reloaded = transformers.BertForMaskedLM.from_pretrained(str(tmp_path / "out")).eval()
  with torch.no_grad():
    np.testing.assert_array_equal(reloaded(ids).logits.numpy(), model(ids).logits.numpy())


def test_sliced_mlm_head_equals_zeroed_columns():
  from starbucks_jax.models.heads import MlmHead
  cfg = TINY.replace(initializer_range=0.5)
  words = jax.random.normal(jax.random.key(0), (cfg.vocab_size, cfg.hidden_size))
  x = jax.random.normal(jax.random.key(1), (3, cfg.hidden_size))
  head = MlmHead(cfg)
  params = nn.meta.unbox(head.init(jax.random.key(2), x, words)["params"])
  params = jax.tree_util.tree_map(np.asarray, params)
  d = 12
  zeroed = jax.tree_util.tree_map(np.copy, params)
  zeroed["transform"]["dense"]["kernel"][d:] = 0.0
  np.testing.assert_allclose(head.apply({"params": params}, x[:, :d], words),
                             head.apply({"params": zeroed}, x, words), atol=1e-5)


def test_legacy_gamma_beta_and_nsp_head_load(tiny_hf_dir, tmp_path):
  state = load_file(os.path.join(tiny_hf_dir, "model.safetensors"))
  legacy = {
      "bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
          "LayerNorm.bias", "LayerNorm.beta"): v for k, v in state.items()
  }
  legacy["cls.seq_relationship.weight"] = np.zeros((2, TINY.hidden_size), np.float32)
  legacy["cls.seq_relationship.bias"] = np.zeros((2,), np.float32)
  legacy["bert.embeddings.position_ids"] = np.arange(64)[None]
  shutil.copytree(tiny_hf_dir, tmp_path / "legacy")
  save_file(legacy, str(tmp_path / "legacy" / "model.safetensors"))
  a, b = model_dirs.load_pretrained(tiny_hf_dir), model_dirs.load_pretrained(
      str(tmp_path / "legacy"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)


@pytest.fixture
def broken_dir(tiny_hf_dir, tmp_path):
  shutil.copytree(tiny_hf_dir, tmp_path / "m")
  return tmp_path / "m"


def test_missing_and_unknown_keys_are_listed(broken_dir):
  state = load_file(str(broken_dir / "model.safetensors"))
  del state["encoder.layer.2.output.dense.weight"]
  state["encoder.layer.1.extra_adapter.weight"] = np.zeros(3, np.float32)
  save_file(state, str(broken_dir / "model.safetensors"))
  with pytest.raises(ValueError,
                     match=r"not part of a BERT model: \['encoder.layer.1.extra_adapter.weight'\]"):
    model_dirs.load_pretrained(str(broken_dir))
  del state["encoder.layer.1.extra_adapter.weight"]
  save_file(state, str(broken_dir / "model.safetensors"))
  with pytest.raises(ValueError, match=r"missing: \['encoder.layer.2.output.dense.weight'\]"):
    model_dirs.load_pretrained(str(broken_dir))


def test_wrong_shape_and_extra_layers(broken_dir):
  cfg = json.load(open(broken_dir / "config.json"))
  cfg["num_hidden_layers"] = 3
  json.dump(cfg, open(broken_dir / "config.json", "w"))
  with pytest.raises(ValueError, match="beyond num_hidden_layers=3"):
    model_dirs.load_pretrained(str(broken_dir))


def test_other_architecture_is_rejected(broken_dir):
  cfg = json.load(open(broken_dir / "config.json"))
  cfg["model_type"], cfg["architectures"] = "gpt2", ["GPT2Model"]
  json.dump(cfg, open(broken_dir / "config.json", "w"))
  with pytest.raises(
      ValueError, match=r"config.json: model_type='gpt2' is not supported; "
      r"starbucks_jax loads 'bert', 'roberta', 'xlm-roberta', 'modernbert'$"):
    model_dirs.load_pretrained(str(broken_dir))


def test_missing_files(tmp_path, broken_dir):
  with pytest.raises(FileNotFoundError, match="no model directory at"):
    model_dirs.load_pretrained(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    model_dirs.load_pretrained(str(tmp_path))
  os.remove(broken_dir / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="no weights found"):
    model_dirs.load_pretrained(str(broken_dir))


def test_offline_hub_id_gives_instructions(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(FileNotFoundError, match="hf download bert-base-uncased --local-dir DIR"):
    model_dirs.resolve_model_dir("bert-base-uncased")


def test_pytorch_bin_checkpoint(tiny_hf_dir, tmp_path):
  torch = pytest.importorskip("torch")
  shutil.copytree(tiny_hf_dir, tmp_path / "bin")
  state = load_file(str(tmp_path / "bin" / "model.safetensors"))
  torch.save({k: torch.from_numpy(v) for k, v in state.items()},
             str(tmp_path / "bin" / "pytorch_model.bin"))
  os.remove(tmp_path / "bin" / "model.safetensors")
  a, b = model_dirs.load_pretrained(tiny_hf_dir), model_dirs.load_pretrained(str(tmp_path / "bin"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)


def test_sentence_transformers_folder_settings(minilm_dir):
  pre = model_dirs.load_pretrained(minilm_dir)
  assert pre.sentence == model_dirs.SentenceSettings(pooling="mean", normalize=True,
                                                     max_seq_length=256)
  assert (pre.config.num_hidden_layers, pre.config.hidden_size) == (6, 384)
  assert model_dirs.resolve_model_dir("all-MiniLM-L6-v2") == minilm_dir


def test_unsupported_pooling_is_named(minilm_dir, tmp_path):
  shutil.copytree(minilm_dir, tmp_path / "m")
  cfg_file = tmp_path / "m" / "1_Pooling" / "config.json"
  cfg = json.load(open(cfg_file))
  cfg["pooling_mode_mean_tokens"], cfg["pooling_mode_max_tokens"] = False, True
  json.dump(cfg, open(cfg_file, "w"))
  with pytest.raises(ValueError,
                     match=r"1_Pooling/config.json: pooling \['max'\] is not supported"):
    model_dirs.load_pretrained(str(tmp_path / "m"))
