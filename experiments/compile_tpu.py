"""Compile every paper recipe for TPU topologies on this CPU and tabulate memory, FLOPs, bytes and rooflines.

    python experiments/compile_tpu.py [--only nli] [--topologies v5e-8,v6e-1] [--out-dir results_tpu]
    python experiments/compile_tpu.py --compare results_tpu/before results_tpu
    python experiments/compile_tpu.py --only nli --only sts --only retrieval --topologies h100,h200 \
        --out-dir experiments/results_gpu/compiled      # NVIDIA GPUs (the gpu extra), the same way

One `python -m starbucks_jax.compile` process per (recipe, topology), each writing
<out-dir>/<recipe>_<topology>.json (an existing file is skipped, so an interrupted sweep resumes);
then <out-dir>/table.md from every JSON there, and <out-dir>/breakdown.md (bytes and FLOPs by
category). `--compare A B` writes B/compare.md: each (recipe, topology) in both, A's figures beside
B's. Needs the tpu extra. Each recipe is compiled at the length its data's batches are padded to (the
pow2 bucket of the longest text in a batch): AllNLI batches of 128 triplets meet 128 (MultiNLI
premises; SNLI alone stays under 64), STS-B batches of 16 pairs 64 (longest text 70 tokens, so 128
is rare), MS MARCO groups the configured maxima (32 / 196), SMAE its 512-token windows.
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
MAIN = ("v5e-1", "v5e-8", "v6e-8", "v5p-8")  # the issue's four topologies
# name -> (config, overrides, tokens per text (None = the config's maximum), topologies)
RECIPES = {
    "nli": ("configs/ft.py:nli", [], 128, MAIN + ("v4-8",)),
    "sts": ("configs/ft.py:sts", [], 64, MAIN),
    "retrieval": ("configs/retrieval.py", [], None, MAIN + ("v4-8",)),
    "smae": ("configs/pt.py", [], None, MAIN),
    "nli_full": ("configs/ft.py:nli,method=full", [], 128, ("v5e-8",)),  # SRL / full-only bytes
    "nli_gc4": ("configs/ft.py:nli", ["--config.train.grad_cache_chunks=4"], 128, ("v5e-1",)),
    "retrieval_gc8":
        ("configs/retrieval.py", ["--config.train.grad_cache_chunks=8"], None, ("v5e-1",)),
    "smae_remat_mb4":
        ("configs/pt.py", ["--config.model.remat=full",
                           "--config.train.microbatches=4"], None, ("v5e-8", "v6e-8", "v4-8")),
    # SMAE as is with the moments replicated: ZeRO-1 adds ~3.7 GiB of temporaries to this step (v6e-8)
    "smae_replicated_moments":
        ("configs/pt.py", ["--config.mesh.shard_optimizer=False"], None, ("v6e-8",)),
    # the fused attention core (no attention-probs dropout: experiments/ablations.md has its effect)
    "nli_flash": ("configs/ft.py:nli", ["--config.model.attention=flash"], 128, ("v5e-8", "v6e-8")),
    "retrieval_flash":
        ("configs/retrieval.py", ["--config.model.attention=flash"], None, ("v5e-8",)),
    "smae_flash": ("configs/pt.py", ["--config.model.attention=flash"], None, ("v5p-8", "v6e-8")),
    # PyTorch-AMP-style precision (float32 residual stream): its cost (experiments/precision.md)
    "nli_amp": ("configs/ft.py:nli", ["--config.model.precision=amp"], 128, ("v5e-8",)),
    "retrieval_amp": ("configs/retrieval.py", ["--config.model.precision=amp"], None, ("v5e-8",)),
    # cuDNN's fused flash attention on NVIDIA GPUs (no attention-probs dropout either)
    "nli_cudnn": ("configs/ft.py:nli", ["--config.model.attention=cudnn"], 128, ("h100", "h200")),
    "retrieval_cudnn":
        ("configs/retrieval.py", ["--config.model.attention=cudnn"], None, ("h100", "h200")),
    "smae_cudnn": ("configs/pt.py", ["--config.model.attention=cudnn"], None, ("h100x8", "h200x8")),
    # ModernBERT-base (configs/modernbert.py): AllNLI at 128 tokens; 8,192-token passages (long)
    "modernbert_nli": ("configs/modernbert.py", [], 128, ("v5e-8", "v6e-8")),
    "modernbert_long": ("configs/modernbert.py:long", [], 8192, ("v5e-8", "v6e-8")),
    "modernbert_long_flash": ("configs/modernbert.py:long", ["--config.model.attention=flash"],
                              8192, ("v5e-8", "v6e-8")),
    "modernbert_long_flash_fsdp":
        ("configs/modernbert.py:long",
         ["--config.model.attention=flash", "--config.mesh.shape=(1,-1,1)"], 8192, ("v5e-8",)),
    "smae_remat_flash_mb2": ("configs/pt.py", [
        "--config.model.remat=full", "--config.model.attention=flash",
        "--config.train.microbatches=2"
    ], None, ("v5e-8", "v6e-8")),
}
GB, GiB = 1e9, 2**30
# the paper recipe each compiled variant runs (its name's first word: same method and global batch),
# which advice.md ranks them under; nli_full runs another method
RECIPE_OF = {name: name.split("_")[0] for name in RECIPES if name != "nli_full"}


def compile_one(name: str, topology: str, out_dir: str) -> str:
  config, overrides, length, _ = RECIPES[name]
  out = os.path.join(out_dir, f"{name}_{topology}.json")
  if os.path.exists(out):
    return out
  cmd = [
      sys.executable, "-m", "starbucks_jax.compile", f"--config={config}", f"--topology={topology}",
      f"--out={out}", *overrides
  ] + ([f"--length={length}"] if length else [])
  t = time.time()
  done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                        capture_output=True, text=True)
  lines = [x for x in done.stdout.splitlines() if x.startswith("|") or x.startswith("  ")]
  print(
      f"{name} {topology}: {time.time() - t:.0f} s, rc {done.returncode}\n" + "\n".join(lines[2:]),
      flush=True)
  if done.returncode:
    print(done.stderr.strip().splitlines()[-1], flush=True)
  return out


def records(out_dir: str):
  """(recipe, settings, program report) of every JSON in `out_dir`, in name order."""
  for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
    record = json.load(open(path))
    base = os.path.basename(path)[:-5]  # <recipe>_<topology>
    settings = " ".join(
        a.replace("--config.", "") for a in record["command"].split() if a.startswith("--config."))
    for r in record["programs"]:
      yield base.removesuffix("_" + r["topology"]), settings, r


def row(name: str, settings: str, r: dict) -> str:
  where = (
      f"| {name} | {settings} | {r['topology']} ({r['devices']} x {r['chip']}) | {r['program']} | {r['batch']} | "
      f"{'x'.join(str(v) for v in r['mesh'].values())} |")
  if "compiler" in r:  # the compiler refused it: more than HBM
    return f"{where} needs {r['total_bytes'] / GiB:.2f} ({r['usable_hbm_bytes'] / GiB:.2f}) | NO |" + " - |" * 7
  return (
      f"{where} {r['argument_bytes'] / GiB:.2f} / {r['temp_bytes'] / GiB:.2f} / {r['total_bytes'] / GiB:.2f} "
      f"({r['usable_hbm_bytes'] / GiB:.2f}) | {'yes' if r['fits'] else 'NO'} | {r['flops'] / 1e12:.2f} / "
      f"{r['model_flops'] / 1e12:.2f} | {r['hbm_bytes'] / GB:.1f} / {r['bytes_accessed'] / GB:.1f} | "
      f"{r['ici_bytes'] / GB:.2f} | {r['roofline_seconds'] * 1e3:.1f} ({r['bound']}) | {r['mfu_bound']:.2f} | "
      f"{r['hfu_bound']:.2f} | {r['mfu_bound_all_memories']:.2f} |")


HEADER = (
    "| recipe | settings | topology | program | batch | mesh | per-device GiB: args / temp / total (usable) | fits | "
    "TFLOP per device: executed / model | GB per device: HBM / all memories | ICI GB | roofline ms (bound) | "
    "MFU bound | HFU bound | MFU bound, all bytes as HBM |\n" + "|---" * 15 + "|")


def write_table(out_dir: str) -> str:
  rows = [row(*x) for x in records(out_dir)]
  path = os.path.join(out_dir, "table.md")
  with open(path, "w") as f:
    f.write(
        "Compiled, not measured (python experiments/compile_tpu.py; commands and commits in each JSON). "
        "Per device, every loop body counted once per trip; roofline = max(executed FLOPs / peak, HBM bytes / "
        "HBM bandwidth, ICI bytes / ICI bandwidth); the last column reads all of XLA's bytes (on-chip "
        "memory included) as HBM traffic.\n\n" + HEADER + "\n" + "\n".join(rows) + "\n")
  breakdown = []
  for name, settings, r in records(out_dir):
    if "breakdown" not in r:
      continue
    breakdown += [
        f"\n{name} {settings} -- {r['program']} on {r['topology']}, per device per step "
        "(HBM GB / all memories GB / GFLOP / ICI GB):\n",
        "| category | HBM GB | all memories GB | GFLOP | ICI GB |", "|---|---|---|---|---|"
    ]
    breakdown += [
        f"| {k} | {c['hbm_bytes'] / GB:.2f} | {c['bytes'] / GB:.2f} | {c['flops'] / 1e9:.0f} | "
        f"{c['ici_bytes'] / GB:.3f} |" for k, c in r["breakdown"].items()
    ]
  write_advice(out_dir)
  with open(os.path.join(out_dir, "breakdown.md"), "w") as f:
    f.write(
        "Bytes and FLOPs of each compiled step by category (starbucks_jax/hlo_costs.py; compiled, not "
        "measured).\n" + "\n".join(breakdown) + "\n")
  return path


def write_advice(out_dir: str) -> str:
  """<out-dir>/advice.md: per paper recipe, every compiled way to run its step that fits (topology and
  settings, the same global batch), best MFU bound first, with the step's bound and chip-seconds."""
  by_recipe = {}
  for name, settings, r in records(out_dir):
    if r["program"] == "train_step" and r["fits"] and name in RECIPE_OF:
      by_recipe.setdefault(RECIPE_OF[name], []).append((name, settings, r))
  lines = [
      "Per recipe, the compiled steps that fit, best MFU bound first (compiled, not measured; "
      "chip-seconds = roofline x chips: the cost of a step; the all-memories column reads XLA's every byte "
      "as HBM traffic)."
  ]
  for recipe, rows in sorted(by_recipe.items()):
    lines += [
        f"\n{recipe}:\n", "| settings | topology | roofline ms (bound) | MFU bound | HFU bound | "
        "MFU bound, all bytes as HBM | chip-seconds per step | per-device GiB (usable) |",
        "|---" * 8 + "|"
    ]
    for name, settings, r in sorted(rows, key=lambda x: -x[2]["mfu_bound"]):
      chips = r["devices"] // (2 if r["chip"] == "TPU v4" else 1)
      lines.append(
          f"| {settings or '(as configured)'} | {r['topology']} | {r['roofline_seconds'] * 1e3:.1f} "
          f"({r['bound']}) | {r['mfu_bound']:.2f} | {r['hfu_bound']:.2f} | {r['mfu_bound_all_memories']:.2f} | "
          f"{r['roofline_seconds'] * chips:.3f} | {r['total_bytes'] / GiB:.2f} ({r['usable_hbm_bytes'] / GiB:.2f}) |"
      )
  path = os.path.join(out_dir, "advice.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def compare(before_dir: str, after_dir: str) -> str:
  """after_dir/compare.md: the programs compiled in both, before -> after."""
  before = {(n, r["topology"], r["program"]): r for n, _, r in records(before_dir)}
  lines = [
      "| recipe | topology | program | fits | GiB total | HBM GB | all memories GB | TFLOP executed | "
      "roofline ms | MFU bound | HFU bound | MFU bound, all bytes as HBM |", "|---" * 12 + "|"
  ]
  cell = lambda a, b, key, scale, fmt: ("-" if key not in a or key not in b else
                                        f"{a[key] / scale:{fmt}} -> {b[key] / scale:{fmt}}")
  for name, _, r in records(after_dir):
    b = before.get((name, r["topology"], r["program"]))
    if b is None:
      continue
    fits = f"{'yes' if b['fits'] else 'NO'} -> {'yes' if r['fits'] else 'NO'}"
    lines.append(
        f"| {name} | {r['topology']} | {r['program']} | {fits} | {cell(b, r, 'total_bytes', GiB, '.2f')} | "
        f"{cell(b, r, 'hbm_bytes', GB, '.1f')} | {cell(b, r, 'bytes_accessed', GB, '.1f')} | "
        f"{cell(b, r, 'flops', 1e12, '.2f')} | {cell(b, r, 'roofline_seconds', 1e-3, '.1f')} | "
        f"{cell(b, r, 'mfu_bound', 1, '.2f')} | {cell(b, r, 'hfu_bound', 1, '.2f')} | "
        f"{cell(b, r, 'mfu_bound_all_memories', 1, '.2f')} |")
  path = os.path.join(after_dir, "compare.md")
  with open(path, "w") as f:
    f.write(
        f"Before ({os.path.relpath(before_dir, HERE)}) -> after ({os.path.relpath(after_dir, HERE)}); "
        "compiled, not measured; per device.\n\n" + "\n".join(lines) + "\n")
  return path


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--only", action="append", choices=sorted(RECIPES), help="recipes (default: all)")
  p.add_argument("--topologies", default="",
                 help="comma-separated (default: each recipe's own list)")
  p.add_argument("--out-dir", default=OUT)
  p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                 help="write AFTER/compare.md and stop")
  args = p.parse_args()
  if args.compare:
    print(compare(*args.compare))
    return
  os.makedirs(args.out_dir, exist_ok=True)
  for name in args.only or RECIPES:
    for topology in (args.topologies.split(",") if args.topologies else RECIPES[name][3]):
      compile_one(name, topology, args.out_dir)
  print(write_table(args.out_dir))


if __name__ == "__main__":
  main()
