"""The fine-tuning step, the baselines, resume and config errors; on a tiny random BERT."""

import dataclasses
import json
import logging
import os
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from starbucks_jax import (
    checkpoint,
    config_lib,
    embed,
    export,
    finetune,
    losses,
    schedule,
    srl,
    timing,
)
from starbucks_jax.config_blocks import FinetuneConfig
from starbucks_jax.data import batching
from starbucks_jax.evaluate import results
from starbucks_jax.models.bert import BertConfig, BertEncoder
from starbucks_jax.models.encoders import init_params
from starbucks_jax.models.pooling import pool, pooled_layers

from conftest import REPO, WORDS, kill_at, make_hf_bert, max_rel_diff, tb_scalars, tiny_srl_case


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(tree)))


def write_scored(path, n, seed=0):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for i in range(n):
      f.write(
          json.dumps({
              "sentence1": " ".join(rng.choice(WORDS, size=5)), "sentence2": " ".join(
                  rng.choice(WORDS, size=4)), "score": float(rng.uniform(0, 5))
          }) + "\n")
  return str(path)


def test_one_forward_equals_separate_forwards(tmp_path):
  """The SRL loss from ONE encoder pass equals the sum of per-pair losses where every pair runs its
  own truncated encoder (n layers) - value and gradients. (A well-conditioned random model: the
  shared tiny fixture's 1e-3 embeddings make float32 gradients through LayerNorm ill-conditioned.)"""
  make_hf_bert(tmp_path / "m", layers=2, initializer_range=0.2, embedding_scale=1.0)
  pre = checkpoint.load_model(str(tmp_path / "m"))
  cfg = pre.config
  params = pre.params["bert"]
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(5, cfg.vocab_size, (3, 4, 10)), jnp.int32)
  mask = jnp.asarray(np.arange(10)[None, None, :] < rng.integers(3, 11, (3, 4, 1)), jnp.int32)
  pairs, full = ((1, 16), (2, 32)), (2, 32)
  plan = schedule.plan("starbucks", pairs, 2, 32)
  for kl in ("features", "scores"):
    loss_cfg = losses.LossConfig(kl=kl)

    def one_forward(p):
      pooled = pooled_layers(p, cfg, ids, mask, plan.layers, "mean", deterministic=True)
      return losses.plan_loss(plan, pooled, loss_cfg)[0]

    def separate_forwards(p):
      def sub(n):
        hidden = BertEncoder(cfg).apply({"params": p}, ids.reshape(12, 10), mask.reshape(12, 10),
                                        num_layers=n)
        return pool(hidden[n], mask.reshape(12, 10), "mean").reshape(3, 4, -1)

      teacher = sub(2)
      total = 0.0
      for n, d in pairs:
        student = sub(n)
        total += losses.task_loss(student, d, loss_cfg)
        if (n, d) != full:
          total += losses.kl_term(teacher, student, d, loss_cfg)
      return total

    a, ga = jax.jit(jax.value_and_grad(one_forward))(params)  # jitted: op by op, each op compiles
    b, gb = jax.jit(jax.value_and_grad(separate_forwards))(params)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    jax.tree_util.tree_map(  # atol on each leaf's scale: float32 sums in another order
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6 * max(
            1.0, float(np.abs(y).max()))), ga, gb)
    assert float(optax_norm(ga)) > 1e-3


