"""Backbones beyond BERT through the architecture registry (models/hf.py ARCHITECTURES): RoBERTa and
XLM-RoBERTa against transformers' own classes at every layer, padded and packed (ModernBERT's
encoder: test_modernbert.py); for each, HF and sentence-transformers round trips of the (n, d)
sub-models and of MLM checkpoints, and a 2D training run; SMAE pre-training on ModernBERT."""

import json
import os

import numpy as np
import pytest

from starbucks_jax import embed, export, finetune, model_dirs
from starbucks_jax.models import bert, hf

from conftest import make_hf_bert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SENTENCES = [
    "the quick brown fox jumps over the lazy dog", "a cat sat", "music",
    "the man plays red guitar on the road with a woman and a dog"
]
CLASSES = {"roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}


@pytest.fixture(scope="module", params=["roberta", "xlm-roberta"])
def roberta_dir(request, tmp_path_factory):
  path = tmp_path_factory.mktemp(request.param)
  make_hf_bert(path, layers=3, model_type=request.param)
  return str(path)


def torch_hidden_states(model_dir, ids, mask, mlm=False):
  model = transformers.AutoModel.from_pretrained(model_dir).eval()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                output_hidden_states=True)
  return np.stack([h.numpy() for h in out.hidden_states])


def test_every_hidden_state_equals_transformers(roberta_dir):
  """Padded rows (HF numbers positions from pad_token_id + 1 and gives pads pad_token_id's row)."""
  pre = model_dirs.load_pretrained(roberta_dir)
  cfg = pre.config
  assert (cfg.position_offset, cfg.type_vocab_size, cfg.max_tokens) == (2, 1, 64)
  enc = pre.tokenizer(SENTENCES, padding=True, return_tensors="np")
  ids, mask = enc["input_ids"], enc["attention_mask"]
  assert mask.min() == 0 and ids[0, 0] == 0 and (ids[mask == 0] == 1).all()
  ours = np.asarray(bert.BertEncoder(cfg).apply({"params": pre.params["bert"]}, ids, mask))
  ref = torch_hidden_states(roberta_dir, ids, mask)
  assert ours.shape == ref.shape == (4, *ids.shape, 32)
  real = mask.astype(bool)
  err = np.abs(ours - ref)[:, real].max(axis=(1, 2)) / np.abs(ref).max(axis=(1, 2, 3))
  assert err.max() <= 1e-5, err
  # without the offset, positions are wrong at every layer
  shifted = np.asarray(
      bert.BertEncoder(cfg.replace(model_type="bert")).apply({"params": pre.params["bert"]}, ids,
                                                             mask))
  assert (np.abs(shifted - ref)[1:, real].max(axis=(1, 2)) > 1e-3).all()


def test_packed_rows_equal_each_text_alone(roberta_dir):
  from test_bert import _packed
  pre = model_dirs.load_pretrained(roberta_dir)
  enc = pre.tokenizer(SENTENCES, padding=True, return_tensors="np")
  ref = torch_hidden_states(roberta_dir, enc["input_ids"], enc["attention_mask"])
  ids, segments, positions, where = _packed(pre.tokenizer, SENTENCES, 24)
  ours = np.asarray(
      bert.BertEncoder(pre.config).apply({"params": pre.params["bert"]}, ids, None,
                                         segments=segments, positions=positions))
  scale = np.abs(ref).max()
  for i, (r, o, n) in enumerate(where):
    np.testing.assert_allclose(ours[:, r, o:o + n], ref[:, i, :n], atol=1e-5 * scale, rtol=0)


