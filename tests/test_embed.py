"""The embedding API and command line: early exit, bucketing, truncation, bad inputs, workdirs."""

import logging
import os

import jax
import numpy as np
import pytest

from starbucks_jax import checkpoint, embed, model_dirs
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.data.tokenize import bucket_length, tokenize
from starbucks_jax.models.bert import BertEncoder
from starbucks_jax.models.pooling import pool

TEXTS = [
    "the quick brown fox jumps over the lazy dog.", "a cat sat", "music", "a", "",
    "the man plays red guitar on the road with a woman and a dog"
]


@pytest.fixture(scope="module")
def model(tiny_hf_dir):
  return embed.Embedder.load(tiny_hf_dir, batch_size=4)


@pytest.mark.parametrize("pack", [False, True])
def test_encode_equals_direct_forward(model, pack):
  """Bucketing, sorting and batch padding change nothing, nor does packing texts into shared rows
  (2 rows a batch: several batches): compare with one plain padded forward."""
  if pack:
    model = embed.Embedder(model.pretrained, batch_size=2, pack=True)
  ids, _ = tokenize(model.tokenizer, TEXTS, 64)
  width = max(map(len, ids))
  arr = np.zeros((len(ids), width), np.int32)
  mask = np.zeros_like(arr)
  for i, s in enumerate(ids):
    arr[i, :len(s)], mask[i, :len(s)] = s, 1
  hidden = BertEncoder(model.config).apply({"params": model.params}, arr, mask)
  for layer, dim in [(4, 32), (2, 8), (1, 32)]:
    ref = np.asarray(pool(hidden[layer], mask, "mean"))[:, :dim]
    np.testing.assert_allclose(model.encode(TEXTS, layer=layer, dim=dim), ref, atol=1e-5)
  cls = np.asarray(pool(hidden[3], mask, "cls"))
  got = model.encode(TEXTS, layer=3, pooling="cls", normalize=True)
  np.testing.assert_allclose(got, cls / np.linalg.norm(cls, axis=1, keepdims=True), atol=1e-5)


def test_encode_layers_one_pass_equals_each_alone(model):
  both = model.encode_layers(TEXTS, (1, 3))
  for layer in (1, 3):
    np.testing.assert_allclose(both[layer], model.encode(TEXTS, layer=layer), atol=1e-6)


def test_bad_pairs_and_inputs(model):
  with pytest.raises(ValueError, match="layer=5 is outside 1..4"):
    model.encode(TEXTS, layer=5)
  with pytest.raises(ValueError, match="dim=64 is outside 1..32"):
    model.encode(TEXTS, dim=64)
  with pytest.raises(ValueError, match="pooling='max'"):
    model.encode(TEXTS, pooling="max")
  with pytest.raises(TypeError, match="not a single string"):
    model.encode("one text")
  with pytest.raises(TypeError, match=r"texts\[1\] is int"):
    model.encode(["ok", 3])
  empty = model.encode([], layer=2, dim=8)
  assert empty.shape == (0, 8) and empty.dtype == np.float32


def test_long_texts_are_truncated_and_reported_once(tiny_hf_dir, caplog):
  model = embed.Embedder.load(tiny_hf_dir)
  long = " ".join(["dog"] * 200)
  with caplog.at_level(logging.WARNING, logger="starbucks_jax.embed"):
    a = model.encode([long, "a cat"])
    model.encode([long])
  warnings = [r for r in caplog.records if "truncated" in r.message]
  assert len(warnings) == 1 and "1 of 2 texts" in warnings[0].message
  # Truncation keeps [CLS] ... [SEP], as HF's tokenizer truncation does.
  ids, n = tokenize(model.tokenizer, [long], 16)
  assert n == 1 and ids[0] == model.tokenizer(long, truncation=True, max_length=16)["input_ids"]
  b = model.encode([" ".join(["dog"] * 150)])  # same first 64 tokens -> same vector
  np.testing.assert_allclose(a[0], b[0], atol=1e-6)


