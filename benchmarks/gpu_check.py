"""Every GPU number the project needs, in one run sized for a short slot on a bare machine.

    bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--budget SECONDS] [--peak-tflops 989]

Run through gpu_check.sh (it installs the wheels of `.whl/`, if any, and puts this checkout on the
path). No network: the model is a random-init BERT written here (benchmarks/vs_pytorch.py
random_model_dir: speed does not depend on the weights), the data generated or shipped. Sections,
each in processes of its own, each result written as soon as it exists:

  env      the devices, the stack's versions, nvidia-smi's line.
  profile  our step at the step section's first shape under jax's profiler (gpu_profile.py): wall
           vs device-busy ms per step, kernels per step, time by kind of kernel, the top kernels,
           and the Perfetto trace; it and that first step run share one compilation cache.
  step     the SRL train step, ours vs sentence-transformers + the authors' loss on the same batches
           (their loss checked equal to ours first), at 128 pairs, the same with our step on cuDNN's
           fused attention (model.attention=cudnn), then at 32 pairs: examples/s, model TFLOP/s and
           MFU against --peak-tflops (989: an H100/H200 SXM's dense bf16), via vs_pytorch.py.
  recipe   `python -m starbucks_jax.main --config=configs/ft.py:nli` end to end (bf16, batch 128,
           MNRL + feature KL over the six pairs) on generated triplets for --recipe-steps steps, then
           the shipped demo STS evaluation: wall, compile, steps/s (WORKDIR/timing.json), and the
           compiled step's memory beside the device's measured peak (memory_stats).
  encode   the retrieval corpus encoder's passages/s at every (layer, dim) of the schedule, each
           size running only its layers (early exit), via retrieval.py.

Each section's first minute or so is compiling (autotuning included): sections get shares of
--budget (SHARE), a section's runs split what is left of its share. Writes DIR/gpu_check.json
(everything, rewritten after each section), DIR/gpu_check.md (the tables), gpu_check.log (every
child's output), each step run's step_b*.json as it ends and the profile's trace: 7 files, within a
slot's 8 returned. DIR defaults to $OUT (the slot's return folder), else ./gpu_check_out. A
section that fails or outlives its share of --budget is recorded as such and the next one runs.
`--dry-run` runs the same sections on this CPU with MiniLM's shape at tiny sizes (CI runs it): every
code path but the device's (one step run, its attention core XLA's fused one standing in for
cuDNN's, which needs a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from starbucks_jax.schedule import STARBUCKS  # noqa: E402 - the checkout's package, after the path

# What each run measures: the paper's bert-base in bf16 on a GPU; MiniLM's shape, tiny, in a dry run.
SIZES = {
    "gpu": dict(preset="bert-base", dtype="bfloat16",
                step_runs=((128, "standard"), (128, "cudnn"), (32, "standard")), step_length=128,
                step_steps=10, recipe_batch=128, recipe_words=(8, 40), encode_docs=8192,
                encode_length=196, encode_batch=512),
    "dry": dict(preset="minilm-l6-h384", dtype="float32", step_runs=((4, "dot_product"),),
                step_length=16, step_steps=1, recipe_batch=8, recipe_words=(15, 28), encode_docs=32,
                encode_length=32, encode_batch=16),
}
SHARE = {"profile": 0.16, "step": 0.48, "recipe": 0.22,
         "encode": 0.14}  # of the budget left when each section starts

# This process only looks at the devices and writes the random model (on the CPU): it must not take
# jax's default 75% of the GPU from the processes that measure. They get the environment as a user has it.
PARENT_ONLY = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
_set_here: set[str] = set()  # the PARENT_ONLY variables this process set (not the user)


class SectionTimeout(Exception):
  pass


def run(cmd: list[str], timeout: float, log_path: str, extra_env: dict | None = None) -> str:
  """Run a child process (this checkout on its path, `extra_env` added), its output appended to
  `log_path`; its stdout."""
  env = {k: v for k, v in os.environ.items() if k not in _set_here} | (extra_env or {})
  env["PYTHONPATH"] = REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
  try:
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=max(timeout, 1))
  except subprocess.TimeoutExpired as e:
    with open(log_path, "a") as f:
      f.write(
          f"$ {' '.join(cmd)}\n(timed out after {timeout:.0f} s)\n{e.stdout or ''}\n{e.stderr or ''}\n"
      )
    raise SectionTimeout(f"timed out after {timeout:.0f} s") from None
  with open(log_path, "a") as f:
    f.write(f"$ {' '.join(cmd)}\n{done.stdout}\n{done.stderr}\n")
  if done.returncode:
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    raise RuntimeError(f"exit {done.returncode}: " + " | ".join(tail))
  return done.stdout


def env_section() -> dict:
  from importlib.metadata import PackageNotFoundError, version

  import jax
  versions = {}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "torch",
               "sentence-transformers", "ml-collections"):
    try:
      versions[name] = version(name)
    except PackageNotFoundError:  # absent is an answer
      versions[name] = None
  smi = shutil.which("nvidia-smi")
  gpu = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip() if smi else None
  devices = jax.devices()
  return {
      "python": platform.python_version(), "platform": jax.default_backend(),
      "devices": [str(d) for d in devices], "device_kind": devices[0].device_kind,
      "nvidia_smi": gpu, "versions": versions
  }


def step_section(size: dict, model_dir: str, peak: float, out: str, log: str, deadline: float,
                 env: dict) -> list[dict]:
  """One vs_pytorch.py run per (batch, our attention core); a run that fails is a row with its error."""
  rows = []
  for batch, core in size["step_runs"]:
    path = os.path.join(out,
                        f"step_b{batch}" + ("" if core == "standard" else f"_{core}") + ".json")
    share = (deadline - time.time()) / (len(size["step_runs"]) - len(rows))
    try:
      run([
          sys.executable,
          os.path.join(HERE, "vs_pytorch.py"), "--model", model_dir, "--batch",
          str(batch), "--length",
          str(size["step_length"]), "--steps",
          str(size["step_steps"]), "--rounds", "1", "--dtype", size["dtype"], "--attention", core,
          "--peak-tflops",
          str(peak), "--out", path
      ], share, log, env)
      rows.append(json.load(open(path)))
    except (RuntimeError, SectionTimeout) as e:
      rows.append({
          "batch_pairs": batch, "length": size["step_length"], "dtype": size["dtype"],
          "attention": core, "error": str(e)
      })
  if all("error" in r for r in rows):
    raise RuntimeError("every run failed: " + "; ".join(r["error"] for r in rows))
  return rows


def profile_section(size: dict, model_dir: str, out: str, work: str, log: str, deadline: float,
                    env: dict) -> dict:
  """Our step at the step section's first shape, traced (gpu_profile.py): where the time goes. Its
  summary goes into gpu_check.json, its trace to `out` (a slot returns 8 files at most)."""
  batch, core = size["step_runs"][0]
  folder = os.path.join(work, "profile")
  run([
      sys.executable,
      os.path.join(HERE, "gpu_profile.py"), "--model", model_dir, "--batch",
      str(batch), "--length",
      str(size["step_length"]), "--dtype", size["dtype"], "--attention", core, "--steps",
      str(size["step_steps"]), "--out", folder
  ], deadline - time.time(), log, env)
  shutil.copy(os.path.join(folder, "profile_trace.json.gz"), out)
  return json.load(open(os.path.join(folder, "profile.json")))


def write_triplets(path: str, rows: int, words: tuple[int, int] = (8, 40), seed: int = 0) -> None:
  """AllNLI-shaped triplets of placeholder words (one token each in the random model's vocabulary):
  anchors of `words` (8-40: AllNLI's), positives and negatives of about half as many (a dry run's
  15-28 words: every batch pads to 32 tokens, one compile)."""
  rng = random.Random(seed)
  lo, hi = words
  text = lambda lo, hi: " ".join(f"w{rng.randrange(1000, 30000)}"
                                 for _ in range(rng.randint(lo, hi)))
  short = (lo // 2, hi * 3 // 5)
  with open(path, "w") as f:
    for _ in range(rows):
      row = {"anchor": text(lo, hi), "positive": text(*short), "negative": text(*short)}
      f.write(json.dumps(row) + "\n")


def recipe_section(size: dict, model_dir: str, steps: int, work: str, log: str,
                   deadline: float) -> dict:
  data = os.path.join(work, "triplets.jsonl")
  write_triplets(data, steps * size["recipe_batch"], size["recipe_words"])
  workdir = os.path.join(work, "nli")
  t = time.time()
  run([
      sys.executable, "-m", "starbucks_jax.main", "--config=configs/ft.py:nli",
      f"--workdir={workdir}", f"--config.model.init_from={model_dir}",
      f"--config.model.dtype={size['dtype']}",
      f"--config.schedule.pairs={STARBUCKS[size['preset']]}", f"--config.data.train={data}",
      f"--config.data.batch_size={size['recipe_batch']}",
      "--config.eval.sts=demo/test=demo:sts_test.jsonl", "--config.log.tensorboard=False",
      f"--config.train.checkpoint_every={steps}", "--compilation_cache="
  ], deadline - time.time(), log)
  timing = json.load(open(os.path.join(workdir, "timing.json")))
  final = json.load(open(os.path.join(workdir, "results", "final.json")))
  return {
      "steps": timing.get("steps"), "batch": size["recipe_batch"], "wall_s": time.time() - t,
      "timing": timing,
      "steps_per_s": timing["steps"] / timing["train_s"] if timing.get("train_s") else None,
      "result_rows": len(final)
  }  # one per (layer, dim) and dataset: the evaluation ran


def encode_section(size: dict, model_dir: str, schedule: str, work: str, log: str,
                   deadline: float) -> dict:
  path = os.path.join(work, "encode.json")
  run([
      sys.executable,
      os.path.join(HERE, "retrieval.py"), "--model", model_dir, "--schedule", schedule, "--docs",
      str(size["encode_docs"]), "--length",
      str(size["encode_length"]), "--batch",
      str(size["encode_batch"]), "--encode-only", "--out", path
  ], deadline - time.time(), log)
  return json.load(open(path))


def table(results: dict) -> str:
  """The Markdown summary of whatever finished."""
  env = results.get("env", {})
  lines = [
      f"# gpu_check ({'dry run' if results['dry_run'] else 'measured'}, {results['date']}, commit "
      f"{results.get('commit')})", "",
      f"- device: {env.get('device_kind')} ({env.get('platform')}); "
      f"{env.get('nvidia_smi') or 'no nvidia-smi'}", f"- versions: {env.get('versions')}",
      f"- peak used for MFU: {results['peak_tflops']} TFLOP/s (dense bf16)", ""
  ]
  for name, section in results["sections"].items():
    if "error" in section:
      lines.append(f"- {name}: NOT MEASURED ({section['error']})")
  step = results["sections"].get("step", {}).get("rows", [])
  if step:
    lines += [
        "", "| SRL step | our attention | batch x length | examples/s ours | examples/s PyTorch | "
        "ours / PyTorch | model TFLOP/s ours | MFU ours | MFU PyTorch | loss check (rel. diff) |",
        "|---" * 10 + "|"
    ]
    for r in step:
      where = f"| {r['dtype']} | {r.get('attention', 'standard')} | {r['batch_pairs']} x {r['length']} |"
      if "error" in r:
        lines.append(f"{where} NOT MEASURED ({r['error'][:200].replace('|', '/')}) |" + " |" * 6)
        continue
      rate, flops, mfu = r["examples_per_sec"], r["gflops_per_sec"], r.get("mfu", {})
      lines.append(
          f"{where} {rate['jax/starbucks']:.1f} | "
          f"{rate['torch/starbucks']:.1f} | {rate['jax/starbucks'] / rate['torch/starbucks']:.2f} | "
          f"{flops['jax/starbucks'] / 1e3:.1f} | {_pct(mfu.get('jax/starbucks'))} | "
          f"{_pct(mfu.get('torch/starbucks'))} | {r['loss']['relative_difference']:.1e} |")
  recipe = results["sections"].get("recipe", {})
  if "timing" in recipe:
    t = recipe["timing"]
    peak, planned = t.get("device_peak_bytes"), t.get("compiled_step_bytes")
    lines += [
        "",
        "| recipe | steps x batch | wall s | start-up s | compile s (compiles) | train s | steps/s | "
        "eval s | compiled step GiB | device peak GiB |", "|---" * 10 + "|",
        f"| nli (generated triplets) | {recipe['steps']} x {recipe['batch']} | {recipe['wall_s']:.1f} | "
        f"{_fmt(t.get('startup_s'))} | {_fmt(t.get('compile_s'))} ({t.get('compiles')}) | {_fmt(t.get('train_s'))} | "
        f"{_fmt(recipe.get('steps_per_s'))} | {_fmt(t.get('eval_s'))} | "
        f"{_fmt(planned / 2**30 if planned else None)} | {_fmt(peak / 2**30 if peak else None)} |"
    ]
  encode = results["sections"].get("encode", {})
  if "rates" in encode:
    lines += [
        "",
        f"| encoder, {encode['docs']} passages of {encode['length']} tokens, batch {encode['batch']} | "
        "passages/s |", "|---|---|"
    ]
    lines += [
        f"| ({r['layer']}, {r['dim']}) | {r['passages_per_s']:.1f} |" for r in encode["rates"]
    ]
    lines.append(f"| every layer in one pass | {encode['all_layers_passages_per_s']:.1f} |")
  profile = results["sections"].get("profile", {})
  if "summary" in profile:
    s = profile["summary"]
    lines += [
        "", f"Profile of our step ({profile['batch']} pairs x {profile['length']}, "
        f"{profile['attention']}): wall {s['wall_ms_per_step']:.1f} ms/step, device busy "
        f"{s['busy_ms_per_step']:.1f} ms/step, {s['kernels_per_step']:.0f} kernels/step; "
        "ms/step by "
        "kind: " + ", ".join(f"{k} {ms:.2f}" for k, ms in s["ms_per_step_by_kind"].items()), "",
        "| top kernel (HLO op) | kind | ms/step | calls/step |", "|---|---|---|---|"
    ]
    lines += [
        f"| {t['name'][:80].replace('|', '/')} | {t['kind']} | {t['ms_per_step']:.3f} | "
        f"{t['calls_per_step']:.0f} |" for t in s["top"][:12]
    ]
  return "\n".join(lines) + "\n"


def _fmt(x) -> str:
  return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def _pct(x) -> str:
  return "-" if x is None else f"{x:.1%}"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dry-run", action="store_true",
                 help="the same sections on this CPU, MiniLM's shape, tiny sizes")
  p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out",
                 help="where the results go")
  p.add_argument("--budget", type=float, default=500.0, help="seconds for all sections together")
  p.add_argument("--peak-tflops", type=float, default=989.0,
                 help="the device's dense bf16 peak, for MFU")
  p.add_argument("--recipe-steps", type=int, default=0,
                 help="steps of the recipe run (default 200; dry run 3)")
  p.add_argument("--only", default="",
                 help="comma-separated sections (default: env,step,recipe,encode)")
  args = p.parse_args()
  for k, v in PARENT_ONLY.items():  # before jax starts in this process
    if k not in os.environ:
      os.environ[k] = v
      _set_here.add(k)
  size = SIZES["dry" if args.dry_run else "gpu"]
  steps = args.recipe_steps or (3 if args.dry_run else 200)
  only = set(args.only.split(",")) if args.only else {"env", *SHARE}
  if only - {"env", *SHARE}:
    p.error(
        f"--only {args.only}: unknown sections {sorted(only - {'env', *SHARE})}; expected env, {', '.join(SHARE)}"
    )
  os.makedirs(args.out, exist_ok=True)
  deadline = time.time() + args.budget
  log = os.path.join(args.out, "gpu_check.log")
  open(log, "w").close()
  from vs_pytorch import git_commit, random_model_dir  # noqa: E402 - after the path is set
  results = {
      "dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
      "peak_tflops": args.peak_tflops, "budget_s": args.budget, "settings": size, "sections": {}
  }

  def save():
    json.dump(results, open(os.path.join(args.out, "gpu_check.json"), "w"), indent=1)
    open(os.path.join(args.out, "gpu_check.md"), "w").write(table(results))

  if "env" in only:
    results["env"] = env_section()
    save()
  work = tempfile.mkdtemp(prefix="gpu_check_")
  import jax
  # the init's arrays stay off the GPU
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    model_dir = random_model_dir(size["preset"], os.path.join(work, "model"))
  # the profile's step and the step section's first are one program: compiled once (autotuning too)
  cache = {"JAX_COMPILATION_CACHE_DIR": os.path.join(work, "jax_cache")}
  sections = {
      "profile": lambda end: profile_section(size, model_dir, args.out, work, log, end, cache),
      "step": lambda end:
              {"rows": step_section(size, model_dir, args.peak_tflops, args.out, log, end, cache)},
      "recipe": lambda end: recipe_section(size, model_dir, steps, work, log, end),
      "encode": lambda end: encode_section(size, model_dir, size["preset"], work, log, end),
  }
  chosen = [name for name in sections if name in only]
  for i, name in enumerate(chosen):
    t = time.time()
    # its share of what is left
    end = t + (deadline - t) * SHARE[name] / sum(SHARE[k] for k in chosen[i:])
    try:
      results["sections"][name] = {**sections[name](end), "seconds": time.time() - t}
    except Exception as e:  # noqa: BLE001 - recorded, and the next section still runs
      results["sections"][name] = {"error": f"{type(e).__name__}: {e}", "seconds": time.time() - t}
      with open(log, "a") as f:
        f.write(traceback.format_exc())
    print(
        f"{name}: {time.time() - t:.0f} s{' - ' + results['sections'][name]['error'] if 'error' in results['sections'][name] else ''}",
        flush=True)
    save()
  shutil.rmtree(work, ignore_errors=True)
  print(table(results))
  failed = [k for k, v in results["sections"].items() if "error" in v]
  if failed:
    sys.exit(f"gpu_check: {', '.join(failed)} not measured (see {log})")


if __name__ == "__main__":
  main()
