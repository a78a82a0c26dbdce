"""Recorded run: 2D Matryoshka retrieval on SciFact at CPU scale (issue 6).

all-MiniLM-L6-v2 with the schedule (1,16)..(6,384) on ../shared/data/beir_scifact: nDCG@10 (and
MRR@10, R@100) per pair on the 300 test queries before training, after SRL retrieval training on
the train qrels (configs/retrieval.py:scifact), and after full-only training (method=full).

    python experiments/retrieval_scifact.py [--workdirs workdirs/retrieval_scifact]

Each run goes through the normal entry point, skips what is done (resuming an interrupted run),
then experiments/retrieval_scifact.md is written with the commands, the commit and the table.
"""

import argparse
import json
import os
import subprocess
import sys

PAIRS = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))
EVAL = "scifact/test=../shared/data/beir_scifact"


def commands(workdirs):
  py = [sys.executable, "-m", "starbucks_jax.main"]
  return {
      "untrained": py + ["--config=configs/ft.py:eval", f"--workdir={workdirs}/untrained", "--config.eval.sts=",
                         f"--config.eval.retrieval={EVAL}", "--config.eval.query_max_length=64",
                         "--config.eval.passage_max_length=128"],
      "SRL (starbucks)": py + ["--config=configs/retrieval.py:scifact", f"--workdir={workdirs}/starbucks"],
      "full only": py + ["--config=configs/retrieval.py:scifact,method=full", f"--workdir={workdirs}/full"],
  }


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdirs", default="workdirs/retrieval_scifact")
  args = p.parse_args()
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for name, cmd in commands(args.workdirs).items():
    workdir = cmd[3].split("=", 1)[1]
    result = os.path.join(repo, workdir, "results", "eval.json" if name == "untrained" else "final.json")
    if os.path.exists(result):
      print(f"skip {name}: done")
      continue
    print(f"run {name}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=repo, check=True)
  write_report(repo, args.workdirs)


def write_report(repo, workdirs):
  rows = []
  for name, cmd in commands(workdirs).items():
    workdir = cmd[3].split("=", 1)[1]
    path = os.path.join(repo, workdir, "results", "eval.json" if name == "untrained" else "final.json")
    if not os.path.exists(path):
      continue
    recs = json.load(open(path))
    for metric in ("nDCG@10", "RR@10", "R@100"):
      vals = {(r["layer"], r["dim"]): r["value"] for r in recs if r["metric"] == metric}
      cells = [f"{vals[p]:.4f}" if p in vals else "" for p in PAIRS]
      mean = sum(vals[p] for p in PAIRS) / len(PAIRS) if all(p in vals for p in PAIRS) else None
      rows.append(f"| {name} | {metric} | " + " | ".join(cells) + f" | {'' if mean is None else f'{mean:.4f}'} |")
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip()
  head = "| model | metric | " + " | ".join(f"({n},{d})" for n, d in PAIRS) + " | mean |"
  out = os.path.join(repo, "experiments", "retrieval_scifact.md")
  with open(out, "w") as f:
    f.write("# Retrieval on SciFact, CPU scale\n\n"
            f"Commit `{commit}`. Command: `python experiments/retrieval_scifact.py`, which runs:\n\n"
            + "\n".join(f"    {' '.join(c[1:])}" for c in commands(workdirs).values())
            + "\n\nSciFact test (300 queries, 5,183 documents), cosine of the truncated vectors, per "
            "(layer, dim). RR@10 is MRR@10.\n\n" + head + "\n|---|---|" + "---:|" * (len(PAIRS) + 1) + "\n"
            + "\n".join(rows) + "\n")
  print(open(out).read())


if __name__ == "__main__":
  main()
