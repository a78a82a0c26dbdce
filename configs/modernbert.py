"""Starbucks on ModernBERT: the paper's recipes with a ModernBERT backbone (models/modernbert.py).

    python -m starbucks_jax.main --config=configs/modernbert.py[:VARIANT][,method=M] --workdir=DIR

The schedule is the paper's six sizes at the same fractions of depth over ModernBERT-base's 22
layers: (4,32) (7,64) (11,128) (15,256) (18,512) (22,768) (schedule.STARBUCKS['modernbert-base']).
A sub-model (n, d) is the first n layers, the final norm and the first d dims: what a 22-layer
checkpoint cut to n layers computes in transformers. Everything else is the BERT recipe's.

Variants:
  nli       (default) configs/ft.py's nli recipe (AllNLI triplets, MNRL, batch 128, 1 epoch, lr
            5e-5, mean pooling, KL x0.3, bf16) from answerdotai/ModernBERT-base (149M parameters,
            a BPE vocabulary of 50,368, RoPE, global attention every third layer, a 128-token window
            on the others), texts cut at 128 tokens; evaluated on STS-B and STS12-16, SICK-R.
  msmarco   configs/retrieval.py's MS MARCO recipe (Tevatron groups of 8, batch 128 queries, 3
            epochs, query 32 / passage 196 tokens, CLS pooling, score KL) from ModernBERT-base.
  granite   the nli recipe from ibm-granite/granite-embedding-english-r2 (a ModernBERT-base
            retriever already: 22 layers, 768 dims, 8,192 tokens), so that its full size stays
            as it was while the five smaller ones learn (its own CLS pooling).
  long      the msmarco recipe with passages of up to 8,192 tokens (ModernBERT's context): batch 8
            queries of groups of 2 (one passage per query and chip on 8 chips), model.remat=full.
            What fits on which chips, and the compiled bounds: experiments/results_tpu/README.md
            (ModernBERT-base) and its modernbert_* rows.

Needs the Hub or local copies (a TPU host without the Hub: download once, then pass the folder as
--config.model.init_from=DIR; the data as configs/ft.py and configs/retrieval.py say):
    hf download answerdotai/ModernBERT-base --local-dir ModernBERT-base
    hf download ibm-granite/granite-embedding-english-r2 --local-dir granite-embedding-english-r2
and a TPU or GPU. Compiled for v5e-8 (experiments/results_tpu/, modernbert_* rows): the nli step is
1.31x BERT-base's model FLOPs (22 layers against 12, a narrower GeGLU) and bound at 23.8 ms (HBM;
BERT-base 16.9 ms), the epoch's 4,358 steps in >= 1.7 min; long fits with the standard core (14.2
of 15.75 GiB per chip, 2.6 s per step: the [T, T] scores' bytes) and with model.attention=flash
in 2.6 GiB at 212 ms per step. Offline at CPU scale the same code path runs on random ModernBERTs
that transformers builds (tests/test_backbones.py).
"""

import os

from starbucks_jax import config_lib
from starbucks_jax.schedule import STARBUCKS

MODERNBERT = "answerdotai/ModernBERT-base"
GRANITE = "ibm-granite/granite-embedding-english-r2"


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, nli=False, msmarco=False, granite=False, long=False,
                             method="starbucks")
  here = os.path.dirname(os.path.abspath(__file__))
  retrieval = arg.msmarco or arg.long
  base = "retrieval.py:" if retrieval else "ft.py:nli,"
  c = config_lib.load_config(os.path.join(here, base) + f"method={arg.method}")
  c.unlock()
  c.model.init_from = GRANITE if arg.granite else MODERNBERT
  c.schedule.pairs = STARBUCKS["modernbert-base"]
  if not retrieval:
    c.model.max_length = 128  # AllNLI's texts: the BERT recipe's batches meet 128 at most
  if arg.granite:
    c.model.pooling = "cls"
  if arg.long:
    c.data.passage_max_length = 8192
    c.data.group_size = 2
    c.data.batch_size = 8
    c.model.max_length = 8192
    c.model.remat = "full"
  return c
