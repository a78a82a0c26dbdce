"""The paper-scale sweep (issue 8): Tables A1 and A2 with bert-base-uncased, on TPU or GPU.

- nli: the authors' STS recipe (configs/ft.py:nli; AllNLI, MNRL, batch 128, 1 epoch) for SRL
  (starbucks), 2DMSE, MRL, full-only and separate (one run per pair), each per seed; evaluated on
  STS-B, STS12-16 and SICK-R test (Table A1's seven sets);
- smae: SMAE pre-training on FineWeb (configs/pt.py; 8 accelerators, bf16), then the nli and
  retrieval recipes from its BertForMaskedLM export;
- msmarco: the retrieval recipe (configs/retrieval.py; Tevatron MS MARCO, group 8, batch 128, 3
  epochs) for SRL, 2DMSE (the retrieval code's sampling), full-only and separate; MS MARCO dev
  MRR@10, TREC DL 2019 and 2020 nDCG@10;
- beir: each trained retrieval model on Table A2's 12 BEIR sets (configs/retrieval.py:beir).

    python experiments/sweep_paper.py --topology v5e-8 --print-only   # the runbook for one TPU VM
    python experiments/sweep_paper.py --topology v5e-8 [--only nli/]  # or run it there, in order

--topology (v5e-8, v6e-8, v5p-8, v4-8) adds the settings the compiled tables say that slice needs
(TOPOLOGY_SETTINGS) and, with --print-only, prints before each command the run's time and
chip-hours as the compiled roofline bounds them (experiments/results_tpu; a lower bound: the chip
at its peak FLOPs or HBM bandwidth, whichever binds) and the paper's number it should reproduce.
Needs the Hub (bert-base-uncased, the data sets) or local copies (set model.init_from and data.*
per run). Tables, pictures and the paper's layouts (paper_table.md) go to
experiments/results_paper/{nli,msmarco,beir}/.
"""

import argparse
import json
import os
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from starbucks_jax import paper  # noqa: E402
from starbucks_jax.schedule import STARBUCKS  # noqa: E402
from starbucks_jax.sweep import Report, Run, main  # noqa: E402

SEEDS = (0,)  # the paper reports one seed per cell; add more for error bars
PAIRS = STARBUCKS["bert-base"]
OUT = os.path.join(HERE, "results_paper")
COMPILED = os.path.join(HERE, "results_tpu")
SMAE_INIT = "--config.model.init_from={root}/smae/pt/bert_mlm"
REMAT_MB4 = ("--config.model.remat=full", "--config.train.microbatches=4")
# topology -> recipe -> (compiled variant in results_tpu, the overrides it was compiled with).
# SMAE does not fit one v5e / v6e / v4 chip's share as is: remat + 4 microbatches (flash attention
# is faster still but drops the attention-probs dropout the paper trains with); a v5p-8 holds it.
TOPOLOGY_SETTINGS = {
    "v5e-8": {
        "nli": ("nli", ()), "retrieval": ("retrieval", ()), "smae": ("smae_remat_mb4", REMAT_MB4)
    },
    "v6e-8": {
        "nli": ("nli", ()), "retrieval": ("retrieval", ()), "smae": ("smae_remat_mb4", REMAT_MB4)
    },
    "v5p-8": {"nli": ("nli", ()), "retrieval": ("retrieval", ()), "smae": ("smae", ())},
    "v4-8": {
        "nli": ("nli", ()), "retrieval": ("retrieval", ()), "smae": ("smae_remat_mb4", REMAT_MB4)
    },
}
CHIPS = {"v5e-8": 8, "v6e-8": 8, "v5p-8": 4, "v4-8": 4}  # chips (a v5p / v4 chip: 2 TensorCores)
# steps per run (configs' docstrings): AllNLI 557,850 / 128; MS MARCO ~400.8k queries / 128 x 3
STEPS = {"nli": 4358, "retrieval": 9393, "smae": 195000}
MSMARCO_PASSAGES = 8_841_823  # encoded once per retrieval run (128 a batch, eval_encoder)


