"""The paper-scale sweep (issue 8): Table A1's rows with bert-base-uncased, on TPU or GPU.

- nli: the authors' STS recipe (configs/ft.py:nli; AllNLI, MNRL, batch 128, 1 epoch) for SRL
  (starbucks), 2DMSE, MRL, full-only and separate (one run per pair), each per seed; evaluated on
  STS-B, STS12-16 and SICK-R test;
- smae: SMAE pre-training on FineWeb (configs/pt.py; 8 accelerators, bf16), then the nli and
  retrieval recipes from its BertForMaskedLM export;
- msmarco: the retrieval recipe (configs/retrieval.py; Tevatron MS MARCO, group 8, batch 128, 3
  epochs) for SRL, 2DMSE (the retrieval code's sampling), full-only and separate; MS MARCO dev
  MRR@10 and TREC DL 2019 nDCG@10.

    python experiments/sweep_paper.py --print-only      # the commands, in order, for a scheduler
    python experiments/sweep_paper.py [--only nli/]     # or run them here, one after another

Needs the Hub (bert-base-uncased, the data sets) or local copies (set model.init_from and data.*
per run). Costs (see each config's docstring): ~1 h per nli run and ~8 h per retrieval run on one
H100; SMAE ~1.5 days on 8 H100s at the paper's 195k steps. The tables and pictures go to
experiments/results_paper/{nli,msmarco}/.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from starbucks_jax.schedule import STARBUCKS  # noqa: E402
from starbucks_jax.sweep import Report, Run, main  # noqa: E402

SEEDS = (0,)  # the paper reports one seed per cell; add more for error bars
PAIRS = STARBUCKS["bert-base"]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_paper")
SMAE_INIT = "--config.model.init_from={root}/smae/pt/bert_mlm"


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


RUNS = [
    *recipe_runs("nli", "configs/ft.py:nli", ("starbucks", "2dmse", "mrl", "full")),
    *recipe_runs("msmarco", "configs/retrieval.py", ("starbucks", "2dmse_retrieval", "full")),
    Run("smae/pt", "configs/pt.py"),
    *(Run(f"smae/nli/seed{s}", "configs/ft.py:nli",
          (f"--config.seed={s}", SMAE_INIT), label="SMAE + SRL") for s in SEEDS),
    *(Run(f"smae/msmarco/seed{s}", "configs/retrieval.py",
          (f"--config.seed={s}", SMAE_INIT), label="SMAE + SRL") for s in SEEDS),
]
REPORTS = [
    Report(os.path.join(OUT, "nli"), ("nli/", "smae/nli"), "stsb", "spearman_cosine",
           "STS-B test Spearman per size (nli recipe), bert-base-uncased"),
    Report(os.path.join(OUT, "msmarco"), ("msmarco/", "smae/msmarco"), "msmarco", "RR@10",
           "MS MARCO dev MRR@10 per size, bert-base-uncased"),
]

if __name__ == "__main__":
  main(RUNS, REPORTS, default_root="workdirs/paper", description=__doc__.split("\n\n")[0])
