"""Retrieval evaluation: BEIR loading, one-pass corpus encoding for every size, exact search vs a
brute-force ranking (and FAISS), IR metrics vs hand-computed values, run files and records."""

import glob
import gzip
import json
import os

import numpy as np
import pytest

from starbucks_jax import embed
from starbucks_jax.config_lib import ConfigError
from starbucks_jax.data import beir, sources, tevatron
from starbucks_jax.data.sources import DataError
from starbucks_jax.evaluate import index as index_lib
from starbucks_jax.evaluate import retrieval, search

PAIRS = ((1, 8), (2, 16), (4, 32))


def write_beir(folder, n_docs=23, n_queries=5):
  rng = np.random.default_rng(0)
  words = "the cat sat on a mat dog runs over lazy fox quick brown red blue car road music".split()
  os.makedirs(folder / "qrels", exist_ok=True)
  with open(folder / "corpus.jsonl", "w") as f:
    for i in range(n_docs):
      f.write(
          json.dumps({
              "_id": f"d{i}", "title": "" if i %
                                       3 else f"title {i}", "text": " ".join(rng.choice(words, 12))
          }) + "\n")
  with open(folder / "queries.jsonl", "w") as f:
    for i in range(n_queries + 2):  # two unjudged queries are left out
      f.write(json.dumps({"_id": str(i), "text": " ".join(rng.choice(words, 4))}) + "\n")
  with open(folder / "qrels" / "test.tsv", "w") as f:
    f.write("query-id\tcorpus-id\tscore\n")
    for i in range(n_queries):
      f.write(f"{i}\td{(3 * i) % n_docs}\t1\n{i}\td{(3 * i + 1) % n_docs}\t2\n")
  return str(folder)


def write_tevatron_eval(beir_folder, folder, split="test"):
  """The BEIR folder's test collection in Tevatron's layout: corpus.jsonl.gz {docid, title, text},
  <split>.jsonl {query_id, query}, qrels/<split>.txt in NIST's TREC format."""
  beir_folder, folder = str(beir_folder), str(folder)
  os.makedirs(os.path.join(folder, "qrels"), exist_ok=True)
  with open(os.path.join(beir_folder,
                         "corpus.jsonl")) as f, gzip.open(os.path.join(folder, "corpus.jsonl.gz"),
                                                          "wt") as g:
    for line in f:
      row = json.loads(line)
      g.write(
          json.dumps({"docid": row["_id"], "title": row.get("title", ""), "text": row["text"]}) +
          "\n")
  with open(os.path.join(beir_folder,
                         "queries.jsonl")) as f, open(os.path.join(folder, f"{split}.jsonl"),
                                                      "w") as g:
    for line in f:
      row = json.loads(line)
      g.write(json.dumps({"query_id": row["_id"], "query": row["text"]}) + "\n")
  with open(os.path.join(folder, "qrels", f"{split}.txt"), "w") as g:
    for q, judged in beir.read_qrels(os.path.join(beir_folder, "qrels", "test.tsv")).items():
      g.writelines(f"{q} 0 {d} {rel}\n" for d, rel in judged.items())
  return folder