def test_srl_gradient_holds_no_copy_of_the_hidden_state_stack():
  """The one-forward SRL gradient reaches each layer as that layer's own array: the compiled program
  has no [N+1, rows, T, D] buffer. (Picking layers from the stacked encoder output instead makes a
  zero-padded copy of the whole stack per pair - the control below - 0.8 s of a 6.4 s CPU step.)"""
  cfg = BertConfig.preset("tiny")
  params = init_params(cfg, jax.random.key(0))
  ids = jnp.ones((2, 4, 8), jnp.int32)
  plan = schedule.plan("starbucks", ((1, 8), (2, 16), (4, 32)), 4, 32)
  stack = "f32[5,8,8,32]"  # (layers + 1, 2 roles x 4 examples, 8 tokens, 32 dims)

  def ours(p):
    pooled = pooled_layers(p, cfg, ids, ids, plan.layers, "mean", deterministic=True)
    return losses.plan_loss(plan, pooled, losses.LossConfig())[0]

  def from_stack(p):
    hidden = BertEncoder(cfg).apply({"params": p}, ids.reshape(8, 8), ids.reshape(8, 8))
    pooled = {n: pool(hidden[n], ids.reshape(8, 8), "mean").reshape(2, 4, -1) for n in plan.layers}
    return losses.plan_loss(plan, pooled, losses.LossConfig())[0]

  ours_grad, stack_grad = (jax.jit(jax.grad(f)).lower(params).compile() for f in (ours, from_stack))
  # the control: the shape string finds the stack when it is there
  assert stack in stack_grad.as_text()
  assert stack not in ours_grad.as_text()
  assert max_rel_diff(ours_grad(params), stack_grad(params))[0] < 1e-5


