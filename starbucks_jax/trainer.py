"""What every objective shares before and around the loop: the interface an objective implements
(`Objective`, `TrainProgram`), the checked model and train blocks, the run's start (processes, the
objective's checks, the resume check), the starting model, and `train_model`: the optimizer
(step.py) and the fit loop (loop.py) over the objective's step.

An objective (finetune.py: SRL and its baselines; pretrain.py: SMAE) supplies a step factory
`step_for(optimizer) -> step.TrainStep` and a batcher; `train_model` runs them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from starbucks_jax import checkpoint, config_blocks, loop, model_dirs, schedule, sharding
from starbucks_jax import step as step_lib
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.config_lib import ConfigError, check_choice, config_errors
from starbucks_jax.models.encoders import RUN_FIELDS, EncoderConfig


# ---------------------------------------------------------------------------------------------
# The objective interface
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """An objective's train step as compile.py compiles it, from abstract values (no weights, no data)."""
  step_for: Callable[[optax.GradientTransformation], step_lib.TrainStep]
  params: Any  # ShapeDtypeStructs of the trained parameters
  param_specs: Any  # their logical axes
  batch: dict[str, jax.ShapeDtypeStruct]
  batch_axes: dict[str, int] | None  # each batch array's examples axis (None: axis 0 for all)
  model_flops: int  # model matmul FLOPs of one step over the global batch
  shape: str  # the batch in words, for the report


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training objective as main.py and compile.py see it (objectives.py registers each by name).
  `describe(config, *, backbone=None, devices=None)` checks the whole config before any compute and
  returns the run's description (a frozen dataclass with `.model`, a ModelSpec); `run(config,
  workdir, defaults)` trains and evaluates, returning the result records; `train_program(config,
  description, length)` is the step at `length` tokens per text, for compiling."""
  name: str
  modes: tuple[str, ...]  # the config `mode` values it runs
  describe: Callable[..., Any]
  run: Callable[..., list[dict]]
  train_program: Callable[..., TrainProgram]


# ---------------------------------------------------------------------------------------------
# The model and train blocks
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The checked `model` block and schedule: what a run trains, read from config.json alone."""
  dir: str  # the directory holding the backbone's config.json
  config: EncoderConfig  # the backbone as the run computes it (model.dtype, param_dtype, remat)
  pairs: tuple[schedule.Pair, ...]  # schedule.pairs, checked against the backbone

  @classmethod
  def from_config(cls, model: config_blocks.Model, schedule_block: config_blocks.Schedule,
                  backbone: EncoderConfig | None = None) -> "ModelSpec":
    """The checked model block (model.check() has run) and schedule.pairs; `backbone` replaces
    reading model.init_from's config.json (dir is then '')."""
    model_dir = ""
    if backbone is None:
      try:
        model_dir = checkpoint.model_config_dir(model.init_from)
        backbone = model_dirs.config_from_hf(model_dir)
      except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"model.init_from={model.init_from!r}: {e}") from None
    for key in RUN_FIELDS:
      with config_errors(f"model.{key}: "):
        backbone = backbone.replace(**{key: getattr(model, key)})
    if model.max_length > backbone.max_tokens:
      offset = backbone.position_offset
      raise ConfigError(
          f"model.max_length={model.max_length} exceeds the backbone's {backbone.max_tokens} "
          f"tokens (max_position_embeddings={backbone.max_position_embeddings}"
          f"{f' less its {offset} reserved rows' if offset else ''})")
    with config_errors():
      pairs = schedule.validate(schedule_block.pairs, backbone.num_hidden_layers,
                                backbone.hidden_size, key="schedule.pairs")
    return cls(dir=model_dir, config=backbone, pairs=pairs)


def check_train(c, mesh: jax.sharding.Mesh) -> None:
  """A training run's typed config (config_blocks.FinetuneConfig or PretrainConfig): resume, the
  train and log blocks, the batch's split into microbatches over the mesh's data-parallel devices,
  and an attention kernel the mesh's devices have."""
  check_choice("resume", c.resume, ("check", "force"))
  c.train.check()
  c.log.check()
  k, batch = c.train.microbatches, c.data.batch_size
  if batch % k:
    raise ConfigError(f"train.microbatches={k} does not divide data.batch_size={batch}")
  data = sharding.data_parallel_size(mesh)
  if (batch // k) % data:
    raise ConfigError(f"data.batch_size={batch}" + (f" / train.microbatches={k}" if k > 1 else "") +
                      f" does not split over the mesh's {data} data-parallel devices "
                      f"(mesh.shape={tuple(c.mesh.shape)})")
  # cuDNN's kernel elsewhere would fail to lower at the first step
  platform = mesh.devices.flat[0].platform
  if c.model.attention == "cudnn" and platform != "gpu":
    raise ConfigError(
        f"model.attention='cudnn' is cuDNN's kernel for NVIDIA GPUs; this run's devices are "
        f"{platform}: use 'dot_product' (XLA's fused core) or 'standard'")


Describe = Callable[[ml_collections.ConfigDict], Any]  # an objective's describe(config)


def releases_workdir(run):
  """An objective's `run(config, workdir, ...)` that lets go of the workdir lock `start` took when
  it returns or fails (a signal, an error), so the next run there, in any process, may start."""
  @functools.wraps(run)
  def wrapped(config, workdir, *args, **kw):
    try:
      return run(config, workdir, *args, **kw)
    finally:
      workdir_lib.unlock(workdir)

  return wrapped


def start(config: ml_collections.ConfigDict, workdir: str, describe: Describe,
          defaults: ml_collections.ConfigDict | None = None):
  """A run's first steps: jax.distributed (when several processes), `describe(config)` (the
  objective's checks, before any compute; its result is the run's description), and, in a workdir
  that has a run, the check that this config continues it (`defaults`: check_resume). Writes nothing
  (fit writes the config once the model, the data and any checkpoint have loaded)."""
  mesh = config_blocks.Mesh.from_config(config.mesh)
  mesh.check()
  sharding.start_processes(mesh)
  run = describe(config)
  if jax.process_index() == 0:  # one writer per workdir (released by releases_workdir)
    workdir_lib.lock(workdir)
  workdir_lib.check_resume(workdir, config, defaults)
  return run


# ---------------------------------------------------------------------------------------------
# Model set-up
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Setup:
  pretrained: model_dirs.Pretrained  # the starting checkpoint, with this run's sentence settings
  config: EncoderConfig  # as the run computes it (ModelSpec.config)
  max_length: int  # tokens per text


def setup_model(
    model: config_blocks.Model, spec: ModelSpec, *, default_length: int | None = None,
    pooling: str | None = None, prompts: tuple[str, str] = (model_dirs.STORED, model_dirs.STORED)
) -> Setup:
  """Loads model.init_from with this run's sentence settings. Max length: model.max_length, else
  `default_length`, else the checkpoint's max_seq_length, capped at max_position_embeddings.
  `pooling` replaces the checkpoint's (None keeps it); `prompts`: (query, passage), as
  model_dirs.with_prompts takes them."""
  pre = checkpoint.load_model(model.init_from)
  limit = spec.config.max_tokens
  max_length = min(model.max_length or default_length or pre.sentence.max_seq_length, limit)
  sentence = dataclasses.replace(model_dirs.with_prompts(pre.sentence, *prompts),
                                 max_seq_length=max_length, layer=None, dim=None,
                                 **({"pooling": pooling} if pooling else {}))
  return Setup(pretrained=dataclasses.replace(pre, sentence=sentence), config=spec.config,
               max_length=max_length)


def total_steps(train_cfg: config_blocks.Train, batcher) -> int:
  """train.max_steps, else train.epochs passes over the batcher's data."""
  return train_cfg.max_steps or batcher.steps_in(train_cfg.epochs)


def train_model(config: ml_collections.ConfigDict, c, workdir: str, setup: Setup, params,
                step_for: Callable[[optax.GradientTransformation], step_lib.TrainStep], batcher,
                steps: int, *, param_specs, batch_axes: dict[str, int] | None = None):
  """Writes the run's weightless model description (WORKDIR/model), builds the optimizer for
  `steps` from the typed config `c`'s train block, fits `step_for(optimizer)` on the batcher's
  batches from `params` (cast to the storage dtype) and returns the trained parameters as float32
  numpy on every process. `config` is the config as given (written to the workdir)."""
  if sharding.is_primary():
    checkpoint.write_model_dir(workdir, setup.pretrained)
  lr = step_lib.learning_rate_schedule(c.train, steps)
  tx = step_lib.make_optimizer(c.train, steps, lr)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, setup.config.storage_dtype), params)
  state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  state = loop.fit(config, c, workdir, state,
                   step_for(tx).update, batcher, steps, lr, tx=tx, param_specs=param_specs,
                   batch_axes=batch_axes)
  return jax.tree_util.tree_map(lambda x: x.astype(np.float32), sharding.to_host(state.params))
