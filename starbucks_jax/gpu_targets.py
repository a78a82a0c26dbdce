"""NVIDIA GPUs as XLA's compiler sees them, so that a step can be compiled for one on a machine without it.

XLA's CUDA plugin compiles "deviceless" for a GPU described by a target config (a
`stream_executor.GpuTargetConfigProto`: SM count, shared memory, registers, clock, memory size and
bandwidth, compute capability). The figures below are the chips' published ones, as XLA's own spec
files for these chips state them (openxla/xla, xla/backends/gpu/target_config/specs/). What the
roofline uses (peak FLOP/s, bandwidths) is in roofline.CHIPS, keyed by `name`.

The plugin (`pip install -e '.[gpu]'`) must load without a GPU: it checks the CUDA driver unless the
process asked only for the CPU platform, so compile.py sets JAX_PLATFORMS=cpu before jax starts.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Gpu:
  name: str  # the device kind XLA reports (and roofline.CHIPS's key)
  compute_capability: tuple[int, int]
  sm_count: int
  shared_memory_per_sm: int  # bytes
  shared_memory_per_block_optin: int  # bytes
  l2_bytes: int
  clock_ghz: float
  memory_bytes: int  # device memory as the driver reports it
  memory_bandwidth: float  # bytes/s
  fpus_per_sm: int = 128  # FP32 lanes per SM


GPUS = {
    "a100": Gpu("NVIDIA A100-SXM4-80GB", (8, 0), 108, 167936, 166912, 40 * 2**20, 1.41, 85100068864,
                2.03904e12, fpus_per_sm=64),
    "h100": Gpu("NVIDIA H100 80GB HBM3", (9, 0), 132, 233472, 232448, 50 * 2**20, 1.98, 84942979072,
                3.35232e12),
    "h200": Gpu("NVIDIA H200 141GB HBM3e", (9, 0), 132, 233472, 232448, 50 * 2**20, 1.98,
                151397597184, 4.8e12),
    "b200": Gpu("NVIDIA B200", (10, 0), 148, 233472, 232448, 132644864, 1.965, 191514411008,
                7.67232e12),
}
KINDS = frozenset(g.name for g in GPUS.values())  # their device kinds: a report's "chip"
# What jax lets a process allocate by default: XLA_PYTHON_CLIENT_MEM_FRACTION=0.75 of the device's memory.
CLIENT_MEM_FRACTION = 0.75


def target_config(gpu: Gpu) -> str:
  """The text-format GpuTargetConfigProto of `gpu` (the fields the compiler reads for code generation)."""
  major, minor = gpu.compute_capability
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {gpu.shared_memory_per_sm}
  threads_per_core_limit: 2048
  core_count: {gpu.sm_count}
  fpus_per_core: {gpu.fpus_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(gpu.memory_bandwidth)}
  l2_cache_size: {gpu.l2_bytes}
  clock_rate_ghz: {gpu.clock_ghz}
  device_memory_size: {gpu.memory_bytes}
  shared_memory_per_block_optin: {gpu.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 }}
device_description_str: "{gpu.name}"
"""


def parse(name: str) -> tuple[Gpu, int] | None:
  """'h100' or 'h200x8' -> (the GPU, how many); None for a name that is not a GPU's."""
  base, _, count = name.lower().partition("x")
  if base not in GPUS or (count and not count.isdigit()) or count == "0":
    return None
  return GPUS[base], int(count or 1)
