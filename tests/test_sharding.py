"""The sharded train step on 8 fake CPU devices equals the single-device step (data, fsdp and data x tensor
meshes; gradient accumulation and split forwards on the data mesh), mesh shapes are checked, and the
rules split every weight matrix of BERT and ModernBERT."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from starbucks_jax import sharding
from starbucks_jax.models import encoders

from conftest import REPO, xla_flags


def test_sharded_step_equals_single_device_step():
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"),
             JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, str(REPO / "tests" / "sharded_equivalence.py")], env=env, cwd=REPO,
      capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout)
  # Data-parallel microbatches and split forwards: loss, gradient norm and every gradient (within
  # 1e-5 of the gradients' scale) equal the one-device step's; the update that follows from the
  # gradients is the meshes' check below.
  for case in (
      "accumulate (8, 1, 1)",  # 2 microbatches inside the step, data-parallel
      "forward splits (8, 1, 1)",  # 2 encoder forwards, data-parallel, vs one
      "packed (8, 1, 1)",  # each device's texts packed in its rows, vs padded on one
      # the flash kernel per device (shard_map) vs the standard core on one
      "flash (4, 1, 2)"):
    r = results.pop(case)
    assert r["loss"][0] == pytest.approx(r["loss"][1], rel=1e-5), case
    assert r["grad_norm"][0] == pytest.approx(r["grad_norm"][1], rel=1e-5), case
    assert r["max_grad_diff_rel"] < 1e-5, case
  # ZeRO-1: the same update, each moment split 8 ways
  zero = results.pop("(8, 1, 1) shard_optimizer")
  assert zero["loss"][0] == pytest.approx(zero["loss"][1],
                                          rel=1e-5) and zero["max_param_diff"] < 1e-5
  assert zero["kernel_sharding"] == "P('fsdp', 'tensor')" and zero[
      "mu_sharding"] == "P('data', None)"
  assert set(results) == {"(1, 8, 1)", "(4, 1, 2)"}
  assert results["(4, 1, 2)"]["max_grad_diff_rel"] is not None
  for mesh, r in results.items():
    sharded, single = r["loss"]
    assert sharded == pytest.approx(single, rel=1e-5), mesh
    assert r["grad_norm"][0] == pytest.approx(r["grad_norm"][1], rel=1e-5), mesh
    assert r["max_grad_diff_rel"] is None or r["max_grad_diff_rel"] < 1e-5, mesh
    assert r["max_param_diff"] < 1e-5, mesh  # one AdamW step at lr 1e-3
    assert r["kernel_sharding"] == "P('fsdp', 'tensor')" and r["mu_sharding"] == r["kernel_sharding"]


def test_make_mesh_shapes():
  mesh = sharding.make_mesh((-1, 1, 1))
  assert mesh.axis_names == sharding.AXES and mesh.devices.size == jax.device_count()
  with pytest.raises(ValueError, match="needs 2 devices"):
    sharding.make_mesh((2, 1, 1), devices=jax.devices()[:1])
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.make_mesh((-1, -1, 1))


@pytest.mark.parametrize("preset", ["tiny", "modernbert-base"])
def test_every_matrix_is_split_over_fsdp_and_tensor(preset):
  """The logical rules reach every weight matrix of each architecture (ModernBERT's fused QKV and
  GeGLU input included): on a (1, 4, 2) mesh each is split over fsdp on its model dimension and over
  tensor on heads / MLP / vocabulary, and the split divides it; biases and norms split on one axis
  at most. Shapes only: nothing is allocated or compiled."""
  T = pytest.importorskip("starbucks_jax.topologies")
  pytest.importorskip("libtpu")
  cfg = encoders.preset(preset)
  mesh = sharding.make_mesh((1, 4, 2), T.topology("v5e:2x4").devices)
  shapes = jax.eval_shape(lambda: encoders.init_params(cfg, jax.random.key(0)))
  shardings = sharding.param_shardings(encoders.param_logical_axes(cfg), mesh)
  flat, checked = jax.tree_util.tree_leaves_with_path(shapes), 0
  assert len(flat) == len(jax.tree_util.tree_leaves(shardings))
  for (path, leaf), sh in zip(flat, jax.tree_util.tree_leaves(shardings)):
    name = jax.tree_util.keystr(path)
    used = [
        a for entry in sh.spec if entry for a in ((entry,) if isinstance(entry, str) else entry)
    ]
    if "position_embeddings" in name or "token_type_embeddings" in name:
      assert used == ["fsdp"], (name, sh.spec)  # a table of positions or types: no tensor axis
    elif name.endswith(("['kernel']", "['embedding']")):  # a weight matrix, the token table
      assert sorted(used) == ["fsdp", "tensor"], (name, sh.spec)
      checked += 1
    else:  # a bias or a norm's scale
      assert len(used) <= 1, (name, sh.spec)
    assert np.prod(sh.shard_shape(leaf.shape)) * np.prod([mesh.shape[a] for a in used]) == \
        np.prod(leaf.shape), name
  # per layer: BERT's query, key, value, output, intermediate, output; ModernBERT's Wqkv, Wo, Wi,
  # Wo (MLP); and the token table
  assert checked == (6 if preset == "tiny" else 4) * cfg.num_hidden_layers + 1
