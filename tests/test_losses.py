"""Each loss against an independent float64 numpy computation of docs/method.md's equations."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax import losses, schedule
from starbucks_jax.config_lib import ConfigError

RNG = np.random.default_rng(0)
R, B, D = 3, 5, 12
PAIRS = ((1, 3), (2, 6), (3, 12))
FULL = (3, 12)


# ---- references (numpy, float64, written from the equations) ---------------------------------
def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_contrastive(pooled, d, cosine=True, scale=20.0, temperature=1.0):
  q = pooled[0, :, :d]
  cands = np.concatenate([pooled[r, :, :d] for r in range(1, pooled.shape[0])])
  logits = np_unit(q) @ np_unit(cands).T * scale if cosine else q @ cands.T / temperature
  lp = np_log_softmax(logits)
  return -np.mean([lp[i, i] for i in range(q.shape[0])]), logits


def np_cosent(a, b, gold, d, scale=20.0):
  pred = (np_unit(a[:, :d]) * np_unit(b[:, :d])).sum(-1) * scale
  terms = [
      pred[i] - pred[j] for i in range(len(gold)) for j in range(len(gold)) if gold[i] < gold[j]
  ]
  return np.log(1.0 + np.sum(np.exp(terms)))


def np_kl(teacher_logits, student_logits):
  logp, logq = np_log_softmax(teacher_logits), np_log_softmax(student_logits)
  return np.mean((np.exp(logp) * (logp - logq)).sum(-1))


def np_srl(pooled, kl, cosine=True, reduction="sum", beta=1.0, kl_t=0.3, tau=1.0):
  total = 0.0
  for n, d in PAIRS:
    task, logits = np_contrastive(pooled[n], d, cosine)
    total += task
    if (n, d) == FULL:
      continue
    if kl == "features":
      t = pooled[FULL[0]].reshape(-1, D)[:, :d]
      s = pooled[n].reshape(-1, D)[:, :d]
      total += beta * kl_t * np_kl(t, s)
    else:
      _, t_logits = np_contrastive(pooled[FULL[0]], D, cosine)
      total += beta * np_kl(t_logits / tau, logits / tau)
  return total / len(PAIRS) if reduction == "mean" else total


@pytest.fixture
def pooled():
  return {n: RNG.normal(size=(R, B, D)) * 2.0 for n in (0, 1, 2, 3)}  # 0: the embedding output


def _jax(pooled):
  return {n: jnp.asarray(v) for n, v in pooled.items()}


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_contrastive(pooled, similarity):
  cfg = losses.LossConfig(similarity=similarity, temperature=0.7)
  with jax.enable_x64(True):
    for d in (4, 12):
      got = float(losses.task_loss(jnp.asarray(pooled[1]), d, cfg))
      want, _ = np_contrastive(pooled[1], d, similarity == "cosine", temperature=0.7)
      assert got == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_contrastive_labels_with_groups():
  """Query i's positive is candidate i; every other passage, other queries' included, is a negative."""
  q = np.eye(3, 8)
  pos = np.eye(3, 8) * 20
  neg = np.zeros((3, 8))
  neg[0, 0] = 100.0  # query 0's hard negative outscores its positive: loss of row 0 must be large
  pooled = jnp.asarray(np.stack([q, pos, neg]))
  logits = losses.task_logits(pooled, 8, losses.LossConfig(similarity="dot"))
  assert logits.shape == (3, 6)
  per_row = -jax.nn.log_softmax(logits)[jnp.arange(3), jnp.arange(3)]
  assert per_row[0] > 50 and per_row[1] < 1e-3


def test_cosent(pooled):
  gold = np.array([0.5, 3.0, 3.0, 1.2, 4.8])
  cfg = losses.LossConfig(task="cosent")
  with jax.enable_x64(True):
    for d in (3, 12):
      got = float(losses.task_loss(jnp.asarray(pooled[2][:2]), d, cfg, scores=jnp.asarray(gold)))
      assert got == pytest.approx(np_cosent(pooled[2][0], pooled[2][1], gold, d), rel=1e-6)


@pytest.mark.parametrize("kl", ["features", "scores"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_srl_loss_equals_the_equation(pooled, kl, reduction):
  cfg = losses.LossConfig(kl=kl, reduction=reduction,
                          kl_temperature=0.3 if kl == "features" else 1.0)
  with jax.enable_x64(True):
    got, metrics = losses.srl_loss(_jax(pooled), PAIRS, FULL, cfg)
  assert float(got) == pytest.approx(np_srl(pooled, kl, reduction=reduction), rel=1e-6)
  assert set(metrics) == {f"task/{n}_{d}"
                          for n, d in PAIRS} | {f"kl/{n}_{d}" for n, d in PAIRS[:-1]}


def test_score_kl_with_temperature_and_weight(pooled):
  cfg = losses.LossConfig(kl="scores", kl_temperature=2.0, kl_weight=0.5, similarity="dot")
  with jax.enable_x64(True):
    got, _ = losses.srl_loss(_jax(pooled), PAIRS, FULL, cfg)
  assert float(got) == pytest.approx(np_srl(pooled, "scores", cosine=False, beta=0.5, tau=2.0),
                                     rel=1e-6)


def test_kl_of_identical_distributions_is_zero(pooled):
  cfg = losses.LossConfig()
  p = jnp.asarray(pooled[3])
  assert float(losses.kl_features(p, p, 12, cfg)) == pytest.approx(0.0, abs=1e-7)
  assert float(losses.kl_scores(p, p, 12, cfg)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["features", "tempered_features", "scores"])
def test_kl_detach_stops_the_teachers_gradient_only(pooled, kind):
  t, s = jnp.asarray(pooled[3], jnp.float32), jnp.asarray(pooled[1], jnp.float32)
  values = []
  for detach in (False, True):
    cfg = losses.LossConfig(kl=kind, kl_detach=detach)
    value, (g_teacher, g_student) = jax.value_and_grad(lambda a, b: losses.kl_term(a, b, 6, cfg),
                                                       argnums=(0, 1))(t, s)
    assert np.abs(np.asarray(g_student)).max() > 1e-6, (kind, detach)
    assert (np.abs(np.asarray(g_teacher)).max() > 1e-6) != detach, (kind, detach)
    values.append(float(value))
  # detaching changes the gradient, not the value
  assert values[1] == pytest.approx(values[0], rel=1e-6)


def test_tempered_feature_kl_divides_by_the_temperature_inside_the_softmax(pooled):
  cfg = losses.LossConfig(kl="tempered_features", kl_temperature=0.3)
  t, s = pooled[3].reshape(-1, D)[:, :6], pooled[1].reshape(-1, D)[:, :6]
  with jax.enable_x64(True):
    got = losses.kl_term(jnp.asarray(pooled[3]), jnp.asarray(pooled[1]), 6, cfg)
  assert float(got) == pytest.approx(0.3 * np_kl(t / 0.3, s / 0.3), rel=1e-6)
  # not 'features'
  assert 0.3 * np_kl(t / 0.3, s / 0.3) != pytest.approx(0.3 * np_kl(t, s), rel=1e-2)


def test_layer_weights_follow_sentence_transformers():
  for i in (0, 1, 5):
    assert float(losses.layer_weight(i, "uniform")) == 1.0
    assert float(losses.layer_weight(i, "linear")) == pytest.approx(1 / (1 + i))
    assert float(losses.layer_weight(i, "log")) == pytest.approx(1 / (1 + np.log(1 + i)))


def test_pair_weights_scale_the_task_term(pooled):
  cfg = losses.LossConfig(kl="none")
  base, m = losses.srl_loss(_jax(pooled), PAIRS, FULL, cfg)
  weighted, _ = losses.srl_loss(_jax(pooled), PAIRS, FULL,
                                dataclasses.replace(cfg, pair_weights=(2.0, 0.0, 1.0)))
  want = 2 * m["task/1_3"] + m["task/3_12"]
  assert float(weighted) == pytest.approx(float(want), rel=1e-6)
  assert float(base) == pytest.approx(float(sum(m.values())), rel=1e-6)


# Hand-computed task weights over PAIRS (layers 1, 2, 3), before full_weight: mean 1 over the pairs.
INVERSE_LAYER = [3 * w / (1 + 1 / 2 + 1 / 3) for w in (1, 1 / 2, 1 / 3)]  # 1.636, 0.818, 0.545
LOG_LAYER = [
    3 * w / sum(1 / (1 + np.log(n)) for n in (1, 2, 3))
    for w in (1 / (1 + np.log(n)) for n in (1, 2, 3))
]


@pytest.mark.parametrize("weighting, full_weight, kl", [("inverse_layer", 1.0, "none"),
                                                        ("log_layer", 1.0, "features"),
                                                        ("inverse_loss", 1.0, "scores"),
                                                        ("uniform", 0.25, "features"),
                                                        ("inverse_layer", 0.5, "none")])
def test_named_pair_weightings_and_the_full_weight_equal_hand_computed_sums(
    pooled, weighting, full_weight, kl):
  """L = sum of w_i * task_i + beta * KL_i, the w_i computed here by hand from the scheme's formula."""
  cfg = losses.LossConfig(kl=kl, pair_weighting=weighting, full_weight=full_weight)
  with jax.enable_x64(True):
    got, m = losses.srl_loss(_jax(pooled), PAIRS, FULL, cfg)
  tasks = [float(m[f"task/{n}_{d}"]) for n, d in PAIRS]
  if weighting == "inverse_loss":
    inv = [1 / t for t in tasks]
    weights = [3 * w / sum(inv) for w in inv]
    assert [float(m[f"weight/{n}_{d}"]) for n, d in PAIRS] == pytest.approx(weights, rel=1e-9)
  else:
    weights = {"uniform": [1.0, 1.0, 1.0], "inverse_layer": INVERSE_LAYER,
               "log_layer": LOG_LAYER}[weighting]
  weights = weights[:-1] + [weights[-1] * full_weight]  # FULL is the last pair
  kls = sum(float(v) for k, v in m.items() if k.startswith("kl/"))
  assert float(got) == pytest.approx(sum(w * t for w, t in zip(weights, tasks)) + kls, rel=1e-9)
  if kl == "none":  # the task terms, as the unweighted loss computes them
    with jax.enable_x64(True):
      _, plain = losses.srl_loss(_jax(pooled), PAIRS, FULL, losses.LossConfig(kl="none"))
    assert tasks == pytest.approx([float(plain[f"task/{n}_{d}"]) for n, d in PAIRS], rel=1e-12)