# full, mrl and starbucks_mrl are fixed pair lists like starbucks and grid (same step code); the others
# each have their own path. grid also trains with per-step pair weights (inverse_loss) and full_weight;
# starbucks with the frozen teacher (no dropout: at step 1 the model is the teacher, KL 0 at (N, D)).
@pytest.mark.parametrize("method", ["starbucks", "2dmse", "2dmse_retrieval", "grid", "separate"])
def test_every_method_trains_two_steps(tiny_run, tmp_path, method):
  with tiny_run.unlocked():
    tiny_run.schedule.method = method
    tiny_run.schedule.separate_pair = (1, 8)
    if method == "grid":
      tiny_run.loss.pair_weighting, tiny_run.loss.full_weight = "inverse_loss", 0.5
    if method == "starbucks":
      tiny_run.loss.teacher, tiny_run.train.dropout = "frozen", False
      # step 1 moves the model off the teacher
      tiny_run.train.lr, tiny_run.train.warmup_ratio = 1e-3, 0.0
  records = finetune.run(tiny_run, str(tmp_path / method))
  rows = [json.loads(line) for line in open(tmp_path / method / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
  if method == "grid":  # (1, 8) (1, 32) (2, 8) (2, 32): weights of mean 1, the full pair's halved
    weights = [rows[0][f"weight/{n}_{d}"] for n, d in ((1, 8), (1, 32), (2, 8), (2, 32))]
    assert sum(weights[:3]) + 2 * weights[3] == pytest.approx(4, rel=1e-5)
  if method == "starbucks":
    assert rows[0]["kl/2_32"] < 1e-6 * rows[0]["kl/1_8"] and rows[1][
        "kl/2_32"] > 100 * rows[0]["kl/2_32"]
  pairs = {(r["layer"], r["dim"]) for r in records}
  assert pairs == ({(1, 8)} if method == "separate" else {(1, 8), (2, 32)})
  assert checkpoint.manager(str(tmp_path / method), read_only=True).latest_step() == 2


def test_scored_pairs_train_with_cosent(tiny_run, tmp_path):
  with tiny_run.unlocked():
    tiny_run.data.train = write_scored(tmp_path / "sts.jsonl", 30)
    tiny_run.data.format = "scored_pairs"
    tiny_run.loss.task = "cosent"
    tiny_run.train.profile_steps = (1, 2)  # the second step (the first compiles)
  timer = timing.begin()
  finetune.run(tiny_run, str(tmp_path / "w"))
  rows = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
  spent = timer.record()  # the run's time, itemised (main writes it to WORKDIR/timing.json)
  assert spent["steps"] == rows[-1]["step"] and spent[
      "compiles"] >= 1 and 0 < spent["padded_frac"] < 1
  assert all(spent[k] > 0 for k in ("startup_s", "compile_s", "train_s", "eval_s", "checkpoint_s"))
  assert spent[
      "total_s"] >= spent["startup_s"] + spent["compile_s"] + spent["train_s"] + spent["eval_s"]
  assert set(rows[0]) >= {"task/1_8", "kl/1_8", "task/2_32", "lr", "examples_per_sec"}
  traces = list((tmp_path / "w" / "profile").glob("plugins/profile/*/*.xplane.pb"))  # for XProf
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  (info,) = json.load(open(tmp_path / "w" / "run.json"))  # what code and machine made the run
  assert len(info["commit"]) >= 7 and info["jax"] == jax.__version__ and info["processes"] == 1


def test_resume_after_interruption_gives_identical_parameters(tiny_run, tmp_path, monkeypatch,
                                                              caplog):
  with tiny_run.unlocked():
    tiny_run.train.max_steps = 6
    tiny_run.train.checkpoint_every = 2
  finetune.run(tiny_run, str(tmp_path / "straight"))

  # killed while step 6's batch is on its way: 5 is logged, not saved
  kill_at(monkeypatch, batching.Batcher, 5)
  with pytest.raises(KeyboardInterrupt):
    finetune.run(tiny_run, str(tmp_path / "resumed"))
  assert checkpoint.manager(str(tmp_path / "resumed"), read_only=True).latest_step() == 4
  with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')  # a row the kill cut short
  monkeypatch.undo()
  finetune.run(tiny_run, str(tmp_path / "resumed"))
  a = checkpoint.load_model(str(tmp_path / "straight")).params
  b = checkpoint.load_model(str(tmp_path / "resumed")).params
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
  rows = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
  # the lost step 5's row is replaced by the resumed run's
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  # TensorBoard shows the same: each step once (the killed run's step 5 hidden), JSONL's values,
  # and the evaluation per pair at the last step
  scalars = tb_scalars(tmp_path / "resumed" / "tb")
  for key in ("loss", "grad_norm", "lr", "task/2_32"):
    assert [s for s, _ in scalars[f"train/{key}"]] == [1, 2, 3, 4, 5, 6], key
    np.testing.assert_allclose([v for _, v in scalars[f"train/{key}"]], [r[key] for r in rows],
                               rtol=1e-6)
  final = json.load(open(tmp_path / "resumed" / "results" / "final.json"))
  for r in final:
    tag = f"eval/{r['dataset']}/{r['split']}/{r['metric']}/{r['layer']}x{r['dim']}"
    assert scalars[tag] == [(6, pytest.approx(r["value"], rel=1e-6))], tag
  # ... and a finished run is a model source: embed/export can read it.
  assert os.path.exists(tmp_path / "resumed" / "model" / "config.json")
  trained = embed.Embedder.load(str(tmp_path / "resumed")).encode(["a short text"], layer=2, dim=16)
  start = embed.Embedder.load(tiny_run.model.init_from).encode(["a short text"], layer=2, dim=16)
  assert trained.shape == (1, 16) and np.abs(trained - start).max() > 1e-4
  # Its export carries a model card with the run's results per (layer, dim) and how it trained,
  # and goes to the Hub (a stand-in for huggingface_hub.HfApi records what would be sent).
  sent = {}

  class Hub:
    def create_repo(self, repo_id, repo_type, private, exist_ok):
      sent["repo"] = (repo_id, repo_type, private)

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
      sent["files"] = sorted(
          str(p.relative_to(folder_path)) for p in pathlib.Path(folder_path).rglob("*")
          if p.is_file())
      return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/1")

  import huggingface_hub
  monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
  caplog.clear()
  export.main([
      "--model",
      str(tmp_path / "resumed"), "--output",
      str(tmp_path / "export"), "--push-to-hub", "me/starbucks-tiny", "--private"
  ])
  # reading the run's checkpoint is quiet: none of orbax's read-only notices
  assert not [r for r in caplog.records if r.name == "absl" and r.levelno >= logging.WARNING]
  # the run trained no HF pooler: sentence-transformers builds the model without one (no random
  # pooler reported missing), and its embeddings are ours
  from sentence_transformers import SentenceTransformer
  st = SentenceTransformer(str(tmp_path / "export"), device="cpu")
  assert st[0].auto_model.pooler is None
  _, info = transformers.AutoModel.from_pretrained(
      str(tmp_path / "export"), output_loading_info=True,
      **json.load(open(tmp_path / "export" / "sentence_bert_config.json"))["model_args"])
  assert not info["missing_keys"] and not info["unexpected_keys"]
  np.testing.assert_allclose(
      st.encode(["a short text"]),
      embed.Embedder.load(str(tmp_path / "resumed")).encode(["a short text"]), atol=1e-5)
  card = (tmp_path / "export" / "README.md").read_text()
  assert results.table(
      final) in card and "| steps | 6 |" in card and "| method | starbucks |" in card
  assert sent["repo"] == ("me/starbucks-tiny", "model", True)
  assert sent["files"] == sorted(
      str(p.relative_to(tmp_path / "export")) for p in (tmp_path / "export").rglob("*")
      if p.is_file())
  assert "README.md" in sent["files"] and "model.safetensors" in sent["files"]


def test_training_config_errors_name_the_key(tiny_run, tmp_path):
  cases = [("loss.task", "cosent", "loss.task='cosent' needs data.format=scored_pairs"),
           ("loss.kl", "both", "loss.kl='both'"),
           ("schedule.method", "random", "schedule.method='random'"),
           ("train.warmup_ratio", 1.5, "train.warmup_ratio=1.5; must be >= 0 and <= 1"),
           ("data.train", "nowhere.jsonl", "data.train: nowhere.jsonl: no such file"),
           ("loss.pair_weights", (1.0,), "loss.pair_weights has 1 weights for 2 pairs"),
           ("loss.pair_weighting", "inverse", "loss.pair_weighting='inverse'"),
           ("train.forward_splits", 0, "train.forward_splits=0; must be >= 1"),
           ("train.forward_splits", 3,
            "train.forward_splits=3: data.batch_size=16 does not split into 3 forwards"),
           ("data.pack_length", -1, "data.pack_length=-1; must be >= 0"),
           ("train.profile_steps", (3, 3),
            "train.profile_steps=(3, 3): expected (START, END) steps")]
  for key, value, msg in cases:
    cfg = config_lib.load_config(str(REPO / "configs" / "ft.py") + ":demo")
    with cfg.unlocked():
      cfg.model.init_from = tiny_run.model.init_from
      cfg.schedule.pairs = tiny_run.schedule.pairs
      section, name = key.split(".")
      cfg[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
      finetune.run(cfg, str(tmp_path / "w"))
  cfg = config_lib.load_config(
      str(REPO / "configs" / "ft.py") + ":demo,method=separate,layer=9,dim=16")
  with pytest.raises(config_lib.ConfigError, match=r"schedule.separate_pair\[0\]=\(9, 16\)"):
    finetune.run(cfg, str(tmp_path / "w"))
  # 16 = 2 microbatches x 2 chunks x 4
  cfg = config_lib.load_config(str(REPO / "configs" / "ft.py") + ":demo")
  with cfg.unlocked():
    cfg.train.microbatches, cfg.train.grad_cache_chunks, cfg.train.forward_splits = 2, 2, 8
  with pytest.raises(
      config_lib.ConfigError, match="train.forward_splits=8 does not divide the 4 examples of each "
      "train.grad_cache_chunks chunk of a microbatch"):
    finetune.run(cfg, str(tmp_path / "w"))
  with cfg.unlocked():
    cfg.train.microbatches, cfg.train.forward_splits, cfg.data.packing = 1, 1, True
  with pytest.raises(
      config_lib.ConfigError, match="data.packing=True encodes the batch in one forward; "
      "train.grad_cache_chunks=2 needs data.packing=False"):
    finetune.run(cfg, str(tmp_path / "w"))
  with cfg.unlocked():
    cfg.data.format = "groups"
  with pytest.raises(config_lib.ConfigError,
                     match="data.format='groups' pads queries and passages"):
    finetune.check_packing(FinetuneConfig.from_config(cfg))


@pytest.mark.parametrize("layout,cache,splits", [("roles", 3, 1), ("groups", 2, 1), ("roles", 0, 2),
                                                 ("roles", 0, 4), ("groups", 0, 2),
                                                 ("roles", 3, 2)])
def test_gradient_cache_and_split_forwards_equal_the_plain_step(tmp_path, layout, cache, splits):
  """The gradient-cache step (embed without gradients chunk by chunk, loss gradient w.r.t. the pooled
  vectors of every layer, backprop chunk by chunk) and train.forward_splits (independent encoder
  forwards on strided splits of the texts, the loss over all of them), alone and together, give the
  plain step's loss and gradients; a split that does not divide the texts fails naming the key."""
  cfg, params, plan, loss_cfg, ids_mask = tiny_srl_case(tmp_path / "m", layout)
  if layout == "roles":
    ids, mask = ids_mask(3, 4, 10)
    batch = {"ids": ids, "mask": mask}
  else:
    (q, qm), (p, pm) = ids_mask(2, 6), ids_mask(6, 10)
    batch = {"query_ids": q, "query_mask": qm, "passage_ids": p, "passage_mask": pm}
  key = jax.random.key(3)
  plain = srl.make_srl_step(cfg, plan, loss_cfg, None, "mean", dropout=False)
  other = srl.make_srl_step(cfg, plan, loss_cfg, None, "mean", dropout=False,
                            grad_cache_chunks=cache, forward_splits=splits)
  (l1, aux1), g1 = jax.jit(plain.value_and_grad)(params, batch, key)
  (l2, aux2), g2 = jax.jit(other.value_and_grad)(params, batch, key)
  assert float(l2) == pytest.approx(float(l1), rel=1e-5)
  assert aux2.keys() == aux1.keys()
  rel, scale = max_rel_diff(g2, g1)
  assert rel < 1e-5 and scale > 1e-3
  odd = srl.make_srl_step(cfg, plan, loss_cfg, None, "mean", dropout=False, forward_splits=5)
  with pytest.raises(ValueError, match="train.forward_splits=5 does not divide the step's"):
    jax.eval_shape(odd.value_and_grad, params, batch, key)


@pytest.mark.parametrize("pooling,shards", [("mean", 2), ("cls", 1)])
def test_packed_step_equals_the_padded_step(tmp_path, pooling, shards):
  """The same examples as packed rows (data.packing: several texts a row, each shard's texts in its
  own rows) and as padded [R, B, T] roles: the same loss and gradients."""
  from conftest import write_triplets
  cfg, params, plan, loss_cfg, _ = tiny_srl_case(tmp_path / "m", "roles")
  tokenizer = checkpoint.load_model(str(tmp_path / "m")).tokenizer
  ex = batching.load_examples(write_triplets(tmp_path / "t.jsonl", 16), "triplets")
  make = lambda **kw: batching.Batcher(ex, tokenizer, batch_size=8, max_length=32, seed=0, **kw)
  padded, packed = make(), make(pack_length=0, shards=shards)
  rows = padded.epoch_batches(0)[0]
  assert packed.make_batch(rows)["ids"].size < padded.make_batch(rows)["ids"].size
  key = jax.random.key(3)
  plain = srl.make_srl_step(cfg, plan, loss_cfg, None, pooling, dropout=False)
  packing = srl.make_srl_step(cfg, plan, loss_cfg, None, pooling, dropout=False,
                              packed=srl.Packing(3, 8, shards))
  (l1, _), g1 = jax.jit(plain.value_and_grad)(params, padded.make_batch(rows), key)
  (l2, _), g2 = jax.jit(packing.value_and_grad)(params, packed.make_batch(rows), key)
  assert float(l2) == pytest.approx(float(l1), rel=1e-5)
  rel, scale = max_rel_diff(g2, g1)
  assert rel < 1e-5 and scale > 1e-3
  # a frozen teacher's vectors ([B, R, D] with each batch) meet their own examples in both layouts
  frozen = dataclasses.replace(loss_cfg, teacher="frozen")
  padded.teacher = packed.teacher = np.random.default_rng(0).normal(size=(16, 3,
                                                                          cfg.hidden_size)).astype(
                                                                              np.float32)
  plain = srl.make_srl_step(cfg, plan, frozen, None, pooling, dropout=False)
  packing = srl.make_srl_step(cfg, plan, frozen, None, pooling, dropout=False,
                              packed=srl.Packing(3, 8, shards))
  (l3, aux3), _ = jax.jit(plain.value_and_grad)(params, padded.make_batch(rows), key)
  (l4, _), _ = jax.jit(packing.value_and_grad)(params, packed.make_batch(rows), key)
  assert float(l4) == pytest.approx(float(l3), rel=1e-5) and float(l3) != pytest.approx(
      float(l1), rel=1e-3)
  # the full pair has a KL to the frozen teacher
  assert f"kl/{plan.teacher[0]}_{plan.teacher[1]}" in aux3


def test_split_forwards_draw_each_splits_dropout(tmp_path):
  """Dropout on: split c draws its masks from fold_in(key, c); the step equals the splits encoded
  one by one with those keys and put back in row order."""
  cfg, params, plan, loss_cfg, ids_mask = tiny_srl_case(tmp_path / "m", "roles")
  ids, mask = ids_mask(2, 8, 10)
  rows = (ids.reshape(16, 10), mask.reshape(16, 10))
  key = jax.random.key(5)
  embed = lambda i, m, r: pooled_layers(params, cfg, i, m, plan.layers, "mean", deterministic=False,
                                        rng=r)
  got = jax.jit(lambda i, m: srl.split_forward(embed, i, m, key, 2))(*rows)
  for c in range(2):  # split c holds rows c, c + 2, c + 4, ... (jitted: eager, 100 op compiles)
    want = jax.jit(embed)(rows[0][c::2], rows[1][c::2], jax.random.fold_in(key, c))
    for n in plan.layers:
      np.testing.assert_allclose(got[n][c::2], want[n], rtol=1e-5, atol=1e-6)
  nodrop = jax.jit(
      lambda i, m: pooled_layers(params, cfg, i, m, plan.layers, "mean", deterministic=True))(*rows)
  assert not np.allclose(got[max(plan.layers)], nodrop[max(plan.layers)], atol=1e-4)


def test_gradient_cache_replays_each_chunks_dropout(tmp_path):
  """Dropout on: the backprop pass of the gradient cache must see the masks its embedding pass drew
  (each chunk's key is fold_in(stream key, chunk)); its gradients equal autodiff through a chunked
  forward with those keys, and differ from the dropout-free ones."""
  cfg, params, plan, loss_cfg, ids_mask = tiny_srl_case(tmp_path / "m", "roles")
  assert cfg.hidden_dropout_prob > 0 and cfg.attention_probs_dropout_prob > 0
  ids, mask = ids_mask(2, 6, 10)
  batch, k, key = {"ids": ids, "mask": mask}, 3, jax.random.key(5)
  cached = srl.make_srl_step(cfg, plan, loss_cfg, None, "mean", grad_cache_chunks=k)
  (loss, _), grads = jax.jit(cached.value_and_grad)(params, batch, key)

  def chunked_loss(p):  # the same keys as the step: split, fold in the stream, then the chunk
    dropout_key, sample_key = jax.random.split(key)
    stream_key = jax.random.fold_in(dropout_key, 0)
    flat_ids, flat_mask = ids.reshape(-1, 10), mask.reshape(-1, 10)
    parts = [
        pooled_layers(p, cfg, a, m, plan.layers, "mean", deterministic=False,
                      rng=jax.random.fold_in(stream_key, i))
        for i, (a, m) in enumerate(zip(np.split(flat_ids, k), np.split(flat_mask, k)))
    ]
    pooled = {n: jnp.concatenate([q[n] for q in parts]).reshape(2, 6, -1) for n in parts[0]}
    return losses.plan_loss(plan, pooled, loss_cfg, rng=sample_key)[0]

  want_loss, want = jax.jit(jax.value_and_grad(chunked_loss))(params)
  assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
  assert max_rel_diff(grads, want)[0] < 1e-5
  no_dropout = srl.make_srl_step(cfg, plan, loss_cfg, None, "mean", dropout=False,
                                 grad_cache_chunks=k)
  (_, _), plain = jax.jit(no_dropout.value_and_grad)(params, batch, key)
  assert max_rel_diff(plain, want)[0] > 1e-3
