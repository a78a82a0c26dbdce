"""Compile every paper recipe for TPU topologies on this CPU and tabulate memory, FLOPs and rooflines.

    python experiments/compile_tpu.py [--only nli] [--topologies v5e-8,v6e-1]

One `python -m starbucks_jax.compile` process per (recipe, topology), each writing
experiments/results_tpu/<recipe>_<topology>.json (an existing file is skipped, so an interrupted
sweep resumes); then experiments/results_tpu/table.md from every JSON there. Needs the tpu extra.
Each recipe is compiled at the length its data's batches are padded to (the pow2 bucket of the
longest text in a batch): AllNLI batches of 128 triplets meet 128 (MultiNLI premises; SNLI alone
stays under 64), STS-B batches of 16 pairs 64 (longest text 70 tokens, so 128 is rare), MS MARCO
groups the configured maxima (32 / 196), SMAE its 512-token windows; `nli_512` is nli's worst case.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "results_tpu")
RECIPES = {  # name -> (config, overrides, tokens per text; None = the config's maximum)
    "nli": ("configs/ft.py:nli", [], 128),
    "sts": ("configs/ft.py:sts", [], 64),
    "retrieval": ("configs/retrieval.py", [], None),
    "smae": ("configs/pt.py", [], None),
    "nli_full": ("configs/ft.py:nli,method=full", [], 128),  # the SRL / full-only FLOPs and bytes ratio
    "nli_512": ("configs/ft.py:nli", [], None),
    "nli_gc4": ("configs/ft.py:nli", ["--config.train.grad_cache_chunks=4"], 128),
    "retrieval_gc8": ("configs/retrieval.py", ["--config.train.grad_cache_chunks=8"], None),  # one chip
    "smae_remat": ("configs/pt.py", ["--config.model.remat=full"], None),  # SMAE where it does not fit
    "smae_remat_mb4": ("configs/pt.py", ["--config.model.remat=full", "--config.train.microbatches=4"], None),
}
TOPOLOGIES = ("v5e-1", "v6e-1", "v5e-8", "v4-8", "v5p-8")  # + v5e-32 (multi-host) for nli, smae


def compile_one(name: str, topology: str) -> str:
  config, overrides, length = RECIPES[name]
  out = os.path.join(OUT, f"{name}_{topology}.json")
  if os.path.exists(out):
    return out
  cmd = [sys.executable, "-m", "starbucks_jax.compile", f"--config={config}", f"--topology={topology}", f"--out={out}",
         *overrides] + ([f"--length={length}"] if length else [])
  t = time.time()
  done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
  lines = [x for x in done.stdout.splitlines() if x.startswith("|") or x.startswith("  ")]
  print(f"{name} {topology}: {time.time() - t:.0f} s, rc {done.returncode}\n" + "\n".join(lines[2:]), flush=True)
  if done.returncode:
    print(done.stderr.strip().splitlines()[-1], flush=True)
  return out


def rescored(r: dict, command: str) -> dict:
  """A report's roofline as compile.roofline computes it now (JSON written before loop trips were
  counted included): a train step's trips = microbatches x gradient-cache chunks of the command's
  overrides; the evaluation encoder has no loop."""
  from starbucks_jax import compile as tpu_compile
  setting = lambda key, default: int(next((a.split("=")[1] for a in command.split() if a.startswith(f"--config.train.{key}=")), default))  # noqa: E731
  trips = setting("microbatches", 1) * max(setting("grad_cache_chunks", 0), 1) if r["program"] == "train_step" else 1
  hbm, peak, bandwidth = tpu_compile.CHIPS[r["chip"]]
  per_chip = round(hbm / r["hbm_bytes"])  # devices per chip (v4: one per TensorCore)
  return tpu_compile.roofline({**r, "loop_trips": trips}, peak / per_chip, bandwidth / per_chip)


def write_table() -> str:
  rows = ["| recipe | settings | topology | program | batch | mesh | per-device GiB: args / temp / total (HBM) | fits | "
          "TFLOP per device: XLA x loop trips / model | roofline ms | MFU bound |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for path in sorted(glob.glob(os.path.join(OUT, "*.json"))):
    record = json.load(open(path))
    name = os.path.basename(path)
    settings = " ".join(a.replace("--config.", "") for a in record["command"].split() if a.startswith("--config."))
    for r in record["programs"]:
      gib = 2**30
      if "compiler" in r:  # the compiler refused it: more than HBM
        rows.append(f"| {name.split('_v')[0]} | {settings} | {r['topology']} ({r['devices']} x {r['chip']}) | {r['program']} | {r['batch']} | "
                    f"{'x'.join(str(v) for v in r['mesh'].values())} | needs {r['total_bytes'] / gib:.2f} "
                    f"({r['hbm_bytes'] / gib:.0f}) | NO | - | - | - |")
        continue
      r = rescored(r, record["command"])
      rows.append(f"| {name.split('_v')[0]} | {settings} | {r['topology']} ({r['devices']} x {r['chip']}) | {r['program']} | {r['batch']} | "
                  f"{'x'.join(str(v) for v in r['mesh'].values())} | {r['argument_bytes'] / gib:.2f} / "
                  f"{r['temp_bytes'] / gib:.2f} / {r['total_bytes'] / gib:.2f} ({r['hbm_bytes'] / gib:.0f}) | "
                  f"{'yes' if r['fits'] else 'NO'} | {r['xla_flops_times_trips'] / 1e12:.2f} / {r['model_matmul_flops'] / 1e12:.2f} | "
                  f"{r['roofline_seconds'] * 1e3:.0f} ({r['bound']}) | {r['mfu_bound']:.2f} |")
  path = os.path.join(OUT, "table.md")
  with open(path, "w") as f:
    f.write("Compiled, not measured (python experiments/compile_tpu.py; commands and commits in each JSON).\n\n")
    f.write("\n".join(rows) + "\n")
  return path


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--only", action="append", choices=sorted(RECIPES), help="recipes (default: all)")
  p.add_argument("--topologies", default=",".join(TOPOLOGIES))
  args = p.parse_args()
  os.makedirs(OUT, exist_ok=True)
  for name in args.only or RECIPES:
    for topology in args.topologies.split(","):
      compile_one(name, topology)
  print(write_table())


if __name__ == "__main__":
  main()
