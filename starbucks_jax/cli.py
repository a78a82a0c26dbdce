"""How the command-line tools report a user's mistake: `error: <where>: <what>` on one line and exit
status 2, no traceback (STARBUCKS_DEBUG=1 shows it). Library calls keep raising the typed errors."""

from __future__ import annotations

import difflib
import os
import resource
import sys
from typing import Callable, Iterable

import ml_collections

from starbucks_jax.config_lib import ConfigError, InputError, config_file, load_config

EXIT_USAGE = 2
DEBUG_ENV = "STARBUCKS_DEBUG"


def run(main: Callable[[], object]) -> None:
  """Calls `main`; an InputError (config, data, model, argument), a file-system error naming its path
  (missing, exists, permission) or a stopped training run becomes one line on stderr and exit 2; a
  run stopped by a signal (preemption.Stopped), its line and exit 128 + the signal."""
  from starbucks_jax.preemption import Stopped
  try:
    main()
  except Stopped as e:  # a signal: the step was saved
    sys.stderr.write(f"{e}\n")
    sys.exit(e.exit_status)
  except (InputError, OSError, FloatingPointError) as e:
    if os.environ.get(DEBUG_ENV):
      raise
    sys.stderr.write(f"error: {one_line(e)}\n")
    sys.exit(EXIT_USAGE)


def raise_stack_limit() -> None:
  """Re-executes this command with the stack limit raised to the hard limit (as `ulimit -s
  unlimited`) when it is lower: XLA's TPU compiler overflows 8 MiB thread stacks on some steps (the
  retrieval gradient cache: SIGSEGV), and threads take their stack size from the limit at start-up.
  Call it as a command's first statement, before jax loads."""
  soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
  if soft != hard:  # the new process starts with soft == hard: it returns here
    resource.setrlimit(resource.RLIMIT_STACK, (hard, hard))
    os.execv(sys.executable, sys.orig_argv)


def one_line(e: BaseException) -> str:
  text = str(e)
  if isinstance(e, OSError) and e.filename and e.strerror:  # open()'s own errors: path, then why
    text = f"{e.filename}: {e.strerror}"
  return " ".join(text.split()) or type(e).__name__


def check_output_file(path: str, flag: str, *, make_folder: bool = False) -> None:
  """A command's output file can be written at `path`, checked before any compute: not a directory,
  its folder there (or, with `make_folder`, creatable) and writable."""
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise IsADirectoryError(f"{flag} {path}: is a directory; name a file")
  existing = folder
  while make_folder and not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if os.path.exists(existing) and not os.path.isdir(existing):
    raise NotADirectoryError(f"{flag} {path}: {existing} is a file, not a folder")
  if not os.path.isdir(existing):
    raise FileNotFoundError(f"{flag} {path}: the folder {existing} does not exist")
  if not os.access(existing, os.W_OK):
    raise PermissionError(f"{flag} {path}: the folder {existing} is not writable")


def run_config_app(main: Callable) -> None:
  """absl's app.run(main) for a command with a `--config=` flag, its file the one config_file
  finds (a clone run from elsewhere, an installed wheel), once check_config_args passes."""
  for i, arg in enumerate(sys.argv):
    if i and arg.startswith("--config="):
      path, colon, rest = arg[len("--config="):].partition(":")
      sys.argv[i] = f"--config={config_file(path)}{colon}{rest}"
  check_config_args(sys.argv[1:])
  from absl import app
  app.run(main)


def check_config_args(argv: Iterable[str]) -> None:
  """The `--config=FILE[:ARGS]` of a command line loads, and every `--config.KEY=` names one of its
  keys, once; otherwise a ConfigError names the flag (and the closest key): absl would print a traceback."""
  argv = list(argv)
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return
  try:
    config = load_config(spec)
  except FileNotFoundError as e:
    raise ConfigError(f"--config={spec}: {e}") from None
  except ConfigError as e:
    raise ConfigError(f"--config={spec}: {e}") from None
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  # absl would keep one silently
  if repeated := sorted({k for k in overrides if overrides.count(k) > 1}):
    raise ConfigError(
        f"--config.{repeated[0]} is given {overrides.count(repeated[0])} times; give it once")
  known = sorted(keys(config))
  for key in overrides:
    if key == "method" and "method" not in known:  # presets are the config file's arguments
      file, _, arg = spec.partition(":")
      raise ConfigError(
          f"--config.method: a method goes after the config file, as its argument: "
          f"--config={file}:{arg.split(',')[0] or 'VARIANT'},method=NAME (NAME: {file}'s "
          "docstring lists them; --config.schedule.method sets the schedule's alone)")
    if key not in known and not any(k.startswith(key + ".") for k in known):
      close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
      hint = f"; did you mean --config.{close[0]}?" if close else ""
      raise ConfigError(f"--config.{key}: no such key in {spec.split(':')[0]}{hint}")
  for arg in argv:  # a value of the wrong type: absl would print a FATAL line and its help hint
    key, eq, value = arg[len("--config."):].partition("=")
    if arg.startswith("--config.") and eq and key in known:
      _check_type(key, value, _get(config, key))


def _get(config: ml_collections.ConfigDict, key: str):
  for name in key.split("."):
    config = config[name]
  return config


def _check_type(key: str, value: str, default) -> None:
  """A ConfigError naming `--config.KEY=VALUE` when VALUE does not read as the default's type
  (bool, int, float; other types are absl's to parse)."""
  kind = type(default)
  if kind is bool:
    ok = value.lower() in ("true", "false", "1", "0")
  elif kind in (int, float):
    try:
      kind(value)
      ok = True
    except ValueError:
      ok = False
  else:
    return
  if not ok:
    raise ConfigError(f"--config.{key}={value}: expected {kind.__name__} (the config's "
                      f"{key} is {default!r})")


def keys(config: ml_collections.ConfigDict, prefix: str = "") -> Iterable[str]:
  """Dotted names of every key in a config (blocks and leaves)."""
  for name, value in config.items():
    yield prefix + name
    if isinstance(value, ml_collections.ConfigDict):
      yield from keys(value, f"{prefix}{name}.")
