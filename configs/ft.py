"""SRL fine-tuning (docs/method.md, "SRL fine-tuning"): one model, every (layer, dim) of the schedule good.

    python -m starbucks_jax.main --config=configs/ft.py:VARIANT[,method=M][,layer=N,dim=D] \
        --workdir=DIR [--config.a.b=value ...]

The CPU variants read the data root: $STARBUCKS_DATA, else ~/.cache/starbucks_jax/data, where
`python -m starbucks_jax.data.fetch NAME` writes (a missing file's error names the command).

Variants:
  nli       The authors' "full" STS recipe: bert-base-uncased, AllNLI triplets (557,850,
            hf:sentence-transformers/all-nli:triplet), MNRL (cosine x 20, in-batch + hard negatives),
            batch 128, 1 epoch (4,358 steps), AdamW lr 5e-5, warmup 10%, linear decay, wd 0, mean
            pooling, feature KL x0.3, sum over the six pairs; bf16 (the authors' fp16 AMP:
            model.precision=amp, in bf16; experiments/precision.md). Evaluated on STS-B test, STS12-16 and
            SICK-R (hf:mteb/*). Needs the Hub (model and data) or local copies (`python -m
            starbucks_jax.data.fetch stsb sts allnli` prints the flags that read them), and a TPU
            or GPU: the epoch in >= 74 s on a v5e-8, >= 1.9 min on one H200 with
            model.attention=cudnn (compiled bounds; memory and settings per chip:
            experiments/recipes.md). Paper (Table A1, BERT + SRL): STS average Spearman 0.7682
            over the six sizes; with SMAE 0.7837.
  sts       The authors' "low" recipe: STS-B train (5,749 pairs), CoSENT x20, batch 16, 4 epochs,
            otherwise as nli. One chip: the 1,436 steps in >= 16 s on a v5e-1 (compiled; more
            chips do not pay: experiments/recipes.md).
  sts_cpu   The sts recipe at CPU scale: all-MiniLM-L6-v2 and its schedule (1,16)..(6,384), STS-B
            train/test (`python -m starbucks_jax.data.fetch stsb` first). Packed rows (data.packing,
            eval.packing). ~4 min per 200 steps on 2 CPU cores (experiments/recipes.md); recorded by
            experiments/sweep_cpu.py.
  nli_cpu   The nli recipe at CPU scale: all-MiniLM-L6-v2 and its schedule, MNRL on the SNLI dev
            triplets (3,172; `python -m starbucks_jax.data.fetch snli stsb` first), batch 32,
            1 epoch (99 steps),
            evaluated on STS-B dev. benchmarks/recipe_vs_pytorch.py times it against the authors'
            sentence-transformers formulation.
  demo      all-MiniLM-L6-v2 (installed by the README's set-up) SRL-fine-tuned on the triplets that
            ship in the package (320 rows, 20 steps of 16), then evaluated per pair on the demo
            STS pairs; offline, under 3 minutes on 2 CPU cores.
  eval      Evaluate model.init_from (an HF dir, Hub id, or a workdir) on eval.sts; no training.

Arguments after the variant: method=starbucks|full|mrl|starbucks_mrl|2dmse|2dmse_st6|2dmse_retrieval|
grid|separate|starbucks_scores_1n|recommended (the baselines of docs/method.md; starbucks_mrl is an
ablation); for
separate also layer=N,dim=D and separate_dim=full|dim (train at full width and truncate at evaluation,
as the authors, or train at d).
    starbucks_scores_1n  SRL with the paper's in-batch score KL (teacher detached, temperature 1)
               and pair weights 1/n (mean 1): the best STS-B dev mean of issue 25's 14 variants
               on sts_cpu (its figures: experiments/recipes.md); `recommended` names it.
    recommended  what experiments/ablations.md recommends (config_blocks.RECOMMENDED_LOSS, chosen
               on dev sets only): starbucks_scores_1n's keys, which beat SRL at the small sizes on
               CoSENT (sts_cpu) and MNRL (nli_cpu) and tie it on retrieval (SciFact), 3 seeds each,
               the full size within the spread. The paper recipes keep SRL as their default (the
               evidence is CPU scale).
The two 2DMSE presets are
sentence-transformers' Matryoshka2dLoss in two versions (the last layer and one sampled earlier
hidden state, one sampled dim per call; KL over softmax(e / 0.3) x 0.3):
    2dmse      the version behind the papers' 2DMSE numbers (sentence-transformers 3.0, 2024):
               hidden state k drawn from 1..N-1 (never the embedding output), its loss weighted
               1/k, the KL's teacher not detached (schedule.sample_embedding_output=False,
               loss.layer_weighting='linear', loss.kl='tempered_features', loss.kl_detach=False);
    2dmse_st6  today's (sentence-transformers 6.x, after its issue #3757): drawn from 0..N-1 (0 the
               embedding output), weight 1, teacher detached.

Every run validates the whole config (including the schedule against the backbone's config.json)
before it touches a weight, and writes WORKDIR/config.json, WORKDIR/metrics.jsonl, orbax
checkpoints under WORKDIR/checkpoints, and WORKDIR/results/<name>.json.
"""

