"""Query / passage prompts (model.query_prompt, model.passage_prompt): read from and written to
sentence-transformers' config, put before the texts of each role at training and at evaluation, and
equal to what sentence-transformers and MTEB compute with the same stored prompts."""

import json
import os

import numpy as np
import pytest

from starbucks_jax import checkpoint, config_lib, embed, finetune, model_dirs
from starbucks_jax.config_blocks import FinetuneConfig
from starbucks_jax.config_lib import InputError
from starbucks_jax.data import batching, groups
from starbucks_jax.embed import Embedder
from starbucks_jax.evaluate import index as index_lib
from starbucks_jax.evaluate import sts
from starbucks_jax.models import hf

from conftest import REPO, make_hf_modernbert, write_triplets

E5 = {"query": "query: ", "document": "passage: "}
TEXTS = ["the cat sat on the mat", "a man plays the guitar", "the dog runs"]


def assert_close(ours, theirs):
  """float32 agreement at the vectors' scale (the tiny model's large random weights: ~1e-5)."""
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=5e-5 * np.abs(theirs).max())


def prompted_model(src: str, out, layer=None, dim=None) -> str:
  """`src` (or its (layer, dim) sub-model) written again as a sentence-transformers folder with
  E5's prompts stored."""
  pre = checkpoint.load_model(src)
  sentence = model_dirs.SentenceSettings(max_seq_length=32, prompts=E5)
  return model_dirs.save_pretrained(str(out), pre.config, pre.params, pre.tokenizer,
                                    sentence=sentence, layer=layer, dim=dim)


def test_prompts_are_read_overridden_and_written(tiny_hf_dir, tmp_path):
  stored = model_dirs.SentenceSettings(prompts={"query": "q: ", "passage": "p: ", "STS": "s: "})
  assert (stored.prompt("query"), stored.prompt("document")) == ("q: ", "p: ")
  assert model_dirs.with_prompts(stored) == stored  # 'stored' twice: the checkpoint's own
  # a passage prompt replaces every name sentence-transformers reads one from; '' removes one
  assert model_dirs.with_prompts(stored, "",
                                 "passage: ").prompts == {"document": "passage: ", "STS": "s: "}
  folder = prompted_model(tiny_hf_dir, tmp_path / "m")
  written = json.load(open(os.path.join(folder, "config_sentence_transformers.json")))
  assert written["prompts"] == E5
  assert model_dirs.load_pretrained(folder).sentence.prompts == E5
  assert model_dirs.load_pretrained(tiny_hf_dir).sentence.prompts == {}  # an HF folder has none
  # what we cannot compute or read fails naming the file
  pooling = os.path.join(folder, "1_Pooling", "config.json")
  json.dump({**json.load(open(pooling)), "include_prompt": False}, open(pooling, "w"))
  with pytest.raises(hf.ModelError, match="1_Pooling/config.json: include_prompt=false"):
    model_dirs.load_pretrained(folder)
  folder = prompted_model(tiny_hf_dir, tmp_path / "bad")
  st_config = os.path.join(folder, "config_sentence_transformers.json")
  json.dump({**written, "prompts": ["query: "]}, open(st_config, "w"))
  with pytest.raises(hf.ModelError, match="config_sentence_transformers.json: 'prompts' must map"):
    model_dirs.load_pretrained(folder)


def test_each_role_gets_its_prompt_in_the_batches(tiny_hf_dir, tmp_path):
  tok = checkpoint.load_model(tiny_hf_dir).tokenizer
  cfg = config_lib.load_config(str(REPO / "configs" / "ft.py") + ":demo")
  with cfg.unlocked():
    cfg.data.train, cfg.data.batch_size = write_triplets(tmp_path / "t.jsonl", 8), 8
  batcher, _ = finetune.make_batcher(FinetuneConfig.from_config(cfg), tok, 32,
                                     prompts=("query: ", "passage: "))
  plain = batching.load_examples(cfg.data.train, "triplets")
  for r, prompt in enumerate(("query: ", "passage: ", "passage: ")):  # anchor, positive, negative
    want = tok([prompt + t for t in plain.texts[r]])["input_ids"]
    got = np.split(batcher.flat[r], np.cumsum(batcher.lengths[r])[:-1])
    assert [list(x) for x in got] == want
  scored = batching.Examples(batching.FORMATS["scored_pairs"], [["a"], ["b"]], np.ones(1))
  assert scored.with_prompts("q ", "p ").texts == [["q a"], ["q b"]]  # symmetric: both the query's
  grouped = groups.Groups(["who"], [[0]], [[]], ["it"]).with_prompts("q ", "p ")
  assert (grouped.queries, grouped.passages) == (["q who"], ["p it"])


