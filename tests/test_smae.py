"""SMAE pre-training: masking invariants, the sliced head, the MAE decoder, the loss against an
independent PyTorch/numpy computation, text sources, and the pt.py runs (loss falls, resume, export)."""

import copy
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax import checkpoint, config_lib, finetune, losses, model_dirs, pretrain
from starbucks_jax.data import corpus, masking, sources
from starbucks_jax.data.sources import DataError
from starbucks_jax.models import encoders
from starbucks_jax.models.bert import BertConfig, BertLayer, attention_bias_mask
from starbucks_jax.models.heads import MaeDecoder, MlmHead

from conftest import REPO, kill_at, make_hf_bert, make_tokenizer, tb_scalars

WORDS = "the quick brown fox jumps over lazy dog playing music sleeps house cat sat mat".split()


def random_texts(n, seed=0, low=3, high=30):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    words = rng.choice(WORDS + ["jumping", "played", "quickly", "xqz"], rng.integers(low, high))
    out.append(" ".join(words))
  return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return make_tokenizer(tmp_path_factory.mktemp("tok"))


def encoded(tokenizer, texts):
  return [np.asarray(x, np.int32) for x in tokenizer(texts)["input_ids"]]


# ---------------------------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------------------------
def reference_word_masks(tokens, order, enc_rate, dec_rate):
  """The whole-word nested masking of docs/method.md written out over token strings (the published
  algorithm, independently of the implementation): visit words in `order`, skip what overflows."""
  words = []
  for i, t in enumerate(tokens):
    if t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"):
      continue
    if words and t.startswith("##"):
      words[-1].append(i)
    else:
      words.append([i])
  enc_n = max(1, int(round(len(tokens) * enc_rate)))
  dec_n = max(1, int(round(len(tokens) * dec_rate)))
  enc, dec, taken = [], [], 0
  for w in order:
    word = words[w]
    if taken >= dec_n:
      break
    if taken + len(word) > dec_n:
      continue
    taken += len(word)
    dec += word
    if len(enc) + len(word) <= enc_n:
      enc += word
  to_mask = lambda idx: np.isin(np.arange(len(tokens)), idx)
  return to_mask(enc), to_mask(dec), words


def test_word_masks_match_the_published_algorithm_and_nest(tokenizer):
  masker = masking.Masker(tokenizer, masking.MaskingConfig(0.2, 0.4))
  for k, ids in enumerate(encoded(tokenizer, random_texts(200, seed=1))):
    enc, dec = masker.word_masks(ids, np.random.default_rng(k))
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    n_words = len(reference_word_masks(tokens, [], 0.2, 0.4)[2])
    order = np.random.default_rng(k).permutation(n_words)
    want_enc, want_dec, words = reference_word_masks(tokens, order, 0.2, 0.4)
    np.testing.assert_array_equal(enc, want_enc)
    np.testing.assert_array_equal(dec, want_dec)
    assert not (enc & ~dec).any()  # nested
    for word in words:  # whole words
      assert len(set(enc[word])) == 1 and len(set(dec[word])) == 1
    special = np.isin(ids, tokenizer.all_special_ids)
    assert not dec[special].any()


