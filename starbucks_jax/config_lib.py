"""Config plumbing: the `:variant,key=value` argument parser, loading a config file, `Block` (the
base of every typed config block), the value checks the blocks use, and the user-input error types.

Each block of a config is a frozen dataclass (config_blocks.py; the loss block in losses.py): its
fields declare the keys and their defaults once, `Block.config()` builds the ConfigDict a config
file starts from, and `Block.from_config` reads it back typed, refusing unknown, missing and
mistyped keys; the block's `check()` holds its own value checks. Checks across blocks live in the
objective's `describe`. Every error is a ConfigError whose message starts with the key. This module
imports nothing from the package, so any module may use it.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import importlib.util
import math
import numbers
import os
import typing
from typing import Any, ClassVar, Iterator

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
        raise ConfigError(
            f"config argument {name}={value!r}: expected {type(default).__name__}") from None
    else:
      out[name] = value
  return out


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def config_file(path: str) -> str:
  """A config file's path as given, or, for a relative `configs/...` not found from here, the
  repository's (a clone run from another folder) or the installed package's (wheels carry configs/
  as starbucks_jax/configs); a path found nowhere comes back as given."""
  if (os.path.exists(path) or os.path.isabs(path) or
      os.path.normpath(path).split(os.sep)[0] != "configs"):
    return path
  for root in (os.path.dirname(_PACKAGE), _PACKAGE):
    if os.path.exists(os.path.join(root, path)):
      return os.path.join(root, path)
  return path


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'configs/ft.py:demo,lr=1' -> the locked ConfigDict, as `--config=` would give it (the file
  found by config_file)."""
  given, _, arg = spec.partition(":")
  path = config_file(given)
  if not os.path.exists(path):
    where = "" if os.path.isabs(given) else f" from {os.getcwd()} (nor the package's configs/)"
    raise FileNotFoundError(f"config file {given} not found{where}")
  module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None) if arg else module.get_config()
  config.lock()
  return config


class Block:
  """Base of a config block's frozen dataclass (KEY: the block's name in a config, e.g. 'train')."""
  KEY: ClassVar[str] = ""

  @classmethod
  def config(cls, **values: Any) -> ml_collections.ConfigDict:
    """The block as a config file holds it: the declared defaults, with `values` in their place."""
    names = {f.name for f in dataclasses.fields(cls)}
    if unknown := set(values) - names:
      raise ConfigError(
          f"{cls.KEY}: {sorted(unknown)} are not keys of the {cls.KEY} block ({cls.__name__})")
    out = {}
    for f in dataclasses.fields(cls):
      default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
      value = values.get(f.name, default)
      if isinstance(value, Block):  # a nested block: as its own config() with the instance's values
        value = type(value).config(
            **{g.name: getattr(value, g.name) for g in dataclasses.fields(value)})
      out[f.name] = ml_collections.ConfigDict(dict(value)) if isinstance(value, dict) else value
    return ml_collections.ConfigDict(out)

  @classmethod
  def from_config(cls, cfg: Any, key: str | None = None):
    """The typed block from a config's block (a ConfigDict or a dict); a ConfigError names the first
    unknown, missing or mistyped key. Value checks are `check()`'s, called by the consumer."""
    key = cls.KEY if key is None else key
    if not hasattr(cfg, "items"):
      raise ConfigError(f"{key}={cfg!r}: expected a block of keys ({cls.__name__})")
    given, prefix = dict(cfg.items()), f"{key}." if key else ""
    names = [f.name for f in dataclasses.fields(cls)]
    for name in given:
      if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"did you mean {prefix}{close[0]}?" if close else f"its keys: {', '.join(names)}"
        raise ConfigError(
            f"{prefix}{name}: no such key in {f'the {key} block' if key else 'the config'}; {hint}")
    if missing := [n for n in names if n not in given]:
      raise ConfigError(
          f"{prefix}{missing[0]} is missing: build the config with "
          f"{cls.__module__}.{cls.__name__}.config() (it declares every key's default)")
    hints = typing.get_type_hints(cls)
    return cls(**{n: typed_value(f"{prefix}{n}", given[n], hints[n]) for n in names})

  def check(self) -> None:
    """The block's own value checks (ranges, choices, files); none by default."""


def typed_value(key: str, value: Any, hint: Any) -> Any:
  """`value` as the type `hint` declares (bool, int, float, str, tuple[...], dict[str, ...], Any):
  lists become tuples, ints widen to float; anything else is a ConfigError naming `key`."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint is Any:
    return value
  if isinstance(hint, type) and issubclass(hint, Block):
    return hint.from_config(value, key)
  if hint is bool:
    ok = isinstance(value, bool)
  elif hint is int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  elif hint is float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    value = float(value) if ok else value
  elif hint is str:
    ok = isinstance(value, str)
  elif origin is tuple:
    if not isinstance(value, (tuple, list)):
      raise ConfigError(f"{key}={value!r}: expected a tuple")
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(typed_value(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    if len(value) != len(args):
      raise ConfigError(f"{key}={tuple(value)!r}: expected {len(args)} values")
    return tuple(typed_value(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
  elif origin is dict:
    if not hasattr(value, "items"):
      raise ConfigError(f"{key}={value!r}: expected a block of keys")
    return {
        typed_value(key, k, args[0]): typed_value(f"{key}.{k}", v, args[1])
        for k, v in value.items()
    }
  else:
    raise TypeError(f"{key}: unsupported annotation {hint!r}")
  if not ok:
    raise ConfigError(f"{key}={value!r}: expected {hint.__name__}, got {type(value).__name__}")
  return value


def check_choice(key: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(f"{key}={value!r}; expected one of {tuple(choices)}")


def check_range(key: str, value, low=None, high=None, *, low_open: bool = False) -> None:
  """`value` a finite number in the range (NaN and infinities fail every range)."""
  lo = f"> {low}" if low_open else f">= {low}"
  rng = " and ".join(s for s in (lo if low is not None else "",
                                 f"<= {high}" if high is not None else "") if s)
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
    raise ConfigError(f"{key}={value!r}; must be a finite number" + (f" {rng}" if rng else ""))
  if (low is not None and
      (value <= low if low_open else value < low)) or (high is not None and value > high):
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
