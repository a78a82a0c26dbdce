"""Device mesh, logical-axis rules, and the shardings of a train state and a batch.

The mesh has three axes: `data` (data parallel), `fsdp` (data parallel with parameters and optimizer
state sharded along `embed`) and `tensor` (attention heads, MLP and vocabulary split). Parameters
carry logical axis names (models/bert.py: vocab, embed, heads, kv, mlp, norm) and activations carry
logical constraints (batch, length, ...); the rules below map them to mesh axes, so data parallel,
FSDP and tensor parallelism are a config change (`mesh.shape`, `mesh.rules`), not a code change.
The examples' batch dimension is split over (data, fsdp). With one device everything is replicated
and the step is the single-device step.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

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


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all); one -1 takes the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != 3 or shape.count(-1) > 1:
    raise ValueError(f"mesh.shape={tuple(shape)}: expected (data, fsdp, tensor) with at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh.shape={tuple(shape)} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh.shape={tuple(shape)} needs {int(np.prod(shape))} devices; there are {len(devices)}")
  return jax.make_mesh(tuple(shape), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def logical_specs(module: nn.Module, *args, **kwargs) -> Any:
  """The logical PartitionSpec of every parameter of `module` (from an abstract init: no memory)."""
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  return nn.get_partition_spec(abstract)["params"]


def param_shardings(specs: Any, mesh: jax.sharding.Mesh, rules=RULES) -> Any:
  """NamedShardings of a parameter tree from its logical specs."""
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def state_shardings(state, tx: optax.GradientTransformation, param_sharding: Any, mesh) -> Any:
  """Shardings of a TrainState: params as given, optimizer moments like their params, the rest
  (step, counters) replicated."""
  replicated = NamedSharding(mesh, P())
  opt = optax.tree_utils.tree_map_params(tx, lambda _, s: s, state.opt_state, param_sharding,
                                         transform_non_params=lambda _: replicated,
                                         is_leaf=lambda x: isinstance(x, NamedSharding))
  return type(state)(step=replicated, params=param_sharding, opt_state=opt)


def batch_shardings(batch: dict[str, np.ndarray], mesh, batch_axis: dict[str, int] | None = None) -> dict:
  """Each array split along its examples axis (0, or `batch_axis[key]`) over (data, fsdp)."""
  out = {}
  for k, v in batch.items():
    axis = (batch_axis or {}).get(k, 0)
    spec = [None] * np.ndim(v)
    spec[axis] = BATCH
    out[k] = NamedSharding(mesh, P(*spec))
  return out


def put_batch(batch: dict[str, np.ndarray], shardings: dict) -> dict[str, jax.Array]:
  """Host arrays -> global arrays. With several processes each passes its own rows (its data shard)."""
  if jax.process_count() == 1:
    return {k: jax.device_put(v, shardings[k]) for k, v in batch.items()}
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}


def shard_state(state, shardings) -> Any:
  return jax.tree_util.tree_map(lambda x, s: jax.device_put(jnp.asarray(x), s), state, shardings)
