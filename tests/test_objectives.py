"""The objective registry: main.py and compile.py reach an objective only through it. A toy objective
registered from here (the full layer's mean-pooled vectors pulled towards zero, on random token
ids) trains through main.run and compiles through compile.programs, with nothing else changed."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starbucks_jax import main, objectives, sharding, trainer
from starbucks_jax import step as step_lib
from starbucks_jax.config_blocks import FinetuneConfig
from starbucks_jax.config_lib import ConfigError, check_choice
from starbucks_jax.evaluate import results
from starbucks_jax.models.encoders import init_params, param_logical_axes
from starbucks_jax.models.pooling import pooled_layers


@dataclasses.dataclass(frozen=True)
class ToyRun:
  # the toy reads configs/ft.py's blocks (a new objective may compose its own)
  blocks: FinetuneConfig
  model: trainer.ModelSpec


def describe(config, *, backbone=None, devices=None):
  c = FinetuneConfig.from_config(config)
  check_choice("mode", c.mode, ("toy",))
  c.model.check()
  model = trainer.ModelSpec.from_config(c.model, c.schedule, backbone=backbone)
  trainer.check_train(c, sharding.check_mesh(c.mesh, devices))
  return ToyRun(c, model)


def step_for(run):
  cfg, N = run.model.config, run.model.config.num_hidden_layers

  def loss_fn(params, batch, rng):
    pooled = pooled_layers(params, cfg, batch["ids"], batch["mask"], (N,), "mean")[N]
    return jnp.mean(pooled.astype(jnp.float32)**2), {}

  return lambda tx: step_lib.make_step(loss_fn, tx, param_specs=param_logical_axes(cfg))


class RandomIds:
  """data.batch_size rows of 8 random token ids a step, a pure function of the step."""
  def __init__(self, c, vocab: int):
    self.batch, self.vocab = c.data.batch_size, vocab

  def steps_in(self, epochs: int) -> int:
    return 3 * epochs

  def batches(self, start: int, total: int):
    for step in range(start, total):
      ids = np.random.default_rng(step).integers(5, self.vocab, (self.batch, 8)).astype(np.int32)
      yield step, {"ids": ids, "mask": np.ones_like(ids)}


def run(config, workdir, defaults=None):
  spec = trainer.start(config, workdir, describe, defaults)
  c = spec.blocks
  setup = trainer.setup_model(c.model, spec.model)
  batcher = RandomIds(c, spec.model.config.vocab_size)
  steps = trainer.total_steps(c.train, batcher)
  params = trainer.train_model(config, c, workdir, setup, setup.pretrained.params["bert"],
                               step_for(spec), batcher, steps,
                               param_specs=param_logical_axes(setup.config))
  N, D = spec.model.config.num_hidden_layers, spec.model.config.hidden_size
  _, batch = next(RandomIds(c, spec.model.config.vocab_size).batches(0, 1))
  loss = float(
      jnp.mean(
          pooled_layers(params, setup.config, batch["ids"], batch["mask"], (N,), "mean")[N]**2))
  return results.report(workdir, "final",
                        [results.record("random", "train", "pooled_square", N, D, loss)])


def train_program(config, run, length):
  cfg, B = run.model.config, run.blocks.data.batch_size
  batch = {k: jax.ShapeDtypeStruct((B, length), jnp.int32) for k in ("ids", "mask")}
  params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  return trainer.TrainProgram(step_for(run), params, param_logical_axes(cfg), batch, None,
                              cfg.matmul_flops(B, length), f"{B} x {length} random ids")


TOY = trainer.Objective(name="toy", modes=("toy",), describe=describe, run=run,
                        train_program=train_program)


@pytest.fixture
def toy_registered():
  objectives.register(TOY)
  yield TOY
  objectives.unregister("toy")


def toy_config(tiny_run):
  with tiny_run.unlocked():
    tiny_run.mode = "toy"
  return tiny_run


def test_a_registered_objective_runs_through_main(toy_registered, tiny_run, tmp_path):
  config = toy_config(tiny_run)
  main.run(config, str(tmp_path / "run"))
  final = json.load(open(tmp_path / "run" / "results" / "final.json"))
  assert [(r["metric"], r["layer"], r["dim"]) for r in final] == [("pooled_square", 2, 32)]
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2]
  # step 0's batch, before and after training: it trained
  assert final[0]["value"] < 0.95 * rows[0]["loss"]
  assert json.load(open(tmp_path / "run" / "config.json"))["mode"] == "toy"


def test_a_registered_objective_compiles(toy_registered, tiny_run):
  pytest.importorskip("jax_plugins.xla_cuda13")
  from starbucks_jax import compile as C
  from starbucks_jax import topologies as T
  (r,) = C.programs(toy_config(tiny_run), T.topology("h100"), length=8)
  assert r["program"] == "train_step" and r["batch"] == "8 x 8 random ids" and r["fits"]
  assert r["flops"] >= r["model_flops"] > 0


def test_dispatch_by_mode_and_registry_rules(tiny_run):
  assert objectives.for_config(tiny_run).name == "finetune"
  with tiny_run.unlocked():
    tiny_run.mode = "pretrain"
  assert objectives.for_config(tiny_run).name == "pretrain"
  with tiny_run.unlocked():
    tiny_run.mode = "toy"
  with pytest.raises(ConfigError,
                     match=r"mode='toy'; expected one of \('train', 'eval', 'pretrain'\)"):
    main.run(tiny_run, "/nonexistent/never/written")
  with pytest.raises(ValueError, match="name or a mode is taken"):
    objectives.register(dataclasses.replace(TOY, modes=("train",)))