def test_sentence_transformers_encode_query_equals_ours(tiny_hf_dir, tmp_path):
  st = pytest.importorskip("sentence_transformers")
  folder = prompted_model(tiny_hf_dir, tmp_path / "m")
  theirs = st.SentenceTransformer(folder, device="cpu")
  ours = Embedder.load(folder)
  assert_close(ours.encode(TEXTS, prompt_name="query"), theirs.encode_query(TEXTS))
  assert not np.allclose(ours.encode(TEXTS), theirs.encode_query(TEXTS), atol=1e-3)  # it mattered
  assert_close(ours.encode(TEXTS, prompt=ours.prompt("document")), theirs.encode_document(TEXTS))
  with pytest.raises(InputError, match=r"prompt_name='STS': the model's prompts are \['document'"):
    ours.encode(TEXTS, prompt_name="STS")
  # the command line: --prompt-name and --prompt
  (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
  for flag in (["--prompt-name", "query"], ["--prompt", "query: "]):
    out = str(tmp_path / "q.npy")
    embed.main(["--model", folder, "--input", str(tmp_path / "in.txt"), "--output", out, *flag])
    assert_close(np.load(out), theirs.encode_query(TEXTS))


def test_evaluation_puts_each_prompt_before_its_texts(tiny_hf_dir, tmp_path):
  """STS: the query prompt on both sentences; a corpus index: the passage prompt, kept in its
  metadata, so an index of other prompts is not reused."""
  folder = prompted_model(tiny_hf_dir, tmp_path / "m")
  prompted, plain = Embedder.load(folder), Embedder.load(tiny_hf_dir)
  s1, s2, gold = TEXTS, TEXTS[1:] + TEXTS[:1], np.array([1.0, 3.0, 2.0])
  got = sts.evaluate_sts(prompted, s1, s2, gold, [(2, 16)], dataset="d", split="test")
  want = sts.evaluate_sts(plain, ["query: " + t for t in s1], ["query: " + t for t in s2], gold,
                          [(2, 16)], dataset="d", split="test")
  assert got == want
  index = str(tmp_path / "index")
  meta = index_lib.encode_corpus(prompted, ["a", "b", "c"], TEXTS, [(2, 16)], index)
  assert meta["prompt"] == "passage: "
  np.testing.assert_allclose(index_lib.gather(index, 2, 16, np.arange(3)),
                             plain.encode(["passage: " + t for t in TEXTS], layer=2, dim=16),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="an index with other settings"):
    index_lib.encode_corpus(plain, ["a", "b", "c"], TEXTS, [(2, 16)], index)


def test_mteb_scores_a_prompted_modernbert_as_it_scores_sentence_transformers(tmp_path):
  """Each (layer, dim) of a ModernBERT with stored prompts, through our MTEB adapter, scores what
  MTEB scores for sentence-transformers loading that sub-model's export (its prompt rules: the
  query and document prompts on retrieval, none on STS)."""
  st = pytest.importorskip("sentence_transformers")
  mteb = pytest.importorskip("mteb")
  from test_mteb import STS, small_beir, values

  from starbucks_jax.evaluate import mteb as adapter
  from starbucks_jax.evaluate import mteb_tasks
  make_hf_modernbert(tmp_path / "hf", layers=2)
  folder = prompted_model(str(tmp_path / "hf"), tmp_path / "m")
  tasks = [
      mteb_tasks.local_sts_task("demo-sts", "test", STS),
      mteb_tasks.local_retrieval_task("pydoc", "test", small_beir(tmp_path / "beir"))
  ]
  pairs = ((1, 16), (2, 32))
  got = values(
      adapter.evaluate(Embedder.load(folder), tasks, pairs, str(tmp_path / "out"), name="o/mb",
                       revision="r"))
  for n, d in pairs:
    model = st.SentenceTransformer(prompted_model(folder, tmp_path / f"{n}x{d}", n, d),
                                   device="cpu")
    assert model.prompts == E5
    for result in mteb.evaluate(model, tasks, cache=None, show_progress_bar=False).task_results:
      assert got[(result.task_name, "test", n,
                  d)] == pytest.approx(result.scores["test"][0]["main_score"], abs=1e-4)
  # without the prompts, retrieval scores otherwise (the prompts reached the encoder)
  unprompted = Embedder.load(folder)
  unprompted.pretrained.sentence = model_dirs.with_prompts(unprompted.pretrained.sentence, "", "")
  bare = values(
      adapter.evaluate(unprompted, tasks[1:], pairs[1:], str(tmp_path / "bare"), name="o/mb",
                       revision="bare"))
  assert bare[("pydoc", "test", 2, 32)] != pytest.approx(got[("pydoc", "test", 2, 32)], abs=1e-4)