def test_export_round_trips_through_transformers_and_sentence_transformers(roberta_dir, tmp_path):
  """The (2, 16) sub-model: transformers loads it as its own class (hidden states of the first two
  layers as the source's), sentence-transformers encodes as `embed` does; the MLM class too."""
  model_type = json.load(open(os.path.join(roberta_dir, "config.json")))["model_type"]
  out = export.export(roberta_dir, str(tmp_path / "sub"), layer=2, dim=16)
  config = json.load(open(os.path.join(out, "config.json")))
  assert (config["model_type"], config["architectures"]) == (model_type, [CLASSES[model_type]])
  pre = model_dirs.load_pretrained(roberta_dir)
  enc = pre.tokenizer(SENTENCES, padding=True, return_tensors="np")
  full = torch_hidden_states(roberta_dir, enc["input_ids"], enc["attention_mask"])
  sub = torch_hidden_states(out, enc["input_ids"], enc["attention_mask"])
  real = enc["attention_mask"].astype(bool)
  np.testing.assert_allclose(sub[:, real], full[:3, real], rtol=0, atol=1e-5 * np.abs(full).max())
  from sentence_transformers import SentenceTransformer
  theirs = SentenceTransformer(out, device="cpu").encode(SENTENCES)
  ours = embed.Embedder.load(out).encode(SENTENCES)
  assert theirs.shape == ours.shape == (4, 16)
  np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
  # an MLM checkpoint in: its head out again under the class's own names
  mlm_dir = tmp_path / "mlm"
  make_hf_bert(mlm_dir, layers=2, mlm=True, model_type=model_type)
  again = export.export(str(mlm_dir), str(tmp_path / "mlm_out"), with_mlm_head=True)
  a = transformers.AutoModelForMaskedLM.from_pretrained(str(mlm_dir)).eval()
  b = transformers.AutoModelForMaskedLM.from_pretrained(again).eval()
  ids = torch.tensor(enc["input_ids"])
  with torch.no_grad():
    np.testing.assert_allclose(b(ids).logits.numpy(), a(ids).logits.numpy(), rtol=1e-5, atol=1e-4)
  # as a sentence model: built without the pooler the MLM class lacks (none randomly initialised)
  with_head = SentenceTransformer(again, device="cpu")
  assert with_head[0].auto_model.pooler is None
  np.testing.assert_allclose(with_head.encode(SENTENCES),
                             embed.Embedder.load(again).encode(SENTENCES), rtol=1e-4, atol=1e-5)


def test_the_registry_names_what_it_supports():
  with pytest.raises(
      hf.ModelError, match=r"model_type='deberta-v2' is not supported; "
      r"starbucks_jax loads 'bert', 'roberta', 'xlm-roberta', 'modernbert'$"):
    hf.architecture("deberta-v2")


def test_whole_word_masking_reads_sentencepiece_word_starts(tmp_path):
  """SMAE masks whole words: in SentencePiece, a '\u2581' piece and the pieces after it."""
  from starbucks_jax.data.masking import Masker, MaskingConfig

  from conftest import make_xlmr_tokenizer
  tok = make_xlmr_tokenizer(tmp_path)
  ids = np.array(tok("the cats sat")["input_ids"])
  pieces = tok.convert_ids_to_tokens(ids.tolist())
  assert pieces == ["<s>", "\u2581the", "\u2581cat", "s", "\u2581sat", "</s>"], pieces
  positions, word = Masker(tok, MaskingConfig()).words(ids)
  assert positions.tolist() == [1, 2, 3, 4] and word.tolist() == [0, 1, 1, 2]


@pytest.fixture(scope="module")
def modernbert_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("modernbert")
  make_hf_bert(path, layers=4, model_type="modernbert")
  return str(path)


LONG = SENTENCES + ["the woman plays blue guitar in the house and the dog sleeps by the tree"]


@pytest.mark.parametrize("layer,dim", [(2, 16), (4, 32)])  # through a local layer; the last
def test_modernbert_sub_models_export_as_transformers_computes_them(modernbert_dir, tmp_path, layer,
                                                                    dim):
  """A (n, d) export is an n-layer ModernBertModel whose output is the source's layer n through the
  final norm (local layers included: texts longer than the +-4 window); sentence-transformers
  encodes it as `embed` does, and as `embed` encodes the pair from the source by early exit."""
  out = export.export(modernbert_dir, str(tmp_path / "sub"), layer=layer, dim=dim)
  config = json.load(open(os.path.join(out, "config.json")))
  assert config["architectures"] == ["ModernBertModel"] and config["num_hidden_layers"] == layer
  pre = model_dirs.load_pretrained(modernbert_dir)
  enc = pre.tokenizer(LONG, padding=True, return_tensors="pt")
  full = transformers.AutoModel.from_pretrained(modernbert_dir).eval()
  sub = transformers.AutoModel.from_pretrained(out).eval()
  with torch.no_grad():
    states = full(**enc, output_hidden_states=True).hidden_states  # the last one already normed
    want = states[layer] if layer == len(states) - 1 else full.final_norm(states[layer])
    got = sub(**enc).last_hidden_state
  real = enc["attention_mask"].numpy().astype(bool)
  scale = np.abs(want.numpy()).max()
  np.testing.assert_allclose(got.numpy()[real], want.numpy()[real], rtol=0, atol=1e-5 * scale)
  from sentence_transformers import SentenceTransformer
  theirs = SentenceTransformer(out, device="cpu").encode(LONG)
  ours = embed.Embedder.load(out).encode(LONG)
  early = embed.Embedder.load(modernbert_dir).encode(LONG, layer=layer, dim=dim)
  assert theirs.shape == ours.shape == (5, dim)
  np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(early, ours, rtol=1e-5, atol=1e-6)


