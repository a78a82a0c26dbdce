"""Ahead-of-time compilation of the real train steps for a TPU topology on this CPU (libtpu needed;
skipped without it): memory analysis present, FSDP lowers per-device argument bytes, the compiled
FLOPs are the model's matmul count, errors. (TPU compiles are most of this file's CI time: few, small.)"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from starbucks_jax import config_lib, finetune, pretrain, sharding
from starbucks_jax.config_blocks import FinetuneConfig
from starbucks_jax.models import encoders

from conftest import REPO

C = pytest.importorskip("starbucks_jax.compile")
T = pytest.importorskip("starbucks_jax.topologies")
pytest.importorskip("libtpu")


@pytest.fixture(scope="module")
def topology():
  return T.topology("v5e:2x2")


def tiny(path, **overrides):
  cfg = config_lib.load_config(str(REPO / "configs" / path))
  with cfg.unlocked():
    cfg.model.init_from = "nowhere/tiny"  # not a local model: shapes from --preset
    cfg.schedule.pairs = ((1, 8), (2, 16), (4, 32))
    for key, value in overrides.items():
      section, name = key.split(".")
      cfg[section][name] = value
  return cfg


def bert_json(path, layers: int, hidden: int) -> str:
  """A BERT as config.json only (shapes, no weights): what the compiler needs."""
  json.dump(
      {
          "model_type": "bert", "vocab_size": 128, "hidden_size": hidden,
          "num_hidden_layers": layers, "num_attention_heads": 8, "intermediate_size": 4 * hidden,
          "max_position_embeddings": 64, "type_vocab_size": 2
      }, open(path / "config.json", "w"))
  return str(path)


def test_srl_step_compiles_fsdp(topology, tmp_path):
  """The SRL step (forward, backward, loss, AdamW) of a 2-layer, 256-wide BERT, whose matmuls
  dominate its FLOPs, FSDP-sharded on 4 chips: XLA's FLOPs exceed BertConfig.matmul_flops only by
  the elementwise work (x1.10 at this width, x1.06 at 512, x1.0001 for bert-base: experiments/README;
  a wider model compiles longer), and each chip's arguments are well under the one whole copy of the
  parameters and Adam moments that data parallelism keeps on every chip (the SMAE test below
  compiles the data-parallel mesh; one TPU compile here is ~35 s of CI)."""
  cfg = tiny("ft.py:demo",
             **{"model.init_from": bert_json(tmp_path, 2, 256), "data.batch_size": 16})
  with cfg.unlocked():
    cfg.schedule.pairs = ((1, 128), (2, 256))
    cfg.mesh.shape = (1, -1, 1)
  r = C.programs(cfg, topology, length=16)[0]
  assert r["program"] == "train_step" and r["chip"] == "TPU v5 lite" and r["devices"] == 4
  assert r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert r["temp_bytes"] > 0 and r["argument_bytes"] > 0 and r[
      "fits"] and 0 < r["mfu_bound"] <= r["hfu_bound"] <= 1
  assert 1.0 < r["xla_flops"] / r["model_flops"] < 1.15, (r["xla_flops"], r["model_flops"])
  # the HLO reading agrees with XLA's own totals (no loop here), and FSDP's collectives are counted
  assert 0.9 < r["hlo_reading"]["flops_vs_xla"] < 1.1 and 0.75 < r["hlo_reading"][
      "bytes_vs_xla"] < 1.25
  assert r["flops"] == r["xla_flops"] and r["ici_bytes"] > 0 and r["breakdown"]["collectives"][
      "ici_bytes"] > 0
  assert r["usable_hbm_bytes"] == 15.75 * 2**30  # the compiler's own figure for a v5e chip
  run = finetune.describe(cfg, backbone=C.backbone_of(cfg, None), devices=topology.devices)
  n_params = sum(x.size for x in jax.tree.leaves(encoders.abstract_params(run.model.config)))
  replicated_state = 3 * 4 * n_params  # float32 parameters and Adam's two moments, whole
  # measured: 6.6 MB per chip against 19.6 MB for the data-parallel compile (which adds the batch)
  assert r["argument_bytes"] < 0.5 * replicated_state, (r["argument_bytes"], replicated_state)


def test_smae_step_compiles_with_flash_attention(topology, tmp_path, monkeypatch):
  """The SMAE step (encoder and MAE decoder) with model.attention='flash': the Pallas TPU kernel is in
  the compiled program (its numerics: test_attention.py), and with mesh.shard_optimizer the compiled
  program takes each Adam moment split over the data-parallel devices, the parameters whole (ZeRO-1;
  its update: test_sharding.py; bert-base on v5e-8: 1.22 -> 0.51 GiB of arguments per chip)."""
  cfg = tiny(
      "pt.py:tiny", **{
          "model.init_from": bert_json(tmp_path, 2, 32), "model.attention": "flash",
          "mesh.shard_optimizer": True
      })
  with cfg.unlocked():
    cfg.schedule.pairs = ((1, 16), (2, 32))
  compiled_programs = []
  report = C.report
  monkeypatch.setattr(
      C, "report", lambda program, compiled, *a: compiled_programs.append(compiled) or report(
          program, compiled, *a))
  r = C.programs(cfg, topology, length=16)[0]
  assert r["temp_bytes"] > 0 and r["fits"] and r["xla_flops"] > r["model_flops"] > 0
  # forward + backward, 3 layers
  compiled = compiled_programs[0]
  assert compiled.as_text().count('custom_call_target="tpu_custom_call"') >= 2 * 3
  state = compiled.input_shardings[0][0]  # (state, batch, key): the TrainState's shardings
  word = lambda tree: tree["bert"]["embeddings"]["word_embeddings"]["embedding"]
  shape = (128, 32)
  assert word(state.params).shard_shape(shape) == shape
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  moments, = (s for s in jax.tree.leaves(state.opt_state, is_leaf=is_adam) if is_adam(s))
  assert word(moments.mu).shard_shape(shape) == word(moments.nu).shard_shape(shape) == (32, 32)


def test_bad_topology_and_mesh_fail_in_one_line(topology):
  with pytest.raises(T.CompileError, match="--topology='v9x-8' is unknown"):
    T.topology("v9x-8")
  with pytest.raises(T.CompileError, match="--topology='v5e:3x3'"):
    T.topology("v5e:3x3")
  with pytest.raises(config_lib.ConfigError, match=r"mesh.shape: .*\(3, 1, 1\)"):
    C.programs(tiny("ft.py:demo", **{"mesh.shape": (3, 1, 1)}), topology, preset="tiny")
  with pytest.raises(T.CompileError, match="pass --preset"):
    C.programs(tiny("ft.py:demo"), topology)
  # v4's compile-only devices are TensorCores (two per chip, 16 of its 32 GiB each), which
  # jax.make_mesh refuses; the mesh is still built, in device order
  v4 = T.topology("v4-8")
  assert v4.devices_per_chip == 2 and v4.hbm_bytes == 16 * 2**30
  assert sharding.make_mesh((-1, 1, 1), v4.devices).devices.size == 8


def test_abstract_batches_match_the_batchers(tiny_hf_dir):
  """The shapes compiled for are the batchers' (keys, dtypes, ranks; lengths as padded)."""
  import numpy as np

  from starbucks_jax import checkpoint
  from starbucks_jax.data.corpus import TextBatcher
  from starbucks_jax.data.masking import Masker
  pre = checkpoint.load_model(tiny_hf_dir)
  ft = tiny("ft.py:demo")
  with ft.unlocked():
    ft.model.init_from = tiny_hf_dir
  typed = lambda: FinetuneConfig.from_config(ft)
  batcher, _ = finetune.make_batcher(typed(), pre.tokenizer, 32)
  _, batch = next(batcher.batches(0, 1))
  length = batch["ids"].shape[-1]
  want = finetune.abstract_batch(typed(), length)
  assert {k: (v.shape, np.dtype(v.dtype))
          for k, v in batch.items()} == {k: (v.shape, np.dtype(v.dtype)) for k, v in want.items()}
  with ft.unlocked():  # a frozen teacher's vectors ride with the batch
    ft.loss.teacher = "frozen"
  R, H = len(batcher.examples.texts), pre.config.hidden_size
  batcher.teacher = np.zeros((len(batcher.examples), R, H), np.float32)
  _, batch = next(batcher.batches(0, 1))
  want = finetune.abstract_batch(typed(), batch["ids"].shape[-1], hidden=H)
  assert {k: (v.shape, np.dtype(v.dtype))
          for k, v in batch.items()} == {k: (v.shape, np.dtype(v.dtype)) for k, v in want.items()}
  with ft.unlocked():
    ft.data.packing = True
  batcher, _ = finetune.make_batcher(typed(), pre.tokenizer, 32, shards=2)
  batcher.teacher = np.zeros((len(batcher.examples), R, H), np.float32)
  _, batch = next(batcher.batches(0, 1))
  want = finetune.abstract_batch(typed(), batcher.pack_length, shards=2, rows=batch["ids"].shape[0],
                                 hidden=H)
  assert {k: (v.shape, np.dtype(v.dtype))
          for k, v in batch.items()} == {k: (v.shape, np.dtype(v.dtype)) for k, v in want.items()}
  B = ft.data.batch_size  # triplets: without `rows`, one row a text (the memory bound)
  assert finetune.abstract_batch(typed(), 24, shards=2, hidden=H)["ids"].shape == (3 * B, 24)
  pt = tiny("pt.py:tiny")
  with pt.unlocked():
    pt.model.init_from = tiny_hf_dir
  run = pretrain.describe(pt)
  texts = TextBatcher(pt.data.train, pre.tokenizer, Masker(pre.tokenizer, run.masking),
                      batch_size=pt.data.batch_size, max_length=32, seed=0,
                      column=pt.data.text_column)
  _, batch = next(texts.batches(0, 1))
  want = pretrain.abstract_batch(run, batch["ids"].shape[1])
  assert {k: (v.shape, np.dtype(v.dtype))
          for k, v in batch.items()} == {k: (v.shape, np.dtype(v.dtype)) for k, v in want.items()}


