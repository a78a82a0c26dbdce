"""Compile a run's train step for a TPU topology or NVIDIA GPUs on this machine: memory, FLOPs, roofline.

    python -m starbucks_jax.compile --config=configs/ft.py:nli --topology=v5e-8 [--out F.json] \\
        [--length 128] [--config.train.microbatches=2 ...]

Needs libtpu (`pip install -e .[tpu]`) for TPUs, the CUDA plugin (`.[gpu]`) for GPUs (--topology=h100,
h200x8, ...: gpu_targets); no accelerator, no weights and no data are read. The program is the
one `main` would jit (loop.jit_step over the objective's train_program, with the run's mesh, rules,
shardings, donation and dtypes), over abstract parameters and optimizer state: shapes come from the
checkpoint's config.json when model.init_from is a local directory, else from the encoder preset
named by --preset (default: guessed from model.init_from). The batch is padded to --length tokens
(default: model.max_length, else max_position_embeddings: the largest shape a run can meet). Retrieval configs also
compile the evaluation encoder (eval.batch_size passages of eval.passage_max_length on one chip; TPUs only).

For every program it prints and writes (--out, JSON): devices and mesh; per-device argument, output
and temporary bytes against the HBM the compiler may use (its own figure), and whether it fits; the
FLOPs it executes and the model's FLOPs; its HBM bytes, XLA's bytes in all memories and its bytes
over the interconnect (every loop body once per trip: hlo_costs); the roofline lower bound on the
step time and the MFU and HFU bounds it implies (roofline.py); with --breakdown, bytes and FLOPs by
category (matmuls, attention, optimizer, ...). Compiled figures, not measurements. A step that does
not fit names the settings that lower its memory.
"""

from __future__ import annotations

from starbucks_jax import cli

if __name__ == "__main__":
  cli.raise_stack_limit()  # before jax loads
  import os
  # nothing runs; and the CUDA plugin loads without a GPU only so
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import collections
import json
import logging
import os
import re
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from starbucks_jax import (
    checkpoint,
    gpu_targets,
    hlo_costs,
    loop,
    objectives,
    roofline,
    sharding,
    trainer,
)
from starbucks_jax import step as step_lib
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.embed import pool_layers
from starbucks_jax.models import encoders
from starbucks_jax.models.encoders import EncoderConfig, abstract_params
from starbucks_jax.topologies import (
    TOPOLOGIES,
    CompileError,
    OutOfMemory,
    Topology,
    compiled_or_oom,
    topology,
)

log = logging.getLogger(__name__)
GiB = 2**30
PRESETS = {
    "bert-base-uncased": "bert-base", "bert-base-cased": "bert-base",
    "all-MiniLM-L6-v2": "minilm-l6-h384", "ModernBERT-base": "modernbert-base",
    "ModernBERT-large": "modernbert-large", "granite-embedding-english-r2": "modernbert-base"
}


# ---------------------------------------------------------------------------------------------
# Programs
# ---------------------------------------------------------------------------------------------
def backbone_of(config: ml_collections.ConfigDict, preset: str | None) -> EncoderConfig | None:
  """None when model.init_from is a local model or workdir (its config.json is read); else the preset."""
  source = config.model.init_from
  if preset is None:
    try:
      checkpoint.model_config_dir(source)
      return None
    except (FileNotFoundError, ValueError, OSError):
      preset = PRESETS.get(source.split("/")[-1])
      if preset is None:
        raise CompileError(
            f"model.init_from={source!r} is not a local model directory and has no known "
            f"preset: pass --preset (one of {sorted(encoders.PRESETS)})") from None
  return encoders.preset(preset)