def test_a_modernbert_mlm_checkpoint_round_trips(tmp_path):
  """ModernBertForMaskedLM (every bias on) in, its head (dense, norm, decoder bias; decoder tied)
  out under its own names: equal logits."""
  make_hf_bert(tmp_path / "mlm", layers=3, mlm=True, model_type="modernbert")
  again = export.export(str(tmp_path / "mlm"), str(tmp_path / "out"), with_mlm_head=True)
  assert json.load(open(os.path.join(again,
                                     "config.json")))["architectures"] == ["ModernBertForMaskedLM"]
  a = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "mlm")).eval()
  b = transformers.AutoModelForMaskedLM.from_pretrained(again).eval()
  ids = torch.tensor(model_dirs.load_pretrained(again).tokenizer(LONG, padding=True)["input_ids"])
  with torch.no_grad():
    np.testing.assert_allclose(b(ids).logits.numpy(), a(ids).logits.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type,method", [("xlm-roberta", "starbucks"),
                                               ("modernbert", "2dmse")])
def test_a_backbone_trains_in_2d(tiny_run, tmp_path, model_type, method):
  """SRL (ModernBERT: 2DMSE, its sampled layers through the final norm) on the demo-style triplets
  with E5's prompts: the loss falls, every pair is evaluated on STS and on a retrieval collection (its
  corpus index encoded with the passage prompt), the run's model keeps the architecture and stores
  the prompts."""
  from test_mteb import small_beir
  model = tmp_path / model_type
  make_hf_bert(model, layers=2, model_type=model_type)
  cfg = tiny_run
  with cfg.unlocked():
    cfg.model.init_from = str(model)
    cfg.model.query_prompt, cfg.model.passage_prompt = "query: ", "passage: "
    cfg.schedule.method = method
    cfg.train.max_steps = 10
    cfg.train.checkpoint_every = 10
    cfg.train.lr = 1e-3
    cfg.eval.retrieval = f"pydoc/test={small_beir(tmp_path / 'beir')}"
    cfg.eval.passage_max_length = 32
  work = str(tmp_path / "run")
  finetune.run(cfg, work)
  losses = [json.loads(line)["loss"] for line in open(os.path.join(work, "metrics.jsonl"))]
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  records = json.load(open(os.path.join(work, "results", "final.json")))
  for dataset in ("demo", "pydoc"):
    assert {(r["layer"], r["dim"]) for r in records if r["dataset"] == dataset} == {(1, 8), (2, 32)}
  assert json.load(open(os.path.join(work, "model", "config.json")))["model_type"] == model_type
  stored = json.load(open(os.path.join(work, "model", "config_sentence_transformers.json")))
  assert stored["prompts"] == {"query": "query: ", "document": "passage: "}
  assert json.load(open(os.path.join(work, "index", "pydoc",
                                     "index.json")))["prompt"] == "passage: "


def test_packing_and_the_gradient_cache_on_modernbert(tmp_path):
  """The SRL step on ModernBERT (layer 1 local, texts past its +-4 window) over packed rows, and
  with
  the gradient cache, gives the plain padded step's loss and gradients."""
  import jax

  from starbucks_jax import checkpoint, srl
  from starbucks_jax.data import batching

  from conftest import max_rel_diff, tiny_srl_case, write_triplets
  cfg, params, plan, loss_cfg, _ = tiny_srl_case(tmp_path / "m", "roles", "modernbert")
  tokenizer = checkpoint.load_model(str(tmp_path / "m")).tokenizer
  ex = batching.load_examples(write_triplets(tmp_path / "t.jsonl", 16), "triplets")
  make = lambda **kw: batching.Batcher(ex, tokenizer, batch_size=8, max_length=32, seed=0, **kw)
  padded, packed = make(), make(pack_length=0)
  rows = padded.epoch_batches(0)[0]
  key = jax.random.key(3)
  step = lambda **kw: jax.jit(
      srl.make_srl_step(cfg, plan, loss_cfg, None, "mean", dropout=False, **kw).value_and_grad)
  (want, _), g_want = step()(params, padded.make_batch(rows), key)
  for (loss, _), grads in (step(packed=srl.Packing(3, 8, 1))(params, packed.make_batch(rows), key),
                           step(grad_cache_chunks=2)(params, padded.make_batch(rows), key)):
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    rel, scale = max_rel_diff(grads, g_want)
    assert rel < 1e-5 and scale > 1e-3
