"""Where our SRL step's time goes on the device: a profiler trace of a few steps, summarised by kernel.

    python benchmarks/gpu_profile.py --model DIR|random:bert-base [--batch 128] [--length 128] \
        [--dtype bfloat16] [--attention standard] [--steps 10] [--trace-steps 3] [--out DIR]

The step is vs_pytorch.py's (its `jax_step`, the same program). After a warm-up it times --steps
steps, then traces --trace-steps more with jax.profiler (a Perfetto trace). From the trace it writes
DIR/profile.json and DIR/profile.md: wall ms per step, the device's busy ms per step (kernels end to
end, merged, so the gap is host or launch time), kernels per step, ms per step by kind of kernel
(matmul, cuDNN attention, random bits, copies, XLA fusions, other) and the top kernels by time; and
DIR/profile_trace.json.gz, the trace itself, for Perfetto. On a CPU (no device process in the trace)
the XLA CPU client's op events stand in, so a dry run covers every path but CUPTI's.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import vs_pytorch  # noqa: E402 - beside this file

# (kind, substrings of a kernel's name, lower case): the first that matches names its kind
KINDS = (("matmul", ("gemm", "xmma", "cutlass", "cublas", "sm90_", "sm80_",
                     "dot")), ("cudnn attention", ("cudnn", "fmha", "flash")),
         ("random bits", ("threefry", "philox", "rng")), ("copies", ("memcpy", "memset", "copy")),
         ("XLA fusions", ("fusion",)))


def kind_of(name: str) -> str:
  low = name.lower()
  return next((kind for kind, keys in KINDS if any(k in low for k in keys)), "other")


def device_events(trace: dict) -> list[dict]:
  """The kernels of the trace's device processes ('/device:GPU:0', ...): their 'Stream ...' threads
  (not the 'XLA Ops'/'XLA Modules' lines derived from them); on a CPU, the XLA CPU client's op
  events (threads tf_XLA..., the runtime's own 'Class::method' spans left out)."""
  events = trace["traceEvents"]
  procs = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("name") == "thread_name"}
  devices = {pid for pid, name in procs.items() if name.startswith("/device:")}
  spans = [e for e in events if e.get("ph") == "X"]
  if devices:
    streams = {k for k, name in threads.items() if k[0] in devices and name.startswith("Stream")}
    return [
        e for e in spans
        if e["pid"] in devices and (not streams or (e["pid"], e.get("tid")) in streams)
    ]
  xla = {k for k, name in threads.items() if name.startswith("tf_XLA")}
  return [e for e in spans if (e["pid"], e.get("tid")) in xla and "::" not in e["name"]]


def busy_us(events: list[dict]) -> float:
  """Microseconds with at least one event running (overlapping events merged)."""
  total, end = 0.0, float("-inf")
  for start, stop in sorted((e["ts"], e["ts"] + e["dur"]) for e in events):
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def summarise(events: list[dict], steps: int, wall_ms: float, top: int) -> dict:
  """Per-step figures of `steps` traced steps: busy time, kernel count, by kind, the top kernels."""
  by_name = collections.defaultdict(lambda: [0.0, 0])
  for e in events:
    key = e.get("args", {}).get("hlo_op") or e["name"]
    by_name[key][0] += e["dur"]
    by_name[key][1] += 1
  total = sum(us for us, _ in by_name.values()) or 1.0
  by_kind = collections.Counter()
  for name, (us, _) in by_name.items():
    by_kind[kind_of(name)] += us / 1e3 / steps
  ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
  return {
      "wall_ms_per_step": wall_ms, "busy_ms_per_step": busy_us(events) / 1e3 / steps,
      "kernels_per_step": len(events) / steps, "ms_per_step_by_kind": dict(by_kind.most_common()),
      "top": [{
          "name": name, "kind": kind_of(name), "ms_per_step": us / 1e3 / steps,
          "calls_per_step": n / steps, "share": us / total
      } for name, (us, n) in ranked]
  }


def table(result: dict) -> str:
  s = result["summary"]
  lines = [
      f"# Our SRL step, profiled ({result['device']}, {result['batch']} pairs x {result['length']} "
      f"tokens, {result['dtype']}, attention {result['attention']})", "",
      f"- wall {s['wall_ms_per_step']:.2f} ms/step (median of {result['steps']}); device busy "
      f"{s['busy_ms_per_step']:.2f} ms/step; {s['kernels_per_step']:.0f} kernels/step", "",
      "| kind | ms/step |", "|---|---|"
  ]
  lines += [f"| {k} | {ms:.3f} |" for k, ms in s["ms_per_step_by_kind"].items()]
  lines += [
      "", "| kernel (HLO op) | kind | ms/step | calls/step | share |", "|---|---|---|---|---|"
  ]
  lines += [
      f"| {t['name'][:90].replace('|', '/')} | {t['kind']} | {t['ms_per_step']:.3f} | "
      f"{t['calls_per_step']:.0f} | {t['share']:.1%} |" for t in s["top"]
  ]
  return "\n".join(lines) + "\n"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument(
      "--model", required=True,
      help=f"a model directory, or {vs_pytorch.RANDOM}PRESET (bert-base, minilm-l6-h384)")
  p.add_argument("--batch", type=int, default=128, help="(anchor, positive) pairs per step")
  p.add_argument("--length", type=int, default=128, help="tokens per text")
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  p.add_argument("--attention", default="standard", help="model.attention of the step")
  p.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up)")
  p.add_argument("--trace-steps", type=int, default=3, help="steps in the trace")
  p.add_argument("--top", type=int, default=25, help="kernels listed")
  p.add_argument("--out", default="gpu_profile_out", help="where the results go")
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  if args.model.startswith(vs_pytorch.RANDOM):
    args.model = vs_pytorch.random_model_dir(args.model[len(vs_pytorch.RANDOM):],
                                             tempfile.mkdtemp(prefix="gpu_profile_model_"))
  setup = vs_pytorch._setup(args)
  cfg = setup[0].config.replace(dtype=args.dtype, attention=args.attention)
  update, state, batch = vs_pytorch.jax_step(cfg, setup, "starbucks")

  def step(state, i):
    state, metrics = update(state, batch, jax.random.key(i))
    jax.block_until_ready(metrics)
    return state

  state = step(state, 0)
  walls = []
  for i in range(args.steps):
    t = time.perf_counter()
    state = step(state, i + 1)
    walls.append(time.perf_counter() - t)
  trace_dir = tempfile.mkdtemp(prefix="gpu_profile_trace_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for i in range(args.trace_steps):
      state = step(state, args.steps + 1 + i)
  path = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)[0]
  trace = json.load(gzip.open(path))
  shutil.copy(path, os.path.join(args.out, "profile_trace.json.gz"))
  result = {
      "command": " ".join(["python", "benchmarks/gpu_profile.py",
                           *sys.argv[1:]]), "commit": vs_pytorch.git_commit(),
      "device": jax.devices()[0].device_kind, "jax": jax.__version__, "batch": args.batch,
      "length": args.length, "dtype": args.dtype, "attention": args.attention, "steps": args.steps,
      "trace_steps": args.trace_steps, "summary": summarise(device_events(trace), args.trace_steps,
                                                            statistics.median(walls) * 1e3,
                                                            args.top)
  }
  json.dump(result, open(os.path.join(args.out, "profile.json"), "w"), indent=1)
  open(os.path.join(args.out, "profile.md"), "w").write(table(result))
  print(table(result))


if __name__ == "__main__":
  main()
