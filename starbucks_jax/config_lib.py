"""Config plumbing: the `:variant,key=value` argument parser, loading a config file, the checks
that every config section's validator uses, and the user-input error types.

Each section of a config is validated where it is consumed (loss: losses.py, schedule: schedule.py,
mesh: sharding.py, model and train: trainer.py, data: data/, eval and the objective's own keys:
finetune.py / pretrain.py); every error is a ConfigError whose message starts with the key. This
module imports nothing from the package, so any module may use it.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import math
import numbers
import os
from typing import Any, Iterator

import ml_collections


class InputError(ValueError):
  """Something the user gave is wrong (a config key, a data row, a model directory, an argument);
  the message names where. The command-line tools print it as one line (starbucks_jax.cli)."""


class ConfigError(InputError):
  """An invalid config value; the message starts with the key."""


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """'demo,task=sts' -> ConfigDict(demo=True, task='sts'), typed and checked against `defaults`.

  A bare name sets a boolean to True; name=value takes the default's type. Unknown names are errors.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    name, eq, value = item.partition("=")
    if name not in defaults:
      raise ConfigError(f"config argument {name!r} is unknown; expected one of {sorted(defaults)}")
    default = defaults[name]
    if not eq:
      if not isinstance(default, bool):
        raise ConfigError(f"config argument {name!r} needs a value ({name}=...)")
      out[name] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"config argument {name}={value!r}: expected true or false")
      out[name] = value.lower() in ("true", "1")
    elif isinstance(default, (int, float)):
      try:
        out[name] = type(default)(ast.literal_eval(value))
      except (ValueError, SyntaxError):
        raise ConfigError(f"config argument {name}={value!r}: expected {type(default).__name__}") from None
    else:
      out[name] = value
  return out


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'configs/ft.py:demo,lr=1' -> the locked ConfigDict, as `--config=` would give it."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} not found")
  module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None) if arg else module.get_config()
  config.lock()
  return config


def check_choice(key: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(f"{key}={value!r}; expected one of {tuple(choices)}")


def check_range(key: str, value, low=None, high=None, *, low_open: bool = False) -> None:
  """`value` a finite number in the range (NaN and infinities fail every range)."""
  lo = f"> {low}" if low_open else f">= {low}"
  rng = " and ".join(s for s in (lo if low is not None else "", f"<= {high}" if high is not None else "") if s)
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
    raise ConfigError(f"{key}={value!r}; must be a finite number" + (f" {rng}" if rng else ""))
  if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
    raise ConfigError(f"{key}={value!r}; must be {rng}")


def check_finite(config: ml_collections.ConfigDict, prefix: str = "") -> None:
  """Every float in the config (nested blocks, tuples) finite: a NaN or inf anywhere is an error
  naming its key, whatever checks the key's consumer makes."""
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      check_finite(value, f"{name}.")
      continue
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{name}={value!r}; must be finite (no NaN or infinity)")


@contextlib.contextmanager
def config_errors(prefix: str = "") -> Iterator[None]:
  """Turns a ValueError raised inside into a ConfigError with `prefix` (the key) in front."""
  try:
    yield
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(f"{prefix}{e}") from None


def parse_eval_sets(value: str, key: str) -> tuple[tuple[str, str, str], ...]:
  """'stsb/test=PATH,sick/test=PATH2' -> ((dataset, split, source spec), ...)."""
  out = []
  for item in filter(None, (s.strip() for s in value.split(","))):
    name, eq, spec = item.partition("=")
    dataset, slash, split = name.partition("/")
    if not eq or not slash or not dataset or not split or not spec:
      raise ConfigError(f"{key}: {item!r} is not of the form DATASET/SPLIT=SOURCE")
    out.append((dataset, split, spec))
  return tuple(out)
