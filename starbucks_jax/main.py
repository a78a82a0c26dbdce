"""Entry point: `python -m starbucks_jax.main --config=configs/ft.py:demo --workdir=DIR`.

The config's `mode` picks the objective (objectives.py): 'pretrain' (configs/pt.py) runs SMAE
pre-training; 'train' and 'eval' (configs/ft.py, configs/retrieval.py) fine-tune and evaluate. A bad
config, data row or model prints one line, `error: ...`, and exits 2 (starbucks_jax.cli)."""

from starbucks_jax import cli

if __name__ == "__main__":
  cli.raise_stack_limit()  # before jax loads

import logging
import os

from absl import flags
from ml_collections import config_flags

from starbucks_jax import config_lib, objectives, sharding, timing

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/ft.py:demo",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
flags.DEFINE_string(
    "compilation_cache", os.path.join("~", ".cache", "starbucks_jax", "xla"),
    "Persistent XLA compilation cache: a rerun, a resume or a sweep loads the compiled "
    "steps instead of compiling them again ('' = off; JAX_COMPILATION_CACHE_DIR wins).")
flags.mark_flags_as_required(["config", "workdir"])


def use_compilation_cache(path: str) -> None:
  """Points JAX's persistent cache at `path` (keyed by program, backend and versions, so a changed
  step never loads a stale executable); every compile of 1 s or more is stored."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") or not path:
    return
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run(config, workdir: str, compilation_cache: str = "", defaults=None) -> None:
  """One run of a loaded config by the objective of its mode; `defaults`: the config file's values
  without overrides (resuming a run older than a key)."""
  if not workdir.strip():
    raise config_lib.ConfigError("--workdir is empty; name the run's directory")
  objective = objectives.for_config(config)
  timing.begin()
  use_compilation_cache(compilation_cache)
  objective.run(config, workdir, defaults)
  if sharding.is_primary():
    # WORKDIR/timing.json: start-up, compiles, training, evaluation
    timing.current().finish(workdir)


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src.xla_bridge"):  # orbax's per-save INFO lines, the TPU probe
    logging.getLogger(noisy).setLevel(logging.WARNING)
  defaults = config_lib.load_config(flags.FLAGS["config"].config_filename)  # without the overrides
  run(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.compilation_cache, defaults)


if __name__ == "__main__":
  cli.run(lambda: cli.run_config_app(main))