def recipe_runs(prefix, config, methods, separate=True, init=()):
  config += "," if ":" in config else ":"  # the variant's arguments follow
  for seed in SEEDS:
    tail = (f"--config.seed={seed}", *init)
    for m in methods:
      yield Run(f"{prefix}/{m}/seed{seed}", f"{config}method={m}", tail, label=m)
    if separate:
      for n, d in PAIRS:
        yield Run(f"{prefix}/separate_{n}_{d}/seed{seed}",
                  f"{config}method=separate,layer={n},dim={d}", tail, label="separate")


def beir_runs(trained):
  for name, label in trained:
    yield Run(f"beir/{name}", "configs/retrieval.py:beir",
              (f"--config.model.init_from={{root}}/{name}",), label=label, result="eval")


MSMARCO = [
    *recipe_runs("msmarco", "configs/retrieval.py", ("starbucks", "2dmse_retrieval", "full"))
]
RUNS = [
    *recipe_runs("nli", "configs/ft.py:nli", ("starbucks", "2dmse", "mrl", "full")),
    *MSMARCO,
    Run("smae/pt", "configs/pt.py"),
    *(Run(f"smae/nli/seed{s}", "configs/ft.py:nli",
          (f"--config.seed={s}", SMAE_INIT), label="SMAE + SRL") for s in SEEDS),
    *(Run(f"smae/msmarco/seed{s}", "configs/retrieval.py",
          (f"--config.seed={s}", SMAE_INIT), label="SMAE + SRL") for s in SEEDS),
    *beir_runs([(r.name, r.label) for r in MSMARCO if "separate" not in r.name] +
               [(f"smae/msmarco/seed{s}", "SMAE + SRL") for s in SEEDS]),
]
REPORTS = [
    Report(os.path.join(OUT, "nli"), ("nli/", "smae/nli"), "stsb", "spearman_cosine",
           "STS-B test Spearman per size (nli recipe), bert-base-uncased", paper="a1"),
    Report(os.path.join(OUT, "msmarco"), ("msmarco/", "smae/msmarco"), "msmarco", "RR@10",
           "MS MARCO dev MRR@10 per size, bert-base-uncased", split="dev", paper="a1"),
    Report(os.path.join(OUT, "beir"), ("beir/",), "scifact", "nDCG@10",
           "BEIR nDCG@10 per size (Table A2), bert-base-uncased", paper="a2"),
]


def recipe_of(run: Run) -> str:
  return {"configs/ft.py": "nli",
          "configs/pt.py": "smae"}.get(run.config.split(":")[0], "retrieval")


def with_topology(run: Run, topology: str) -> Run:
  """The run with the settings its recipe needs on `topology` (an evaluation-only run: none)."""
  if run.result == "eval":
    return run
  _, overrides = TOPOLOGY_SETTINGS[topology][recipe_of(run)]
  return Run(run.name, run.config, run.overrides + overrides, run.label, run.result)


def compiled_seconds(variant: str, topology: str, program: str = "train_step") -> float | None:
  path = os.path.join(COMPILED, f"{variant}_{topology}.json")
  if not os.path.exists(path):
    return None
  for p in json.load(open(path))["programs"]:
    if p["program"] == program and p.get("fits"):
      return p["roofline_seconds"]
  return None


def expected_hours(run: Run, topology: str) -> tuple[float | None, str]:
  """The run's hours as the compiled roofline bounds them, and how they were reckoned."""
  recipe = recipe_of(run)
  variant, _ = TOPOLOGY_SETTINGS[topology][recipe]
  if run.result == "eval":  # BEIR: ~2.5x MS MARCO's tokens through the evaluation encoder
    batch = compiled_seconds(variant, topology, "eval_encoder")
    return (None if batch is None else 2.5 * batch * MSMARCO_PASSAGES / 128 / 3600,
            "BEIR encoding, scaled from the MS MARCO encoder by tokens")
  step = compiled_seconds(variant, topology)
  if step is None:
    return None, f"no compiled {variant}_{topology}.json (python experiments/compile_tpu.py)"
  hours, how = step * STEPS[recipe] / 3600, f"{STEPS[recipe]} steps x {step * 1e3:.0f} ms"
  encoder = compiled_seconds(variant, topology, "eval_encoder") if recipe == "retrieval" else None
  if encoder:
    hours += encoder * MSMARCO_PASSAGES / 128 / 3600
    how += f" + 8.8M passages encoded at {encoder * 1e3:.0f} ms / 128"
  return hours, how


