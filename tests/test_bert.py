"""The Flax encoder against transformers' PyTorch BertModel, early exit, remat, logical axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax import model_dirs
from starbucks_jax.models import bert, encoders, hf

from conftest import max_rel_diff

torch = pytest.importorskip("torch")

SENTENCES = [
    "the quick brown fox jumps over the lazy dog.", "a cat sat", "music",
    "the man plays red guitar on the road with a woman and a dog"
]


def _batch(tokenizer, texts=SENTENCES):
  enc = tokenizer(texts, padding=True, return_tensors="np")
  assert enc["attention_mask"].min() == 0, "the batch must be padded with uneven lengths"
  return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


def _torch_hidden_states(model_dir, ids, mask, types):
  import transformers
  model = transformers.BertModel.from_pretrained(model_dir).eval()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types), output_hidden_states=True)
  return np.stack([h.numpy() for h in out.hidden_states])


def _assert_parity(model_dir):
  pre = model_dirs.load_pretrained(model_dir)
  ids, mask, types = _batch(pre.tokenizer)
  types = types.copy()
  types[1, 2:] = 1  # exercise the token-type embedding
  ours = bert.BertEncoder(pre.config).apply({"params": pre.params["bert"]}, ids, mask, types)
  ref = _torch_hidden_states(model_dir, ids, mask, types)
  assert ours.shape == ref.shape == (pre.config.num_hidden_layers + 1, *ids.shape,
                                     pre.config.hidden_size)
  diff, scale = np.abs(np.asarray(ours) - ref), np.abs(ref).max(axis=(1, 2, 3))
  real = mask.astype(bool)
  # per hidden state, relative to its largest value
  err_real = diff[:, real].max(axis=(1, 2)) / scale
  err_all = diff.max(axis=(1, 2, 3)) / scale  # padded rows too: a query-side mask shows there
  # float32 through the layers: real tokens agree to ~1e-6 of the scale; padded rows, whose [PAD]
  # inputs are worse conditioned, drift to ~1e-5 with the kernels' summation order (AVX-512 here)
  assert err_real.max() <= 1e-5 and err_all.max() <= 1e-4, (
      f"max abs diff / max |ref| per hidden state: real tokens {err_real}, all rows {err_all}")
  assert scale.max() > 1.0  # the comparison is not between near-zero tensors


def test_parity_random_large_init(tiny_hf_dir):
  _assert_parity(tiny_hf_dir)


def test_parity_all_minilm(minilm_dir):
  _assert_parity(minilm_dir)


def test_parity_detects_approximate_gelu(tiny_hf_dir, monkeypatch):
  """The large initializer makes the known traps visible: approximate GELU breaks parity."""
  monkeypatch.setattr(bert, "gelu", lambda x: jax.nn.gelu(x, approximate=True))
  with pytest.raises(AssertionError, match="max abs diff"):
    _assert_parity(tiny_hf_dir)


def test_parity_detects_query_side_mask(tiny_hf_dir, monkeypatch):
  """Masking queries as well as keys changes the padded rows; parity must catch it."""
  orig = jnp.where

  def where_both(cond, x, y):
    if cond.ndim == 4 and cond.shape[2] == 1:  # the key mask [B, 1, 1, T]
      cond = cond & jnp.swapaxes(cond, -1, -2)
    return orig(cond, x, y)

  monkeypatch.setattr(bert.jnp, "where", where_both)
  with pytest.raises(AssertionError, match="max abs diff"):
    _assert_parity(tiny_hf_dir)


def test_parity_detects_wrong_layer_norm_eps(tiny_hf_dir, monkeypatch):
  real = model_dirs.config_from_hf
  monkeypatch.setattr(model_dirs, "config_from_hf",
                      lambda p, **kw: real(p, **kw).replace(layer_norm_eps=1e-5))
  with pytest.raises(AssertionError, match="max abs diff"):
    _assert_parity(tiny_hf_dir)


def _packed(tokenizer, texts, row_length):
  """SENTENCES packed into rows as the batcher packs them: ids, segments, positions, and each text's
  (row, offset, length)."""
  from starbucks_jax.data.packing import pack_texts
  seqs = [tokenizer(t)["input_ids"] for t in texts]
  lengths = np.array([len(s) for s in seqs])
  row, offset, rows = pack_texts(lengths, row_length)
  ids = np.zeros((rows, row_length), np.int32)
  segments = np.full((rows, row_length), -1, np.int32)
  positions = np.zeros((rows, row_length), np.int32)
  for i, s in enumerate(seqs):
    span = slice(offset[i], offset[i] + len(s))
    ids[row[i], span], segments[row[i], span], positions[row[i], span] = s, i, np.arange(len(s))
  return ids, segments, positions, list(zip(row, offset, lengths))


def test_packed_rows_equal_each_text_alone_in_pytorch(tiny_hf_dir):
  """Texts sharing a row (segments, positions) give every hidden state of every text as PyTorch's
  BertModel gives it for the text in its own padded row; without the segment mask they do not."""
  pre = model_dirs.load_pretrained(tiny_hf_dir)
  ids, mask, types = _batch(pre.tokenizer)
  ref = _torch_hidden_states(tiny_hf_dir, ids, mask, np.zeros_like(types))
  p_ids, segments, positions, where = _packed(pre.tokenizer, SENTENCES, 24)
  assert p_ids.shape[0] < len(SENTENCES) and max(r for r, _, _ in where) < p_ids.shape[0]
  run = lambda seg: np.asarray(
      bert.BertEncoder(pre.config).apply({"params": pre.params["bert"]}, p_ids, None, segments=seg,
                                         positions=positions))
  ours, unmasked = run(segments), run(np.where(segments >= 0, 0, -1))
  scale = np.abs(ref).max()
  for i, (r, o, n) in enumerate(where):
    np.testing.assert_allclose(ours[:, r, o:o + n], ref[:, i, :n], atol=1e-5 * scale, rtol=0)
  shared = [i for i, (r, _, _) in enumerate(where) if sum(w[0] == r for w in where) > 1]
  r, o, n = where[shared[0]]
  assert np.abs(unmasked[-1, r, o:o + n] - ref[-1, shared[0], :n]).max() > 1e-2 * scale


def test_early_exit_equals_slicing():
  cfg = bert.BertConfig.preset("tiny", initializer_range=0.5)
  params = encoders.init_params(cfg, jax.random.key(1))
  ids = jax.random.randint(jax.random.key(2), (3, 7), 5, cfg.vocab_size)
  mask = jnp.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
  model = bert.BertEncoder(cfg)
  full = model.apply({"params": params}, ids, mask)
  for n in range(cfg.num_hidden_layers + 1):
    part = model.apply({"params": params}, ids, mask, num_layers=n)
    assert part.shape[0] == n + 1
    np.testing.assert_array_equal(np.asarray(part), np.asarray(full[:n + 1]))


def test_early_exit_runs_fewer_layers():
  """Early exit is a shorter program, not a slice of the full one."""
  cfg = bert.BertConfig.preset("tiny")
  params = encoders.init_params(cfg, jax.random.key(0))
  ids = jnp.ones((2, 8), jnp.int32)
  count = lambda n: jax.jit(lambda p: bert.BertEncoder(cfg).apply(
      {"params": p}, ids, jnp.ones_like(ids), num_layers=n)).lower(params).as_text().count("erf")
  assert count(1) * cfg.num_hidden_layers == count(cfg.num_hidden_layers) > 0


def test_num_layers_out_of_range():
  cfg = bert.BertConfig.preset("tiny")
  params = encoders.init_params(cfg, jax.random.key(0))
  ids = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="num_layers=5 is outside 0..4"):
    bert.BertEncoder(cfg).apply({"params": params}, ids, ids, num_layers=5)


def test_remat_and_bf16_compute():
  cfg = bert.BertConfig.preset("tiny", initializer_range=0.2)
  params = encoders.init_params(cfg, jax.random.key(0))
  ids = jax.random.randint(jax.random.key(2), (2, 6), 5, cfg.vocab_size)
  mask = jnp.ones_like(ids)
  # jitted: op by op, the encoder's ops would compile one by one (250 compiles)
  apply = jax.jit(lambda p, c: bert.BertEncoder(c).apply({"params": p}, ids, mask),
                  static_argnums=1)
  grad = jax.jit(jax.grad(lambda p, c: apply(p, c).sum()), static_argnums=1)
  ref, g_ref = apply(params, cfg), grad(params, cfg)
  for policy in (True, "dots"):  # recompute everything; keep the weight matmuls
    rem = apply(params, cfg.replace(remat=policy))
    np.testing.assert_allclose(rem, ref, atol=1e-6)
    g_rem = grad(params, cfg.replace(remat=policy))
    assert max_rel_diff(g_rem, g_ref)[0] < 1e-6  # of the gradients' scale (~28 here)
  with pytest.raises(ValueError, match="BertConfig.remat='some'"):
    cfg.replace(remat="some")
  low = apply(params, cfg.replace(dtype="bfloat16"))
  assert low.dtype == jnp.bfloat16
  assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(low, np.float32), ref, atol=0.1)


def test_dropout_is_active_only_when_not_deterministic():
  cfg = bert.BertConfig.preset("tiny")
  params = encoders.init_params(cfg, jax.random.key(0))
  ids = jnp.ones((2, 6), jnp.int32)
  model = bert.BertEncoder(cfg)
  a = model.apply({"params": params}, ids, ids, deterministic=False,
                  rngs={"dropout": jax.random.key(1)})
  b = model.apply({"params": params}, ids, ids, deterministic=False,
                  rngs={"dropout": jax.random.key(2)})
  c = model.apply({"params": params}, ids, ids)
  assert not np.allclose(a, b) and not np.allclose(a, c)


def test_every_parameter_has_logical_axes():
  axes = hf.flatten(encoders.param_logical_axes(bert.BertConfig.preset("tiny")))
  shapes = hf.flatten(
      jax.eval_shape(
          lambda: encoders.init_params(bert.BertConfig.preset("tiny"), jax.random.key(0))))
  assert axes.keys() == shapes.keys()
  for path, spec in axes.items():
    assert len(spec) == len(shapes[path].shape), path
  assert tuple(axes["encoder/layer_0/attention/self/query/kernel"]) == ("embed", "heads", "kv")
  assert tuple(axes["embeddings/word_embeddings/embedding"]) == ("vocab", "embed")


def test_presets():
  assert bert.BertConfig.preset("bert-base").num_hidden_layers == 12
  mini = bert.BertConfig.preset("minilm-l6-h384")
  assert (mini.num_hidden_layers, mini.hidden_size) == (6, 384)
  with pytest.raises(ValueError, match="unknown BertConfig preset"):
    bert.BertConfig.preset("bert-huge")
  with pytest.raises(ValueError, match="not divisible"):
    bert.BertConfig(hidden_size=30, num_attention_heads=4)


def _dot_flops(jaxpr) -> int:
  """2 x output size x contracted size of every dot_general in a jaxpr and its sub-jaxprs."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[i]
                                                                          for i in contract]))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += _dot_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += _dot_flops(sub)
  return total


def test_matmul_flops_count_every_matmul_of_the_program():
  cfg = bert.BertConfig.preset("tiny")
  params = encoders.init_params(cfg, jax.random.key(0))
  ids = jnp.ones((3, 10), jnp.int32)
  encode = lambda p: bert.BertEncoder(cfg).apply({"params": p}, ids, jnp.ones_like(ids))
  forward = _dot_flops(jax.make_jaxpr(encode)(params).jaxpr)
  assert forward == cfg.matmul_flops(3, 10, train=False) > 0
  backward = _dot_flops(jax.make_jaxpr(jax.grad(lambda p: encode(p)[-1].sum()))(params).jaxpr)
  assert backward == cfg.matmul_flops(3, 10) == 3 * forward
