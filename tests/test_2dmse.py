"""The 2dmse baselines against sentence-transformers' Matryoshka2dLoss: today's (the installed
version, run directly) and the 2024 version behind the papers' 2DMSE numbers (release 3.0.1,
transcribed in PyTorch below), on the same weights, batch and sampled (layer, dims): loss value
and every parameter's gradient."""

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
# (sampled hidden state, dim at the last layer, dim at that layer): the 2024 library draws hidden
# states 1..N-1, today's 0..N-1 (0: the embedding output)
DRAWS_2024 = ((1, 16, 8), (2, 32, 16))
DRAWS_ST6 = ((1, 16, 8), (0, 32, 16))


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


def pooled_hidden_states(bert, ids, mask) -> list[list]:
  """Per text column, the mean-pooled vector of every hidden state 0..N (HF's hidden_states)."""
  out = []
  for i, m in zip(ids, mask):
    m = torch.as_tensor(m)
    hs = bert(input_ids=torch.as_tensor(i), attention_mask=m,
              output_hidden_states=True).hidden_states
    w = m.unsqueeze(-1).float()
    out.append([(h * w).sum(1) / w.sum(1).clamp(min=1e-9) for h in hs])
  return out


def mnrl(roles, d):
  """MNRL on the first d features: cosine x 20, in-batch and hard negatives."""
  a = F.normalize(roles[0][:, :d], dim=-1)
  cands = F.normalize(torch.cat(roles[1:])[:, :d], dim=-1)
  return F.cross_entropy(a @ cands.T * 20.0, torch.arange(a.shape[0]))


def equations(path, ids, mask, draw, *, linear: bool, detach: bool):
  """Matryoshka2dLoss's equations with one sampled hidden state i of 0..N-1 and dims d1 (last
  layer), d2 (layer i): MNRL(e_N[:, :d1]) + w_i MNRL(e_i[:, :d2]) + 0.3 KL(softmax(e_N / 0.3) ||
  softmax(e_i / 0.3)) over every input's full-width mean-pooled vector (batchmean); w_i = 1/(1+i)
  ('linear') or 1."""
  model = st_model(path)
  bert = model[0].auto_model
  layer, d_last, d_layer = draw
  columns = pooled_hidden_states(bert, ids, mask)
  final = [c[bert.config.num_hidden_layers] for c in columns]
  student = [c[layer] for c in columns]
  teacher = F.softmax(torch.cat(final) / 0.3, dim=-1)
  teacher = teacher.detach() if detach else teacher
  kl = F.kl_div(F.log_softmax(torch.cat(student) / 0.3, dim=-1), teacher, reduction="batchmean")
  weight = 1.0 / (1 + layer) if linear else 1.0
  value = mnrl(final, d_last) + weight * mnrl(student, d_layer) + 0.3 * kl
  return grads_of(model, value)


def v3_0_1(path, ids, mask, draw):
  """sentence-transformers 3.0.1 (June 2024; sentence_transformers/losses/AdaptiveLayerLoss.py,
  MatryoshkaLoss.py and Matryoshka2dLoss.py of its wheel) with Matryoshka2dLoss's defaults
  (n_layers_per_step=1, n_dims_per_step=1, every weight 1, kl_temperature=0.3) around MNRL, its
  draws forced to `draw`. AdaptiveLayerLoss.forward: the final layer's loss (MatryoshkaLoss at its
  drawn dim) times last_layer_weight; the transformer's cache keeps all_layer_embeddings[1:-1]
  (hidden states 1..N-1); layer_idx is drawn from range(num_layers - 1) and indexes that cache, so
  hidden state k is layer_idx = k - 1; its loss is divided by (1 + layer_idx), by len(layer_indices)
  and times prior_layers_weight; the KL is F.kl_div(log_softmax(e / T), softmax(e_N / T),
  'batchmean') over the embeddings after every module (pooled, untruncated: the Adaptive forward
  decorator wraps the model inside the Matryoshka one), the final ones not detached, times T and
  kl_div_weight."""
  model = st_model(path)
  bert = model[0].auto_model
  hidden, d_last, d_layer = draw
  num_layers = bert.config.num_hidden_layers  # len(all_layer_embeddings) - 1
  columns = pooled_hidden_states(bert, ids, mask)
  cache = [c[1:-1] for c in columns]  # all_layer_embeddings[1:-1], per column (pooled here)
  final_embeddings = [c[-1] for c in columns]
  layer_indices = [hidden - 1]  # random.sample(range(num_layers - 1), 1), forced
  assert all(0 <= i < num_layers - 1 for i in layer_indices)
  last_layer_weight = prior_layers_weight = kl_div_weight = 1.0
  kl_temperature = 0.3
  loss = mnrl(final_embeddings, d_last) * last_layer_weight
  final_probs = F.softmax(torch.cat(final_embeddings) / kl_temperature, dim=-1)
  for layer_idx in layer_indices:
    embeddings = [c[layer_idx] for c in cache]
    layer_loss = mnrl(embeddings, d_layer)
    loss = loss + layer_loss / (1 + layer_idx) / len(layer_indices) * prior_layers_weight
    kl_div_loss = F.kl_div(F.log_softmax(torch.cat(embeddings) / kl_temperature, dim=-1),
                           final_probs, reduction="batchmean")
    loss = loss + kl_div_loss * kl_temperature * kl_div_weight
  return grads_of(model, loss)


