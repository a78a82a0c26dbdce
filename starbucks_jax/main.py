"""Entry point: `python -m starbucks_jax.main --config=configs/ft.py:demo --workdir=DIR`.

A config whose mode is 'pretrain' (configs/pt.py) runs SMAE pre-training (pretrain.run); any
other (configs/ft.py, configs/retrieval.py) fine-tunes and evaluates (finetune.run)."""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from starbucks_jax import config_lib, finetune, pretrain

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/ft.py:demo", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src.xla_bridge"):  # orbax's per-save INFO lines, the TPU probe
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    config = flags.FLAGS.config
    (pretrain if config.get("mode") == "pretrain" else finetune).run(config, flags.FLAGS.workdir)
  except config_lib.ConfigError as e:
    sys.exit(f"config error: {e}")


if __name__ == "__main__":
  app.run(main)