def test_a_refused_program_is_reported_with_what_it_needs(topology):
  """The TPU compiler refuses a program larger than HBM; the report says by how much and what to try."""
  class Refused:
    def compile(self):
      raise jax.errors.JaxRuntimeError(
          "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required "
          "for HLO temporaries (77.83G) exceeds available HBM (15.75G).")

  oom = T.compiled_or_oom(Refused())
  assert oom.required_bytes == pytest.approx(
      77.83 * 2**30) and oom.available_bytes == pytest.approx(15.75 * 2**30)
  mesh = jax.sharding.Mesh(
      np.array(topology.devices[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  r = C.report("train_step", oom, mesh, topology, 10**12, "batch")
  assert not r["fits"] and "needs 77.83 of 15.75" in C.table([r])
  tips = C.advice(tiny("ft.py:demo"), r)
  assert "62.08 GiB over" in tips[0] and any("remat=full" in t for t in tips)
  assert not any("mesh.shape" in t for t in tips)  # FSDP does not help one device

  class Broken:
    def compile(self):
      raise jax.errors.JaxRuntimeError("INTERNAL: something else")

  with pytest.raises(jax.errors.JaxRuntimeError, match="something else"):
    T.compiled_or_oom(Broken())


def test_a_loop_body_counts_once_per_trip(topology):
  """XLA's cost analysis counts a while loop's body once; the report counts it once per trip: a scan
  of k matmuls over slices of its input does k times the work, so its FLOPs and bytes grow with k
  while XLA's own FLOPs stay flat."""
  mesh = jax.sharding.Mesh(
      np.array(topology.devices[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def report(k):
    def f(x, w):
      return jax.lax.scan(lambda c, xi: (c + jnp.tanh(xi @ w).sum(0), None), jnp.zeros((1024,)),
                          x)[0]

    shapes = (jax.ShapeDtypeStruct((k, 1024, 1024), jnp.float32, sharding=whole),
              jax.ShapeDtypeStruct((1024, 1024), jnp.float32, sharding=whole))
    return C.report("scan",
                    jax.jit(f).lower(*shapes).compile(), mesh, topology, 2 * k * 1024**3, "x")

  two, eight = report(2), report(8)
  assert set(eight["hlo_reading"]["loops"]) == {"8"} and not eight["hlo_reading"]["unread_loops"]
  assert eight["xla_flops"] == pytest.approx(two["xla_flops"], rel=0.01)  # XLA: the body once
  assert eight["flops"] / two["flops"] == pytest.approx(4, rel=0.02)  # here: once per trip
  assert eight["flops"] == pytest.approx(eight["model_flops"], rel=0.02)
  assert eight["bytes_accessed"] / two["bytes_accessed"] > 3.3 > eight["xla_bytes_accessed"] / two[
      "xla_bytes_accessed"]
  assert eight["hbm_bytes"] > 2.5 * two["hbm_bytes"]
