"""Device mesh, logical-axis rules, and the shardings of a train state and a batch.

The mesh has three axes: `data` (data parallel), `fsdp` (data parallel with parameters and optimizer
state sharded along `embed`) and `tensor` (attention heads, MLP and vocabulary split). Parameters
carry logical axis names (models/bert.py: vocab, embed, heads, kv, mlp, norm) and activations carry
logical constraints (batch, length, ...); the rules below map them to mesh axes, so data parallel,
FSDP and tensor parallelism are a config change (`mesh.shape`, `mesh.rules`), not a code change.
The examples' batch dimension is split over (data, fsdp). With one device everything is replicated
and the step is the single-device step.

Several processes (hosts): `start_processes` starts jax.distributed from the config's mesh block
(coordinator, num_processes, process_id; 'auto' on Cloud TPU / SLURM / Open MPI) before any JAX
computation. Every process then builds the same host batch (a pure function of the step, so the run
equals a one-process run on the same global batch) and moves only its own rows to its devices
(`put_batch`); the primary process writes metrics, exports and results, and every process takes
part in orbax checkpointing.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from starbucks_jax.config_lib import config_errors

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

# Logical axis -> mesh axes. Axes of size 1 make a rule a no-op, so one table serves DP, FSDP, TP.
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("norm", None),
)


def start_processes(mesh_cfg) -> None:
  """Starts jax.distributed when the checked mesh block (config_blocks.Mesh) asks for several
  processes (a no-op for one). The first thing a run does: nothing in JAX may run before it."""
  if not mesh_cfg.coordinator or jax.distributed.is_initialized():
    return
  if mesh_cfg.coordinator == "auto":
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(mesh_cfg.coordinator, mesh_cfg.num_processes, mesh_cfg.process_id)


def check_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  """The mesh block's mesh over `devices` (default: all), or a ConfigError naming mesh.shape."""
  with config_errors("mesh.shape: "):
    return make_mesh(tuple(mesh_cfg.shape), devices)


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """The devices a batch's examples are split over (data x fsdp)."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def is_primary() -> bool:
  """The process that writes files (metrics, config, exports, results)."""
  return jax.process_index() == 0


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all); one -1 takes the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != 3 or shape.count(-1) > 1:
    raise ValueError(
        f"mesh.shape={tuple(shape)}: expected (data, fsdp, tensor) with at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh.shape={tuple(shape)} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(
        f"mesh.shape={tuple(shape)} needs {int(np.prod(shape))} devices; there are {len(devices)}")
  types = (jax.sharding.AxisType.Auto,) * 3
  try:
    return jax.make_mesh(tuple(shape), AXES, axis_types=types, devices=devices)
  except AssertionError as e:
    if "megacore" not in str(e):
      raise
    # compile-only v4 topologies list each TensorCore as a device, which mesh_utils refuses: device order
    return jax.sharding.Mesh(np.array(devices).reshape(shape), AXES, axis_types=types)


def logical_specs(module: nn.Module, *args, **kwargs) -> Any:
  """The logical PartitionSpec of every parameter of `module` (from an abstract init: no memory);
  `args` may be arrays or jax.ShapeDtypeStruct."""
  abstract = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, **kwargs), *args)
  return nn.get_partition_spec(abstract)["params"]


def rules_from_config(rules) -> tuple[tuple[str, Any], ...]:
  """mesh.rules as a tuple of (logical axis, mesh axes) with tuples (a config's JSON form has lists)."""
  return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)


def param_shardings(specs: Any, mesh: jax.sharding.Mesh, rules=RULES) -> Any:
  """NamedShardings of a parameter tree from its logical specs."""
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def optimizer_sharding(param: NamedSharding, shape: Sequence[int], mesh) -> NamedSharding:
  """ZeRO-1: a moment is sharded as its parameter and, along the first dimension its parameter leaves
  whole and the data-parallel devices divide, over those devices (data, and fsdp where the parameter
  does not use it), so each device keeps and updates 1/n of it. Unchanged where no dimension divides."""
  def real(entry):  # the entry's mesh axes of size > 1 (an axis of size 1 shards nothing)
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return tuple(a for a in axes if mesh.shape[a] > 1)

  spec = [real(e) for e in param.spec] + [()] * (len(shape) - len(param.spec))
  free = tuple(a for a in BATCH if mesh.shape[a] > 1 and all(a not in e for e in spec))
  n = int(np.prod([mesh.shape[a] for a in free]))
  for i, (size, entry) in enumerate(zip(shape, spec)):
    if n > 1 and not entry and size % n == 0:
      spec[i] = free
      return NamedSharding(mesh, P(*[None if not e else e[0] if len(e) == 1 else e for e in spec]))
  return param


def state_shardings(state, tx: optax.GradientTransformation, param_sharding: Any, mesh,
                    shard_optimizer: bool = False) -> Any:
  """Shardings of a TrainState: params as given, optimizer moments like their params (or, with
  `shard_optimizer`, split further over the data-parallel devices: `optimizer_sharding`), the rest
  (step, counters) replicated."""
  replicated = NamedSharding(mesh, P())
  moments = param_sharding
  if shard_optimizer:
    moments = jax.tree_util.tree_map(lambda s, p: optimizer_sharding(s, p.shape, mesh),
                                     param_sharding, state.params,
                                     is_leaf=lambda x: isinstance(x, NamedSharding))
  opt = optax.tree_utils.tree_map_params(tx, lambda _, s: s, state.opt_state, moments,
                                         transform_non_params=lambda _: replicated,
                                         is_leaf=lambda x: isinstance(x, NamedSharding))
  return type(state)(step=replicated, params=param_sharding, opt_state=opt)


def batch_shardings(batch: dict[str, np.ndarray], mesh,
                    batch_axis: dict[str, int] | None = None) -> dict:
  """Each array split along its examples axis (0, or `batch_axis[key]`) over (data, fsdp)."""
  out = {}
  for k, v in batch.items():
    axis = (batch_axis or {}).get(k, 0)
    spec = [None] * len(np.shape(v))
    spec[axis] = BATCH
    out[k] = NamedSharding(mesh, P(*spec))
  return out


def put_batch(batch: dict[str, np.ndarray], shardings: dict) -> dict[str, jax.Array]:
  """The host batch (the same on every process) -> global arrays; each process transfers only the
  rows its own devices hold."""
  if jax.process_count() == 1:
    return jax.device_put(batch, {k: shardings[k] for k in batch})  # one call for every array
  return {
      k: jax.make_array_from_callback(np.shape(v), shardings[k], lambda index, v=v: v[index])
      for k, v in batch.items()
  }


def to_host(tree) -> Any:
  """Global arrays -> numpy on every process (gathers what other processes hold)."""
  if jax.process_count() == 1:
    return jax.tree_util.tree_map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def shard_state(state, shardings) -> Any:
  return jax.tree_util.tree_map(lambda x, s: jax.device_put(jnp.asarray(x), s), state, shardings)
