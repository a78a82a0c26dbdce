"""Recorded run: SMAE before SRL at CPU scale (issue 5).

1. SMAE pre-training of all-MiniLM-L6-v2 (a fresh MLM head; its schedule (1,16)..(6,384)) on
   ../shared/data/mlm_text/sentences.txt: `configs/pt.py:cpu` (batch 32, max length 64, 400 steps).
2. The `sts` SRL recipe (configs/ft.py:sts_cpu, 4 epochs) from the SMAE model's BertForMaskedLM
   export, evaluated per pair on STS-B test.
3. Side by side with the same recipe from the original weights: the `starbucks` run of
   experiments/ft_sts_cpu.py (its workdir, or this script trains it when absent).

    python experiments/smae_cpu.py [--workdirs workdirs/smae_cpu] [--baseline workdirs/ft_sts_cpu/starbucks]

Every step resumes (skips what is done, continues an interrupted run from its last checkpoint), then
experiments/smae_cpu.md is written with the commands, the commit and the per-pair tables.
"""

import argparse
import json
import os
import subprocess
import sys

PAIRS = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))


def run(cmd, repo, done_file):
  if os.path.exists(done_file):
    print(f"skip (done): {' '.join(cmd)}")
    return
  print(f"run: {' '.join(cmd)}", flush=True)
  subprocess.run(cmd, cwd=repo, check=True)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdirs", default="workdirs/smae_cpu")
  p.add_argument("--baseline", default="workdirs/ft_sts_cpu/starbucks")
  p.add_argument("--epochs", type=int, default=4)
  args = p.parse_args()
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  py = [sys.executable, "-m", "starbucks_jax.main"]
  pt = os.path.join(args.workdirs, "pt")
  ft = os.path.join(args.workdirs, "ft_from_smae")
  commands = {
      "pt": py + ["--config=configs/pt.py:cpu", f"--workdir={pt}"],
      "ft": py + ["--config=configs/ft.py:sts_cpu", f"--workdir={ft}",
                  f"--config.model.init_from={os.path.join(pt, 'bert_mlm')}", f"--config.train.epochs={args.epochs}"],
      "baseline": py + ["--config=configs/ft.py:sts_cpu", f"--workdir={args.baseline}",
                        f"--config.train.epochs={args.epochs}"],
  }
  run(commands["pt"], repo, os.path.join(repo, pt, "results", "final.json"))
  run(commands["ft"], repo, os.path.join(repo, ft, "results", "final.json"))
  run(commands["baseline"], repo, os.path.join(repo, args.baseline, "results", "final.json"))
  write_report(repo, pt, ft, args.baseline, commands)


def _values(path, metric="spearman"):
  out = {}
  for r in json.load(open(path)):
    if r["metric"].startswith(metric):
      out[(r["layer"], r["dim"])] = r["value"]
  return out


def write_report(repo, pt, ft, baseline, commands):
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip()
  smae = _values(os.path.join(repo, ft, "results", "final.json"))
  base = _values(os.path.join(repo, baseline, "results", "final.json"))
  mlm = _values(os.path.join(repo, pt, "results", "final.json"), "mlm_accuracy")
  lines = ["| (layer, dim) | SRL from MiniLM | SMAE + SRL | difference | SMAE masked-token accuracy |",
           "|---|---:|---:|---:|---:|"]
  for pair in PAIRS:
    a, b = base.get(pair), smae.get(pair)
    diff = f"{b - a:+.4f}" if a is not None and b is not None else ""
    acc = f"{mlm[pair]:.4f}" if pair in mlm else ""
    lines.append(f"| {pair} | {a:.4f} | {b:.4f} | {diff} | {acc} |")
  mean = lambda t: sum(t[p] for p in PAIRS) / len(PAIRS)  # noqa: E731
  lines.append(f"| mean | {mean(base):.4f} | {mean(smae):.4f} | {mean(smae) - mean(base):+.4f} | |")
  out = os.path.join(repo, "experiments", "smae_cpu.md")
  with open(out, "w") as f:
    f.write("# SMAE before SRL, CPU scale\n\n"
            f"Commit `{commit}`. Command: `python experiments/smae_cpu.py`, which runs:\n\n"
            + "\n".join(f"    {' '.join(c[1:])}" for c in commands.values())
            + "\n\nSpearman (cosine) on STS-B test (../shared/data/stsb/test.jsonl) per (layer, dim) after the "
            "`sts` SRL recipe, from the original all-MiniLM-L6-v2 and from its SMAE-pre-trained version; "
            "the last column is the SMAE model's masked-token accuracy on STS-B dev sentences.\n\n"
            + "\n".join(lines) + "\n")
  print(open(out).read())


if __name__ == "__main__":
  main()
