"""Training throughput of the SRL step vs the full-only step on the same model and batch.

    python benchmarks/train_step.py [--model all-MiniLM-L6-v2] [--batch 16] [--roles 2] \
        [--length 32] [--steps 10] [--dtype float32] [--forward-splits 1] [--methods starbucks,full,2dmse,mrl]

Prints examples/s (median of timed steps, after compile) per method, the ratio to the full-only
step, the achieved model FLOP/s (BertConfig.matmul_flops) and, with `--peak-tflops` (the device's
peak in the run's dtype, e.g. 989 for an H100 SXM in bf16), the MFU, and each compiled step's
memory (temp + arguments, from XLA's memory analysis). The model is read from any HF dir /
workdir; the batch is random token ids of fixed length.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from starbucks_jax import checkpoint, losses, schedule, srl
from starbucks_jax import step as step_lib
from starbucks_jax.config_lib import load_config


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="all-MiniLM-L6-v2")
  p.add_argument("--batch", type=int, default=16, help="examples per step")
  p.add_argument("--roles", type=int, default=2, help="texts per example (2 pairs, 3 triplets)")
  p.add_argument("--length", type=int, default=32, help="tokens per text")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--forward-splits", type=int, default=1,
                 help="train.forward_splits of the timed steps")
  p.add_argument("--methods", default="starbucks,full,2dmse,mrl")
  p.add_argument("--pairs", default="",
                 help="e.g. 1x16,2x32 (default: the backbone's Starbucks list)")
  p.add_argument("--peak-tflops", type=float, default=0.0,
                 help="the device's peak, for MFU (0: not printed)")
  args = p.parse_args()

  pre = checkpoint.load_model(args.model)
  cfg = pre.config.replace(dtype=args.dtype)
  N, D = cfg.num_hidden_layers, cfg.hidden_size
  if args.pairs:
    pairs = tuple(tuple(int(x) for x in s.split("x")) for s in args.pairs.split(","))
  else:
    pairs = schedule.STARBUCKS["bert-base" if (N, D) == (12, 768) else "minilm-l6-h384"]
  pairs = schedule.validate(pairs, N, D)
  train_cfg = load_config("configs/ft.py:demo").train
  tx = step_lib.make_optimizer(train_cfg, 1000)
  rng = np.random.default_rng(0)
  batch = {
      "ids": jnp.asarray(rng.integers(1000, 20000, (args.roles, args.batch, args.length)),
                         jnp.int32), "mask": jnp.ones((args.roles, args.batch, args.length),
                                                      jnp.int32)
  }
  loss_cfg = losses.LossConfig()
  print(
      f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; model {args.model} ({N} layers, "
      f"{D} dims, {args.dtype}); batch {args.batch} x {args.roles} texts x {args.length} tokens, "
      f"{args.forward_splits} encoder forward(s) per step")
  results = {}
  for method in args.methods.split(","):
    plan = schedule.plan(method, pairs, N, D)
    params = jax.tree_util.tree_map(jnp.asarray, pre.params["bert"])
    state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    step = jax.jit(
        srl.make_srl_step(cfg, plan, loss_cfg, tx, "mean",
                          forward_splits=args.forward_splits).update, donate_argnums=(0,))
    compiled = step.lower(state, batch, jax.random.key(0)).compile()
    mem = compiled.memory_analysis()
    mib = (mem.temp_size_in_bytes +
           mem.argument_size_in_bytes) / 2**20 if mem is not None else float("nan")
    state, m = compiled(state, batch, jax.random.key(0))  # warm up
    jax.block_until_ready(m)
    times = []
    for i in range(args.steps):
      t = time.perf_counter()
      state, m = compiled(state, batch, jax.random.key(i))
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t)
    rate = args.batch / statistics.median(times)
    tflops = rate * cfg.matmul_flops(args.roles, args.length) / 1e12
    results[method] = {"examples_per_sec": rate, "tflops_per_sec": tflops, "memory_mib": mib}
    if args.peak_tflops:
      results[method]["mfu"] = tflops / args.peak_tflops
  base = results.get("full", {}).get("examples_per_sec")
  print(
      f"{'method':>16} {'examples/s':>11} {'vs full':>8} {'TFLOP/s':>9} {'MFU':>6} {'memory MiB':>11}"
  )
  for method, r in results.items():
    ratio = f"{base / r['examples_per_sec']:.2f}x" if base else ""
    mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
    print(
        f"{method:>16} {r['examples_per_sec']:>11.1f} {ratio:>8} {r['tflops_per_sec']:>9.3f} {mfu:>6} {r['memory_mib']:>11.1f}"
    )
  print(json.dumps(results))


if __name__ == "__main__":
  main()
