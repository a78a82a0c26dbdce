"""The training objectives by name: main.py and compile.py find a config's objective here, by its
`mode`, and use nothing else of it than the `trainer.Objective` interface.

Adding one: a module with its `describe`, `run` and `train_program` and an
`OBJECTIVE = trainer.Objective(...)`, then one line in REGISTRY (or `register` at run time: tests).
"""

from __future__ import annotations

import ml_collections

from starbucks_jax import finetune, pretrain
from starbucks_jax.config_lib import ConfigError
from starbucks_jax.trainer import Objective

REGISTRY: dict[str, Objective] = {o.name: o for o in (finetune.OBJECTIVE, pretrain.OBJECTIVE)}


def register(objective: Objective) -> None:
  """Adds `objective`; its name and modes must be new."""
  taken = {m for o in REGISTRY.values() for m in o.modes}
  if objective.name in REGISTRY or taken & set(objective.modes):
    raise ValueError(
        f"objective {objective.name!r} (modes {objective.modes}): name or a mode is taken "
        f"({sorted(REGISTRY)}, modes {sorted(taken)})")
  REGISTRY[objective.name] = objective


def unregister(name: str) -> None:
  REGISTRY.pop(name, None)


def for_config(config: ml_collections.ConfigDict) -> Objective:
  """The objective that runs `config.mode`; a ConfigError lists the modes there are."""
  mode = config.get("mode")
  for objective in REGISTRY.values():
    if mode in objective.modes:
      return objective
  modes = [m for o in REGISTRY.values() for m in o.modes]
  raise ConfigError(f"mode={mode!r}; expected one of {tuple(modes)}")
