"""SMAE pre-training (docs/method.md, "SMAE pre-training"): 2D masked LM on every pair + the MAE decoder.

    python -m starbucks_jax.main --config=configs/pt.py[:VARIANT] --workdir=DIR [--config.a.b=value ...]

Then fine-tune from it: `--config=configs/ft.py:... --config.model.init_from=DIR/bert_mlm` (or DIR).

Without a variant: the paper's run. bert-base-uncased (needs the Hub or a local copy with its MLM
head), FineWeb sample-100BT streamed from the Hub (hf:HuggingFaceFW/fineweb:sample-100BT), one pass
in blocks of 100,000 documents each read in a seeded random order (the authors shuffle the whole
set), batch 512, max length 512 (a random window per document, no packing), masking 0.2 / 0.4
whole-word, AdamW lr 1e-4, warmup 5%, cosine decay, weight decay 0.001, bf16 compute, non-finite
steps skipped. The steps are one epoch, the stream's rows (the dataset card's metadata) / 512; where
the card does not say, the run stops before training and asks for --config.data.count_rows=True
(one counting pass over ~1e8 documents, hours; cached) or --config.train.max_steps (~195,000).
Needs a TPU slice or 8 GPUs for hours: >= 11.8 h on a v5p-8 with model.attention=flash, >= 3.3 h on
8 H200s with model.attention=cudnn; a v5e-8 or v6e-8 needs model.remat=full and microbatches
(compiled bounds and the settings per chip: experiments/recipes.md).
Paper (Table A1): SMAE + SRL STS average 0.7837 vs 0.7682 for BERT + SRL.

Variants:
  cpu       The recorded CPU experiment (experiments/sweep_cpu.py, smae_cpu/): all-MiniLM-L6-v2 with a fresh MLM
            head, its schedule (1,16)..(6,384), on mlm_text/sentences.txt of the data root
            (86,118 sentences in the recorded run; `python -m starbucks_jax.data.fetch stsb snli
            mlm_text` writes one from STS-B and SNLI), batch 32, max length 64, fp32; 400 steps
            (12,800 sentences, ~15% of the file).
  demo      Offline on a fresh machine: all-MiniLM-L6-v2 (the README's set-up) on the anchor
            sentences that ship in the package (demo:triplets_train.jsonl), 20 steps of 16, then
            masked-token accuracy per pair on the demo STS sentences. About 2 minutes on 2 CPU cores.
  tiny      The smallest end-to-end run (4 steps of 4, length 32) for smoke tests.

Arguments after the variant: mode=smae|2d_mlm|mlm (full SMAE; the 2D MLM term alone; plain MLM on
the full model, the control). Every run validates the config (schedule against the backbone's
config.json, masking rates, data spec) before touching a weight and writes WORKDIR/config.json,
metrics.jsonl (loss, mlm/n_d and mae/n_d per pair, grad norm, lr, examples/s), orbax checkpoints
(resumable), WORKDIR/bert_mlm (HF BertForMaskedLM + tokenizer) and WORKDIR/results/final.json.
"""

from starbucks_jax import config_lib
from starbucks_jax.config_blocks import PretrainConfig
from starbucks_jax.data import fetch
from starbucks_jax.schedule import STARBUCKS

# the CPU recipes' data: $STARBUCKS_DATA, else `python -m starbucks_jax.data.fetch`'s cache
SHARED = fetch.data_root()


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, cpu=False, demo=False, tiny=False, mode="smae")
  # every key, its default (the paper's run) and its meaning: starbucks_jax/config_blocks.py
  # (PretrainConfig). Below: the variants.
  c = PretrainConfig.config()
  c.smae.mode = arg.mode

  if arg.cpu or arg.demo or arg.tiny:
    c.model.init_from = "all-MiniLM-L6-v2"
    c.model.dtype = "float32"
    c.schedule.pairs = STARBUCKS["minilm-l6-h384"]
    c.data.streaming = False
    c.data.shuffle_buffer = 0
    c.train.max_steps = 0
  if arg.cpu:
    c.data.train = f"{SHARED}/mlm_text/sentences.txt"
    c.data.batch_size = 32
    c.data.length_buckets = "linear"
    c.model.max_length = 64
    c.train.max_steps = 400
    c.train.log_every = 20
    c.train.checkpoint_every = 200
    c.eval.text = f"{SHARED}/stsb/dev.jsonl"
    c.eval.text_column = "sentence1"
    c.eval.max_batches = 20
  if arg.demo or arg.tiny:
    c.data.train = "demo:triplets_train.jsonl"
    c.data.text_column = "anchor"
    c.eval.text = "demo:sts_test.jsonl"
    c.eval.text_column = "sentence1"
    c.train.log_every = 5
  if arg.demo:
    c.data.batch_size = 16
    c.model.max_length = 64
    c.train.max_steps = 20
    c.eval.max_batches = 8
  if arg.tiny:
    c.data.batch_size = 4
    c.model.max_length = 32
    c.train.max_steps = 4
    c.train.log_every = 2
    c.eval.batch_size = 8
    c.eval.max_batches = 2
  return c