def test_masking_rates_and_replacement_over_many_samples(tokenizer):
  masker = masking.Masker(tokenizer, masking.MaskingConfig(0.2, 0.4, 0.8, 0.1))
  texts = encoded(tokenizer, random_texts(600, seed=2, low=20, high=40))
  rng = np.random.default_rng(0)
  T = max(len(t) for t in texts)
  batch = masker.batch(texts, T, tokenizer.pad_token_id, rng)
  lengths = np.array([len(t) for t in texts])
  enc_count = (batch["mlm_labels"] >= 0).sum(1)
  dec_count = (batch["mae_labels"] >= 0).sum(1)
  assert (enc_count <= [masking.budget(L, 0.2) for L in lengths]).all()
  assert (dec_count <= [masking.budget(L, 0.4) for L in lengths]).all()
  assert abs(enc_count.sum() / lengths.sum() - 0.2) < 0.02
  assert abs(dec_count.sum() / lengths.sum() - 0.4) < 0.03
  # labels are the original tokens; 80% [MASK], 10% random, 10% unchanged at masked positions
  original = np.full_like(batch["ids"], tokenizer.pad_token_id)
  for b, t in enumerate(texts):
    original[b, :len(t)] = t
  for key, pos_key, lab_key in (("ids", "mlm_positions", "mlm_labels"), ("dec_ids", "mae_positions",
                                                                         "mae_labels")):
    valid = batch[lab_key] >= 0
    pos, lab = batch[pos_key], batch[lab_key]
    np.testing.assert_array_equal(np.take_along_axis(original, pos, 1)[valid], lab[valid])
    got = np.take_along_axis(batch[key], pos, 1)[valid]
    frac_mask = np.mean(got == tokenizer.mask_token_id)
    frac_same = np.mean(got == lab[valid])
    assert abs(frac_mask - 0.8) < 0.02 and abs(frac_same - 0.1 - 0.1 / len(tokenizer)) < 0.02
    outside = np.ones_like(batch[key], bool)
    np.put_along_axis(outside, np.where(valid, pos, 0), False, 1)
    outside[:, 0] |= ~np.any(valid & (pos == 0), 1)  # position 0 is [CLS], never masked
    np.testing.assert_array_equal(batch[key][outside], original[outside])  # nothing else changes
  # every encoder-masked position is decoder-masked; padding is never masked
  for b in range(len(texts)):
    e = set(batch["mlm_positions"][b][batch["mlm_labels"][b] >= 0])
    d = set(batch["mae_positions"][b][batch["mae_labels"][b] >= 0])
    assert e <= d and max(d) < lengths[b] and 0 not in d
  assert (batch["mask"].sum(1) == lengths).all()


def test_masking_config_errors():
  with pytest.raises(ValueError, match="encoder_rate"):
    masking.MaskingConfig(0.5, 0.4)
  with pytest.raises(ValueError, match="mask_prob"):
    masking.MaskingConfig(0.2, 0.4, 0.95, 0.1)


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------
def test_sliced_head_equals_head_with_zeroed_columns():
  cfg = BertConfig.preset("tiny")
  rng = jax.random.key(0)
  emb = jax.random.normal(rng, (cfg.vocab_size, cfg.hidden_size))
  params = nn.meta.unbox(MlmHead(cfg).init(rng, jnp.zeros((1, cfg.hidden_size)), emb)["params"])
  params = jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape),
                                  params)
  x = jax.random.normal(jax.random.key(2), (3, 5, cfg.hidden_size))
  for d in (4, 16, 32):
    sliced = MlmHead(cfg).apply({"params": params}, x[..., :d], emb)
    zeroed = jax.tree_util.tree_map(lambda v: v, params)
    zeroed["transform"]["dense"]["kernel"] = params["transform"]["dense"]["kernel"].at[d:].set(0.0)
    full = MlmHead(cfg).apply({"params": zeroed}, x, emb)  # columns beyond d carry arbitrary values
    np.testing.assert_allclose(sliced, full, rtol=1e-5, atol=1e-5)


def test_mae_decoder_input_is_the_transformed_vector_then_the_decoder_copy():
  cfg = BertConfig.preset("tiny")
  B, T = 2, 6
  embedded = jax.random.normal(jax.random.key(0), (B, T, cfg.hidden_size))
  first = jax.random.normal(jax.random.key(1), (B, cfg.hidden_size))
  mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2])
  params = nn.meta.unbox(MaeDecoder(cfg).init(jax.random.key(2), embedded, first, mask)["params"])
  got = MaeDecoder(cfg).apply({"params": params}, embedded, first, mask)
  manual = jnp.concatenate([first[:, None], embedded[:, 1:]], axis=1)
  want = BertLayer(cfg).apply({"params": params["layer_0"]}, manual,
                              (attention_bias_mask(mask), mask), True)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  other = BertLayer(cfg).apply({"params": params["layer_0"]}, embedded,
                               (attention_bias_mask(mask), mask), True)
  assert np.abs(np.asarray(got - other)).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------