@pytest.mark.parametrize("kl", ["features", "scores"])
def test_a_frozen_teacher_is_the_kl_teacher_of_every_pair(pooled, kl):
  """teacher given: L = sum of task_i + beta * KL(teacher || pair_i) over every pair, (N, D) included,
  and no gradient flows into the teacher."""
  cfg = losses.LossConfig(kl=kl, kl_weight=0.5, kl_temperature=0.3 if kl == "features" else 1.0,
                          teacher="frozen")
  frozen = RNG.normal(size=(R, B, D))
  with jax.enable_x64(True):
    got, m = losses.srl_loss(_jax(pooled), PAIRS, FULL, cfg, teacher=jnp.asarray(frozen))
    kls = [
        float(losses.kl_term(jnp.asarray(frozen), jnp.asarray(pooled[n]), d, cfg)) for n, d in PAIRS
    ]
  assert set(m) == {f"task/{n}_{d}" for n, d in PAIRS} | {f"kl/{n}_{d}" for n, d in PAIRS}
  tasks = [float(m[f"task/{n}_{d}"]) for n, d in PAIRS]
  assert float(got) == pytest.approx(sum(tasks) + 0.5 * sum(kls), rel=1e-9)
  if kl == "features":  # the feature KL by hand: softmax over each input's first d features
    n, d = FULL
    t, s = frozen.reshape(-1, D)[:, :d], pooled[n].reshape(-1, D)[:, :d]
    assert kls[-1] == pytest.approx(0.3 * np_kl(t, s), rel=1e-9)
  g = jax.grad(lambda t: losses.srl_loss(_jax(pooled), PAIRS, FULL, cfg, teacher=t)[0])(
      jnp.asarray(frozen))
  assert not np.asarray(g).any()