def test_bucket_lengths():
  assert [bucket_length(n, 256) for n in (1, 16, 17, 33, 200, 256)] == [16, 16, 32, 64, 256, 256]
  assert bucket_length(300, 128) == 128
  linear = [bucket_length(n, 100, buckets="linear") for n in (1, 16, 17, 33, 49, 99)]
  assert linear == [16, 16, 32, 48, 64, 100]
  with pytest.raises(ValueError, match="buckets"):
    bucket_length(3, 16, buckets="pow3")


def test_cli(tiny_hf_dir, tmp_path, capsys):
  texts = tmp_path / "texts.txt"
  texts.write_text("\n".join(["a cat sat", "the dog", "music"]) + "\n")
  out = tmp_path / "vecs.npy"
  embed.main([
      "--model", tiny_hf_dir, "--layer", "2", "--dim", "8", "--input",
      str(texts), "--output",
      str(out), "--normalize"
  ])
  vecs = np.load(out)
  assert vecs.shape == (3, 8)
  np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
  ref = embed.Embedder.load(tiny_hf_dir).encode(["a cat sat", "the dog", "music"], layer=2, dim=8,
                                                normalize=True)
  np.testing.assert_allclose(vecs, ref, atol=1e-6)
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ValueError, match="empty.txt: no texts"):
    embed.main(
        ["--model", tiny_hf_dir, "--input",
         str(tmp_path / "empty.txt"), "--output",
         str(out)])
  with pytest.raises(FileNotFoundError, match="nope.txt: no such file"):
    embed.main(
        ["--model", tiny_hf_dir, "--input",
         str(tmp_path / "nope.txt"), "--output",
         str(out)])


def test_workdir_checkpoint_is_a_model_source(tiny_hf_dir, tmp_path):
  """A run's workdir (orbax params + model/ description) loads like an HF directory."""
  pre = model_dirs.load_pretrained(tiny_hf_dir)
  workdir = str(tmp_path / "run")
  checkpoint.write_model_dir(workdir, pre)
  params = jax.tree_util.tree_map(lambda x: x * 1.5, pre.params)  # a "trained" model
  mngr = checkpoint.manager(workdir)
  checkpoint.save(mngr, 7, params=params, meta={"step": 7})
  mngr.wait_until_finished()
  assert workdir_lib.is_workdir(workdir)
  got = embed.Embedder.load(workdir).encode(TEXTS, layer=2)
  want = embed.Embedder(model_dirs.Pretrained(pre.config, params, pre.tokenizer, pre.sentence,
                                              "")).encode(TEXTS, layer=2)
  np.testing.assert_allclose(got, want, atol=1e-6)
  with pytest.raises(FileNotFoundError, match="no step 3"):
    checkpoint.load_model(workdir, step=3)
  # export from the workdir: a (2, 16) sub-model that sentence-transformers loads
  st = pytest.importorskip("sentence_transformers")
  from starbucks_jax import export
  out = export.export(workdir, str(tmp_path / "sub"), layer=2, dim=16)
  # a card without run facts
  assert "The (2, 16) sub-model" in open(os.path.join(out, "README.md")).read()
  theirs = st.SentenceTransformer(out, device="cpu").encode(TEXTS[:4])
  ours = embed.Embedder.load(workdir).encode(TEXTS[:4], layer=2, dim=16)
  cos = (theirs * ours).sum(1) / np.linalg.norm(theirs, axis=1) / np.linalg.norm(ours, axis=1)
  assert cos.min() >= 0.99999


def test_pack_in_order_fills_rows_and_closes_full_batches():
  from starbucks_jax.data.packing import pack_in_order
  rng = np.random.default_rng(1)
  lengths = np.sort(rng.integers(3, 40, 300))[::-1]
  seen = []
  for texts, row, offset in pack_in_order(lengths, 40, rows=8, max_texts=20):
    assert len(texts) <= 20 and row.max() < 8
    used = np.zeros((8, 40), np.int64)
    for r, o, n in zip(row, offset, lengths[texts]):
      used[r, o:o + n] += 1
    assert used.max() == 1
    seen += texts.tolist()
  assert seen == list(range(300))  # every text once, in order