def test_a_passage_reads_the_same_in_training_and_evaluation(tmp_path):
  """One joining of title and text: a Tevatron training group and a BEIR corpus give one string."""
  from starbucks_jax.data import groups as groups_lib
  passages = [{"docid": "a", "title": " Paris ",
               "text": "the capital of France. "}, {"docid": "b", "title": "", "text": " no title"},
              {"docid": "c", "title": None, "text": "none"}]
  (tmp_path / "c").mkdir()
  (tmp_path / "c" / "corpus.jsonl").write_text("".join(
      json.dumps({"_id": p["docid"], "title": p["title"], "text": p["text"]}) + "\n"
      for p in passages))
  (tmp_path / "c" / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "paris"}) + "\n")
  (tmp_path / "c" / "qrels").mkdir()
  (tmp_path / "c" / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\ta\t1\n")
  evaluated = beir.load(str(tmp_path / "c"), "test").docs
  trained = groups_lib.passage_texts(passages)
  tevatron_evaluated = tevatron.load(
      f"tevatron:{write_tevatron_eval(tmp_path / 'c', tmp_path / 't')}", "test").docs
  assert evaluated == trained == tevatron_evaluated == [
      "Paris the capital of France.", "no title", "none"
  ]


def test_tevatron_layout_equals_the_beir_folder(tmp_path, monkeypatch):
  """MS MARCO as the authors evaluate it (Tevatron corpus + queries, TREC qrels): a local folder and
  the three named parts (qrels by URL, downloaded once into a cache) give the BEIR folder's collection."""
  monkeypatch.setattr(beir, "QRELS_CACHE", str(tmp_path / "qrels_cache"))
  folder = write_beir(tmp_path / "toy")
  want = beir.load(folder, "test", name="toy")
  local = write_tevatron_eval(folder, tmp_path / "tev", "dl19")
  from_folder = tevatron.load(f"tevatron:{local}", "dl19", name="toy")
  url = (tmp_path / "tev" / "qrels" / "dl19.txt").as_uri()
  parts = f"tevatron:{local}/corpus.jsonl.gz+{local}/dl19.jsonl+{url}"
  from_parts = tevatron.load(parts, "dl19", name="toy")
  for got in (from_folder, from_parts):
    assert (got.doc_ids, got.docs, got.query_ids, got.queries,
            got.qrels) == (want.doc_ids, want.docs, want.query_ids, want.queries, want.qrels)
  cached = os.listdir(os.path.expanduser(beir.QRELS_CACHE))
  assert any(name.endswith("-dl19.txt") for name in cached)
  # checked before compute: a missing part names the config key; two parts are not three
  tevatron.check("k", parts, "dl19")
  with pytest.raises(ConfigError, match=r"k: .*dl20.jsonl: no such file"):
    tevatron.check("k", f"tevatron:{local}", "dl20")
  with pytest.raises(ConfigError, match=r"k: .*CORPUS\+QUERIES\+QRELS"):
    tevatron.check("k", f"tevatron:{local}/corpus.jsonl.gz+{url}", "dl19")
  with pytest.raises(ConfigError, match=r"k: .*no such qrels file"):
    tevatron.check("k", f"tevatron:{local}/corpus.jsonl.gz+{local}/dl19.jsonl+{local}/none.txt",
                   "dl19")
  # qrels of another corpus, a bad TREC line, a duplicate passage id: errors naming the source
  (tmp_path / "other.txt").write_text("0 0 x1 1\n1 0 x2 2\n")
  with pytest.raises(DataError, match=r"none of the 2 relevant document ids"):
    tevatron.load(f"tevatron:{local}/corpus.jsonl.gz+{local}/dl19.jsonl+{tmp_path / 'other.txt'}",
                  "dl19")
  (tmp_path / "bad.txt").write_text("0 0 d0 1\n0 d1 1\n")
  with pytest.raises(DataError,
                     match=r"bad.txt:2: expected 3 tab-separated fields .* or 4 of TREC"):
    beir.load_qrels(str(tmp_path / "bad.txt"))
  (tmp_path /
   "dup.jsonl").write_text('{"docid": 7, "text": "a"}\n{"docid": "7", "title": "t", "text": "b"}\n')
  tevatron.read_corpus.cache_clear()
  with pytest.raises(DataError, match=r"dup.jsonl: duplicate docid '7'"):
    tevatron.read_corpus(str(tmp_path / "dup.jsonl"))


def test_a_file_of_a_hub_repo_is_read_by_its_format(tmp_path, monkeypatch):
  """hf:OWNER/NAME/FILE reads one data file with datasets' builder for its format (a repo whose
  loading script datasets >= 4 refuses, as Tevatron's); the Hub's file system is replaced by a local
  folder here, the rest of the path is the one a run takes."""
  pytest.importorskip("datasets")
  spec = "hf:Tevatron/msmarco-passage/dl19.jsonl.gz"
  assert sources.load_args(spec) == (("json",), {
      "data_files": "hf://datasets/Tevatron/msmarco-passage/dl19.jsonl.gz", "split": "train"
  })
  assert sources.load_args("hf:BeIR/msmarco-qrels@dev") == (("BeIR/msmarco-qrels", None),
                                                            {"split": "dev"})
  with pytest.raises(DataError, match="drop the :CONFIG and @SPLIT"):
    sources.load_args(spec + "@dev")
  with pytest.raises(DataError, match="must be .jsonl, .json, .csv or .parquet"):
    sources.load_args("hf:Tevatron/msmarco-passage/msmarco-passage.py")
  repo = tmp_path / "hub" / "Tevatron" / "msmarco-passage"
  repo.mkdir(parents=True)
  with gzip.open(repo / "dl19.jsonl.gz", "wt") as f:
    f.write('{"query_id": "19335", "query": "anthropological definition of environment"}\n'
            '{"query_id": "47923", "query": "axon terminals or synaptic knob definition"}\n')
  monkeypatch.setattr(sources, "HUB_FILES", str(tmp_path / "hub") + "/")
  monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
  rows = list(sources.read_rows(spec, {"query_id": beir.identifier, "query": str}))
  assert rows == [{"query_id": "19335", "query": "anthropological definition of environment"},
                  {"query_id": "47923", "query": "axon terminals or synaptic knob definition"}]
  local = list(
      sources.read_rows(str(repo / "dl19.jsonl.gz"), {"query_id": beir.identifier, "query": str}))
  assert local == rows


def test_beir_loader_and_errors(tmp_path):
  col = beir.load(write_beir(tmp_path / "toy"), "test")
  assert len(col.docs) == 23 and col.query_ids == ["0", "1", "2", "3", "4"]
  assert col.docs[0].startswith("title 0 ") and not col.docs[1].startswith("title")
  assert col.qrels["1"] == {"d3": 1, "d4": 2}
  with open(tmp_path / "toy" / "qrels" / "bad.tsv", "w") as f:
    f.write("query-id\tcorpus-id\tscore\n1\td3\n")
  with pytest.raises(DataError, match=r"bad.tsv:2: expected 3 tab-separated"):
    beir.load(str(tmp_path / "toy"), "bad")
  with pytest.raises(DataError, match="dev.tsv: no such file"):
    beir.load(str(tmp_path / "toy"), "dev")


def test_hold_out_splits_a_train_split_into_train_and_dev(tmp_path):
  """The held-out queries leave the train split whole (every judgement of a query moves with it),
  the same seed draws the same ones, the test split and the texts are as they were."""
  import shutil
  src = write_beir(tmp_path / "toy", n_queries=8)
  shutil.copyfile(tmp_path / "toy" / "qrels" / "test.tsv", tmp_path / "toy" / "qrels" / "train.tsv")
  out = beir.hold_out(src, str(tmp_path / "split"), queries=3, seed=1)
  train, dev = beir.load(out, "train"), beir.load(out, "dev")
  whole = beir.load(src, "train").qrels
  assert len(dev.query_ids) == 3 and len(train.query_ids) == 5
  assert not set(dev.query_ids) & set(train.query_ids)
  assert {**train.qrels, **dev.qrels} == whole  # each query's two judgements together
  assert beir.load(out, "test").qrels == beir.load(src, "test").qrels
  assert train.docs == beir.load(src, "test").docs
  again = beir.hold_out(src, str(tmp_path / "split"), queries=3, seed=1)
  assert beir.load(again, "dev").query_ids == dev.query_ids
  other = beir.hold_out(src, str(tmp_path / "other"), queries=3, seed=2)
  assert beir.load(other, "dev").query_ids != dev.query_ids
  with pytest.raises(ConfigError, match="hold out between 1 and 7"):
    beir.hold_out(src, str(tmp_path / "bad"), queries=8)


def test_scifact_loads(shared_data):
  col = beir.load(str(shared_data / "beir_scifact"), "test")
  assert len(col.doc_ids) == 5183 and len(col.query_ids) == 300
  assert sum(len(v) for v in col.qrels.values()) == 339


def test_exact_topk_equals_brute_force_and_faiss():
  rng = np.random.default_rng(0)
  corpus = rng.normal(size=(230, 16)).astype(np.float32)
  queries = rng.normal(size=(37, 16)).astype(np.float32)
  blocks = lambda d: ((s, corpus[s:s + 50, :d]) for s in range(0, 230, 50))
  for d, normalize in ((16, False), (8, False), (8, True)):
    q, c = queries[:, :d], corpus[:, :d]
    if normalize:
      q = q / np.linalg.norm(q, axis=1, keepdims=True)
      c = c / np.linalg.norm(c, axis=1, keepdims=True)
    full = q.astype(np.float64) @ c.T.astype(np.float64)
    want = np.argsort(-full, axis=1, kind="stable")[:, :60]
    scores, rows = search.exact_topk(queries[:, :d], blocks(d), 60, normalize=normalize,
                                     query_batch=16)
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-5, atol=1e-5)
    if pytest.importorskip("faiss"):
      f_scores, f_rows = search.faiss_topk(queries[:, :d], corpus[:, :d], 60, normalize=normalize)
      np.testing.assert_array_equal(f_rows, rows)
  scores, rows = search.exact_topk(queries[:2], [(0, corpus[:3])], 5)  # fewer documents than k
  assert (rows[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()


def test_metrics_equal_hand_computed_values(tmp_path):
  qrels = {"q1": {"a": 1, "b": 0, "c": 2}, "q2": {"x": 1}, "q3": {"n": 1}}
  run = {"q1": {"a": 0.9, "b": 0.8, "z": 0.5, "c": 0.1}, "q2": {"y": 1.0, "x": 0.5}}  # q3: nothing
  got = retrieval.measure(qrels, run, ("RR@10", "nDCG@10", "R@100", "RR@1"))
  # trec_eval conventions: relevance >= 1 counts; nDCG gains are the relevance grades, log2(rank+1)
  ndcg_q1 = (1 / np.log2(2) + 2 / np.log2(5)) / (2 / np.log2(2) + 1 / np.log2(3))
  ndcg_q2 = (1 / np.log2(3)) / 1.0
  assert got["RR@10"] == pytest.approx((1 + 0.5 + 0) / 3)
  assert got["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + 0) / 3)
  assert got["R@100"] == pytest.approx((1 + 1 + 0) / 3)
  assert got["RR@1"] == pytest.approx(1 / 3)
  # graded judgements (q1's c is 2): recall also at grade >= 2, TREC DL's convention; binary: as asked
  assert retrieval.metrics_for(qrels) == retrieval.METRICS + ("R(rel=2)@100", "R(rel=2)@1000")
  assert retrieval.metrics_for({"q": {"a": 1, "b": 0}}) == retrieval.METRICS
  assert retrieval.metrics_for({"q": {"a": 1}},
                               num_docs=448) == ("RR@10", "nDCG@10", "R@100", "R@10")
  assert retrieval.metrics_for({"q": {"a": 1}}, num_docs=1001) == retrieval.METRICS
  # c (grade 2) not retrieved: q1's R@100 1/2, R(rel=2)@100 0
  without_c = {**run, "q1": {"a": 0.9, "b": 0.8}}
  got = retrieval.measure(qrels, without_c, retrieval.metrics_for(qrels, ("R@100",)))
  assert got == pytest.approx({"R@100": (0.5 + 1 + 0) / 3, "R(rel=2)@100": 0.0})
  path = search.write_trec(str(tmp_path / "r.trec"), run, "t")
  lines = open(path).read().splitlines()
  assert lines[0] == "q1 Q0 a 1 0.900000 t" and lines[3] == "q1 Q0 c 4 0.100000 t"


def test_one_pass_index_equals_each_size_alone_and_resumes(tiny_hf_dir, tmp_path, caplog):
  embedder = embed.Embedder.load(tiny_hf_dir, batch_size=4)
  col = beir.load(write_beir(tmp_path / "toy"), "test")
  folder = str(tmp_path / "index")
  meta = index_lib.encode_corpus(embedder, col.doc_ids, col.docs, PAIRS, folder, max_length=32,
                                 shard_size=10)
  assert meta["layers"] == {"1": 8, "2": 16, "4": 32} and index_lib.load_ids(folder) == col.doc_ids
  for n, d in PAIRS:
    got = np.concatenate([b for _, b in index_lib.shards(folder, n, d)])
    alone = embedder.encode(col.docs, layer=n, dim=d, normalize=False, max_length=32)
    np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-6)
  # a lost shard is re-encoded, the others are kept
  os.remove(os.path.join(folder, "layer_2", "00001.npy"))
  before = os.path.getmtime(os.path.join(folder, "layer_1", "00000.npy"))
  with caplog.at_level("INFO"):
    index_lib.encode_corpus(embedder, col.doc_ids, col.docs, PAIRS, folder, max_length=32,
                            shard_size=10)
  assert "2 of 3 shards already encoded" in caplog.text
  assert os.path.getmtime(os.path.join(folder, "layer_1", "00000.npy")) == before
  assert os.path.exists(os.path.join(folder, "layer_2", "00001.npy"))
  with pytest.raises(ValueError, match="other settings"):
    index_lib.encode_corpus(embedder, col.doc_ids, col.docs, PAIRS, folder, max_length=16,
                            shard_size=10)
  with pytest.raises(ValueError, match=r"no vectors for \(layer 3"):
    next(index_lib.shards(folder, 3, 8))


def test_evaluate_collection_writes_runs_and_records(tiny_hf_dir, tmp_path):
  embedder = embed.Embedder.load(tiny_hf_dir, batch_size=8)
  col = beir.load(write_beir(tmp_path / "toy"), "test")
  records = retrieval.evaluate_collection(embedder, col, PAIRS, str(tmp_path / "w"),
                                          passage_max_length=32, query_max_length=16, k=10)
  assert {(r["layer"], r["dim"]) for r in records} == set(PAIRS)
  # 23 passages: R@100 and R@1000 are 1 by construction, R@10 stands in
  assert {r["metric"] for r in records} == set(retrieval.metrics_for(
      col.qrels, num_docs=23)) == {"RR@10", "nDCG@10", "R@10", "R(rel=2)@10"}
  assert all(0.0 <= r["value"] <= 1.0 for r in records)
  run_file = tmp_path / "w" / "runs" / "toy_test_2_16.trec"
  assert len(open(run_file).read().splitlines()) == 5 * 10
  # the recorded value is what ir-measures gives for the written run
  run = {}
  for line in open(run_file):
    q, _, doc, _, score, _ = line.split()
    run.setdefault(q, {})[doc] = float(score)
  ndcg = [r["value"] for r in records
          if (r["layer"], r["dim"], r["metric"]) == (2, 16, "nDCG@10")][0]
  assert retrieval.measure(col.qrels, run, ("nDCG@10",))["nDCG@10"] == pytest.approx(ndcg, abs=1e-6)


def test_funnel_search_rescores_the_first_stages_candidates_from_the_index(tiny_hf_dir, tmp_path):
  """A funnel reads every stage's vectors from the one index: all stages at one size equal plain
  search; a mixed funnel returns only first-stage candidates, ranked by the last stage's own scores."""
  embedder = embed.Embedder.load(tiny_hf_dir, batch_size=8)
  col = beir.load(write_beir(tmp_path / "toy", n_docs=40), "test")
  folder = str(tmp_path / "index")
  index_lib.encode_corpus(embedder, col.doc_ids, col.docs, PAIRS, folder, max_length=32,
                          shard_size=15)
  q = embedder.encode_layers(col.queries, (1, 2, 4), max_length=16)
  rows = np.array([[0, 39, 15], [16, 14, 2]])  # across shards
  np.testing.assert_array_equal(
      index_lib.gather(folder, 2, 16, rows),
      np.concatenate([b for _, b in index_lib.shards(folder, 2, 16)])[rows])
  for normalize in (False, True):
    want = search.exact_topk(q[4], index_lib.shards(folder, 4, 32), 5, normalize=normalize)
    got = search.funnel_topk(q, folder, search.parse_funnel("4x32:30,4x32:12,4x32:5"),
                             normalize=normalize)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
  first = search.exact_topk(q[1][:, :8], index_lib.shards(folder, 1, 8), 12)[1]
  scores, rows = search.funnel_topk(q, folder, search.parse_funnel("1x8:12,2x16:6,4x32:3"))
  full = np.concatenate([b for _, b in index_lib.shards(folder, 4, 32)])
  for i in range(len(col.queries)):
    assert set(rows[i]) <= set(first[i])  # never outside the first stage's candidates
    second = search.exact_topk(q[2][i:i + 1, :16], [(0, index_lib.gather(folder, 2, 16, first[i]))],
                               6)[1][0]
    # the last stage by hand
    mine = q[4][i].astype(np.float64) @ full[first[i][second]].T.astype(np.float64)
    np.testing.assert_array_equal(rows[i], first[i][second][np.argsort(-mine, kind="stable")[:3]])
    np.testing.assert_allclose(scores[i], np.sort(mine)[::-1][:3], rtol=1e-5)
  for bad, msg in (("2x16", "not LAYERxDIM:K"), ("2x16:5,4x32:10",
                                                 "stage 2 keeps 10 of the previous stage's 5"),
                   ("2x16:0", "at least 1"), ("2y16:5", "'2y16' is not LAYERxDIM"),
                   ("2x16:5,", "'' is not LAYERxDIM:K")):
    with pytest.raises(ValueError, match=msg):
      search.parse_funnel(bad)


# overlapping; distinct rows
@pytest.mark.parametrize("corpus,C,dense", [(30, 12, True), (400, 3, False)])
def test_rescore_ranks_each_querys_candidates_by_hand(corpus, C, dense, monkeypatch):
  """Rescoring equals scoring each query's own candidates in float64, whether the batch's distinct
  rows are scored in one matmul or each query's alone; missing candidates (-1) never come back."""
  rng = np.random.default_rng(corpus)
  vectors = rng.standard_normal((corpus, 24)).astype(np.float32)
  queries = rng.standard_normal((40, 24)).astype(np.float32)
  rows = (np.stack([rng.choice(corpus, C, replace=False)
                    for _ in range(40)]) if dense else rng.permutation(corpus)[:40 *
                                                                               C].reshape(40, C))
  rows[3, 1:] = -1  # one candidate only
  reads, paths = [], []
  for name in ("_rescore_shared", "_rescore_each"):
    inner = getattr(search, name)
    monkeypatch.setattr(
        search, name,
        lambda *a, name=name, inner=inner, **kw: paths.append(name) or inner(*a, **kw))
  for normalize in (False, True):
    scores, got = search.rescore(queries, lambda r: reads.append(r.shape) or vectors[r], rows, 5,
                                 normalize=normalize, query_batch=20)
    unit = (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)) if normalize else (lambda x: x)
    for i in range(40):
      cand = rows[i][rows[i] >= 0]
      mine = unit(vectors[cand].astype(np.float64)) @ unit(queries[i].astype(np.float64))
      order = np.argsort(-mine, kind="stable")[:5]
      want = np.full(min(5, C), -1)
      want[:len(order)] = cand[order]
      np.testing.assert_array_equal(got[i], want)
      np.testing.assert_allclose(scores[i][:len(order)], mine[order], rtol=1e-5, atol=1e-6)
  assert paths == ["_rescore_shared" if dense else "_rescore_each"] * 4  # two batches, twice
  # shared: the distinct rows, once
  assert all(len(shape) == (1 if dense else 2) for shape in reads)


def test_evaluate_collection_records_funnels_apart(tiny_hf_dir, tmp_path):
  """Funnel stages not in the pairs are added to the index; the queries are encoded once, to the
  deepest layer any pair or stage needs; the funnel's records carry it, in a column of their own."""
  embedder = embed.Embedder.load(tiny_hf_dir, batch_size=8)
  asked = []
  real = embedder.encode_layers
  embedder.encode_layers = lambda texts, layers, **kw: asked.append(tuple(layers)) or real(
      texts, layers, **kw)
  col = beir.load(write_beir(tmp_path / "toy"), "test")
  funnel = "3x8:10,4x32:5"
  records = retrieval.evaluate_collection(embedder, col, ((1, 8), (2, 16)), str(tmp_path / "w"),
                                          passage_max_length=32, query_max_length=16, k=10,
                                          funnels=(funnel,))
  # the corpus (one pass, every stored layer), then the queries
  assert asked == [(1, 2, 3, 4), (1, 2, 3, 4)]
  mine = [r for r in records if r.get("funnel") == funnel]
  assert {(r["layer"], r["dim"]) for r in mine} == {(4, 32)} and len(mine) == len(
      retrieval.metrics_for(col.qrels, num_docs=len(col.doc_ids)))
  assert os.path.exists(tmp_path / "w" / "runs" / "toy_test_funnel_3x8-10_4x32-5.trec")
  from starbucks_jax.evaluate import results
  assert f"toy/test nDCG@10 [{funnel}]" in results.table(records)


def test_costs_equal_hand_computed_flops_and_bytes(tiny_hf_dir):
  """The tiny model (D=32, I=64): per token and layer 4 projections x 2 D^2, 2 feed-forward matmuls x
  2 D I, attention scores and context 2 x 2 T D; search 2 d per passage scored."""
  from starbucks_jax import model_dirs
  from starbucks_jax.evaluate import cost
  cfg = model_dirs.load_pretrained(tiny_hf_dir).config
  per_token_layer = lambda t: 4 * 2 * 32 * 32 + 2 * 2 * 32 * 64 + 2 * 2 * t * 32
  assert cost.query_flops(cfg, [5, 7], 2) == pytest.approx(
      (2 * 5 * per_token_layer(5) + 2 * 7 * per_token_layer(7)) / 2)
  stages = search.parse_funnel("2x16:100,4x32:10")
  # the second stage scores min(100, 40)
  assert cost.search_flops(stages, 40) == 2 * 16 * 40 + 2 * 32 * 40
  assert cost.search_flops(search.parse_funnel("2x16:30,4x32:10,4x8:5"),
                           1000) == 2 * 16 * 1000 + 2 * 32 * 30 + 2 * 8 * 10
  # layer 2 keeps 16
  assert cost.index_bytes(search.parse_funnel("2x16:30,4x32:10,2x8:5")) == 4 * (16 + 32)
  assert cost.name_of(search.parse_funnel("2x16:30")) == "2x16"


def test_costs_and_the_pareto_front_of_a_run(tiny_hf_dir, tmp_path, capsys):
  from starbucks_jax.config_lib import InputError
  from starbucks_jax.evaluate import cost, pareto, results
  embedder = embed.Embedder.load(tiny_hf_dir, batch_size=8)
  col = beir.load(write_beir(tmp_path / "toy"), "test")
  workdir = str(tmp_path / "w")
  records = retrieval.evaluate_collection(embedder, col, PAIRS, workdir, passage_max_length=32,
                                          query_max_length=16, k=10, funnels=("1x8:20,4x32:10",),
                                          costs=True)
  results.write(workdir, "final", records)
  rows = cost.read(workdir)[("toy", "test")]
  assert [r["configuration"] for r in rows] == ["1x8", "2x16", "4x32", "1x8:20,4x32:10"]
  by = {r["configuration"]: r for r in rows}
  assert by["1x8:20,4x32:10"]["query_flops"] == by["4x32"]["query_flops"] > by["1x8"]["query_flops"]
  assert by["1x8:20,4x32:10"]["search_flops"] == 2 * 8 * 23 + 2 * 32 * 20 and by["4x32"][
      "search_flops"] == 2 * 32 * 23
  assert all(r["query_ms"] > 0 and r["search_ms"] > 0 for r in rows)
  files = pareto.write([workdir], str(tmp_path / "p"))
  table = open(files[0]).read()
  assert "| w | 1x8:20,4x32:10 |" in table and table.count("| w |") == 4
  assert all(cost.search_flops_at(r["configuration"], 23) == r["search_flops"] for r in rows)
  # at a million passages the funnel's first stage is what costs: 2 x 8 x 1e6 + 2 x 32 x 20
  big = pareto.write([workdir], str(tmp_path / "p"), corpus_size=10**6)
  assert big[0].endswith("toy_test_N1000000.md") and "over 1,000,000 passages" in open(
      big[0]).read()
  assert f"| {(2 * 8 * 10**6 + 2 * 32 * 20) / 1e6:.2f} |" in open(big[0]).read()
  assert f"| {2 * 32 * 10**6 / 1e6:.2f} |" in open(big[0]).read()
  pareto.main(["--workdir", workdir, "--label", "srl", "--corpus-size", "1000000"])
  assert "| srl | 1x8:20,4x32:10 |" in capsys.readouterr().out
  assert os.path.exists(os.path.join(workdir, "pareto", "toy_test_N1000000.png"))
  for argv, error in ((["--corpus-size",
                        "0"], "--corpus-size 0"), (["--label", "a", "--label", "b"], "2 labels")):
    with pytest.raises(InputError, match=error):
      pareto.main(["--workdir", workdir, *argv])
  # the front by hand: A (1, .5) and C (3, .7) stand; B (2, .4) costs more than A for less
  hand = [
      dict(configuration=c, query_flops=f, search_flops=0, value=v)
      for c, f, v in (("A", 1, 0.5), ("B", 2, 0.4), ("C", 3, 0.7), ("D", 3, 0.6))
  ]
  assert [r["configuration"] for r in pareto.front(hand)] == ["A", "C"]
  # within 0.005 of the deepest single size (4x32: .70 at 10 FLOPs): the funnel (.697 at 4), not 3x16 (.69 at 2)
  sizes = [
      dict(configuration=c, layers=n, query_flops=f, search_flops=0, value=v)
      for c, n, f, v in (("1x8", 1, 1, 0.5), ("3x16", 3, 2, 0.69), ("4x32", 4, 10, 0.70),
                         ("1x8:9,4x32:3", 4, 4, 0.697))
  ]
  full, best = pareto.cheapest_within(sizes, 0.005)
  assert (full["configuration"], best["configuration"]) == ("4x32", "1x8:9,4x32:3")
  assert "is 1x8:9,4x32:3 (0.6970) at 40.0% of its FLOPs" in pareto.summary({"r": sizes}, "nDCG@10",
                                                                            0.005)
  assert pareto.cheapest_within(sizes, 0.02)[1]["configuration"] == "3x16"
  with pytest.raises(InputError, match="no retrieval records with costs"):
    pareto.write([str(tmp_path / "toy")], str(tmp_path / "p2"))


def test_eval_mode_scores_retrieval_per_pair(tiny_hf_dir, tmp_path):
  from starbucks_jax import config_lib, finetune

  from conftest import REPO
  cfg = config_lib.load_config(f"{REPO}/configs/ft.py:eval")
  with cfg.unlocked():
    cfg.model.init_from = tiny_hf_dir
    cfg.schedule.pairs = PAIRS
    cfg.eval.sts = ""
    toy = write_beir(tmp_path / "toy")
    cfg.eval.retrieval = f"toy/test={toy},tev/test=tevatron:{write_tevatron_eval(toy, tmp_path / 'tev')}"
    cfg.eval.passage_max_length = 32
  records = finetune.run(cfg, str(tmp_path / "w"))
  assert json.load(open(tmp_path / "w" / "results" / "eval.json")) == records
  assert {(r["dataset"], r["layer"], r["metric"]) for r in records} >= {("toy", 1, "nDCG@10"),
                                                                        ("toy", 4, "RR@10")}
  by_set = {}
  for r in records:
    by_set.setdefault(r["dataset"],
                      {})[(r["split"], r["metric"], r["layer"], r["dim"])] = r["value"]
  # graded: one more recall (R@10 only: 23 passages)
  assert by_set["tev"] == pytest.approx(by_set["toy"], abs=1e-6) and len(
      by_set["tev"]) == 4 * len(PAIRS)
  # another run of the same weights (from a copy elsewhere) scores a funnel on w's index, encoding no passage
  import shutil
  shards = sorted(glob.glob(str(tmp_path / "w" / "index" / "toy" / "layer_*" / "*.npy")))
  before = [os.path.getmtime(f) for f in shards]
  with cfg.unlocked():
    cfg.model.init_from = str(shutil.copytree(tiny_hf_dir, tmp_path / "copy"))
    cfg.eval.retrieval = f"toy/test={toy}"
    cfg.eval.retrieval_funnels = ("1x8:10,4x32:3",)
    cfg.eval.index_dir = str(tmp_path / "w" / "index")
  again = finetune.run(cfg, str(tmp_path / "w3"))
  assert [os.path.getmtime(f)
          for f in shards] == before and not os.path.exists(tmp_path / "w3" / "index")
  assert {(r["metric"], r["layer"], r["dim"]): r["value"] for r in again if not r.get("funnel")} == \
      {(m, n, d): v for (split, m, n, d), v in by_set["toy"].items()}
  assert any(r.get("funnel") == "1x8:10,4x32:3" for r in again)
  with cfg.unlocked():
    cfg.eval.index_dir = str(tmp_path / "nowhere")
  with pytest.raises(config_lib.ConfigError, match="eval.index_dir=.*nowhere.*: no such folder"):
    finetune.run(cfg, str(tmp_path / "w4"))
  with cfg.unlocked():
    cfg.eval.index_dir = ""
    cfg.eval.retrieval_funnels = ()
    cfg.eval.retrieval = f"toy/dev={tmp_path / 'toy'}"
  with pytest.raises(config_lib.ConfigError, match=r"eval.retrieval \(toy/dev\): .* qrels/dev.tsv"):
    finetune.run(cfg, str(tmp_path / "w2"))
  with cfg.unlocked():
    cfg.eval.retrieval = f"toy/test={toy}"
    cfg.eval.retrieval_funnels = ("2x16:10,9x8:5",)
  with pytest.raises(ValueError,
                     match=r"eval.retrieval_funnels '2x16:10,9x8:5': layer=9 is outside 1..4"):
    finetune.run(cfg, str(tmp_path / "w2"))
  with cfg.unlocked():
    cfg.eval.retrieval_funnels = ("2x16",)
  with pytest.raises(config_lib.ConfigError,
                     match=r"eval.retrieval_funnels: funnel '2x16': '2x16' is not LAYERxDIM:K"):
    finetune.run(cfg, str(tmp_path / "w2"))
  assert not os.path.exists(tmp_path / "w2" / "index")


# ---------------------------------------------------------------------------------------------
# Training groups
# ---------------------------------------------------------------------------------------------
def write_tevatron(path, n=6, negatives=5):
  rows = []
  for i in range(n):
    rows.append({
        "query_id": str(i), "query": f"query {i} the cat",
        "positive_passages": [{"docid": f"p{i}", "title": "t", "text": f"positive {i} dog"}],
        "negative_passages": [{"docid": f"n{i}_{j}", "title": "", "text": f"negative {i} {j} mat"}
                              for j in range(negatives)]
    })
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_groups_layout_labels_and_rotation(tmp_path, tiny_hf_dir):
  import jax.numpy as jnp

  from starbucks_jax import losses, model_dirs
  from starbucks_jax.data import groups as groups_lib
  tok = model_dirs.load_tokenizer(tiny_hf_dir)
  g = groups_lib.load_tevatron(write_tevatron(tmp_path / "train.jsonl"))
  batcher = groups_lib.GroupBatcher(g, tok, batch_size=3, group_size=3, query_max_length=8,
                                    passage_max_length=16, seed=0)
  step, batch = next(batcher.batches(0, 1))
  assert batch["query_ids"].shape[0] == 3 and batch["passage_ids"].shape[0] == 9
  order = np.random.default_rng([0, 0]).permutation(6)[:3]
  for i, q in enumerate(order):  # passage i*G is query i's positive, then its own negatives
    texts = [g.passages[j] for j in batcher.group(0, int(q))]
    assert texts[0] == f"t positive {q} dog" and all(
        t.startswith(f"negative {q} ") for t in texts[1:])
  # negatives rotate: over epochs each query sees all of its negatives, two at a time
  seen = {j for e in range(3) for j in batcher.group(e, 0)[1:]}
  assert len(seen) == 5 and batcher.group(0, 0)[1:] != batcher.group(1, 0)[1:]
  # the contrastive loss of a group batch: query i against all 9 passages, label i*G (numpy)
  rng = np.random.default_rng(1)
  q, p = rng.normal(size=(3, 8)), rng.normal(size=(9, 8))
  cfg = losses.LossConfig(similarity="dot", temperature=2.0, kl="none")
  got = losses.task_loss((jnp.asarray(q, jnp.float32), jnp.asarray(p, jnp.float32)), 8, cfg)
  logits = q @ p.T / 2.0
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  assert float(got) == pytest.approx(-np.mean([logp[i, i * 3] for i in range(3)]), rel=1e-6)


def test_beir_train_groups_draw_random_negatives(tmp_path, tiny_hf_dir):
  from starbucks_jax import model_dirs
  from starbucks_jax.data import groups as groups_lib
  g = groups_lib.load_groups(f"beir:{write_beir(tmp_path / 'toy')}@test")
  assert len(g.queries) == 5 and all(not n for n in g.negatives) and len(g.passages) == 23
  batcher = groups_lib.GroupBatcher(g, model_dirs.load_tokenizer(tiny_hf_dir), batch_size=2,
                                    group_size=4, query_max_length=8, passage_max_length=16, seed=0)
  for i in range(5):
    grp = batcher.group(0, i)
    assert grp[0] in g.positives[i] and not set(grp[1:]) & set(g.positives[i]) and len(
        set(grp)) == 4


@pytest.mark.parametrize("source", ["tevatron", "demo"])
def test_retrieval_config_trains_two_steps(tiny2_hf_dir, tmp_path, source):
  """A Tevatron groups file (the scifact variant's settings), and the offline demo as shipped: its
  BEIR set's train qrels with random negatives, evaluated on its test queries (here on a tiny model)."""
  from starbucks_jax import config_lib, finetune

  from conftest import REPO
  cfg = config_lib.load_config(
      f"{REPO}/configs/retrieval.py:{'scifact' if source == 'tevatron' else 'demo'}")
  with cfg.unlocked():
    cfg.model.init_from = tiny2_hf_dir
    cfg.schedule.pairs = ((1, 8), (2, 32))
    cfg.data.batch_size = 2
    cfg.data.passage_max_length = 32
    cfg.train.max_steps = 2
    cfg.train.log_every = 1
    cfg.eval.passage_max_length = 32
    # scifact's funnels and costs, at this model's sizes
    cfg.eval.retrieval_funnels = ("1x8:20,2x32:10",)
    cfg.eval.retrieval_costs = True
    if source == "tevatron":
      cfg.data.train = write_tevatron(tmp_path / "t.jsonl")
      cfg.eval.retrieval = f"toy/test={write_beir(tmp_path / 'toy')}"
    else:
      cfg.train.grad_cache_chunks = 2  # the gradient cache, end to end
  records = finetune.run(cfg, str(tmp_path / "w"))
  rows = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
  assert {"task/1_8", "kl/1_8", "task/2_32"} <= set(rows[0])
  assert {(r["layer"], r["dim"]) for r in records if r["metric"] == "nDCG@10"} == {(1, 8), (2, 32)}
  assert {r.get("funnel") for r in records} == {None, "1x8:20,2x32:10"}
  (costs,) = json.load(open(next((tmp_path / "w" / "costs").glob("*_test.json")))),
  assert [c["configuration"] for c in costs] == ["1x8", "2x32", "1x8:20,2x32:10"]
  if source == "demo":
    assert {r["dataset"] for r in records} == {"pydocs"} and {r["metric"] for r in records} == {
        "RR@10", "nDCG@10", "R@100", "R@10"
    }  # 448 passages
    col = beir.load(cfg.eval.retrieval.split("=", 1)[1], "test")
    assert (len(col.docs), len(col.query_ids)) == (448, 43)


def test_hf_beir_collection_mapping(monkeypatch):
  """hf:BeIR/NAME reads corpus/queries configs and NAME-qrels (here in-memory datasets stand in for
  the Hub, which tests cannot reach)."""
  datasets = pytest.importorskip("datasets")
  tables = {
      ("BeIR/toy", "corpus"): datasets.Dataset.from_dict(
          {"_id": ["d1", "d2"], "title": ["T", ""], "text": ["one", "two"]}),
      ("BeIR/toy", "queries"): datasets.Dataset.from_dict(
          {"_id": ["q1", "q2"], "text": ["first", "second"]}),
      ("BeIR/toy-qrels", None): datasets.Dataset.from_dict(
          {"query-id": ["q2"], "corpus-id": ["d1"], "score": [1]}),
  }
  seen = []

  def fake_load(repo, config=None, split=None, streaming=False):
    seen.append((repo, config, split))
    return tables[(repo, config)]

  monkeypatch.setattr(datasets, "load_dataset", fake_load)
  col = beir.load("hf:BeIR/toy", "dev")
  assert seen[-1] == ("BeIR/toy-qrels", None, "dev")
  assert (col.name, col.docs, col.query_ids, col.queries,
          col.qrels) == ("toy", ["T one", "two"], ["q2"], ["second"], {"q2": {"d1": 1}})


def test_the_shipped_demo_set_is_what_its_generator_writes(tmp_path):
  """starbucks_jax/data/demo/retrieval is make_demo_data's output from the Python documentation
  topics of the Python named in its LICENSE (another Python's topics differ: skipped there)."""
  import sys

  from starbucks_jax.data import sources
  from starbucks_jax.data.demo import make_demo_data
  shipped = os.path.join(sources.DEMO_DIR, "retrieval")
  made_by = open(os.path.join(shipped, "LICENSE")).read().split("as Python ")[1].split("'s")[0]
  if made_by != "%d.%d.%d" % sys.version_info[:3]:
    pytest.skip(f"the demo set was made with Python {made_by}'s documentation topics")
  assert make_demo_data.retrieval_set(str(tmp_path)) == (448, 129)
  for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
    assert (tmp_path / name).read_text() == open(os.path.join(shipped, name)).read(), name
