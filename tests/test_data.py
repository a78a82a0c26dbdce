"""Sources (local files, HF datasets), errors that name file and line, and deterministic batches."""

import itertools
import json

import numpy as np
import pytest

from starbucks_jax import model_dirs
from starbucks_jax.data import batching, packing, sources, tokenize
from starbucks_jax.data.sources import DataError


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_jsonl_tsv_csv_and_column_mapping(tmp_path):
  rows = [{"premise": f"a {i}", "hypothesis": f"b {i}", "label": i / 2} for i in range(4)]
  spec = _jsonl(tmp_path / "x.jsonl", rows)
  got = list(
      sources.read_rows(spec, {"sentence1": str, "sentence2": str, "score": float},
                        {"sentence1": "premise", "sentence2": "hypothesis", "score": "label"}))
  assert got[3] == {"sentence1": "a 3", "sentence2": "b 3", "score": 1.5}
  (tmp_path / "x.tsv").write_text("sentence1\tsentence2\tscore\nhello\tworld\t2.5\n")
  assert list(sources.read_rows(str(tmp_path / "x.tsv"), {"sentence1": str, "score": float})) == [{
      "sentence1": "hello", "score": 2.5
  }]
  (tmp_path / "x.csv").write_text('sentence1,sentence2,score\n"a, b",c,1\n')
  assert next(sources.read_rows(str(tmp_path / "x.csv"), {"sentence1": str}))["sentence1"] == "a, b"


def test_errors_name_file_and_line(tmp_path):
  p = tmp_path / "bad.jsonl"
  p.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "a", "positive": \n')
  with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
    list(sources.read_rows(str(p), {"anchor": str, "positive": str}))
  p.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "a"}\n')
  with pytest.raises(DataError, match=r"bad.jsonl:2: no column 'positive'.*columns.positive="):
    list(sources.read_rows(str(p), {"anchor": str, "positive": str}))
  p.write_text('{"anchor": "a", "positive": "  "}\n')
  with pytest.raises(DataError, match=r"bad.jsonl:1: column 'positive' = '  ' is an empty text"):
    list(sources.read_rows(str(p), {"anchor": str, "positive": str}))
  p.write_text('{"s": "a", "score": "high"}\n')
  with pytest.raises(DataError, match=r"bad.jsonl:1: column 'score' = 'high' is not a number"):
    list(sources.read_rows(str(p), {"s": str, "score": float}))
  t = tmp_path / "bad.tsv"
  t.write_text("sentence1\tsentence2\nx\ty\nonly-one-field\n")
  with pytest.raises(DataError, match=r"bad.tsv:3: expected 2 fields"):
    list(sources.read_rows(str(t), {"sentence1": str, "sentence2": str}))
  with pytest.raises(DataError, match="cannot tell the format"):
    sources.resolve_spec(str(tmp_path / "data.xml"))
  with pytest.raises(DataError, match="no such file"):
    sources.resolve_spec(str(tmp_path / "none.jsonl"))


def test_hf_datasets_source_from_a_local_folder(tmp_path):
  pytest.importorskip("datasets")
  folder = tmp_path / "my_nli"
  folder.mkdir()
  _jsonl(folder / "train.jsonl",
         [{"anchor": f"a{i}", "positive": f"p{i}", "negative": f"n{i}"} for i in range(6)])
  ex = batching.load_examples(f"hf:{folder}@train", "triplets")
  assert len(ex) == 6 and ex.texts[2][5] == "n5"
  with pytest.raises(DataError, match=r"hf:.*could not load"):
    list(sources.read_rows(f"hf:{folder}@validation", {"anchor": str}))


def test_demo_data_ships_in_the_package():
  ex = batching.load_examples("demo:triplets_train.jsonl", "triplets")
  assert len(ex) == 320 and ex.roles == ("anchor", "positive", "negative")
  s1, s2, scores = batching.load_examples("demo:sts_test.jsonl", "scored_pairs").texts + [None]
  assert len(s1) == 100


@pytest.fixture(scope="module")
def tokenizer(tiny_hf_dir):
  return model_dirs.load_tokenizer(tiny_hf_dir)


def _examples(n, dup_every=0):
  anchors = [
      f"the cat {i}" if not dup_every or i % dup_every else "the same text" for i in range(n)
  ]
  return batching.Examples(("anchor", "positive"), [anchors, [f"a dog {i}" for i in range(n)]],
                           None)


