"""The ModernBERT encoder (models/modernbert.py) against transformers' ModernBertModel on random
weights: every hidden state (as the sub-model of that depth outputs it, final norm applied) on
padded and packed rows longer than the local window, at every layer a schedule can cut at."""

import numpy as np
import pytest

from starbucks_jax.models import hf, modernbert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LENGTHS = (23, 9, 17, 4)  # the local window is +-4 tokens: most rows cross it


def make_modernbert(*, biases: bool, layers: int = 4, seed: int = 0):
  """A random HF ModernBertModel (layers 0 and 3 global, 1 and 2 local with window +-4) and our
  config for it. `biases`: every bias and LayerNorm bias on and randomised (ModernBERT's release
  has none: both must be right)."""
  torch.manual_seed(seed)
  sizes = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
               num_attention_heads=4, max_position_embeddings=64, local_attention=8,
               global_attn_every_n_layers=3, norm_bias=biases, attention_bias=biases,
               mlp_bias=biases, pad_token_id=0)
  hf_cfg = transformers.ModernBertConfig(**sizes, initializer_range=0.3, bos_token_id=1,
                                         eos_token_id=2, cls_token_id=1, sep_token_id=2)
  hf_cfg._attn_implementation = "eager"
  model = transformers.ModernBertModel(hf_cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(torch.randn_like(p) * 0.3)
  ours = modernbert.ModernBertConfig(**sizes)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  return model, ours, hf.params_from_hf(state, ours)["bert"]


def batch(seed: int = 0):
  rng = np.random.default_rng(seed)
  T = max(LENGTHS)
  ids = np.zeros((len(LENGTHS), T), np.int64)
  mask = np.zeros_like(ids)
  for r, n in enumerate(LENGTHS):
    ids[r, :n] = rng.integers(3, 128, n)
    mask[r, :n] = 1
  return ids, mask


def theirs(model, ids, mask):
  """HF's states as sub-models output them: the embedding output, then final_norm(layer n).
  (transformers 5 gives the last layer's output final-normed already, as last_hidden_state.)"""
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                output_hidden_states=True)
    hs = out.hidden_states
    assert torch.equal(hs[-1], out.last_hidden_state)
    states = [hs[0]] + [model.final_norm(h) for h in hs[1:-1]] + [hs[-1]]
  return np.stack([s.numpy() for s in states])


@pytest.mark.parametrize("biases", [False, True])
def test_every_hidden_state_equals_transformers(biases):
  model, cfg, params = make_modernbert(biases=biases)
  ids, mask = batch()
  ref = theirs(model, ids, mask)
  ours = np.asarray(modernbert.ModernBertEncoder(cfg).apply({"params": params}, ids, mask))
  assert ours.shape == ref.shape == (5, *ids.shape, 32)
  real = mask.astype(bool)
  err = np.abs(ours - ref)[:, real].max(axis=(1, 2)) / np.abs(ref[:, real]).max(axis=(1, 2))
  assert err.max() <= 1e-4, err
  # early exit: the first n layers alone give the same states
  two = np.asarray(
      modernbert.ModernBertEncoder(cfg).apply({"params": params}, ids, mask, num_layers=2))
  np.testing.assert_allclose(two, ours[:3], rtol=0, atol=1e-6 * np.abs(ours).max())


def test_the_local_window_and_the_rope_bases_are_each_needed():
  """Widened windows or one RoPE base for all layers change the local layers' states."""
  model, cfg, params = make_modernbert(biases=False)
  ids, mask = batch()
  ref = theirs(model, ids, mask)
  real = mask.astype(bool)
  for wrong in (cfg.replace(local_attention=64), cfg.replace(local_rope_theta=160000.0)):
    ours = np.asarray(modernbert.ModernBertEncoder(wrong).apply({"params": params}, ids, mask))
    assert np.abs(ours[1] - ref[1])[real].max() < 1e-4 * np.abs(ref[1]).max()  # layer 0: global
    assert np.abs(ours[2] - ref[2])[real].max() > 1e-3 * np.abs(ref[2]).max()  # layer 1: local


def test_packed_rows_equal_each_text_alone():
  model, cfg, params = make_modernbert(biases=True)
  ids, mask = batch()
  ref = theirs(model, ids, mask)
  rows = [(0, 0), (1, 0), (1, 9), (0, 23)]  # (row, offset) of each text: two texts share each row
  packed = np.zeros((2, 27), np.int64)
  segments = np.full((2, 27), -1)
  positions = np.zeros((2, 27), np.int64)
  for i, ((r, o), n) in enumerate(zip(rows, LENGTHS)):
    packed[r, o:o + n], segments[r, o:o + n], positions[r, o:o + n] = ids[i, :n], i, np.arange(n)
  ours = np.asarray(
      modernbert.ModernBertEncoder(cfg).apply({"params": params}, packed, None, segments=segments,
                                              positions=positions))
  scale = np.abs(ref).max()
  for i, ((r, o), n) in enumerate(zip(rows, LENGTHS)):
    np.testing.assert_allclose(ours[:, r, o:o + n], ref[:, i, :n], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("core", ["dot_product", "flash"])
def test_the_fused_cores_equal_the_standard_one(core, monkeypatch):
  """model.attention on ModernBERT: XLA's fused call and the TPU splash kernel (here in Pallas'
  interpreter) with a block-sparse band on the local layers give every real token's state at every
  layer as the standard core, padded and packed, and the same gradient."""
  import jax

  from starbucks_jax.models import attention
  monkeypatch.setattr(attention, "SPLASH_INTERPRET", True)
  _, cfg, params = make_modernbert(biases=True)
  ids, mask = batch()
  fused = cfg.replace(attention=core)
  real = mask.astype(bool)
  # jitted: op by op, the encoder's ops would compile one by one (250 compiles)
  apply = jax.jit(
      lambda p, ids, mask, c, **kw: modernbert.ModernBertEncoder(c).apply({"params": p}, ids, mask,
                                                                          **kw), static_argnums=3)
  want = np.asarray(apply(params, ids, mask, cfg))
  got = np.asarray(apply(params, ids, mask, fused))
  np.testing.assert_allclose(got[:, real], want[:, real], rtol=0, atol=2e-5 * np.abs(want).max())
  segments = np.where(mask, np.arange(4)[:, None], -1).reshape(1, -1)  # the four texts in one row
  positions = np.tile(np.arange(ids.shape[1]), 4)[None]
  packed = apply(params, ids.reshape(1, -1), None, fused, segments=segments, positions=positions)
  np.testing.assert_allclose(
      np.asarray(packed)[:, 0, real.reshape(-1)], want[:, real], rtol=0,
      atol=2e-5 * np.abs(want).max())

  def loss(p, c):
    states = modernbert.ModernBertEncoder(c).apply({"params": p}, ids, mask)
    return (states[-1] * mask[..., None]).sum() + (states[2] * mask[..., None]).mean()

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g_want = grad(params, cfg)
  g_got = grad(params, fused)
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max() + 1e-6)