def ours(path, ids, mask, method, draws):
  """The loss and gradients of configs/ft.py's `method` preset at each of `draws`."""
  pre = checkpoint.load_model(path)
  cfg = pre.config
  ft = config_lib.load_config(f"{REPO}/configs/ft.py:demo,method={method}")
  plan = schedule.plan_from_config(ft.schedule, PAIRS, cfg.num_hidden_layers, cfg.hidden_size)
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
  for key in range(300):  # a key whose draw is each of `draws`
    d = sample(jax.random.key(key))
    draw = (plan.sample_layers[int(d["layer"])], plan.sample_dims[int(d["dim_last"])],
            plan.sample_dims[int(d["dim_layer"])])
    if draw in draws and draw not in out:
      value, grads = value_and_grad(pre.params["bert"], jax.random.key(key))
      out[draw] = (float(value),
                   hf.params_to_hf({"bert": jax.device_get(grads)}, cfg, prefixed=False))
  assert set(out) == set(draws), "no key draws every case"
  return out


def assert_same(got, want):
  (v1, g1), (v2, g2) = got, want
  assert v1 == pytest.approx(v2, rel=1e-5)
  assert set(g2) <= set(g1)
  assert max_rel_diff([g1[n] for n in sorted(g2)], [g2[n] for n in sorted(g2)])[0] < 1e-5


def test_equations_are_the_installed_loss(case, monkeypatch):
  """The equations, teacher detached, equal the installed code in both layer weightings."""
  for draw in DRAWS_ST6:
    for weighting in ("linear", "uniform"):
      assert_same(equations(*case, draw, linear=weighting == "linear", detach=True),
                  installed(*case, draw, weighting, monkeypatch))


def test_2dmse_is_release_3_0_1(case):
  """method=2dmse against the 3.0.1 transcription: hidden state k of 1..N-1 weighted 1/k."""
  authors = ours(*case, "2dmse", DRAWS_2024)
  for draw in DRAWS_2024:
    assert_same(authors[draw], v3_0_1(*case, draw))
  # what the preset computed before (draws from 0..N-1, hidden state k weighted 1/(1+k)) differs
  old = equations(*case, DRAWS_2024[0], linear=True, detach=False)
  assert abs(authors[DRAWS_2024[0]][0] - old[0]) > 1e-3


def test_2dmse_st6_is_the_installed_loss(case, monkeypatch):
  today = ours(*case, "2dmse_st6", DRAWS_ST6)
  for draw in DRAWS_ST6:
    assert_same(today[draw], installed(*case, draw, "uniform", monkeypatch))
  # the two versions differ in the gradient (detach, weighting), not only in the value
  authors = ours(*case, "2dmse", DRAWS_2024[:1])
  draw = DRAWS_2024[0]
  assert max_rel_diff(list(authors[draw][1].values()), list(today[draw][1].values()))[0] > 1e-3


@pytest.mark.parametrize("method,drawable", [("2dmse", (1, 2, 3, 4, 5)),
                                             ("2dmse_st6", (0, 1, 2, 3, 4, 5))])
def test_the_presets_draw_from_their_versions_hidden_states(method, drawable):
  """sts_cpu's backbone has 6 layers: the 2024 library never drew the embedding output."""
  ft = config_lib.load_config(f"{REPO}/configs/ft.py:sts_cpu,method={method}")
  pairs = tuple(map(tuple, ft.schedule.pairs))
  plan = schedule.plan_from_config(ft.schedule, pairs, 6, 384)
  assert plan.sample_layers == drawable and plan.layers == drawable + (6,)
