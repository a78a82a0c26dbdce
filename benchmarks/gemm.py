"""The encoder's matmuls alone: XLA (this jax's backend) vs PyTorch, GFLOP/s per shape.

    python benchmarks/gemm.py [--preset minilm-l6-h384] [--texts 128] [--length 64] [--repeats 7]

Where a train step's time goes is mostly these products: for every weight of a layer (Q, K, V and
attention output D x D, feed-forward up D x I and down I x D) the forward x @ W, the input
gradient g @ W^T and the weight gradient x^T @ g, over texts x length rows. Each is timed on
arrays already on the device (median of `--repeats`), on both sides with the same shapes and
float32, so a gap in `benchmarks/vs_pytorch.py` can be told apart: the matmul library, or the rest
of the step. A second table times attention's batched products (texts x heads small matrices:
scores q @ k^T, the context p @ v, and the backward's p^T @ g), which XLA:CPU and PyTorch run
through other kernels than the weight products.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from starbucks_jax.models import bert


def _median_time(fn, args, repeats, sync):
  sync(fn(*args))  # compile / warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    sync(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _time_both(product, a_shape, b_shape, rng, repeats):
  """Seconds for `product` on random float32 operands of these shapes: (XLA, PyTorch)."""
  import torch

  a = rng.standard_normal(a_shape, np.float32)
  b = rng.standard_normal(b_shape, np.float32)
  xla = _median_time(jax.jit(product), (jnp.asarray(a), jnp.asarray(b)), repeats,
                     jax.block_until_ready)
  ref = _median_time(product, (torch.from_numpy(a), torch.from_numpy(b)), repeats, lambda x: x)
  return xla, ref


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--preset", default="minilm-l6-h384", help="a BertConfig preset (its D and I)")
  p.add_argument("--texts", type=int, default=128, help="texts per step (pairs x 2)")
  p.add_argument("--length", type=int, default=64)
  p.add_argument("--repeats", type=int, default=7)
  args = p.parse_args()
  import torch

  cfg = bert.BertConfig.preset(args.preset)
  rows, D, I = args.texts * args.length, cfg.hidden_size, cfg.intermediate_size
  print(f"{jax.devices()[0].platform} (jax {jax.__version__}) vs torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {rows} rows, float32")
  rng = np.random.default_rng(0)
  products = {  # name: (left operand, right operand, the product), as stored in the step
      "forward x @ W": (lambda k, n: ((rows, k), (k, n)), lambda x, w: x @ w),
      "input grad g @ W^T": (lambda k, n: ((rows, n), (k, n)), lambda g, w: g @ w.T),
      "weight grad x^T @ g": (lambda k, n: ((rows, k), (rows, n)), lambda x, g: x.T @ g),
  }
  print(
      f"{'weight':>10} {'product':>20} {'XLA GFLOP/s':>12} {'PyTorch GFLOP/s':>16} {'XLA / PyTorch':>14}"
  )
  total = {"xla": 0.0, "torch": 0.0}
  for weight, (k, n) in {"D x D": (D, D), "D x I": (D, I), "I x D": (I, D)}.items():
    for name, (shapes, product) in products.items():
      flops = 2 * rows * k * n
      xla, ref = _time_both(product, *shapes(k, n), rng, args.repeats)
      total["xla"] += xla
      total["torch"] += ref
      print(
          f"{weight:>10} {name:>20} {flops / xla / 1e9:>12.1f} {flops / ref / 1e9:>16.1f} {ref / xla:>13.2f}x"
      )
  print(f"all of them: XLA {total['xla'] * 1e3:.0f} ms, PyTorch {total['torch'] * 1e3:.0f} ms "
        f"({total['torch'] / total['xla']:.2f}x)")

  L, dh = args.length, cfg.head_dim
  batch = args.texts * cfg.num_attention_heads
  attention = {  # name: (left shape, right shape, the product, contracted size, output size)
      "scores q @ k^T": ((batch, L, dh), (batch, L, dh), lambda q, k: q @ k.swapaxes(1, 2), dh, L * L),
      "context p @ v": ((batch, L, L), (batch, L, dh), lambda p, v: p @ v, L, L * dh),
      "backward p^T @ g": ((batch, L, L), (batch, L, dh), lambda p, g: p.swapaxes(1, 2) @ g, L, L * dh),
  }
  print(f"\nattention, {batch} products (texts x heads) of {L} x {L} and {L} x {dh}:")
  print(f"{'product':>31} {'XLA GFLOP/s':>12} {'PyTorch GFLOP/s':>16} {'XLA / PyTorch':>14}")
  for name, (a_shape, b_shape, product, k, out) in attention.items():
    flops = 2 * batch * k * out
    xla, ref = _time_both(product, a_shape, b_shape, rng, args.repeats)
    print(f"{name:>31} {flops / xla / 1e9:>12.1f} {flops / ref / 1e9:>16.1f} {ref / xla:>13.2f}x")


if __name__ == "__main__":
  main()