def test_batches_are_deterministic_and_resumable(tokenizer):
  ex = _examples(37)
  a = batching.Batcher(ex, tokenizer, batch_size=8, max_length=16, seed=3)
  b = batching.Batcher(ex, tokenizer, batch_size=8, max_length=16, seed=3)
  assert a.steps_in(2) == 8  # 4 full batches per epoch, the partial one dropped
  full = list(a.batches(0, 8))
  tail = list(b.batches(5, 8))  # a resumed run starting at step 5
  for (s1, x), (s2, y) in zip(full[5:], tail):
    assert s1 == s2
    np.testing.assert_array_equal(x["ids"], y["ids"])
  assert b.position(5) == (1, 1)
  first = np.concatenate([a.epoch_batches(0)[i] for i in range(4)])
  second = np.concatenate([a.epoch_batches(1)[i] for i in range(4)])
  assert len(set(first)) == 32 and not np.array_equal(first, second)  # reshuffled per epoch
  c = batching.Batcher(ex, tokenizer, batch_size=8, max_length=16, seed=4)
  assert not np.array_equal(c.epoch_batches(0)[0], a.epoch_batches(0)[0])
  batch = full[0][1]
  assert batch["ids"].shape[:2] == (2, 8) and batch["ids"].shape[2] in (16,)
  assert batch["mask"].sum(-1).min() >= 3  # [CLS] text [SEP]


def test_no_duplicates_keeps_repeated_texts_apart(tokenizer):
  ex = _examples(40, dup_every=4)  # 10 rows share one anchor text
  batcher = batching.Batcher(ex, tokenizer, batch_size=5, max_length=16, seed=0, no_duplicates=True)
  batches = batcher.epoch_batches(0)
  assert len(batches) >= 6
  for rows in batches:
    anchors = [ex.texts[0][i] for i in rows]
    assert len(set(anchors)) == len(anchors)
  plain = batching.Batcher(ex, tokenizer, batch_size=5, max_length=16, seed=0)
  assert any(len({ex.texts[0][i] for i in rows}) < 5 for rows in plain.epoch_batches(0))


def test_no_batch_without_duplicates_is_an_error_not_a_hang(tokenizer):
  ex = _examples(12, dup_every=1)  # every anchor the same text: no two rows share a batch
  batcher = batching.Batcher(ex, tokenizer, batch_size=4, max_length=16, seed=0, no_duplicates=True)
  with pytest.raises(
      DataError, match=r"data.batch_size=4: no batch can be made of 12 examples "
      r"whose texts repeat \(data.no_duplicates=True"):
    batcher.position(3)  # looped forever before


def test_too_few_examples(tokenizer):
  with pytest.raises(DataError, match="fewer than one batch of 8"):
    batching.Batcher(_examples(5), tokenizer, batch_size=8, max_length=16, seed=0)


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=7):
    s1, s2, scores = __import__("starbucks_jax.evaluate.sts",
                                fromlist=["read_sts"]).read_sts("tfds:glue/stsb@train",
                                                                {"score": "label"})
    ex = batching.load_examples("tfds:glue/stsb@validation", "scored_pairs", {"score": "label"})
  assert len(s1) == 7 and isinstance(s1[0], str) and scores.dtype == np.float64
  assert len(ex) == 7 and ex.scores.shape == (7,)


