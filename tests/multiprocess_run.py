"""Run by tests/test_multiprocess.py: one process of a multi-process (or the one-process reference)
fine-tuning run on the 2-layer tiny model, through train.run exactly as the entry point calls it.

    python tests/multiprocess_run.py MODEL_DIR TRAIN_JSONL WORKDIR COORDINATOR NUM_PROCESSES PROCESS_ID [MAX_STEPS [SIGTERM_AFTER]]

SIGTERM_AFTER=k: this process sends itself SIGTERM after step k, as a preempted host's notice.
"""

import os
import signal
import sys

from starbucks_jax import cli, config_lib, finetune, loop

REPO = __file__.rsplit("/tests/", 1)[0]


def main(model_dir, data, workdir, coordinator, num_processes, process_id, max_steps=4,
         sigterm_after=None):
  cfg = config_lib.load_config(f"{REPO}/configs/ft.py:demo")
  with cfg.unlocked():
    cfg.model.init_from = model_dir
    cfg.model.max_length = 32
    cfg.schedule.pairs = ((1, 8), (2, 32))
    cfg.data.train = data
    cfg.data.batch_size = 8
    cfg.train.max_steps = int(max_steps)
    cfg.train.log_every = 1
    cfg.train.checkpoint_every = 2
    cfg.train.dropout = False
    cfg.mesh.coordinator = coordinator
    cfg.mesh.num_processes = int(num_processes)
    cfg.mesh.process_id = int(process_id)
  if sigterm_after is not None:
    after_step = loop._after_step

    def notice(t, done, *args, **kw):
      if done == int(sigterm_after):
        os.kill(os.getpid(), signal.SIGTERM)
      return after_step(t, done, *args, **kw)

    loop._after_step = notice
  finetune.run(cfg, workdir)
  import jax
  print(
      f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local of "
      f"{jax.device_count()} devices", flush=True)


if __name__ == "__main__":
  cli.run(lambda: main(*sys.argv[1:]))