def _compile_step(config, topo: Topology, program: trainer.TrainProgram):
  """Lower and compile the program's step exactly as loop.fit jits it, over topology devices."""
  mesh = sharding.make_mesh(tuple(config.mesh.shape), topo.devices)
  rules = sharding.rules_from_config(config.mesh.rules)
  tx = step_lib.make_optimizer(config.train, max(config.train.max_steps, 1000))
  params = program.params
  state = step_lib.TrainState(jax.ShapeDtypeStruct((), jnp.int32), params,
                              jax.eval_shape(tx.init, params))
  key = jax.eval_shape(lambda: jax.random.key(0))
  # outside the mesh context: optax builds a placeholder state with concrete (host) zeros
  state_sh = sharding.state_shardings(state, tx,
                                      sharding.param_shardings(program.param_specs, mesh, rules),
                                      mesh, config.mesh.shard_optimizer)
  batch_sh = sharding.batch_shardings(program.batch, mesh, program.batch_axes)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    lowered = loop.jit_step(program.step_for(tx).update, state_sh,
                            batch_sh).lower(state, program.batch, key)
  return compiled_or_oom(lowered), mesh


def programs(config: ml_collections.ConfigDict, topo: Topology, *, preset: str | None = None,
             length: int | None = None) -> list[dict[str, Any]]:
  """Compile the run's train step (and a retrieval run's evaluation encoder) for `topo`; one report each."""
  objective = objectives.for_config(config)
  run = objective.describe(config, backbone=backbone_of(config, preset), devices=topo.devices)
  program = objective.train_program(config, run, _length(config, run.model.config, length))
  compiled, mesh = _compile_step(config, topo, program)
  out = [report("train_step", compiled, mesh, topo, program.model_flops, program.shape)]
  # the evaluation encoder on a GPU: deviceless, XLA's Triton GEMM tiling refuses its float32 products
  # ("Couldn't find output tile sizes"), so GPUs get the train step only
  if getattr(run, "retrieval_sets", ()) and not topo.is_gpu:
    out.append(_eval_encoder(config, run, topo))
  return out


def _length(config: ml_collections.ConfigDict, cfg: EncoderConfig, length: int | None) -> int:
  """--length, else model.max_length, else max_position_embeddings (a fine-tuning run's own default,
  the checkpoint's max_seq_length, needs the checkpoint)."""
  return length or min(config.model.max_length or cfg.max_position_embeddings,
                       cfg.max_position_embeddings)