def test_fitted_buckets_are_the_fewest_padded_tokens_and_hold_every_length():
  rng = np.random.default_rng(0)
  for _ in range(30):
    lengths = rng.integers(3, 60, rng.integers(1, 40))
    top = int(-(-lengths.max() // 8) * 8)
    count = int(rng.integers(1, 4))
    got = tokenize.fit_buckets(lengths, top, count)
    assert len(got) <= count and got[-1] == top and all(b % 8 == 0 for b in got)
    padded = lambda bs: sum(min(b for b in bs if b >= n) for n in lengths)
    # brute force over every choice of count - 1 smaller multiples of 8: none pads fewer tokens
    smaller = list(range(8, top, 8))
    best = min(
        padded(tuple(c) + (top,)) for k in range(count) for c in itertools.combinations(smaller, k))
    assert padded(got) == best
  with pytest.raises(ValueError, match="does not fit the top bucket 16"):
    tokenize.fit_buckets([20], 16, 2)


def test_auto_buckets_keep_every_example_and_its_tokens(tokenizer):
  ex = batching.Examples(("anchor", "positive"),
                         [[("word " * (i % 23 + 1)).strip()
                           for i in range(64)], [f"a dog {i}" for i in range(64)]], None)
  b = batching.Batcher(ex, tokenizer, batch_size=8, max_length=256, seed=0, length_buckets="auto",
                       num_buckets=2)
  longest = max(len(tokenizer(t)["input_ids"]) for role in ex.texts for t in role)
  # the top holds the longest text
  assert len(b.buckets) == 2 and b.buckets[-1] == -(-longest // 8) * 8
  seen = []
  for _, batch in b.batches(0, b.steps_in(1)):
    assert batch["ids"].shape[-1] in b.buckets
    for r, texts in enumerate(ex.texts):
      for row, i in zip(range(8), b.epoch_batches(0)[len(seen) // 8]):
        want = tokenizer(texts[i])["input_ids"]
        n = int(batch["mask"][r, row].sum())
        assert batch["ids"][r, row, :n].tolist() == want and (batch["ids"][r, row, n:]
                                                              == tokenizer.pad_token_id).all()
    seen += list(b.epoch_batches(0)[len(seen) // 8])
  assert sorted(seen) == list(range(64))  # every example once per epoch


def test_pack_texts_places_every_text_in_a_row_without_overlap():
  rng = np.random.default_rng(0)
  for _ in range(50):
    lengths = rng.integers(1, 33, rng.integers(1, 40))
    row, offset, rows = packing.pack_texts(lengths, 32)
    used = np.zeros((rows, 32), np.int64)
    for r, o, n in zip(row, offset, lengths):
      used[r, o:o + n] += 1
    assert used.max() == 1 and used.sum() == lengths.sum()  # every token once, inside its row
    assert rows <= -(-2 * lengths.sum() // 32) + 1  # first fit: at most one row is under half full


@pytest.mark.parametrize("shards", [1, 2])
def test_packed_batches_keep_every_text_and_its_positions(tokenizer, shards):
  """Each shard's rows hold exactly its examples' texts, role by role, with positions 0..n-1; every
  example of the epoch appears once; the rows per shard are one of the fitted counts."""
  ex = batching.Examples(("anchor", "positive", "negative"), [[
      ("word " * (i % 13 + 1)).strip() for i in range(48)
  ], [f"a dog {i}" for i in range(48)], [("cat " * (i % 5 + 1)).strip() for i in range(48)]], None)
  b = batching.Batcher(ex, tokenizer, batch_size=8, max_length=64, seed=0, pack_length=0,
                       shards=shards, num_buckets=2)
  longest = max(len(tokenizer(t)["input_ids"]) for role in ex.texts for t in role)
  assert b.pack_length == -(-longest // 8) * 8 and len(b.buckets) <= 2
  seen = []
  for step, batch in b.batches(0, b.steps_in(1)):
    rows = b.epoch_batches(0)[step]
    P = batch["ids"].shape[0] // shards
    assert set(batch) == {"ids", "segments", "positions"} and P in b.buckets
    for s in range(shards):
      ids, seg, pos = (batch[k][s * P:(s + 1) * P] for k in ("ids", "segments", "positions"))
      assert (ids[seg < 0] == tokenizer.pad_token_id).all()
      per = len(rows) // shards
      for r, texts in enumerate(ex.texts):
        for j, i in enumerate(rows[s * per:(s + 1) * per]):
          mine = seg == r * per + j
          assert ids[mine].tolist() == tokenizer(texts[i])["input_ids"]
          assert pos[mine].tolist() == list(range(mine.sum()))
      assert seg.max() == len(ex.texts) * per - 1
    seen += list(rows)
  assert sorted(seen) == list(range(48))


def test_pack_length_shorter_than_a_text_is_an_error(tokenizer):
  ex = batching.Examples(("anchor", "positive"), [["a dog " * 10, "a cat"], ["x", "y"]], None)
  with pytest.raises(DataError,
                     match="data.pack_length=8 is shorter than the longest training text"):
    batching.Batcher(ex, tokenizer, batch_size=2, max_length=64, seed=0, pack_length=8)
