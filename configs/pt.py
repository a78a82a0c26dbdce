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
Model matmul FLOPs 3.6e14 a step (pretrain.matmul_flops: encoder 1.5e14,
six decoder layers and the vocabulary projections at the masked positions the rest). Compiled for
TPU (python -m starbucks_jax.compile; experiments/results_tpu/, advice.md ranks the settings;
compiled, not measured), data parallel; per chip GiB used of usable HBM, roofline step bound (its
term), MFU bound. v5p-8 as is 91.4/95.7, 266 ms (HBM), 0.73 (>= 14.4 h for 195k steps); with
model.attention=flash 78.0, 219 ms, 0.89 (>= 11.8 h; no attention dropout: experiments/ablations.md).
v6e-8: model.remat=full, model.attention=flash, train.microbatches=2 8.7/31.25, 177 ms (HBM), 0.28
(>= 9.6 h); flash alone 30.9/31.25, 179 ms, 0.27; as is it needs 32.4 (29.4 with
mesh.shard_optimizer=False: 234 ms, 0.21). v5e-8: model.remat=full, train.microbatches=4 6.0/15.75,
333 ms (HBM), 0.68 (>= 18 h); with model.attention=flash and train.microbatches=2 9.0 GiB, 347 ms,
0.65 (0.49 against 0.39 if every byte XLA counts went through HBM); as is 37.8 GiB, one v5e ~249.
8 NVIDIA GPUs (experiments/results_gpu/; compiled): H100s as is 52.0/59.3 GiB, 122 ms (HBM), 0.37
(>= 6.6 h); with model.attention=cudnn 36.2 GiB, 88 ms (HBM), 0.51 (>= 4.8 h); H200s with cudnn
62 ms, 0.73 (>= 3.3 h).
Paper (Table A1): SMAE + SRL STS average 0.7837 vs 0.7682 for BERT + SRL.

Variants:
  cpu       The recorded CPU experiment (experiments/sweep_cpu.py, smae_cpu/): all-MiniLM-L6-v2 with a fresh MLM
            head, its schedule (1,16)..(6,384), on ../shared/data/mlm_text/sentences.txt (86,118
            sentences; a developer checkout), batch 32, max length 64, fp32; 400 steps (12,800 sentences, ~15% of the file).
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

import ml_collections

from starbucks_jax import config_lib, sharding
from starbucks_jax.schedule import STARBUCKS

SHARED = "../shared/data"


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, cpu=False, demo=False, tiny=False, mode="smae")
  c = ml_collections.ConfigDict()
  c.mode = "pretrain"  # this file's runs pre-train (configs/ft.py fine-tunes)
  c.seed = 0  # seeds data order, windows, masks, dropout and a fresh MLM head
  c.resume = "check"  # rerun in a workdir: 'check' stops if the run's meaning changed; 'force' continues

  c.model = ml_collections.ConfigDict()
  c.model.init_from = "bert-base-uncased"  # HF dir (ideally with an MLM head), Hub id, or a workdir
  c.model.max_length = 512  # tokens per row incl. [CLS]/[SEP]; 0 = max_position_embeddings
  c.model.dtype = "bfloat16"  # compute dtype: float32 | bfloat16 | float16 (params stay float32)
  c.model.param_dtype = "float32"  # parameter and optimizer-state storage dtype
  c.model.remat = "none"  # 'none' | 'full' (recompute each layer) | 'dots' (keep weight matmuls) | 'dots_saveable'
  c.model.attention = "standard"  # or fused: 'dot_product' (XLA), 'flash' (TPU), 'cudnn' (NVIDIA, bf16): no attn dropout

  c.schedule = ml_collections.ConfigDict()
  c.schedule.pairs = STARBUCKS["bert-base"]  # (layer, dim) pairs, small to large

  c.smae = ml_collections.ConfigDict()
  c.smae.mode = arg.mode  # 'smae' (MLM + MAE per pair) | '2d_mlm' (MLM per pair) | 'mlm' (full model)
  c.smae.encoder_mask_rate = 0.2  # whole-word masking rate of the encoder copy
  c.smae.decoder_mask_rate = 0.4  # ... of the decoder copy (includes every encoder-masked word)
  c.smae.mask_token_prob = 0.8  # a masked token becomes [MASK] ...
  c.smae.random_token_prob = 0.1  # ... or a random token (else it stays)

  c.data = ml_collections.ConfigDict()
  c.data.train = "hf:HuggingFaceFW/fineweb:sample-100BT"  # text source (see data/sources.py)
  c.data.text_column = "text"  # the column holding each document
  c.data.streaming = True  # hf: sources only; read lazily, once (one epoch: the stream's length in batches)
  c.data.shuffle_buffer = 100_000  # streaming: documents per shuffled block (~0.3 GB of FineWeb text); 0 = in order
  c.data.count_rows = False  # streaming, no length in the metadata: count the rows in one pass (cached)
  c.data.packing = False  # concatenate documents into full rows instead of one window each
  c.data.batch_size = 512  # rows per step
  c.data.length_buckets = "pow2"  # pad to 16,32,64,.. (few compiles: TPU) | 'linear': 16,32,48,..

  c.mesh = sharding.mesh_config()  # shape (data, fsdp, tensor), rules; coordinator etc. for many hosts

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 1  # passes over an in-memory source
  c.train.max_steps = 0  # > 0: this many steps instead of one epoch (a stream: its rows / batch size)
  c.train.lr = 1e-4  # peak learning rate
  c.train.warmup_ratio = 0.05  # linear warmup over this fraction of the steps
  c.train.decay = "cosine"  # 'linear' | 'cosine' to 0
  c.train.weight_decay = 0.001  # AdamW decoupled decay (not on biases and LayerNorm)
  c.train.adam_b1 = 0.9  # AdamW beta1
  c.train.adam_b2 = 0.999  # AdamW beta2
  c.train.adam_eps = 1e-8  # AdamW epsilon (HF Trainer's default)
  c.train.clip_grad_norm = 1.0  # global-norm clipping (HF Trainer's default); 0 = off
  c.train.microbatches = 1  # > 1: gradient accumulation, the batch in this many microbatches per step
  c.train.dropout = True  # BERT's dropout (encoder, decoder embeddings and decoder layer)
  c.train.skip_nonfinite = True  # skip (and count) updates with non-finite gradients, as the authors
  c.train.max_consecutive_nonfinite = 20  # give up after this many skipped steps in a row
  c.train.log_every = 100  # steps between metrics.jsonl rows
  c.train.checkpoint_every = 2000  # steps between orbax checkpoints (the last step always saves)
  c.train.keep_checkpoints = 3  # how many recent checkpoints to keep
  c.train.profile_steps = ()  # (START, END): a JAX profiler trace of steps START..END-1 in WORKDIR/profile

  c.log = ml_collections.ConfigDict()
  c.log.tensorboard = True  # TensorBoard event files in WORKDIR/tb beside metrics.jsonl (tensorboardX)
  c.log.wandb = ""  # a W&B project: log there too (pip install wandb; offline without WANDB_API_KEY)

  c.eval = ml_collections.ConfigDict()
  c.eval.text = ""  # text source for masked-token accuracy per pair after training; '' = none
  c.eval.text_column = "text"  # its column
  c.eval.batch_size = 64  # rows per evaluation batch
  c.eval.max_batches = 50  # evaluate at most this many batches (0 = all)

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