@pytest.mark.parametrize("kl", ["features", "scores"])
def test_kl_max_layer_keeps_the_kl_of_the_shallow_pairs_only(pooled, kl):
  """kl_max_layer=2 over PAIRS (layers 1, 2, 3): L = the three task terms + beta * the KL of the
  pairs of 1 and 2 layers, each KL by hand (kl_term of the teacher (3, 12) and the pair)."""
  cfg = losses.LossConfig(kl=kl, kl_weight=0.5, kl_max_layer=2, kl_temperature=1.0)
  with jax.enable_x64(True):
    got, m = losses.srl_loss(_jax(pooled), PAIRS, FULL, cfg)
    kls = [
        float(losses.kl_term(jnp.asarray(pooled[3]), jnp.asarray(pooled[n]), d, cfg))
        for n, d in PAIRS[:2]
    ]
  assert {k for k in m if k.startswith("kl/")} == {f"kl/{n}_{d}" for n, d in PAIRS[:2]}
  tasks = [float(m[f"task/{n}_{d}"]) for n, d in PAIRS]
  assert float(got) == pytest.approx(sum(tasks) + 0.5 * sum(kls), rel=1e-9)
  with jax.enable_x64(True):
    everything, _ = losses.srl_loss(_jax(pooled), PAIRS, FULL,
                                    dataclasses.replace(cfg, kl_max_layer=3))
    _, all_kls = losses.srl_loss(_jax(pooled), PAIRS, FULL,
                                 dataclasses.replace(cfg, kl_max_layer=0))
  assert float(everything) == pytest.approx(
      sum(tasks) + 0.5 * sum(float(v) for k, v in all_kls.items() if k.startswith("kl/")), rel=1e-9)


