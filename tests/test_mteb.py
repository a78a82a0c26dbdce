"""The MTEB adapter: each (layer, dim) its own MTEB model, scored as our evaluators and as MTEB
scores sentence-transformers cut to the same size; MTEB's files, our records, reruns, bad input."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from starbucks_jax import checkpoint, model_dirs
from starbucks_jax.config_lib import InputError
from starbucks_jax.embed import Embedder
from starbucks_jax.evaluate import retrieval, sts

mteb = pytest.importorskip("mteb")
from starbucks_jax.evaluate import mteb as adapter  # noqa: E402
from starbucks_jax.evaluate import mteb_tasks  # noqa: E402

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "starbucks_jax",
                    "data", "demo")
STS = os.path.join(DEMO, "sts_test.jsonl")
BEIR = os.path.join(DEMO, "retrieval")
PAIRS = ((2, 32), (6, 384))
MAX_LENGTH = 64  # tokens: the STS sentences fit; passages are cut (CI time)


def small_beir(folder) -> str:
  """The demo collection with its test-judged passages and every fourth other one (CI time)."""
  os.makedirs(os.path.join(folder, "qrels"))
  judged = {
      line.split("\t")[1]
      for line in open(os.path.join(BEIR, "qrels", "test.tsv")).read().splitlines()[1:]
  }
  with open(os.path.join(folder, "corpus.jsonl"), "w") as f:
    for i, line in enumerate(open(os.path.join(BEIR, "corpus.jsonl"))):
      if json.loads(line)["_id"] in judged or i % 4 == 0:
        f.write(line)
  for name in ("queries.jsonl", os.path.join("qrels", "test.tsv")):
    with open(os.path.join(folder, name), "w") as f:
      f.write(open(os.path.join(BEIR, name)).read())
  return str(folder)


def values(records):
  return {(r["dataset"], r["split"], r["layer"], r["dim"]): r["value"] for r in records}


def test_minilm_sub_models_score_as_our_evaluators_and_as_sentence_transformers(
    minilm_dir, tmp_path):
  st = pytest.importorskip("sentence_transformers")
  embedder = Embedder.load(minilm_dir)
  beir = small_beir(tmp_path / "beir")
  tasks = [
      mteb_tasks.local_sts_task("demo-sts", "test", STS),
      mteb_tasks.local_retrieval_task("pydoc", "test", beir)
  ]
  out = str(tmp_path / "out")
  got = values(
      adapter.evaluate(embedder, tasks, PAIRS, out, name="starbucks_jax/minilm", revision="r1",
                       max_length=MAX_LENGTH))
  assert len(got) == 4

  # our own evaluators on the same model and data (MTEB rounds retrieval scores to 5 decimals)
  s1, s2, gold = sts.read_sts(STS)
  ours = sts.evaluate_sts(embedder, s1, s2, gold, PAIRS, dataset="demo-sts", split="test")
  collection = retrieval.load_collection(beir, "test", name="pydoc")
  ours += retrieval.evaluate_collection(embedder, collection, PAIRS, str(tmp_path / "ours"),
                                        normalize=True, query_max_length=MAX_LENGTH,
                                        passage_max_length=MAX_LENGTH, metrics=("nDCG@10",))
  for key, value in values(ours).items():
    assert got[key] == pytest.approx(value, abs=1e-4), key

  # MTEB's own sentence-transformers path, the model cut to (layer, dim) as the model card says
  for n, d in PAIRS:
    model = st.SentenceTransformer(minilm_dir, device="cpu", truncate_dim=d)
    model[0].auto_model.encoder.layer = model[0].auto_model.encoder.layer[:n]
    model.max_seq_length = MAX_LENGTH
    theirs = mteb.evaluate(model, tasks, cache=None, show_progress_bar=False)
    for result in theirs.task_results:
      assert got[(result.task_name, "test", n,
                  d)] == pytest.approx(result.scores["test"][0]["main_score"], abs=1e-4)

  # MTEB's files: one model per pair, read back by MTEB's ResultCache; our records in results/mteb.json
  for n, d in PAIRS:
    assert os.path.isfile(
        os.path.join(out, "mteb", "results", f"starbucks_jax__minilm-{n}x{d}", "r1", "pydoc.json"))
  cache = mteb.ResultCache(cache_path=os.path.join(out, "mteb"))
  loaded = cache.load_results(models=["starbucks_jax/minilm-6x384"], tasks=tasks)
  (model_result,) = loaded.model_results
  assert {r.task_name: r.scores["test"][0]["main_score"]
          for r in model_result.task_results} == pytest.approx({
              "demo-sts": got[("demo-sts", "test", 6, 384)], "pydoc": got[("pydoc", "test", 6, 384)]
          })
  assert values(json.load(open(os.path.join(out, "results", "mteb.json")))) == got


def test_pairs_share_one_pass_and_a_rerun_evaluates_only_what_is_missing(tiny_hf_dir, tmp_path):
  embedder = Embedder.load(tiny_hf_dir)
  calls = []
  real = embedder.encode_layers
  embedder.encode_layers = lambda texts, layers, **kw: calls.append(layers) or real(
      texts, layers, **kw)
  pairs = ((1, 8), (2, 16), (4, 32))
  sts_task = mteb_tasks.local_sts_task("demo-sts", "test", STS)
  first = adapter.evaluate(embedder, [sts_task], pairs, str(tmp_path), name="o/tiny", revision="a")
  # sentence1 and sentence2: one pass each for the three pairs
  assert calls == [(1, 2, 4), (1, 2, 4)]
  # the same texts at each layer are our encoder's, sliced to the dim
  s1 = sts.read_sts(STS)[0]
  want = embedder.encode(s1, layer=2, dim=16)
  model = adapter.sub_model(adapter.SharedEncodings(embedder, [2], 2**30), 2, 16,
                            adapter.model_meta("o/tiny", 2, 16, revision="a", max_tokens=32), False)
  np.testing.assert_allclose(
      model.encode([{"text": s1[:50]}, {"text": s1[50:]}], task_metadata=sts_task.metadata,
                   hf_split="test", hf_subset="default"), want, atol=1e-6)

  calls.clear()  # a rerun with one more task: the finished one is read back, not evaluated
  more = [sts_task, mteb_tasks.local_retrieval_task("pydoc", "test", BEIR)]
  second = adapter.evaluate(embedder, more, pairs, str(tmp_path), name="o/tiny", revision="a")
  assert calls == [(1, 2, 4), (1, 2, 4)]  # the retrieval queries and corpus only
  assert values(r for r in second
                if r["dataset"] == "demo-sts") == pytest.approx(values(first), abs=1e-6)
  calls.clear()  # another revision (other weights) is evaluated afresh
  adapter.evaluate(embedder, [sts_task], pairs, str(tmp_path), name="o/tiny", revision="b")
  assert len(calls) == 2
  calls.clear()  # no room to keep a list at every layer: each pair encodes its own layer
  adapter.evaluate(embedder, [sts_task], pairs, str(tmp_path), name="o/tiny", revision="c",
                   cache_gb=1e-9)
  assert calls == [(1,), (1,), (2,), (2,), (4,), (4,)]


def test_workdir_command_line_defaults_to_its_schedule_and_folder(tiny_hf_dir, tmp_path, capsys):
  pre = model_dirs.load_pretrained(tiny_hf_dir)
  workdir = str(tmp_path / "run")
  checkpoint.write_model_dir(workdir, pre)
  mngr = checkpoint.manager(workdir)
  checkpoint.save(mngr, 3, params=jax.tree_util.tree_map(lambda x: x * 1.5, pre.params),
                  meta={"step": 3})
  mngr.wait_until_finished()
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"schedule": {"pairs": [[1, 8], [3, 24]]}}, f)
  adapter.main(["--model", workdir, "--sts", f"demo:dev={STS}"])
  records = json.load(open(os.path.join(workdir, "results", "mteb.json")))
  assert sorted(
      (r["dataset"], r["split"], r["layer"], r["dim"]) for r in records) == [("demo", "dev", 1, 8),
                                                                             ("demo", "dev", 3, 24)]
  assert "| 3 | 24 |" in capsys.readouterr().out
  # the same weights score the same through the Python API
  again = adapter.evaluate(Embedder.load(workdir), [mteb_tasks.local_sts_task("demo", "dev", STS)],
                           ((3, 24),), str(tmp_path / "api"), name="o/x")
  assert again[0]["value"] == pytest.approx(values(records)[("demo", "dev", 3, 24)], abs=1e-6)
  revisions = os.listdir(os.path.join(workdir, "mteb", "results", "starbucks_jax__run-3x24"))
  assert revisions == [adapter.revision_of(Embedder.load(workdir), None)]
  assert revisions != [adapter.revision_of(Embedder.load(tiny_hf_dir), None)]


@pytest.mark.parametrize("args, message", [
    (["--tasks", "STSBenchmarkk"], r"--tasks STSBenchmarkk: .*Did you mean: 'STSBenchmark'"),
    (["--tasks", "STSBenchmark", "--splits", "dev"
     ], r"--splits dev: STSBenchmark has no split dev \(its splits: test\)"),
    (["--sts", "demo"], r"--sts demo: expected NAME\[:SPLIT\]=SOURCE"),
    (["--sts", "a=nope.jsonl"], r"nope.jsonl"),
    (["--retrieval", "a=/nonexistent"], r"/nonexistent"),
    (["--sts", f"a={STS}", "--sts", f"a={STS}"], r"task names repeat"),
    ([], r"no tasks: give --tasks, --sts or --retrieval"),
    (["--sts", f"a={STS}", "--pairs", "2x32,9x8"], r"--pairs 9x8: layer=9 is outside 1..4"),
    (["--sts", f"a={STS}", "--pairs", "2-32"], r"--pairs 2-32: '2-32' is not LAYERxDIM"),
    (["--sts", f"a={STS}", "--name", "noslash"], r"--name noslash: expected ORG/NAME"),
])
def test_bad_input_fails_before_any_encoding(tiny_hf_dir, tmp_path, args, message):
  with pytest.raises((InputError, OSError), match=message):
    adapter.main(["--model", tiny_hf_dir, "--output", str(tmp_path), *args])
  assert not os.path.exists(os.path.join(tmp_path, "mteb"))


def test_output_is_required_for_a_model_directory(tiny_hf_dir):
  with pytest.raises(InputError, match="--output: required unless --model is a training workdir"):
    adapter.main(["--model", tiny_hf_dir, "--sts", f"a={STS}"])


def test_an_mteb_task_without_its_data_fails_in_one_line(tiny_hf_dir, tmp_path):
  """Offline with an empty Hub cache: one error line naming the task and its dataset, nothing written."""
  env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
  proc = subprocess.run([
      sys.executable, "-m", "starbucks_jax.evaluate.mteb", "--model", tiny_hf_dir, "--output",
      str(tmp_path / "out"), "--tasks", "STSBenchmark"
  ], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(
      "error: MTEB task STSBenchmark: its data (mteb/stsbenchmark-sts) did not load"), last
  assert not os.path.exists(tmp_path / "out")


def test_missing_mteb_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "mteb", None)
  with pytest.raises(InputError, match=r'pip install "starbucks_jax\[mteb\]"'):
    mteb_tasks.named_tasks(["STSBenchmark"], None)