def test_masked_lm_loss_equals_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)) * 3
  labels = rng.integers(0, 11, (3, 5))
  labels[0, 3:] = -1
  labels[2, 1:] = -1
  got = losses.masked_lm_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  valid = labels >= 0
  want = -np.take_along_axis(logp, np.maximum(labels, 0)[..., None], -1)[..., 0][valid].mean()
  np.testing.assert_allclose(got, want, rtol=1e-6)
  total, aux = losses.smae_loss({(1, 2): 1.0, (2, 4): 3.0}, {(1, 2): 2.0, (2, 4): 6.0})
  assert total == pytest.approx(((1 + 2) / 2 + (3 + 6) / 2) / 2) and aux["mae/2_4"] == 6.0
  assert losses.smae_loss({(1, 2): 1.0, (2, 4): 3.0})[0] == pytest.approx(2.0)


def torch_smae_loss(model, batch, pairs, mode):
  """The authors' formulation with HF's PyTorch modules: full [B, T, vocab] logits per pair,
  CrossEntropyLoss(ignore_index=-100), a deep copy of layer 0 as the decoder."""
  import torch
  import torch.nn.functional as F
  t = lambda k: torch.as_tensor(np.asarray(batch[k], np.int64))
  ids, mask, dec_ids = t("ids"), t("mask"), t("dec_ids")
  B, T = ids.shape

  def dense_labels(pos_key, lab_key):
    out = torch.full((B, T), -100, dtype=torch.long)
    for b in range(B):
      for p, lab in zip(batch[pos_key][b], batch[lab_key][b]):
        if lab >= 0:
          out[b, int(p)] = int(lab)
    return out

  labels, dec_labels = dense_labels("mlm_positions",
                                    "mlm_labels"), dense_labels("mae_positions", "mae_labels")
  pred = model.cls.predictions

  def transform(x):
    h = F.linear(x, pred.transform.dense.weight[:, :x.shape[-1]], pred.transform.dense.bias)
    return pred.transform.LayerNorm(F.gelu(h))

  decoder_layer = copy.deepcopy(model.bert.encoder.layer[0])
  ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
  with torch.no_grad():
    hs = model.bert(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    total = 0.0
    for n, d in pairs:
      h = hs[n][:, :, :d]
      mlm = F.cross_entropy(
          pred.decoder(transform(h)).reshape(-1, pred.decoder.out_features), labels.reshape(-1))
      if mode == "2d_mlm":
        total += mlm
        continue
      emb = model.bert.embeddings(input_ids=dec_ids).clone()
      emb[:, :1] = transform(h)[:, :1]
      out = decoder_layer(emb, attention_mask=ext)
      out = out[0] if isinstance(out, tuple) else out
      mae = F.cross_entropy(
          pred.decoder(transform(out)).reshape(-1, pred.decoder.out_features),
          dec_labels.reshape(-1))
      total += (mlm + mae) / 2
  return float(total / len(pairs))


@pytest.mark.parametrize("mode", ["smae", "2d_mlm"])
def test_smae_loss_equals_pytorch_reference(tmp_path, tokenizer, mode):
  model = make_hf_bert(tmp_path / "m", mlm=True, initializer_range=0.1, embedding_scale=1.0)
  pre = model_dirs.load_pretrained(str(tmp_path / "m"))
  params = pretrain.init_params(pre, pre.config, jax.random.key(0))
  masker = masking.Masker(tokenizer, masking.MaskingConfig())
  texts = encoded(tokenizer, random_texts(6, seed=3, low=4, high=14))
  batch = masker.batch(texts,
                       max(map(len, texts)) + 2, tokenizer.pad_token_id, np.random.default_rng(1))
  pairs = ((1, 8), (2, 16), (4, 32))
  mlm, mae = pretrain.pair_losses(params, pre.config, {k: jnp.asarray(v) for k, v in batch.items()},
                                  pairs, mode)
  got = float(losses.smae_loss(mlm, mae)[0])
  want = torch_smae_loss(model, batch, pairs, mode)
  assert got == pytest.approx(want, rel=1e-5)


def test_fresh_head_from_a_sentence_model_is_announced(tiny_hf_dir, caplog):
  pre = model_dirs.load_pretrained(tiny_hf_dir)
  assert "mlm_head" not in pre.params
  with caplog.at_level("WARNING"):
    params = pretrain.init_params(pre, pre.config, jax.random.key(0))
  assert "no MLM head" in caplog.text
  assert set(params) == {"bert", "mlm_head", "mae_decoder"}
  np.testing.assert_array_equal(
      params["mae_decoder"]["layer_0"]["output"]["dense"]["kernel"],
      pre.params["bert"]["encoder"]["layer_0"]["output"]["dense"]["kernel"])


# ---------------------------------------------------------------------------------------------
# Text sources and batches
# ---------------------------------------------------------------------------------------------
def write_text(path, n, seed=0):
  texts = random_texts(n, seed=seed, low=3, high=60)
  path.write_text("\n\n".join(texts[:2]) + "\n" + "\n".join(texts[2:]) + "\n")  # a blank line too
  return str(path)


def test_text_batcher_windows_packing_and_determinism(tmp_path, tokenizer):
  spec = write_text(tmp_path / "docs.txt", 40)
  masker = masking.Masker(tokenizer, masking.MaskingConfig())
  make = lambda **kw: corpus.TextBatcher(spec, tokenizer, masker, batch_size=8, max_length=16,
                                         seed=3, **kw)
  a, b = make(), make()
  assert a.steps_in(2) == 2 * (40 // 8)
  for (sa, x), (sb, y) in zip(a.batches(0, 10), b.batches(0, 10)):
    assert sa == sb and all((x[k] == y[k]).all() for k in x)
    assert x["ids"].shape[1] <= 16 and (x["ids"][:, 0] == tokenizer.cls_token_id).all()
  resumed = dict(a.batches(7, 10))
  whole = dict(b.batches(0, 10))
  assert all((resumed[s][k] == whole[s][k]).all() for s in (7, 8, 9) for k in whole[s])
  # a long document becomes a window of max_length - 2 tokens of it
  ids = np.arange(100)
  w = corpus.window(ids, 14, np.random.default_rng(0))
  assert len(w) == 14 and (np.diff(w) == 1).all()
  packed = make(packing=True)
  rows = next(packed._rows(0))
  assert all(len(r) == 16 for r in rows)  # full rows
  bodies = packed._packed_rows(0)  # every token of every document, [SEP] between documents
  assert sum(map(len, bodies)) == sum(map(len, packed.tokens)) + len(packed.tokens) - 1
  assert packed.steps_in(1) == len(bodies) // 8


def test_text_sources_jsonl_column_and_errors(tmp_path, tokenizer):
  masker = masking.Masker(tokenizer, masking.MaskingConfig())
  path = tmp_path / "docs.jsonl"
  path.write_text("".join(json.dumps({"body": t}) + "\n" for t in random_texts(10)))
  batcher = corpus.TextBatcher(str(path), tokenizer, masker, batch_size=4, max_length=32, seed=0,
                               column="body")
  assert batcher.steps_in(1) == 2
  with pytest.raises(DataError, match=r"docs.jsonl:1: no column 'text'"):
    corpus.TextBatcher(str(path), tokenizer, masker, batch_size=4, max_length=32, seed=0)
  with pytest.raises(DataError, match="fewer than one batch"):
    corpus.TextBatcher(str(path), tokenizer, masker, batch_size=40, max_length=32, seed=0,
                       column="body")


def test_streamed_hf_source_reads_in_order_and_resumes_by_skipping(tmp_path, tokenizer):
  pytest.importorskip("datasets")
  folder = tmp_path / "corpus"
  folder.mkdir()
  (folder / "train.jsonl").write_text("".join(
      json.dumps({"text": t}) + "\n" for t in random_texts(24)))
  masker = masking.Masker(tokenizer, masking.MaskingConfig())
  make = lambda: corpus.TextBatcher(f"hf:{folder}", tokenizer, masker, batch_size=4, max_length=32,
                                    seed=0, streaming=True)
  whole = dict(make().batches(0, 6))
  resumed = dict(make().batches(4, 6))
  assert sorted(resumed) == [4, 5]
  assert all((resumed[s][k] == whole[s][k]).all() for s in (4, 5) for k in whole[s])
  # the stream ends the epoch, not the run
  assert sorted(dict(make().batches(0, 7))) == list(range(6))


def test_stream_length_from_metadata_or_a_cached_count(tmp_path, tokenizer, monkeypatch):
  pytest.importorskip("datasets")
  monkeypatch.setattr(sources, "ROW_COUNTS", str(tmp_path / "counts.json"))
  folder = tmp_path / "corpus"
  folder.mkdir()
  (folder / "train.jsonl").write_text("".join(
      json.dumps({"text": t}) + "\n" for t in random_texts(24)))
  masker = masking.Masker(tokenizer, masking.MaskingConfig())
  make = lambda **kw: corpus.TextBatcher(f"hf:{folder}", tokenizer, masker, batch_size=5,
                                         max_length=32, seed=0, streaming=True, **kw)
  with pytest.raises(DataError,
                     match=r"not in its metadata; set train.max_steps, or data.count_rows=True"):
    make().steps_in(1)
  assert make(count_rows=True).steps_in(1) == 4  # 24 rows counted once: 4 whole batches of 5
  assert json.load(open(tmp_path / "counts.json")) == {f"hf:{folder}": 24}
  assert make().steps_in(1) == 4  # from the cache
  with pytest.raises(DataError, match="read once"):
    make().steps_in(2)
  card = tmp_path / "carded"  # a dataset card whose metadata gives the split's size
  card.mkdir()
  (card / "train.jsonl").write_text((folder / "train.jsonl").read_text())
  (card / "README.md"
  ).write_text("---\ndataset_info:\n  splits:\n  - name: train\n    num_examples: 24\n---\n")
  assert sources.stream_length(f"hf:{card}") == 24


def test_shuffle_buffer_permutes_each_block_and_resumes_exactly(tmp_path, tokenizer):
  pytest.importorskip("datasets")
  folder = tmp_path / "corpus"
  folder.mkdir()
  texts = [f"document {i} " + t for i, t in enumerate(random_texts(23))]
  (folder / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  masker = masking.Masker(tokenizer, masking.MaskingConfig())
  make = lambda: corpus.TextBatcher(f"hf:{folder}", tokenizer, masker, batch_size=4, max_length=32,
                                    seed=0, streaming=True, shuffle_buffer=10)
  order = list(make()._shuffled(0))
  for lo, hi in ((0, 10), (10, 20), (20, 23)):  # each block of 10 a permutation of its own rows
    assert sorted(order[lo:hi]) == sorted(texts[lo:hi]) and order[lo:hi] != texts[lo:hi]
  assert all(list(make()._shuffled(k)) == order[k:] for k in (4, 12, 20))
  whole = dict(make().batches(0, 5))
  resumed = dict(make().batches(3, 5))  # row 12: within the second block
  assert all((resumed[s][k] == whole[s][k]).all() for s in (3, 4) for k in whole[s])
  other = corpus.TextBatcher(f"hf:{folder}", tokenizer, masker, batch_size=4, max_length=32, seed=1,
                             streaming=True, shuffle_buffer=10)
  assert list(other._shuffled(0)) != order  # seeded


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_pt(tmp_path):
  # 2 layers, 2 pairs: every SMAE term (MLM and MAE at a sub-model and the full model) at the least
  # compile time; three runs of it in the resume test
  make_hf_bert(tmp_path / "bert", layers=2, mlm=True, initializer_range=0.05, embedding_scale=1.0)
  cfg = config_lib.load_config(f"{REPO}/configs/pt.py:tiny")
  with cfg.unlocked():
    cfg.model.init_from = str(tmp_path / "bert")
    cfg.schedule.pairs = ((1, 16), (2, 32))
    cfg.data.train = write_text(tmp_path / "docs.txt", 48)
    cfg.data.text_column = "text"
    cfg.eval.text = cfg.data.train
    cfg.eval.text_column = "text"
  return cfg


def test_smae_pretrains_a_modernbert(tiny_pt, tmp_path):
  """SMAE on a ModernBERT (layer 1 local: the texts outrun its +-4 window): MLM and MAE at every
  pair, the loss falls, the export is a ModernBertForMaskedLM whose logits are our head's."""
  import torch
  import transformers
  make_hf_bert(tmp_path / "mb", layers=2, mlm=True, model_type="modernbert")
  with tiny_pt.unlocked():
    tiny_pt.model.init_from = str(tmp_path / "mb")
    tiny_pt.train.max_steps = 8
    tiny_pt.train.lr = 3e-3
    tiny_pt.train.warmup_ratio = 0.0
  pretrain.run(tiny_pt, str(tmp_path / "w"))
  rows = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
  assert rows[-1]["loss"] < rows[0]["loss"]
  assert {"mlm/1_16", "mae/1_16", "mlm/2_32", "mae/2_32"} <= set(rows[0])
  out = tmp_path / "w" / pretrain.EXPORT_DIR
  model = transformers.AutoModelForMaskedLM.from_pretrained(str(out)).eval()
  assert type(model).__name__ == "ModernBertForMaskedLM"
  ours = checkpoint.load_model(str(out))
  ids = np.array([[2, 40, 41, 42, 4, 43, 44, 45, 46, 47, 48, 49, 3]])
  with torch.no_grad():
    theirs = model(torch.as_tensor(ids)).logits.numpy()
  hidden = encoders.hidden_states(ours.params["bert"], ours.config, jnp.asarray(ids),
                                  jnp.ones_like(jnp.asarray(ids)))
  mine = MlmHead(ours.config).apply({"params": ours.params["mlm_head"]}, hidden[-1],
                                    encoders.word_embeddings(ours.params["bert"], ours.config))
  np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)


def test_tiny_run_loss_falls_and_exports_a_masked_lm(tiny_pt, tmp_path):
  import torch
  import transformers
  with tiny_pt.unlocked():
    tiny_pt.train.max_steps = 12
    tiny_pt.train.lr = 3e-3
    tiny_pt.train.warmup_ratio = 0.0
  records = pretrain.run(tiny_pt, str(tmp_path / "w"))
  rows = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
  assert rows[-1]["loss"] < rows[0]["loss"] - 0.3
  assert {"mlm/1_16", "mae/1_16", "mlm/2_32", "mae/2_32", "grad_norm", "lr"} <= set(rows[0])
  assert {(r["layer"], r["dim"], r["metric"]) for r in records} >= {(1, 16, "mlm_accuracy"),
                                                                    (2, 32, "mlm_loss")}
  assert json.load(open(tmp_path / "w" / "results" / "final.json")) == records
  # pre-training logs to TensorBoard as fine-tuning does
  scalars = tb_scalars(tmp_path / "w" / "tb")
  assert [s for s, _ in scalars["train/mlm/1_16"]] == [r["step"] for r in rows]
  assert scalars["eval/docs/eval/mlm_loss/2x32"][0][0] == rows[-1]["step"]
  # the export is a BertForMaskedLM that transformers loads; its logits equal our head on layer N
  out = tmp_path / "w" / pretrain.EXPORT_DIR
  model = transformers.AutoModelForMaskedLM.from_pretrained(str(out)).eval()
  assert type(model).__name__ == "BertForMaskedLM"
  ours = checkpoint.load_model(str(out))
  ids = np.array([[2, 40, 41, 42, 4, 3]])
  with torch.no_grad():
    theirs = model(torch.as_tensor(ids),
                   attention_mask=torch.ones(1, 6, dtype=torch.long)).logits.numpy()
  from starbucks_jax.models.bert import BertEncoder
  hidden = BertEncoder(ours.config).apply({"params": ours.params["bert"]}, jnp.asarray(ids),
                                          jnp.ones((1, 6), jnp.int32))
  mine = MlmHead(
      ours.config).apply({"params": ours.params["mlm_head"]}, hidden[-1],
                         ours.params["bert"]["embeddings"]["word_embeddings"]["embedding"])
  np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)
  # ... and fine-tuning accepts both the export and the workdir as init_from
  for source in (str(out), str(tmp_path / "w")):
    ft = config_lib.load_config(f"{REPO}/configs/ft.py:demo")
    with ft.unlocked():
      ft.model.init_from = source
      ft.schedule.pairs = ((1, 16), (2, 32))
    finetune.describe(ft)
  assert set(checkpoint.load_model(str(tmp_path / "w")).params) == {"bert", "mlm_head"}


def test_a_streamed_epoch_ends_the_run_where_the_stream_ends(tiny_pt, tmp_path):
  """train.max_steps beyond a stream's rows: the run stops at its last whole batch and keeps it."""
  pytest.importorskip("datasets")
  folder = tmp_path / "stream"
  folder.mkdir()
  (folder / "train.jsonl").write_text("".join(
      json.dumps({"text": t}) + "\n" for t in random_texts(18)))
  with tiny_pt.unlocked():
    tiny_pt.data.train = f"hf:{folder}"
    tiny_pt.data.streaming = True
    tiny_pt.data.shuffle_buffer = 8
    tiny_pt.train.max_steps = 7  # the stream holds 4 batches of 4 (and 2 rows over)
    tiny_pt.train.log_every = 3
    tiny_pt.eval.text = ""
  pretrain.run(tiny_pt, str(tmp_path / "w"))
  rows = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [3, 4] and np.isfinite(rows[-1]["loss"])
  assert checkpoint.manager(str(tmp_path / "w"), read_only=True).latest_step() == 4


def test_pretraining_resumes_to_identical_parameters(tiny_pt, tmp_path, monkeypatch):
  with tiny_pt.unlocked():
    tiny_pt.train.max_steps = 6
    tiny_pt.train.checkpoint_every = 2
    tiny_pt.eval.text = ""
  pretrain.run(tiny_pt, str(tmp_path / "straight"))
  kill_at(monkeypatch, corpus.TextBatcher, 3)
  with pytest.raises(KeyboardInterrupt):
    pretrain.run(tiny_pt, str(tmp_path / "resumed"))
  monkeypatch.undo()
  pretrain.run(tiny_pt, str(tmp_path / "resumed"))
  mngr = lambda name: checkpoint.manager(str(tmp_path / name), read_only=True)
  a = checkpoint.restore(mngr("straight"), 6)["params"]
  b = checkpoint.restore(mngr("resumed"), 6)["params"]
  assert set(a) == {"bert", "mlm_head", "mae_decoder"}
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)


