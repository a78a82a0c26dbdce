"""Recorded run: the `sts` SRL recipe at CPU scale, SRL vs the baselines (issue 4).

all-MiniLM-L6-v2 with the schedule (1,16) (2,32) (3,64) (4,128) (5,256) (6,384), CoSENT on
../shared/data/stsb/train.jsonl (5,749 pairs, batch 16, 4 epochs), evaluated per pair on its test
split (1,379 pairs). Methods: starbucks (SRL), 2dmse, mrl, full, and separate (one run per pair,
encoder cut to n layers, trained at full width, evaluated at d; its full-size cell is the full run).

    python experiments/ft_sts_cpu.py [--epochs 4] [--workdirs workdirs/ft_sts_cpu] [--print-only]

Runs one after another through the normal entry point, skips runs whose results exist, then writes
experiments/ft_sts_cpu.md (4 epochs, the recipe; ft_sts_cpu_e<N>.md otherwise) with the command, the
commit and the per-pair table. `--report-only` writes the table of what has finished so far.
"""

import argparse
import json
import os
import subprocess
import sys

CONFIG = "configs/ft.py:sts_cpu"
PAIRS = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))


def runs():
  """(name, config argument) for every run of the sweep."""
  yield "starbucks", "method=starbucks"
  yield "2dmse", "method=2dmse"
  yield "mrl", "method=mrl"
  yield "full", "method=full"
  for n, d in PAIRS[:-1]:  # separate at the full size is the full run (same config and seed)
    yield f"separate_{n}_{d}", f"method=separate,layer={n},dim={d}"


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdirs", default="workdirs/ft_sts_cpu")
  p.add_argument("--print-only", action="store_true", help="print the commands (for a cluster)")
  p.add_argument("--epochs", type=int, default=4, help="the recipe's 4, or fewer for a quick sweep")
  p.add_argument("--report-only", action="store_true", help="write the table of the finished runs")
  args = p.parse_args()
  if args.report_only:
    write_report(args.workdirs, os.path.dirname(os.path.dirname(os.path.abspath(__file__))), args.epochs)
    return
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for name, arg in runs():
    workdir = os.path.join(args.workdirs, name)
    cmd = [sys.executable, "-m", "starbucks_jax.main", f"--config={CONFIG},{arg}", f"--workdir={workdir}",
           f"--config.train.epochs={args.epochs}"]
    if args.print_only:
      print(" ".join(cmd))
      continue
    if os.path.exists(os.path.join(workdir, "results", "final.json")):
      print(f"skip {name}: done")
      continue
    print(f"run {name}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=repo, check=True)
  if not args.print_only:
    write_report(args.workdirs, repo, args.epochs)


def write_report(workdirs, repo, epochs):
  table = {}
  for name, _ in runs():
    path = os.path.join(workdirs, name, "results", "final.json")
    if not os.path.exists(path):
      continue
    method = "separate" if name.startswith("separate") else name
    for r in json.load(open(path)):
      table.setdefault(method, {})[(r["layer"], r["dim"])] = r["value"]
  if "separate" in table and "full" in table:
    table["separate"][PAIRS[-1]] = table["full"][PAIRS[-1]]
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip()
  head = "| method | " + " | ".join(f"({n},{d})" for n, d in PAIRS) + " | mean |"
  lines = [head, "|---|" + "---:|" * (len(PAIRS) + 1)]
  best = {p: max(t.get(p, -1) for t in table.values()) for p in PAIRS}
  for method, vals in table.items():
    cells = []
    for p in PAIRS:
      v = vals.get(p)
      cells.append("" if v is None else (f"**{v:.4f}**" if v == best[p] else f"{v:.4f}"))
    have = [vals[p] for p in PAIRS if p in vals]
    mean = f"{sum(have) / len(have):.4f}" if len(have) == len(PAIRS) else ""
    lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean} |")
  missing = [name for name, _ in runs() if not os.path.exists(os.path.join(workdirs, name, "results", "final.json"))]
  name = "ft_sts_cpu.md" if epochs == 4 else f"ft_sts_cpu_e{epochs}.md"  # 4 epochs: the recipe
  out = os.path.join(repo, "experiments", name)
  with open(out, "w") as f:
    f.write(f"# SRL vs baselines, sts recipe at CPU scale\n\nCommit `{commit}`. Command: "
            f"`python experiments/ft_sts_cpu.py --epochs {epochs}` (each run: `python -m starbucks_jax.main "
            f"--config={CONFIG},method=M --workdir=... --config.train.epochs={epochs}`).\n\nSpearman (cosine) x 1 on STS-B test "
            f"(../shared/data/stsb/test.jsonl, 1,379 pairs) per (layer, dim); best per column in bold.\n\n"
            + "\n".join(lines) + "\n"
            + (f"\nNot finished yet (the same command resumes them): {', '.join(missing)}.\n" if missing else ""))
  print(open(out).read())


if __name__ == "__main__":
  main()