def _eval_encoder(config, run, topo: Topology) -> dict[str, Any]:
  """The corpus encoder of retrieval evaluation (Embedder: eval.dtype throughout, one chip), one
  batch of passages."""
  dtype = config.eval.get("dtype", "float32")
  cfg = run.model.config.replace(dtype=dtype, param_dtype="float32", precision="pure", remat=False,
                                 attention="standard")
  B, T = config.eval.batch_size, config.eval.passage_max_length
  mesh = sharding.make_mesh((1, 1, 1), topo.devices[:1])
  layers = tuple(sorted({n for n, _ in run.eval_pairs}))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract_params(cfg))
  ids = jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=replicated)
  compiled = pool_layers.lower(params, ids, ids, config=cfg, layers=layers,
                               pooling=config.model.pooling).compile()
  flops = cfg.replace(num_hidden_layers=max(layers)).matmul_flops(B, T, train=False)
  return report("eval_encoder", compiled, mesh, topo, flops, f"{B} passages x {T} tokens, {dtype}")


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
def report(program: str, compiled, mesh, topo: Topology, model_flops: int,
           batch: str) -> dict[str, Any]:
  """Memory, FLOPs, bytes and the roofline of one compiled program, per device (memory alone, from
  the compiler's refusal, for a program that does not fit). FLOPs and bytes are XLA's cost analysis
  plus, for every loop, its body's count (hlo_costs, read from the compiled HLO) for each trip after
  the first; `breakdown` splits the step's bytes and FLOPs by category (hlo_costs.category)."""
  devices = mesh.devices.size
  base = {
      "program": program, "topology": topo.name, "chip": topo.chip, "devices": devices,
      "mesh": dict(mesh.shape), "batch": batch, "hbm_capacity_bytes": topo.hbm_bytes,
      "usable_hbm_bytes": topo.usable_hbm_bytes, "model_flops": model_flops / devices
  }
  if isinstance(compiled, OutOfMemory):
    return {
        **base, "total_bytes": compiled.required_bytes, "fits": False, "compiler": compiled.message
    }
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  used = loop.compiled_bytes(mem)
  text = compiled.as_text()
  costs = hlo_costs.costs(text, devices)
  # a deviceless GPU compile has no cost analysis: the HLO reading stands in for it
  hlo_read = cost is None
  if hlo_read:
    cost = {"flops": costs.xla_like("flops"), "bytes accessed": costs.xla_like("bytes")}
  xla_flops, xla_bytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  # the loops' further trips; and the kernels XLA's analysis counts as none, once (their further
  # trips are in the first term)
  extra = {k: costs.total(k) - costs.xla_like(k) for k in ("flops", "bytes")}
  if not hlo_read:
    extra["flops"] += costs.uncosted_flops()
  r = {
      **base,
      "argument_bytes": mem.argument_size_in_bytes,
      "output_bytes": mem.output_size_in_bytes,
      "temp_bytes": mem.temp_size_in_bytes,
      "alias_bytes": mem.alias_size_in_bytes,
      "total_bytes": used,
      "fits": used <= topo.usable_hbm_bytes,
      "xla_flops": xla_flops,
      "xla_bytes_accessed": xla_bytes,
      "flops": xla_flops + extra["flops"],
      "bytes_accessed": xla_bytes + extra["bytes"],
      "hbm_bytes": costs.total("hbm_bytes"),
      "ici_bytes": costs.total("ici_bytes"),
      "hlo_reading": {
          "bytes_vs_xla": costs.xla_like("bytes") / xla_bytes if xla_bytes else None,
          "flops_vs_xla": costs.xla_like("flops") / xla_flops if xla_flops else None,
          "loops": {str(k): v for k, v in costs.loops.items()}, "unread_loops": costs.unread_loops
      },
      "breakdown": costs.by_category(),
      # the kernels XLA calls out to (cuDNN attention, cuBLAS GEMMs, Pallas kernels), as they appear in the program
      "custom_calls": dict(collections.Counter(re.findall(r'custom_call_target="([^"]+)"', text)))
  }
  return roofline.roofline(r, topo.peak_flops, topo.hbm_bandwidth, topo.ici_bandwidth)


def advice(config: ml_collections.ConfigDict, r: dict[str, Any]) -> list[str]:
  """Overrides that lower a step's memory, for one that does not fit."""
  over = (r["total_bytes"] - r["usable_hbm_bytes"]) / GiB
  what = "temporaries alone (the compiler's count)" if "compiler" in r else "in all"
  tips = [
      f"needs {r['total_bytes'] / GiB:.2f} GiB ({what}) of {r['usable_hbm_bytes'] / GiB:.2f} GiB per device "
      f"({over:.2f} GiB over); try:"
  ]
  if r["chip"] in gpu_targets.KINDS and r["total_bytes"] < 0.95 * r["hbm_capacity_bytes"]:
    tips.append(
        f"XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 in the run's environment (jax's allocator takes "
        f"{gpu_targets.CLIENT_MEM_FRACTION:.0%} of the GPU by default)")
  if config.model.remat in ("none", False):
    tips.append(
        "--config.model.remat=full (recompute each layer in the backward pass: activations)")
  if config.train.get("grad_cache_chunks") == 0:  # an objective with a gradient cache, not using it
    tips.append(
        "--config.train.grad_cache_chunks=4 (SRL: the whole batch's negatives at a chunk's activation memory)"
    )
  tips.append(
      f"--config.train.microbatches={2 * config.train.microbatches} (gradient accumulation)")
  if tuple(config.mesh.shape)[1] == 1 and r["devices"] > 1:
    tips.append("--config.mesh.shape='(1,-1,1)' (FSDP: parameters and optimizer state sharded)")
  return tips


