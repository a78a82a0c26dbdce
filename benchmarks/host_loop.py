"""The training loop's own cost per step: loop.fit with a trivial step function.

    python benchmarks/host_loop.py [--batch 128] [--steps 1000] [--length 32] [--out FILE]

Runs the loop every recipe runs (batches built on the host from tokenised examples, sharded,
transferred, the step dispatched, metrics logged every train.log_every steps, the final checkpoint)
around a step that does next to nothing: it adds the batch's token count to a one-float state. What
is left is the host's work per step, which on an accelerator, where a MiniLM or BERT-base step
takes milliseconds, decides whether the device waits. Prints ms per step: the wall time of fit over
`--steps` steps minus that over a quarter of them, divided by the difference (start-up, the compile
and the final checkpoint cancel), and the loop's data_wait_frac; `--out` writes them as JSON. The
examples are synthetic pairs of 8..`--length` words (a real tokenizer, offline)."""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from starbucks_jax import checkpoint, loop
from starbucks_jax import step as step_lib
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.config_blocks import FinetuneConfig
from starbucks_jax.config_lib import load_config
from starbucks_jax.data import batching

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_pairs(n: int, max_words: int, seed: int = 0) -> batching.Examples:
  rng = np.random.default_rng(seed)
  words = [f"w{i}" for i in range(500)]
  text = lambda: " ".join(rng.choice(words, rng.integers(8, max_words + 1)))
  return batching.Examples(("anchor", "positive"), [[text() for _ in range(n)] for _ in range(2)],
                           None)


def trivial_update(state, batch, rng):
  del rng
  tokens = batch["mask"].sum().astype(jnp.float32)
  return state.replace(step=state.step + 1,
                       params={"w": state.params["w"] + tokens}), {"loss": tokens}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=128, help="pairs per step")
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--length", type=int, default=32, help="the longest text, in words")
  p.add_argument("--model", default="all-MiniLM-L6-v2",
                 help="whose tokenizer tokenises the examples")
  p.add_argument("--out", help="write the results to this JSON file")
  args = p.parse_args()

  config = load_config(os.path.join(REPO, "configs", "ft.py") + ":demo")
  config.unlock()
  config.data.batch_size = args.batch
  config.train.checkpoint_every = 10**9  # the final save only
  config.train.log_every = 10
  tokenizer = checkpoint.load_model(args.model).tokenizer
  examples = synthetic_pairs(args.batch * (args.steps + 1), args.length)
  batcher = batching.Batcher(examples, tokenizer, batch_size=args.batch, max_length=128, seed=0,
                             length_buckets="linear")
  seconds, waits = {}, {}
  # the per-step cost is the difference: fixed costs cancel
  for steps in (args.steps // 4, args.steps):
    tx = step_lib.make_optimizer(config.train, steps)
    params = {"w": jnp.zeros((), jnp.float32)}
    state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    workdir = tempfile.mkdtemp(prefix="host_loop_")
    t = time.perf_counter()
    loop.fit(config, FinetuneConfig.from_config(config), workdir, state, trivial_update, batcher,
             steps, step_lib.learning_rate_schedule(config.train, steps), tx=tx,
             param_specs={"w": jax.sharding.PartitionSpec()}, batch_axes=None)
    seconds[steps] = time.perf_counter() - t
    rows = workdir_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    waits[steps] = statistics.median(r["data_wait_frac"]
                                     for r in rows[2:]) if len(rows) > 2 else float("nan")
  short, long = args.steps // 4, args.steps
  per_step = (seconds[long] - seconds[short]) / (long - short)
  result = {
      "batch": args.batch, "steps": [short, long], "fit_s": [seconds[short], seconds[long]],
      "ms_per_step": 1e3 * per_step, "data_wait_frac": waits[long], "jax": jax.__version__,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "command": " ".join(sys.argv)
  }
  print(
      f"host loop, batch {args.batch}: {result['ms_per_step']:.3f} ms/step (loop.fit of {long} steps minus "
      f"{short} steps: {seconds[long]:.2f} s - {seconds[short]:.2f} s); median data_wait_frac {waits[long]:.3f}"
  )
  if args.out:
    with open(args.out, "w", encoding="utf8") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
