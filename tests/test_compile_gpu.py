"""Ahead-of-time compilation of the real train step for NVIDIA GPUs on this CPU (the CUDA plugin of the
`gpu` extra, deviceless: gpu_targets): memory against what jax may allocate, FLOPs, NVLink bytes."""

import pytest
from test_compile import tiny

from starbucks_jax import config_lib, gpu_targets, roofline

C = pytest.importorskip("starbucks_jax.compile")
T = pytest.importorskip("starbucks_jax.topologies")
pytest.importorskip("jax_plugins.xla_cuda13")


def test_srl_step_compiles_for_two_h100s_with_cudnn_attention():
  """The SRL step, data-parallel on two H100s, with model.attention=cudnn (one compile for both
  checks, ~30 s of CI each): memory against jax's 75%, FLOPs and the gradient all-reduce from the
  HLO, the roofline; cuDNN's fused attention forward and backward once per layer run, its matmuls
  counted as attention FLOPs. (The standard core's XLA ops: test_compile.py's TPU compiles.)"""
  pytest.importorskip("nvidia.cudnn")  # the gpu extra's cuDNN, loaded when the step is traced
  cfg = tiny("ft.py:demo", **{"model.attention": "cudnn", "model.dtype": "bfloat16"})
  r = C.programs(cfg, T.topology("h100x2"), preset="tiny", length=16)[0]
  h100 = gpu_targets.GPUS["h100"]
  assert (r["chip"], r["devices"], r["mesh"]) == (h100.name, 2, {"data": 2, "fsdp": 1, "tensor": 1})
  assert r["usable_hbm_bytes"] == pytest.approx(0.75 * h100.memory_bytes) and r["fits"]
  assert r["temp_bytes"] > 0 and r["argument_bytes"] > 0
  # (cost analysis is absent deviceless: the HLO reading gives both)
  assert r["flops"] > r["model_flops"] > 0
  # the gradient all-reduce
  assert r["ici_bytes"] > 0 and r["breakdown"]["collectives"]["ici_bytes"] > 0
  chip = roofline.CHIPS[h100.name]
  assert r["compute_seconds"] == pytest.approx(r["flops"] / chip.peak_flops)
  assert r["hbm_seconds"] == pytest.approx(r["hbm_bytes"] / chip.hbm_bandwidth)
  # a GPU has no on-chip memory space in the HLO's layouts
  assert r["hbm_bytes"] == r["bytes_accessed"]
  calls = r["custom_calls"]
  forward, backward = calls.get("__cudnn$fmhaSoftmax", 0), calls.get("__cudnn$fmhaSoftmaxBackward",
                                                                     0)
  assert forward == backward == 4, calls  # the schedule's deepest layer is 4
  attention = r["breakdown"]["attention"]["flops"]
  # per device: 24 texts (8 of the demo's 16 triplets) x 4 heads x 16 x 16 tokens x head_dim 8; per layer
  # 2 + 5 matmuls of 2 FLOPs per product (the rest of the category: the rows' lengths)
  kernels = 4 * (2 + 5) * 2 * (24 * 4 * 16 * 16 * 8)
  assert kernels <= attention <= 1.01 * kernels
  # a step over jax's default 75% but within the GPU: the advice names the allocator's fraction first
  tips = C.advice(cfg, {**r, "total_bytes": 0.8 * h100.memory_bytes, "fits": False})
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.95" in tips[1]


def test_gpu_names():
  assert gpu_targets.parse("h200x8") == (gpu_targets.GPUS["h200"],
                                         8) and gpu_targets.parse("H100")[1] == 1
  assert gpu_targets.parse("b200x8")[0].compute_capability == (10, 0) and set(
      gpu_targets.GPUS) == {"a100", "h100", "h200", "b200"}
  assert "fpus_per_core: 64" in gpu_targets.target_config(gpu_targets.GPUS["a100"])
  assert gpu_targets.parse("h100x0") is None and gpu_targets.parse("a9000") is None
  assert "device_memory_size: 151397597184" in gpu_targets.target_config(gpu_targets.GPUS["h200"])
  with pytest.raises(T.CompileError, match="'h300x8' is unknown"):
    T.topology("h300x8")
  with pytest.raises(config_lib.ConfigError, match=r"mesh.shape: .*\(3, 1, 1\)"):
    C.programs(tiny("ft.py:demo", **{"mesh.shape": (3, 1, 1)}), T.topology("h100x2"), preset="tiny")
