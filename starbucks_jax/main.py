"""Entry point: `python -m starbucks_jax.main --config=configs/ft.py:demo --workdir=DIR`.

A config whose mode is 'pretrain' (configs/pt.py) runs SMAE pre-training (pretrain.run); any
other (configs/ft.py, configs/retrieval.py) fine-tunes and evaluates (finetune.run). A bad config,
data row or model prints one line, `error: ...`, and exits 2 (starbucks_jax.cli)."""

from starbucks_jax import cli

if __name__ == "__main__":
  cli.raise_stack_limit()  # before jax loads

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from starbucks_jax import config_lib, finetune, pretrain, sharding, timing

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/ft.py:demo", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src.xla_bridge"):  # orbax's per-save INFO lines, the TPU probe
    logging.getLogger(noisy).setLevel(logging.WARNING)
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if not workdir.strip():
    raise config_lib.ConfigError("--workdir is empty; name the run's directory")
  timing.begin()
  (pretrain if config.get("mode") == "pretrain" else finetune).run(config, workdir)
  if sharding.is_primary():
    timing.current().finish(workdir)  # WORKDIR/timing.json: start-up, compiles, training, evaluation


if __name__ == "__main__":
  cli.run(lambda: (cli.check_config_args(sys.argv[1:]), app.run(main)))
