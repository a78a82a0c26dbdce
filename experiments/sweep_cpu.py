"""The CPU-scale sweep (issue 8): every method of the paper's Table A1 at the size this machine runs.

all-MiniLM-L6-v2 and its schedule (1,16) (2,32) (3,64) (4,128) (5,256) (6,384) on ../shared/data:
- sts: the `sts` recipe (configs/ft.py:sts_cpu, CoSENT on STS-B train, 1 epoch here instead of 4)
  for SRL (starbucks), 2DMSE, MRL, full-only and separate (one run per pair; its (6,384) run is
  the full-only recipe again, trained as its own run); `ft_sts_cpu/`: the same at the recipe's 4
  epochs (4x the time; separate's (6,384) cell is the full run there), with 2DMSE in both
  sentence-transformers versions (2dmse: as the authors ran it; 2dmse_st6: today's);
- smae: SMAE pre-training (configs/pt.py:cpu, 400 steps on ../shared/data/mlm_text), then the same
  sts recipe from its BertForMaskedLM export, next to the recipe from the original weights run by
  the same code (SMAE + SRL vs SRL);
- scifact: retrieval on BEIR SciFact (configs/retrieval.py:scifact): untrained, SRL, full-only; 14
  funnels scored on the SRL and full-only indexes (retrieval_scifact_funnels, experiments/elastic_retrieval.md);
- retrieval_demo: the offline demo (configs/retrieval.py:demo), SRL and full-only, with funnels and costs;
- cross_depth_scifact, cross_depth_pydocs: SciFact (three seeds) and the demo with every (query
  layer, passage layer, dim) cell scored and costed, quantized funnels; SRL, SRL with the
  cross-depth training terms and full-only; selected on held-out train queries
  (experiments/asymmetric_retrieval.md);
- precision_nli_cpu: configs/ft.py:nli_cpu in float32, pure bf16 and amp (bf16 matmuls, float32
  stream: the authors' PyTorch AMP), three seeds each; the amp models also encoded in bf16
  (eval.dtype) for evaluation (experiments/precision.md).

    python experiments/sweep_cpu.py [--root workdirs] [--only ft_sts_cpu_e1/|ft_sts_cpu/|smae_cpu/|...]
        [--print-only] [--report-only]

Runs one after another (each ~10-40 min on 2 cores; all together most of a day), skips finished
ones, resumes an interrupted one (`ft_sts_cpu_e1_grid/starbucks` scores the SRL model at every layer
x dim for the heatmap), then writes experiments/results_cpu/{sts,sts_grid,sts_4_epochs,smae,smae_pretraining,scifact,retrieval_demo}/
(table.md, sizes.png, curves.png). For the paper's scale see experiments/sweep_paper.py.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the configs' CPU recipes read the developer data (fetch.data_root) unless STARBUCKS_DATA says
if os.path.isdir(os.path.join(REPO, "..", "shared", "data")):
  os.environ.setdefault("STARBUCKS_DATA",
                        os.path.abspath(os.path.join(REPO, "..", "shared", "data")))
sys.path.insert(0, REPO)
from starbucks_jax import config_lib  # noqa: E402
from starbucks_jax.sweep import Report, Run, main  # noqa: E402

PAIRS = ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384))
STS = "configs/ft.py:sts_cpu"
EPOCHS = "--config.train.epochs=1"
SCIFACT = "scifact/test=../shared/data/beir_scifact"


def funnels_flag(funnels) -> str:
  return "--config.eval.retrieval_funnels=(" + ",".join(f"'{f}'" for f in funnels) + ")"


# configs/retrieval.py:scifact's funnels and larger shortlists, scored on the trained runs' indexes
SCIFACT_FUNNELS = funnels_flag(
    config_lib.load_config(os.path.join(REPO, "configs",
                                        "retrieval.py:scifact")).eval.retrieval_funnels +
    ("3x64:1000,6x384:10", "4x128:100,6x384:10", "4x128:300,6x384:10", "3x64:2000,6x384:10",
     "4x128:1000,6x384:10", "5x256:30,6x384:10", "5x256:100,6x384:10", "5x256:1000,6x384:10",
     "3x64:500,5x256:50,6x384:10"))
# the demo's 448 passages take shorter shortlists than SciFact's
DEMO_FUNNELS_SPECS = ("1x16:50,6x384:10", "2x32:50,6x384:10", "2x32:100,4x128:30,6x384:10",
                      "3x64:50,4x128:10")
DEMO_FUNNELS = (funnels_flag(DEMO_FUNNELS_SPECS), "--config.eval.retrieval_costs=True")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_cpu")

RUNS = [
    Run("ft_sts_cpu_e1/untrained", "configs/ft.py:eval",
        ("--config.eval.sts=stsb/test=../shared/data/stsb/test.jsonl",), label="untrained",
        result="eval"),
    *(Run(f"ft_sts_cpu_e1/{m}", f"{STS},method={m}", (EPOCHS,))
      for m in ("starbucks", "2dmse", "mrl", "full")),
    *(Run(f"ft_sts_cpu_e1/separate_{n}_{d}", f"{STS},method=separate,layer={n},dim={d}", (EPOCHS,))
      for n, d in PAIRS),
    Run("ft_sts_cpu_e1_grid/starbucks", "configs/ft.py:eval",
        ("--config.model.init_from={root}/ft_sts_cpu_e1/starbucks", "--config.eval.grid=True",
         "--config.eval.sts=stsb/test=../shared/data/stsb/test.jsonl"),
        label="SRL (starbucks, 1 epoch)", result="eval"),
    *(Run(f"ft_sts_cpu/{m}", f"{STS},method={m}")
      for m in ("starbucks", "2dmse", "2dmse_st6", "mrl", "full")),
    *(Run(f"ft_sts_cpu/separate_{n}_{d}", f"{STS},method=separate,layer={n},dim={d}")
      for n, d in PAIRS[:-1]),
    Run("smae_cpu/pt", "configs/pt.py:cpu"),
    Run("smae_cpu/ft_from_smae", STS,
        (EPOCHS, "--config.model.init_from={root}/smae_cpu/pt/bert_mlm"), label="SMAE + SRL"),
    Run("smae_cpu/ft_from_minilm", STS, (EPOCHS,), label="SRL"),
    Run("retrieval_scifact/untrained", "configs/ft.py:eval",
        ("--config.eval.sts=", f"--config.eval.retrieval={SCIFACT}",
         "--config.eval.query_max_length=64", "--config.eval.passage_max_length=128"),
        label="untrained", result="eval"),
    Run("retrieval_scifact/starbucks", "configs/retrieval.py:scifact", label="SRL"),
    Run("retrieval_scifact/full", "configs/retrieval.py:scifact,method=full", label="full only"),
    # the trained models' indexes again, with larger shortlists than the config's five funnels
    *(Run(f"retrieval_scifact_funnels/{m}", "configs/ft.py:eval",
          ("--config.eval.sts=", f"--config.eval.retrieval={SCIFACT}",
           "--config.eval.query_max_length=64", "--config.eval.passage_max_length=128",
           f"--config.model.init_from={{root}}/retrieval_scifact/{m}",
           f"--config.eval.index_dir={{root}}/retrieval_scifact/{m}/index", SCIFACT_FUNNELS,
           "--config.eval.retrieval_costs=True"), label=label, result="eval")
      for m, label in (("starbucks", "SRL"), ("full", "full only"))),
    *(Run(f"retrieval_demo/{m}", f"configs/retrieval.py:demo,method={m}", DEMO_FUNNELS, label=label)
      for m, label in (("starbucks", "SRL"), ("full", "full only"))),
]
# model.dtype, model.precision of each label
PRECISIONS = {
    "float32": ("float32", "pure"), "bf16": ("bfloat16", "pure"), "amp": ("bfloat16", "amp")
}
NLI_DEV = "--config.eval.sts=stsb/dev=../shared/data/stsb/dev.jsonl"
RUNS += [
    *(Run(f"precision_nli_cpu/{name}_seed{seed}", "configs/ft.py:nli_cpu",
          (f"--config.model.dtype={dtype}", f"--config.model.precision={precision}",
           f"--config.seed={seed}"), label=name) for seed in range(3)
      for name, (dtype, precision) in PRECISIONS.items()),
    *(Run(f"precision_nli_cpu/amp_seed{seed}_eval_bf16", "configs/ft.py:eval",
          (f"--config.model.init_from={{root}}/precision_nli_cpu/amp_seed{seed}", NLI_DEV,
           "--config.model.precision=amp", "--config.eval.dtype=bfloat16",
           "--config.eval.packing=True", "--config.eval.batch_size=32"),
          label="amp, encoded in bf16", result="eval") for seed in range(3)),
]
# shallow queries against deep passages (experiments/asymmetric_retrieval.md): every cross-depth
# cell of SRL, of SRL with the cross-depth terms (loss.cross_depth_weight=1) and of full-only, with
# their costs, and quantized first stages; 100 of SciFact's 809 train queries (20 of the demo's 86)
# held out as the dev split that selects (written by HOLD_OUTS before the runs); beside them
# method=recommended (issue 47: the recommended recipe against SRL on retrieval)
SCIFACT_DEV = os.path.join(REPO, "workdirs", "data", "beir_scifact_dev100")
DEMO_DEV = os.path.join(REPO, "workdirs", "data", "pydocs_dev20")
HOLD_OUTS = (("../shared/data/beir_scifact", SCIFACT_DEV, 100),
             (os.path.join(REPO, "starbucks_jax", "data", "demo", "retrieval"), DEMO_DEV, 20))
QUANTIZED = ("6x384b:1000,6x384:10", "6x384b:200,6x384:10", "6x384i8:100,6x384:10",
             "3x64b:2000,6x384:10", "3x64i8:1000,6x384:10")
ASYMMETRIC = (("scifact", "configs/retrieval.py:scifact", SCIFACT_DEV, range(3),
               config_lib.load_config(os.path.join(REPO, "configs",
                                                   "retrieval.py:scifact")).eval.retrieval_funnels),
              ("pydocs", "configs/retrieval.py:demo", DEMO_DEV, range(1), DEMO_FUNNELS_SPECS))
RUNS += [
    Run(f"cross_depth_{name}/{run}_seed{seed}", f"{config},method={method}",
        (f"--config.data.train=beir:{folder}@train",
         f"--config.eval.retrieval={name}/dev={folder},{name}/test={folder}",
         "--config.eval.retrieval_cross_depth=True", "--config.eval.retrieval_costs=True",
         funnels_flag(tuple(funnels) + QUANTIZED), f"--config.loss.cross_depth_weight={weight}",
         f"--config.seed={seed}"), label=label)
    for name, config, folder, seeds, funnels in ASYMMETRIC for seed in seeds
    for run, method, weight, label in (("starbucks", "starbucks", 0.0, "SRL"),
                                       ("cross_depth", "starbucks", 1.0,
                                        "SRL + cross-depth"), ("full", "full", 0.0, "full only"),
                                       ("recommended", "recommended", 0.0, "recommended"))
]
REPORTS = [
    Report(os.path.join(OUT, "sts"), ("ft_sts_cpu_e1/", "smae_cpu/ft_from_smae"), "stsb",
           "spearman_cosine",
           "STS-B test Spearman per size, sts recipe (1 epoch), all-MiniLM-L6-v2"),
    Report(os.path.join(OUT, "sts_grid"), ("ft_sts_cpu_e1_grid/",), "stsb", "spearman_cosine",
           "The 1-epoch SRL model at every layer x dim (diagonal: the schedule)"),
    Report(os.path.join(OUT, "sts_4_epochs"), ("ft_sts_cpu/",), "stsb", "spearman_cosine",
           "STS-B test Spearman per size, sts recipe (4 epochs), all-MiniLM-L6-v2"),
    Report(os.path.join(OUT, "smae"), ("smae_cpu/ft_",), "stsb", "spearman_cosine",
           "SMAE + SRL vs SRL from the original weights (same code, sts recipe, 1 epoch)"),
    Report(
        os.path.join(OUT, "smae_pretraining"), ("smae_cpu/pt",), "dev", "mlm_accuracy",
        "SMAE pre-training: held-out masked-token accuracy per sub-model (400 steps, fresh MLM head)"
    ),
    Report(os.path.join(OUT, "scifact"), ("retrieval_scifact/",), "scifact", "nDCG@10",
           "SciFact test nDCG@10 per size"),
    Report(os.path.join(OUT, "precision"), ("precision_nli_cpu/",), "stsb", "spearman_cosine",
           "STS-B dev Spearman per size, nli_cpu recipe, by precision (3 seeds)", baseline="amp"),
    Report(os.path.join(OUT, "retrieval_demo"), ("retrieval_demo/",), "pydocs", "nDCG@10",
           "The offline retrieval demo (pydocs test) nDCG@10 per size"),
    *(Report(
        os.path.join(OUT, f"cross_depth_{name}", split), (f"cross_depth_{name}/",), name, "nDCG@10",
        f"{title} nDCG@10 per size, {split} split ({note}): SRL, SRL + cross-depth "
        "terms, full only, the recommended recipe (issue 47)", split=split, baseline="SRL")
      for name, title, note in (("pydocs", "The retrieval demo's",
                                 "dev: 20 held-out train queries"),
                                ("scifact", "SciFact", "dev: 100 held-out train queries"))
      for split in ("dev", "test")),
]

if __name__ == "__main__":
  from starbucks_jax.data import beir
  for source, folder, queries in HOLD_OUTS:
    if os.path.isdir(source):
      beir.hold_out(source, folder, queries=queries, seed=0)
  main(RUNS, REPORTS, default_root="workdirs", description=__doc__.split("\n\n")[0])