from starbucks_jax import config_lib
from starbucks_jax.config_blocks import RECOMMENDED_LOSS, SCORES_1N_LOSS, FinetuneConfig
from starbucks_jax.data import fetch
from starbucks_jax.schedule import METHODS, STARBUCKS

PAPER_STS_EVAL = ",".join([
    "stsb/test=hf:sentence-transformers/stsb@test", "sts12/test=hf:mteb/sts12-sts@test",
    "sts13/test=hf:mteb/sts13-sts@test", "sts14/test=hf:mteb/sts14-sts@test",
    "sts15/test=hf:mteb/sts15-sts@test", "sts16/test=hf:mteb/sts16-sts@test",
    "sickr/test=hf:mteb/sickr-sts@test"
])
# the CPU recipes' data: $STARBUCKS_DATA, else `python -m starbucks_jax.data.fetch`'s cache
SHARED = fetch.data_root()
# method= presets -> schedule.method
PRESETS = {"2dmse_st6": "2dmse", "starbucks_scores_1n": "starbucks", "recommended": "starbucks"}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, nli=False, sts=False, sts_cpu=False, nli_cpu=False, demo=False,
                             eval=False, method="starbucks", layer=0, dim=0, separate_dim="full")
  # every key, its default and its meaning: starbucks_jax/config_blocks.py (FinetuneConfig); the loss
  # block's: starbucks_jax/losses.py (LossConfig). Below: the paper's nli recipe, then the variants.
  if arg.method not in METHODS + tuple(PRESETS):
    raise config_lib.ConfigError(
        f"method={arg.method!r}: expected one of {', '.join(METHODS + tuple(PRESETS))}")
  c = FinetuneConfig.config()
  c.schedule.method = PRESETS.get(arg.method, arg.method)
  c.schedule.pairs = STARBUCKS["bert-base"]
  c.schedule.separate_pair = (arg.layer, arg.dim)
  c.schedule.separate_train_dim = arg.separate_dim
  c.eval.sts = PAPER_STS_EVAL

  if arg.sts or arg.sts_cpu:
    c.data.train = "hf:sentence-transformers/stsb@train"
    c.data.format = "scored_pairs"
    c.data.batch_size = 16
    c.loss.task = "cosent"
    c.train.epochs = 4
    c.train.log_every = 20
  if arg.sts_cpu or arg.nli_cpu or arg.demo or arg.eval:
    c.model.init_from = "all-MiniLM-L6-v2"
    c.model.dtype = "float32"
    c.schedule.pairs = STARBUCKS["minilm-l6-h384"]
  if arg.sts_cpu:
    c.data.train = f"{SHARED}/stsb/train.jsonl"
    c.eval.sts = f"stsb/test={SHARED}/stsb/test.jsonl"
    # texts share rows: a step pays for real tokens, not the batch's longest text
    c.data.packing = True
    c.data.num_buckets = 2  # row counts, so 2 compiles (experiments/bench_recipe.md)
    c.eval.packing = True
    c.eval.batch_size = 32  # packed rows of ~72 tokens, up to 4 texts each
    c.train.checkpoint_every = 200
  if arg.nli_cpu:
    c.data.train = f"{SHARED}/snli/dev_triplets.jsonl"
    c.data.batch_size = 32
    c.data.packing = True
    c.data.num_buckets = 2
    c.eval.packing = True
    c.eval.batch_size = 32
    c.eval.sts = f"stsb/dev={SHARED}/stsb/dev.jsonl"
    c.train.log_every = 10
  if arg.demo:
    c.data.train = "demo:triplets_train.jsonl"
    c.data.batch_size = 16
    c.train.log_every = 5
    c.eval.sts = "demo/test=demo:sts_test.jsonl"
    c.eval.before_training = True  # the table shows what training changed
  if arg.method in ("2dmse", "2dmse_st6"):  # Matryoshka2dLoss as the authors ran it, or as today
    c.schedule.sample_embedding_output = arg.method == "2dmse_st6"
    c.loss.kl = "tempered_features"
    c.loss.layer_weighting = "linear" if arg.method == "2dmse" else "uniform"
    c.loss.kl_detach = arg.method == "2dmse_st6"
  if arg.method == "starbucks_scores_1n":  # the ablations' first recommended recipe (docstring)
    c.loss.update(SCORES_1N_LOSS)
  if arg.method == "recommended":
    c.loss.update(RECOMMENDED_LOSS)
  if arg.eval:
    c.mode = "eval"
    c.eval.sts = "demo/test=demo:sts_test.jsonl"
  return c
