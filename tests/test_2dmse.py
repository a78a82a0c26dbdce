"""The 2dmse baselines against sentence-transformers' Matryoshka2dLoss: today's (the installed
version, run directly) and the 2024 version behind the papers' 2DMSE numbers (its equations in
PyTorch, checked against the installed code where the two agree), on the same weights, batch and
sampled (layer, dims): loss value and every parameter's gradient."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax import checkpoint, config_lib, losses, schedule
from starbucks_jax.models import hf
from starbucks_jax.models.pooling import pooled_layers

from conftest import REPO, make_hf_bert, max_rel_diff

torch = pytest.importorskip("torch")
st = pytest.importorskip("sentence_transformers")
st_losses = pytest.importorskip("sentence_transformers.losses")
F = torch.nn.functional

PAIRS = ((1, 8), (2, 16), (3, 32))
# (sampled hidden state, dim at the last layer, dim at that layer)
DRAWS = ((1, 16, 8), (0, 32, 16))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
  path = tmp_path_factory.mktemp("bert_3_layers")
  make_hf_bert(path, layers=3, pooler=False, initializer_range=0.2, embedding_scale=1.0)
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 128, (3, 4, 10))  # anchor, positive, negative x 4 examples x 10 tokens
  mask = (np.arange(10) < rng.integers(4, 11, (3, 4, 1))).astype(np.int64)
  return str(path), ids, mask


def st_model(path):
  model = st.SentenceTransformer(path, device="cpu")  # a plain HF dir: Transformer + mean pooling
  model.eval()  # no dropout, as ours below
  return model


def features(ids, mask):
  return [{
      "input_ids": torch.as_tensor(i), "attention_mask": torch.as_tensor(m),
      "token_type_ids": torch.zeros_like(torch.as_tensor(i))
  } for i, m in zip(ids, mask)]


def grads_of(model, loss):
  model.zero_grad()
  loss.backward()
  bert = model[0].auto_model
  return float(loss.detach()), {
      n: p.grad.numpy().copy() for n, p in bert.named_parameters() if p.grad is not None
  }


def installed(path, ids, mask, draw, weighting, monkeypatch):
  """sentence-transformers' own Matryoshka2dLoss(MNRL), its three random draws forced to `draw`."""
  model = st_model(path)
  loss = st_losses.Matryoshka2dLoss(model, st_losses.MultipleNegativesRankingLoss(model),
                                    [d for _, d in PAIRS], layer_weighting=weighting)
  dims = loss.loss.matryoshka_dims  # the MatryoshkaLoss inside, dims sorted large to small
  layer, d_last, d_layer = draw
  # the order the loss draws in
  picks = iter([[dims.index(d_last)], [layer], [dims.index(d_layer)]])

  def sample(population, k):
    pick = next(picks)
    assert k == 1 and pick[0] in population
    return pick

  monkeypatch.setattr(random, "sample", sample)
  value = loss(features(ids, mask), torch.zeros(0))
  monkeypatch.undo()
  return grads_of(model, value)


def equations(path, ids, mask, draw, *, linear: bool, detach: bool):
  """Matryoshka2dLoss's equations with one sampled layer i and dims d1 (last layer), d2 (layer i):
  MNRL(e_N[:, :d1]) + w_i MNRL(e_i[:, :d2]) + 0.3 KL(softmax(e_N / 0.3) || softmax(e_i / 0.3)) over
  every input's full-width mean-pooled vector (batchmean); w_i = 1/(1+i) ('linear') or 1."""
  model = st_model(path)
  bert = model[0].auto_model
  layer, d_last, d_layer = draw
  pooled = {}
  for i, m in zip(ids, mask):
    m = torch.as_tensor(m)
    hs = bert(input_ids=torch.as_tensor(i), attention_mask=m,
              output_hidden_states=True).hidden_states
    w = m.unsqueeze(-1).float()
    for n in (layer, bert.config.num_hidden_layers):
      pooled.setdefault(n, []).append((hs[n] * w).sum(1) / w.sum(1).clamp(min=1e-9))

  def mnrl(roles, d):
    a = F.normalize(roles[0][:, :d], dim=-1)
    cands = F.normalize(torch.cat(roles[1:])[:, :d], dim=-1)
    return F.cross_entropy(a @ cands.T * 20.0, torch.arange(a.shape[0]))

  final, student = pooled[bert.config.num_hidden_layers], pooled[layer]
  teacher = F.softmax(torch.cat(final) / 0.3, dim=-1)
  teacher = teacher.detach() if detach else teacher
  kl = F.kl_div(F.log_softmax(torch.cat(student) / 0.3, dim=-1), teacher, reduction="batchmean")
  value = mnrl(final, d_last) + (1.0 /
                                 (1 + layer) if linear else 1.0) * mnrl(student, d_layer) + 0.3 * kl
  return grads_of(model, value)


def ours(path, ids, mask, method):
  """The loss and gradients of configs/ft.py's `method` preset at each of DRAWS."""
  pre = checkpoint.load_model(path)
  cfg = pre.config
  ft = config_lib.load_config(f"{REPO}/configs/ft.py:demo,method={method}")
  plan = schedule.plan(ft.schedule.method, PAIRS, cfg.num_hidden_layers, cfg.hidden_size)
  loss_cfg = losses.LossConfig.from_config(ft.loss)
  loss_cfg.check()
  loss_cfg.check_plan(len(PAIRS), plan.method)

  def loss(params, key):
    pooled = pooled_layers(params, cfg, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32),
                           plan.layers, "mean")
    return losses.plan_loss(plan, pooled, loss_cfg, rng=key)[0]

  value_and_grad, sample = jax.jit(
      jax.value_and_grad(loss)), jax.jit(lambda k: schedule.sample(plan, k))
  out = {}
  for key in range(200):  # a key whose draw is each of DRAWS
    d = sample(jax.random.key(key))
    draw = (plan.sample_layers[int(d["layer"])], plan.sample_dims[int(d["dim_last"])],
            plan.sample_dims[int(d["dim_layer"])])
    if draw in DRAWS and draw not in out:
      value, grads = value_and_grad(pre.params["bert"], jax.random.key(key))
      out[draw] = (float(value),
                   hf.params_to_hf({"bert": jax.device_get(grads)}, cfg, prefixed=False))
  assert set(out) == set(DRAWS), "no key draws every case"
  return out


def assert_same(got, want):
  (v1, g1), (v2, g2) = got, want
  assert v1 == pytest.approx(v2, rel=1e-5)
  assert set(g2) <= set(g1)
  assert max_rel_diff([g1[n] for n in sorted(g2)], [g2[n] for n in sorted(g2)])[0] < 1e-5


def test_equations_are_the_installed_loss_where_they_agree(case, monkeypatch):
  """Written from the equations, with the teacher detached: equal to the installed code in both
  layer weightings (so, undetached, they are the 2024 version, which differs only there)."""
  for draw in DRAWS:
    for weighting in ("linear", "uniform"):
      assert_same(equations(*case, draw, linear=weighting == "linear", detach=True),
                  installed(*case, draw, weighting, monkeypatch))


def test_2dmse_is_the_2024_version_and_2dmse_st6_todays(case, monkeypatch):
  authors, today = ours(*case, "2dmse"), ours(*case, "2dmse_st6")
  for draw in DRAWS:
    assert_same(authors[draw], equations(*case, draw, linear=True, detach=False))
    assert_same(today[draw], installed(*case, draw, "uniform", monkeypatch))
    # the two versions differ in the gradient (detach, weighting), not only in the value
    assert max_rel_diff(list(authors[draw][1].values()), list(today[draw][1].values()))[0] > 1e-3