def test_inverse_loss_weights_carry_no_gradient(pooled):
  """The gradient of w_i * L_i is w_i * dL_i: the weight is a constant of the step."""
  cfg = losses.LossConfig(kl="none", pair_weighting="inverse_loss")
  x = {n: jnp.asarray(pooled[n], jnp.float32) for n in pooled}
  grads = jax.grad(lambda p: losses.srl_loss(p, PAIRS, FULL, cfg)[0])(x)
  _, m = losses.srl_loss(x, PAIRS, FULL, cfg)
  want = {n: 0.0 for n in pooled}
  for n, d in PAIRS:
    g = jax.grad(lambda v: losses.task_loss(v, d, cfg))(x[n])
    want[n] = want[n] + float(m[f"weight/{n}_{d}"]) * g
  for n in (1, 2, 3):
    np.testing.assert_allclose(grads[n], want[n], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "changes, method, message",
    [(dict(pair_weighting="inverse"), "starbucks", "loss.pair_weighting='inverse'"),
     (dict(full_weight=-1.0), "starbucks", "loss.full_weight"),
     (dict(pair_weights=(1.0, 2.0, 3.0), pair_weighting="log_layer"), "starbucks", "keep one"),
     (dict(pair_weights=(1.0, 2.0, 3.0)), "grid", "use loss.pair_weighting"),
     (dict(pair_weighting="inverse_layer"), "2dmse", "samples its own"),
     (dict(full_weight=0.5), "2dmse_retrieval", "samples its own"),
     (dict(kl_max_layer=2), "2dmse", "samples its own"),
     (dict(kl_max_layer=-1), "starbucks", "loss.kl_max_layer"),
     (dict(teacher="teacher"), "starbucks", "loss.teacher='teacher'"),
     (dict(teacher="frozen"), "mrl", "this run has method='mrl'"),
     (dict(teacher="frozen", kl="none"), "starbucks", "kl='none'")])
