"""Compare two finished workdirs of the same config: metrics.jsonl rows and results/final.json.

    python experiments/compare_runs.py WORKDIR_A WORKDIR_B [--tolerance 1e-6]

Prints the largest absolute difference over every logged metric (timing columns left out) and every
result value, and exits 1 when one exceeds the tolerance or the rows do not line up. Used to show
that a refactor leaves a run's numbers unchanged (experiments/README.md, "Refactors").
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from starbucks_jax import workdir as workdir_lib

TIMING = {"examples_per_sec", "data_wait_frac"}


def differences(a: str, b: str) -> tuple[list[str], float]:
  """(problems, largest absolute difference) between two workdirs."""
  problems, worst = [], 0.0
  ma, mb = (workdir_lib.read_metrics(os.path.join(d, "metrics.jsonl")) for d in (a, b))
  if [r["step"] for r in ma] != [r["step"] for r in mb]:
    return [f"metrics.jsonl steps differ: {[r['step'] for r in ma]} vs {[r['step'] for r in mb]}"
           ], float("inf")
  for ra, rb in zip(ma, mb):
    if set(ra) != set(rb):
      problems.append(f"step {ra['step']}: columns {sorted(set(ra) ^ set(rb))} in one run only")
    for key in set(ra) & set(rb) - TIMING:
      worst = max(worst, abs(ra[key] - rb[key]))
  fa, fb = (json.load(open(os.path.join(d, "results", "final.json"))) for d in (a, b))
  strip = lambda r: {k: v for k, v in r.items() if k != "value"}
  if [strip(r) for r in fa] != [strip(r) for r in fb]:
    return problems + ["results/final.json records differ in dataset, metric or pair"], float("inf")
  for ra, rb in zip(fa, fb):
    a, b = ra["value"], rb["value"]  # null: a non-finite metric
    worst = max(
        worst,
        0.0 if a is None and b is None else float("inf") if a is None or b is None else abs(a - b))
  return problems, worst


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("a")
  p.add_argument("b")
  p.add_argument("--tolerance", type=float, default=1e-6)
  args = p.parse_args(argv)
  problems, worst = differences(args.a, args.b)
  for line in problems:
    print(line)
  print(f"{args.a} vs {args.b}: max abs difference {worst:.3g} (tolerance {args.tolerance:g})")
  return 1 if problems or worst > args.tolerance else 0


if __name__ == "__main__":
  sys.exit(main())