def test_pt_config_variants_load_and_errors_name_the_key(tiny_pt, tmp_path):
  for variant in ("", ":demo", ":tiny", ":cpu", ":tiny,mode=mlm"):
    cfg = config_lib.load_config(f"{REPO}/configs/pt.py{variant}")
    assert cfg.mode == "pretrain"
  assert pretrain.describe(tiny_pt).train_pairs == ((1, 16), (2, 32))
  cases = [("smae.mode", "mae", "smae.mode='mae'"), ("smae.encoder_mask_rate", 0.6, "smae"),
           ("data.streaming", True, "data.streaming=True is for hf"),
           ("data.train", str(tmp_path / "nope.txt"), "data.train: .*nope.txt: no such file"),
           ("schedule.pairs", ((1, 8), (3, 16)), "schedule.pairs"), ("train.lr", 0.0, "train.lr")]
  for key, value, match in cases:
    cfg = copy.deepcopy(tiny_pt)
    with cfg.unlocked():
      section, field = key.split(".")
      cfg[section][field] = value
    with pytest.raises(config_lib.ConfigError, match=match):
      pretrain.describe(cfg)
  cfg = copy.deepcopy(tiny_pt)
  with cfg.unlocked():
    cfg.data.train = "hf:HuggingFaceFW/fineweb:sample-100BT"
    cfg.data.streaming = True
    cfg.train.max_steps = 0
    cfg.train.epochs = 2
  with pytest.raises(config_lib.ConfigError,
                     match="train.epochs=2: a streamed source is read once"):
    pretrain.describe(cfg)
  with cfg.unlocked():
    cfg.data.streaming = False
    cfg.data.shuffle_buffer = 1000
  with pytest.raises(config_lib.ConfigError,
                     match="data.shuffle_buffer=1000 is for streamed sources"):
    pretrain.describe(cfg)
  cfg = copy.deepcopy(tiny_pt)
  with cfg.unlocked():
    cfg.smae.mode = "mlm"
  assert pretrain.describe(cfg).train_pairs == ((2, 32),)


def test_tfds_text_source_with_mock_data(tokenizer):
  tfds = pytest.importorskip("tensorflow_datasets")
  masker = masking.Masker(tokenizer, masking.MaskingConfig())
  with tfds.testing.mock_data(num_examples=12):
    batcher = corpus.TextBatcher("tfds:imdb_reviews@train", tokenizer, masker, batch_size=4,
                                 max_length=32, seed=0)
  assert len(batcher.tokens) == 12 and batcher.steps_in(1) == 3
  step, batch = next(batcher.batches(0, 1))
  assert batch["ids"].shape[0] == 4 and (batch["mask"].sum(1) >= 2).all()