def test_pair_weighting_config_errors_name_the_key(changes, method, message):
  block = losses.LossConfig.from_config(losses.LossConfig.config(**changes))
  with pytest.raises(ConfigError, match=re.escape(message)):
    block.check()
    block.check_plan(3, method)


def test_mask_dims_equals_truncation(pooled):
  cfg = losses.LossConfig()
  x = jnp.asarray(pooled[2])
  for d in (1, 5, 12):
    a = losses.task_loss(losses.mask_dims(x, jnp.int32(d)), D, cfg)
    b = losses.task_loss(x, d, cfg)
    assert float(a) == pytest.approx(float(b), rel=1e-5)


@pytest.mark.parametrize("kl,weighting,embedding_output", [("features", "uniform", True),
                                                           ("tempered_features", "linear", True),
                                                           ("tempered_features", "linear", False)])
def test_2dmse_loss_is_the_sampled_terms(pooled, kl, weighting, embedding_output):
  """Given the draw, 2dmse = task(N, d1) + w(i) task(n', d2) + 0.3 KL(N || n') over D, with i the
  draw's index in the drawable hidden states (0..N-1: i = n'; 1..N-1: i = n' - 1)."""
  plan = schedule.plan("2dmse", PAIRS, 3, 12, sample_embedding_output=embedding_output)
  cfg = losses.LossConfig(kl=kl, layer_weighting=weighting)
  tau = 0.3 if kl == "tempered_features" else 1.0
  seen = set()
  for key in range(12):  # draws that reach the embedding output (n' = 0) and later layers
    rng = jax.random.key(key)
    with jax.enable_x64(True):
      draw = schedule.sample(plan, rng)
      got, m = losses.plan_loss(plan, _jax(pooled), cfg, rng=rng)
    n = plan.sample_layers[int(draw["layer"])]
    d1, d2 = plan.sample_dims[int(draw["dim_last"])], plan.sample_dims[int(draw["dim_layer"])]
    first = 0 if embedding_output else 1
    w = 1.0 / (1 + n - first) if weighting == "linear" else 1.0
    want = (np_contrastive(pooled[3], d1)[0] + w * np_contrastive(pooled[n], d2)[0] +
            0.3 * np_kl(pooled[3].reshape(-1, D) / tau, pooled[n].reshape(-1, D) / tau))
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert int(m["sampled/layer"]) == n
    seen.add(n)
  assert seen == ({0, 1, 2} if embedding_output else {1, 2})


def test_2dmse_retrieval_loss(pooled):
  plan = schedule.plan("2dmse_retrieval", PAIRS, 3, 12)
  cfg = losses.LossConfig(kl="scores", kl_temperature=1.0, similarity="dot")
  rng = jax.random.key(3)
  with jax.enable_x64(True):
    n = plan.sample_layers[int(schedule.sample(plan, rng)["layer"])]
    got, _ = losses.plan_loss(plan, _jax(pooled), cfg, rng=rng)
  t_task, t_logits = np_contrastive(pooled[3], D, cosine=False)
  want = t_task
  for d in plan.sample_dims:
    for layer in (n, 3):
      if (layer, d) == (3, D):
        continue
      task, logits = np_contrastive(pooled[layer], d, cosine=False)
      want += task + np_kl(t_logits, logits)
  assert float(got) == pytest.approx(want, rel=1e-6)
