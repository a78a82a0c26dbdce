"""Gradient accumulation (train.microbatches): the microbatch layout, SMAE's accumulated step equals
the whole batch's step, SRL's is the mean of its microbatches' steps, and bad values fail by key."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from starbucks_jax import config_lib, finetune, model_dirs, pretrain, srl
from starbucks_jax import step as step_lib
from starbucks_jax.data import masking

from conftest import REPO, make_hf_bert, make_tokenizer, max_rel_diff, tiny_srl_case


def optimizer(steps=10):
  tcfg = ml_collections.ConfigDict(
      dict(lr=1e-3, warmup_ratio=0.0, decay="linear", clip_grad_norm=0.0, adam_b1=0.9,
           adam_b2=0.999, adam_eps=1e-8, weight_decay=0.01, skip_nonfinite=False,
           max_consecutive_nonfinite=1))
  return step_lib.make_optimizer(tcfg, steps)


def test_split_keeps_each_query_with_its_group_and_strides():
  B, G, k = 6, 3, 3
  batch = {
      "query_ids": np.arange(B)[:, None] * np.ones((1, 4), int),  # row value = query index
      # query*10 + col
      "passage_ids": np.repeat(np.arange(B), G)[:, None] * 10 + np.arange(4)[None],
      # roles layout [R, B, T]
      "ids": np.arange(2 * B).reshape(2, B, 1) * np.ones((1, 1, 5), int),
      "count": np.asarray(7)
  }
  out = jax.device_get(step_lib.split_microbatches(batch, k, {"ids": 1}))
  for j in range(k):
    queries = list(range(j, B, k))  # strided: every microbatch sees every data-parallel shard
    assert out["query_ids"][j][:, 0].tolist() == queries
    # i*G layout
    assert out["passage_ids"][j][:, 0].tolist() == [10 * q for q in queries for _ in range(G)]
    np.testing.assert_array_equal(out["ids"][j][:, :, 0], batch["ids"][:, j::k, 0])
    assert out["count"][j] == 7
  with pytest.raises(ValueError,
                     match="train.microbatches=4 does not divide the batch's 6 examples"):
    step_lib.split_microbatches(batch, 4, {"ids": 1})


def test_smae_accumulation_equals_the_whole_batch(tmp_path, mode="smae"):
  """Token-mean MLM/MAE losses: every microbatch divides by the batch's masked-token count / k, so
  loss, per-pair terms and gradients equal the whole batch's although the microbatches hold
  different numbers of masked tokens."""
  make_hf_bert(tmp_path / "m", mlm=True, initializer_range=0.1, embedding_scale=1.0)
  pre = model_dirs.load_pretrained(str(tmp_path / "m"))
  cfg = pre.config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  params = pretrain.init_params(pre, cfg, jax.random.key(0))
  (tmp_path / "tok").mkdir()
  tok = make_tokenizer(tmp_path / "tok")
  rng = np.random.default_rng(0)
  words = "the quick brown fox jumps over lazy dog playing music sleeps house".split()
  texts = [" ".join(rng.choice(words, rng.integers(3, 14))) for _ in range(8)]
  rows = [np.asarray(x, np.int32) for x in tok(texts)["input_ids"]]
  batch = masking.Masker(tok, masking.MaskingConfig()).batch(rows, 16, tok.pad_token_id, rng)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  counts = [(batch["mlm_labels"][j::4] >= 0).sum() for j in range(4)]
  assert len(set(map(int, counts))) > 1  # the microbatches really differ in masked tokens
  pairs, tx = ((1, 8), (4, 32)), optimizer()
  whole = pretrain.make_smae_step(cfg, pairs, mode, tx, dropout=False)
  accumulated = pretrain.make_smae_step(cfg, pairs, mode, tx, dropout=False, microbatches=4)
  key = jax.random.key(1)
  (l1, aux1), g1 = jax.jit(whole.value_and_grad)(params, batch, key)
  (l2, aux2), g2 = jax.jit(accumulated.value_and_grad)(params, batch, key)
  assert float(l2) == pytest.approx(float(l1), rel=1e-6)
  for name in aux1:
    assert float(aux2[name]) == pytest.approx(float(aux1[name]), rel=1e-6), name
  rel, scale = max_rel_diff(g2, g1)
  assert rel < 1e-5 and scale > 1e-3


def test_srl_accumulation_is_the_mean_of_its_microbatch_steps(tmp_path):
  """In-batch losses do not decompose over examples: the accumulated step is the mean of the plain
  step on microbatches j, j+k, ... (each with its own negatives), query groups kept whole. (The
  roles layout is checked on the 8-device mesh in tests/sharded_equivalence.py, and its split in
  test_split_keeps_each_query_with_its_group_and_strides.)"""
  cfg, params, plan, loss_cfg, ids_mask = tiny_srl_case(tmp_path / "m", "groups")

  k, B, G = 2, 6, 3
  (q, qm), (p, pm) = ids_mask(B, 6), ids_mask(B * G, 10)
  batch = {"query_ids": q, "query_mask": qm, "passage_ids": p, "passage_mask": pm}
  grouped = lambda a, j: a.reshape(B, G, -1)[j::k].reshape(-1, a.shape[-1])
  micro = [{
      "query_ids": q[j::k], "query_mask": qm[j::k], "passage_ids": grouped(p, j),
      "passage_mask": grouped(pm, j)
  } for j in range(k)]
  key = jax.random.key(3)
  plain = jax.jit(
      srl.make_srl_step(cfg, plan, loss_cfg, None, "mean", dropout=False).value_and_grad)
  accumulated = srl.make_srl_step(cfg, plan, loss_cfg, None, "mean", dropout=False, microbatches=k)
  (loss, aux), grads = jax.jit(accumulated.value_and_grad)(params, batch, key)
  parts = [plain(params, m, jax.random.fold_in(key, j)) for j, m in enumerate(micro)]
  want_loss = np.mean([float(part[0][0]) for part in parts])
  want_grads = jax.tree_util.tree_map(lambda *g: sum(g) / k, *[part[1] for part in parts])
  assert float(loss) == pytest.approx(want_loss, rel=1e-5)
  rel, scale = max_rel_diff(grads, want_grads)
  assert rel < 1e-5 and scale > 1e-3


def test_microbatches_config_errors_name_the_key():
  cfg = config_lib.load_config(str(REPO / "configs" / "ft.py") + ":demo")
  cfg.train.microbatches = 3
  with pytest.raises(config_lib.ConfigError,
                     match=r"train.microbatches=3 does not divide data.batch_size"):
    finetune.describe(cfg)
  cfg.train.microbatches = 0
  with pytest.raises(config_lib.ConfigError, match=r"train.microbatches"):
    finetune.describe(cfg)
  pt = config_lib.load_config(str(REPO / "configs" / "pt.py") + ":demo")
  pt.train.microbatches = 32
  with pytest.raises(config_lib.ConfigError,
                     match=r"train.microbatches=32 does not divide data.batch_size=16"):
    pretrain.describe(pt)