def table(reports: list[dict[str, Any]]) -> str:
  lines = [
      "| program | topology | mesh | per-device GiB: args / temp / total of usable | fits | TFLOP per device: "
      "executed / model | GB per device: HBM / all memories / ICI | roofline ms (bound) | MFU bound | HFU bound | "
      "MFU bound, all bytes as HBM |", "|---|---|---|---|---|---|---|---|---|---|---|"
  ]
  for r in reports:
    mesh = "x".join(str(v) for v in r["mesh"].values())
    where = f"| {r['program']} | {r['topology']} ({r['devices']} x {r['chip']}) | {mesh} |"
    if "compiler" in r:  # refused by the compiler: it needs more than HBM
      lines.append(
          f"{where} needs {r['total_bytes'] / GiB:.2f} of {r['usable_hbm_bytes'] / GiB:.2f} | NO | "
          + "- | " * 6)
      continue
    lines.append(
        f"{where} {r['argument_bytes'] / GiB:.2f} / {r['temp_bytes'] / GiB:.2f} / {r['total_bytes'] / GiB:.2f} "
        f"of {r['usable_hbm_bytes'] / GiB:.2f} | {'yes' if r['fits'] else 'NO'} | "
        f"{r['flops'] / 1e12:.2f} / {r['model_flops'] / 1e12:.2f} | {r['hbm_bytes'] / 1e9:.1f} / "
        f"{r['bytes_accessed'] / 1e9:.1f} / {r['ici_bytes'] / 1e9:.2f} | "
        f"{r['roofline_seconds'] * 1e3:.1f} ({r['bound']}) | {r['mfu_bound']:.2f} | {r['hfu_bound']:.2f} | "
        f"{r['mfu_bound_all_memories']:.2f} |")
  return "\n".join(lines)


def breakdown_table(r: dict[str, Any]) -> str:
  """The step's bytes and FLOPs per category (hlo_costs.category), loops counted, per device."""
  if "breakdown" not in r:
    return ""
  rows = [
      f"{r['program']} on {r['topology']}, per device per step:",
      "| category | HBM GB | all memories GB | GFLOP | ICI GB | instructions |",
      "|---|---|---|---|---|---|"
  ]
  for name, c in r["breakdown"].items():
    rows.append(
        f"| {name} | {c['hbm_bytes'] / 1e9:.2f} | {c['bytes'] / 1e9:.2f} | {c['flops'] / 1e9:.1f} | "
        f"{c['ici_bytes'] / 1e9:.3f} | {c['instructions']} |")
  return "\n".join(rows)


def main(argv) -> None:
  from absl import flags
  del argv
  FLAGS = flags.FLAGS
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  config = FLAGS.config
  topo = topology(FLAGS.topology)
  if FLAGS.out:
    cli.check_output_file(FLAGS.out, "--out", make_folder=True)
  reports = programs(config, topo, preset=FLAGS.preset, length=FLAGS.length)
  print(table(reports))
  if FLAGS.breakdown:
    print("\n\n".join(breakdown_table(r) for r in reports))
  for r in reports:
    if not r["fits"]:
      print("\n".join([f"{r['program']}:"] + [f"  {t}" for t in advice(config, r)]))
  if FLAGS.out:
    record = {
        "command": " ".join(sys.argv), "commit": workdir_lib.run_info()["commit"],
        "jax": jax.__version__, "programs": reports,
        "advice": {r["program"]: advice(config, r) for r in reports if not r["fits"]}
    }
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    workdir_lib.write_atomically(FLAGS.out, json.dumps(record, indent=1, default=str))
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/ft.py:nli",
                                  lock_config=True)
  flags.DEFINE_string(
      "topology", None, f"TPU topology: {', '.join(TOPOLOGIES)} or JAX's 'v5e:2x4' form; "
      f"GPUs: {', '.join(gpu_targets.GPUS)}, each with xN for N of one host")
  flags.DEFINE_string("out", None, "write the reports as JSON here")
  flags.DEFINE_string(
      "preset", None,
      "encoder preset (models/encoders.py PRESETS) for a model.init_from that is not a "
      "local directory")
  flags.DEFINE_bool("breakdown", False,
                    "print each program's bytes and FLOPs by category (always in --out)")
  flags.DEFINE_integer("length", None,
                       "tokens per text (default: model.max_length, else max_position_embeddings)")
  flags.mark_flags_as_required(["config", "topology"])
  cli.run(lambda: cli.run_config_app(main))
