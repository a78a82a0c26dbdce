"""The machines `python -m starbucks_jax.compile` compiles for, without them: TPU topologies (libtpu)
and NVIDIA GPUs (the CUDA plugin's deviceless targets, gpu_targets.py) as abstract devices, with
each chip's published figures (roofline.CHIPS) and the HBM its compiler will allocate."""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from starbucks_jax import gpu_targets, roofline
from starbucks_jax.config_lib import InputError

# Cloud names (TensorCores for v4 / v5p, chips for v5e / v6e) -> JAX topology names.
TOPOLOGIES = {
    "v4-8": "v4:2x2x1",
    "v4-32": "v4:2x2x4",
    "v5e-1": "v5e:1x1",
    "v5e-4": "v5e:2x2",
    "v5e-8": "v5e:2x4",
    "v5e-32": "v5e:4x8",
    "v5p-8": "v5p:2x2x1",
    "v5p-32": "v5p:2x2x4",
    "v6e-1": "v6e:1x1",
    "v6e-4": "v6e:2x2",
    "v6e-8": "v6e:2x4",
}


class CompileError(InputError):
  """What stops a compilation, in one line that says what to do."""


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # as given
  devices: tuple  # jax devices of the topology (abstract: nothing runs on them)
  chip: str  # device_kind
  devices_per_chip: int  # 2 where each TensorCore is its own device (v4 as JAX sees it here)

  @property
  def is_gpu(self) -> bool:
    return self.chip in gpu_targets.KINDS

  @property
  def spec(self) -> roofline.Chip:
    return roofline.CHIPS[self.chip]

  @property
  def hbm_bytes(self) -> float:  # per device, as published
    return self.spec.hbm_bytes / self.devices_per_chip

  @property
  def usable_hbm_bytes(self) -> float:  # per device, what the compiler may allocate
    return usable_hbm(self)

  @property
  def peak_flops(self) -> float:  # per device, bf16
    return self.spec.peak_flops / self.devices_per_chip

  @property
  def hbm_bandwidth(self) -> float:  # per device
    return self.spec.hbm_bandwidth / self.devices_per_chip

  @property
  def ici_bandwidth(self) -> float:  # per device, one direction, all links
    return self.spec.ici_bandwidth / self.devices_per_chip


_USABLE: dict[str, float] = {}


def usable_hbm(topo: Topology) -> float:
  """The HBM per device the TPU compiler will allocate, as it states when refusing a program larger
  than any chip (v5e: 15.75 GiB of 16): one tiny compile per chip kind, cached."""
  if topo.is_gpu:  # no compiler figure: what jax's allocator takes by default
    return topo.spec.hbm_bytes * gpu_targets.CLIENT_MEM_FRACTION
  if topo.chip not in _USABLE:
    mesh = jax.sharding.Mesh(np.array(topo.devices[:1]), ("x",))
    huge = jax.ShapeDtypeStruct(
        (2**16, 2**16, 16),
        jnp.float32,  # 256 GiB
        sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    result = compiled_or_oom(jax.jit(lambda x: x * 2 + 1).lower(huge))
    if not isinstance(result, OutOfMemory):
      raise CompileError(f"{topo.chip}: a 256 GiB program compiled; cannot read the usable HBM")
    _USABLE[topo.chip] = result.available_bytes
  return _USABLE[topo.chip]


def topology(name: str) -> Topology:
  """A named topology ('v5e-8', JAX's 'v5e:2x4', or GPUs: 'h100', 'h200x8'); errors say what to install
  or which names exist."""
  gpu = gpu_targets.parse(name)
  if gpu is not None:
    return gpu_topology(name, *gpu)
  try:
    import libtpu  # noqa: F401  (the TPU compiler; jax imports it lazily)
    from jax.experimental import topologies as jax_topologies
  except ImportError:
    raise CompileError("compiling for a TPU needs libtpu: pip install -e '.[tpu]' (or "
                       f"pip install 'jax[tpu]=={jax.__version__}')") from None
  jax_name = TOPOLOGIES.get(name, name)
  if ":" not in jax_name:
    raise CompileError(
        f"--topology={name!r} is unknown; expected one of {sorted(TOPOLOGIES)}, JAX's "
        f"'v5e:2x4' form, or GPUs: {sorted(gpu_targets.GPUS)}[xN]")
  options = {"chips_per_host_bounds": (1, 1, 1)} if jax_name.endswith(":1x1") else {}
  # libtpu locks /tmp/libtpu_lockfile for one process per host (a TPU VM's chips); compiling only, any
  # number of processes may load it
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    desc = jax_topologies.get_topology_desc(topology_name=jax_name, platform="tpu", **options)
  except Exception as e:  # noqa: BLE001 (the plugin raises its own runtime errors)
    raise CompileError(f"--topology={name!r}: {str(e).splitlines()[0]}") from None
  devices = tuple(desc.devices)
  chip = devices[0].device_kind
  if chip not in roofline.CHIPS:
    raise CompileError(f"--topology={name!r}: no HBM / peak figures for {chip!r} (roofline.CHIPS)")
  return Topology(name, devices, chip, len({getattr(d, "core_on_chip", 0) for d in devices}))


def gpu_topology(name: str, gpu: gpu_targets.Gpu, count: int) -> Topology:
  """`count` GPUs of one host, from the CUDA plugin's deviceless topology (gpu_targets)."""
  # the plugin checks for a CUDA driver unless only the CPU was asked for
  if jax.config.jax_platforms != "cpu":
    raise CompileError(
        f"--topology={name!r}: compiling for a GPU without one needs JAX_PLATFORMS=cpu set "
        "before jax starts (python -m starbucks_jax.compile sets it)")
  from jax.experimental import topologies as jax_topologies
  try:
    desc = jax_topologies.get_topology_desc(platform="cuda",
                                            target_config=gpu_targets.target_config(gpu),
                                            topology=f"1x1x{count}")
  except NotImplementedError:
    raise CompileError(
        f"--topology={name!r} needs the CUDA plugin: pip install -e '.[gpu]'") from None
  except Exception as e:  # noqa: BLE001 (the plugin raises its own runtime errors)
    raise CompileError(f"--topology={name!r}: {str(e).splitlines()[0]}") from None
  return Topology(name, tuple(desc.devices), gpu.name, 1)


@dataclasses.dataclass(frozen=True)
class OutOfMemory:
  """A program the TPU compiler refused: what it said it needs and has, per device."""
  required_bytes: float
  available_bytes: float
  message: str


def compiled_or_oom(lowered):
  """The compiled program, or OutOfMemory when the compiler finds it does not fit in HBM."""
  try:
    return lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    text = str(e)
    sizes = re.findall(r"\(([0-9.]+)([KMGT])\)", text)
    if "RESOURCE_EXHAUSTED" not in text or len(sizes) < 2:
      raise
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    required, available = (float(v) * scale[u] for v, u in sizes[:2])
    return OutOfMemory(required, available, text.splitlines()[0])