def paper_number(run: Run) -> str:
  """What the paper reports for the run (Tables A1 / A2), or why there is nothing to compare."""
  method = paper.PAPER_METHOD.get(run.label, "")
  if not method:
    return "not in the paper's tables"
  table, key, what = {
      "nli": (paper.TABLE_A1, "sts_average", "7-set STS average"),
      "retrieval": (paper.TABLE_A1, "msmarco/dev", "MS MARCO dev MRR@10"),
  }.get(recipe_of(run), (paper.TABLE_A1, "sts_average", ""))
  if run.result == "eval":
    table, key, what = paper.TABLE_A2, "average", "BEIR 12-set average nDCG@10"
  values = table[method][key]
  if run.label == "separate":
    n, d = (int(x) for x in run.config.split("layer=")[1].replace("dim=", "").split(","))
    i = list(paper.SIZES).index((n, d))
    return f"{method} {paper.SIZES[(n, d)]} {what} {values[i]:.4f}"
  return (f"{method} {what} per size " + " ".join(f"{v:.4f}" for v in values) +
          f" (mean {sum(values) / 6:.4f})")


def runbook(runs, topology: str, root: str) -> str:
  """The commands for one TPU VM of `topology`, each after its bound and the paper's number."""
  chips = CHIPS[topology]
  lines = [
      f"# The paper sweep on a TPU VM {topology} ({chips} chips). One host: run each command "
      "on it.",
      "# A slice of several hosts (v5e-16, v4-16, ...): every worker runs the same command, with",
      "# --config.mesh.coordinator=auto added (jax.distributed.initialize() finds the coordinator,",
      "# worker 0, from the TPU VM's metadata), in a workdir every worker sees (NFS, gcsfuse):",
      "#   gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all \\",
      "#     --command='cd starbucks_jax && COMMAND --config.mesh.coordinator=auto'",
      "# Times are compiled roofline bounds (peak FLOPs or HBM bandwidth), not measurements.", ""
  ]
  total = 0.0
  for run in runs:
    run = with_topology(run, topology)
    hours, how = expected_hours(run, topology)
    if hours is None:
      bound = f"time: {how}"
    else:
      total += hours
      time = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"
      bound = f">= {time}, {hours * chips:.1f} chip-hours ({how})"
    lines += [
        f"# {run.name}: {bound}", f"#   paper: {paper_number(run)}",
        shlex.join(run.command(root, python="python")), ""
    ]
  lines.append(f"# all runs: >= {total:.1f} h, {total * chips:.0f} chip-hours (bound)")
  return "\n".join(lines)


if __name__ == "__main__":
  p = argparse.ArgumentParser(add_help=False)
  p.add_argument("--topology", choices=sorted(TOPOLOGY_SETTINGS))
  p.add_argument("--root", default="workdirs/paper")
  p.add_argument("--print-only", action="store_true")
  known, rest = p.parse_known_args()
  if known.topology and known.print_only:
    only = [v for i, v in enumerate(rest) if i and rest[i - 1] == "--only"]
    chosen = [r for r in RUNS if not only or any(r.name.startswith(o) for o in only)]
    print(runbook(chosen, known.topology, known.root))
  else:
    runs = [with_topology(r, known.topology) for r in RUNS] if known.topology else RUNS
    argv = rest + ["--root", known.root] + (["--print-only"] if known.print_only else [])
    main(runs, REPORTS, default_root="workdirs/paper", argv=argv,
         description=__doc__.split("\n\n")[0])
