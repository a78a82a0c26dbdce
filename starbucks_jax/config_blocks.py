"""The config's blocks as typed dataclasses: every key of configs/ft.py, configs/retrieval.py and
configs/pt.py is declared here once, with its default and its meaning (the loss block: losses.py).

A config file builds each block with `Block.config(**values)`; an objective reads the whole config
back with `FinetuneConfig.from_config` / `PretrainConfig.from_config` (unknown, missing and
mistyped keys fail there, naming the key) and calls the blocks' `check()` for their own values.
The fine-tuning and pre-training configs share the model, schedule, train, mesh and log blocks;
their own keys are subclasses.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any, ClassVar

from starbucks_jax import schedule
from starbucks_jax.config_lib import (
    Block,
    ConfigError,
    check_choice,
    check_range,
    config_errors,
    parse_eval_sets,
)
from starbucks_jax.data import batching, corpus, groups, sources
from starbucks_jax.data.masking import MaskingConfig
from starbucks_jax.evaluate import retrieval, search
from starbucks_jax.losses import SMAE_MODES, LossConfig
from starbucks_jax.models.pooling import POOLINGS
from starbucks_jax.sharding import RULES

frozen = dataclasses.dataclass(frozen=True)


# ---------------------------------------------------------------------------------------------
# Shared blocks
# ---------------------------------------------------------------------------------------------
@frozen
class Model(Block):
  KEY: ClassVar[str] = "model"
  init_from: str = "bert-base-uncased"  # HF dir, Hub id, 'all-MiniLM-L6-v2', or a workdir
  max_length: int = 0  # tokens per text incl. [CLS]/[SEP]; 0 = the model's own (max_seq_length)
  dtype: str = "bfloat16"  # compute dtype: float32 | bfloat16 | float16 (params stay float32)
  param_dtype: str = "float32"  # parameter and optimizer-state storage dtype
  # 'pure': activations in dtype; 'amp': matmuls in dtype, residual stream and LayerNorms float32
  precision: str = "pure"
  # 'none' | 'full' (recompute each layer) | 'dots' (keep weight matmuls) | 'dots_saveable'
  remat: str = "none"
  # or fused: 'dot_product' (XLA), 'flash' (TPU), 'cudnn' (NVIDIA, bf16): no attn dropout
  attention: str = "standard"

  def check(self) -> None:  # dtype, remat and attention: BertConfig's checks (trainer.ModelSpec)
    # AdamW state in float16 underflows
    check_choice("model.param_dtype", self.param_dtype, ("float32", "bfloat16"))
    check_range("model.max_length", self.max_length, 0)
    if self.max_length == 1:  # [CLS] and [SEP] take two
      raise ConfigError("model.max_length=1: expected 0 (the model's own) or at least 2 tokens "
                        "([CLS] and [SEP] take two)")


@frozen
class SentenceModel(Model):
  pooling: str = "mean"  # 'mean' | 'cls'
  # text before each query / anchor (and both sides of symmetric pairs, STS) and before each passage
  # / positive / negative, at training and evaluation, stored in exports; 'stored': the checkpoint's
  # own prompts (config_sentence_transformers.json), '' none; e.g. 'query: ' and 'passage: ' (E5)
  query_prompt: str = "stored"
  passage_prompt: str = "stored"

  def check(self) -> None:
    check_choice("model.pooling", self.pooling, POOLINGS)
    super().check()


@frozen
class Schedule(Block):
  KEY: ClassVar[str] = "schedule"
  # (layer, dim) pairs, small to large
  pairs: tuple[tuple[int, int], ...] = schedule.STARBUCKS["bert-base"]


@frozen
class SrlSchedule(Schedule):
  method: str = "starbucks"  # schedule.METHODS (the baselines of docs/method.md)
  separate_pair: tuple[int, int] = (0, 0)  # method=separate: the one (layer, dim) trained
  separate_train_dim: str = "full"  # separate: 'full' width (authors) or 'dim'
  # 2dmse: hidden state 0 (the embedding output) can be drawn too, as sentence-transformers 6.x
  # draws; False: hidden states 1..N-1, as its 2024 releases (3.0) drew
  sample_embedding_output: bool = False


@frozen
class Train(Block):
  KEY: ClassVar[str] = "train"
  epochs: int = 1  # passes over the data (the last incomplete batch of each is dropped)
  max_steps: int = 0  # > 0: stop after this many steps instead (the lr schedule uses it)
  lr: float = 5e-5  # peak learning rate
  warmup_ratio: float = 0.1  # linear warmup over this fraction of the steps
  decay: str = "linear"  # 'linear' | 'cosine' to 0
  weight_decay: float = 0.0  # AdamW decoupled decay (not on biases and LayerNorm)
  adam_b1: float = 0.9  # AdamW beta1
  adam_b2: float = 0.999  # AdamW beta2
  adam_eps: float = 1e-8  # AdamW epsilon (HF Trainer's default)
  clip_grad_norm: float = 1.0  # global-norm clipping (HF Trainer's default); 0 = off
  microbatches: int = 1  # > 1: gradient accumulation, the batch in this many microbatches per step
  dropout: bool = True  # BERT's dropout during training, as sentence-transformers trains
  skip_nonfinite: bool = True  # skip (and count) updates with non-finite gradients; False = stop
  max_consecutive_nonfinite: int = 20  # give up after this many skipped steps in a row
  log_every: int = 10  # steps between metrics.jsonl rows
  checkpoint_every: int = 500  # steps between orbax checkpoints (the last step always saves)
  keep_checkpoints: int = 3  # how many recent checkpoints to keep
  # (START, END): a JAX profiler trace of steps START..END-1 in WORKDIR/profile
  profile_steps: tuple[int, ...] = ()

  def check(self) -> None:
    check_range("train.epochs", self.epochs, 1)
    check_range("train.max_steps", self.max_steps, 0)
    check_range("train.lr", self.lr, 0, low_open=True)
    check_range("train.warmup_ratio", self.warmup_ratio, 0, 1)
    check_choice("train.decay", self.decay, ("linear", "cosine"))
    check_range("train.weight_decay", self.weight_decay, 0)
    check_range("train.clip_grad_norm", self.clip_grad_norm, 0)
    check_range("train.log_every", self.log_every, 1)
    check_range("train.checkpoint_every", self.checkpoint_every, 1)
    check_range("train.keep_checkpoints", self.keep_checkpoints, 1)
    check_range("train.microbatches", self.microbatches, 1)
    window = self.profile_steps
    if window and not (len(window) == 2 and 0 <= window[0] < window[1]):
      raise ConfigError(
          f"train.profile_steps={window}: expected (START, END) steps with 0 <= START < END, or ()")


@frozen
class SrlTrain(Train):
  grad_cache_chunks: int = 0  # > 0: gradient cache, encode the batch in this many chunks (memory)
  # > 1: the step's texts as this many independent encoder forwards (CPU speed)
  forward_splits: int = 1

  def check(self) -> None:
    super().check()
    check_range("train.grad_cache_chunks", self.grad_cache_chunks, 0)
    check_range("train.forward_splits", self.forward_splits, 1)


@frozen
class Mesh(Block):
  KEY: ClassVar[str] = "mesh"
  # devices along (data, fsdp, tensor); -1 = the rest. FSDP: (1, -1, 1)
  shape: tuple[int, ...] = (-1, 1, 1)
  # logical axis -> mesh axes (starbucks_jax/sharding.py)
  rules: tuple[tuple[str, Any], ...] = RULES
  # AdamW moments split over the data-parallel devices (ZeRO-1), params whole
  shard_optimizer: bool = True
  # several processes: 'host:port' of process 0, or 'auto' (TPU pod, SLURM, MPI)
  coordinator: str = ""
  num_processes: int = 1  # processes in the run (with a host:port coordinator)
  process_id: int = 0  # this process's index (with a host:port coordinator)

  def check(self) -> None:  # the shape against the devices: sharding.check_mesh
    coordinator = self.coordinator
    if coordinator and coordinator != "auto" and not re.fullmatch(r"[^\s:]+:\d+", coordinator):
      raise ConfigError(
          f"mesh.coordinator={coordinator!r}: expected 'host:port', 'auto' or '' (one process)")
    check_range("mesh.num_processes", self.num_processes, 1)
    if not 0 <= self.process_id < self.num_processes:
      raise ConfigError(f"mesh.process_id={self.process_id} is not in 0..{self.num_processes - 1} "
                        f"(mesh.num_processes={self.num_processes})")
    if self.num_processes > 1 and not coordinator:
      raise ConfigError(
          f"mesh.num_processes={self.num_processes} needs mesh.coordinator (host:port of process 0)"
      )


@frozen
class Log(Block):
  KEY: ClassVar[str] = "log"
  # TensorBoard event files in WORKDIR/tb beside metrics.jsonl (tensorboardX)
  tensorboard: bool = True
  wandb: str = ""  # a W&B project: log there too (pip install wandb; offline without WANDB_API_KEY)

  def check(self) -> None:
    if self.wandb and importlib.util.find_spec("wandb") is None:
      raise ConfigError(
          f"log.wandb={self.wandb!r}: Weights & Biases logging needs `pip install wandb`")
    if self.tensorboard and importlib.util.find_spec("tensorboardX") is None:
      raise ConfigError("log.tensorboard=True needs tensorboardX (`pip install tensorboardX`)")


# ---------------------------------------------------------------------------------------------
# Fine-tuning (configs/ft.py, configs/retrieval.py)
# ---------------------------------------------------------------------------------------------
COLUMNS = dict(anchor="anchor", positive="positive", negative="negative", sentence1="sentence1",
               sentence2="sentence2", score="score")


@frozen
class ExampleData(Block):
  KEY: ClassVar[str] = "data"
  train: str = "hf:sentence-transformers/all-nli:triplet"  # source spec (see data/sources.py)
  format: str = "triplets"  # 'triplets' | 'pairs' | 'scored_pairs' | 'groups' (retrieval)
  # role -> column
  columns: dict[str, str] = dataclasses.field(default_factory=lambda: dict(COLUMNS))
  # scored_pairs: every score in [low, high] (STS-B: 0..5)
  score_range: tuple[float, float] = batching.SCORE_RANGE
  batch_size: int = 128  # examples per step (each triplet is 3 texts)
  # True keeps a text from appearing twice in a batch (a false in-batch negative for MNRL); False as
  # the authors' runs (sentence-transformers' default batch sampler keeps duplicates)
  no_duplicates: bool = False
  # pad to 16,32,64,.. (few compiles: TPU) | 'linear': 16,32,48,.. | 'auto'
  length_buckets: str = "pow2"
  # length_buckets='auto' or packing: this many pad lengths / row counts (compiles)
  num_buckets: int = 3
  # several texts per row, each attending only to itself (no padding to the longest)
  packing: bool = False
  pack_length: int = 0  # packing: tokens per row; 0 = the longest training text (rounded up to 8)
  group_size: int = 8  # format=groups: passages per query (1 positive + G-1 negatives)
  query_max_length: int = 32  # format=groups: query tokens
  passage_max_length: int = 196  # format=groups: passage tokens

  def check(self) -> None:
    check_choice("data.format", self.format, tuple(batching.FORMATS) + ("groups",))
    (groups.check_config if self.format == "groups" else batching.check_config)(self)
    check_range("data.batch_size", self.batch_size, 2)


@frozen
class SentenceEval(Block):
  KEY: ClassVar[str] = "eval"
  sts: str = ""  # DATASET/SPLIT=SOURCE, comma-separated: Spearman per pair
  grid: bool = False  # evaluate every layer x every dim of the schedule instead
  batch_size: int = 128  # texts per encoding batch (eval.packing: rows per batch)
  # encoding dtype, every activation: float32 | bfloat16 (the authors' retrieval encoding) | float16
  dtype: str = "float32"
  packing: bool = False  # encode texts packed into shared rows (one compile, little padding)
  # DATASET/SPLIT=BEIR_FOLDER, comma-separated: nDCG@10, MRR@10, R@100/1000 per pair
  retrieval: str = ""
  # 'cosine' (truncate, normalise) | 'dot' (raw, the retrieval recipe)
  retrieval_similarity: str = "cosine"
  query_max_length: int = 64  # query tokens for retrieval evaluation
  passage_max_length: int = 256  # passage tokens (title + text) for retrieval evaluation
  retrieval_k: int = 1000  # documents retrieved per query
  # drop a retrieved document whose id is the query's (BEIR's ignore_identical_ids)
  retrieval_skip_self: bool = False
  # chains 'LAYERxDIM:K,...': retrieve with the first, rescore with the next
  retrieval_funnels: tuple[str, ...] = ()
  # each pair's and funnel's cost per query -> WORKDIR/costs (evaluate/cost.py)
  retrieval_costs: bool = False
  # queries at every layer n_q against passages at every layer n_doc >= n_q of the schedule, each
  # dim -> WORKDIR/cross_depth (evaluate/cross_depth.py: tables, heat-maps, query FLOPs per cell)
  retrieval_cross_depth: bool = False
  # where corpus indexes live ('': WORKDIR/index); another run's reuses its vectors
  index_dir: str = ""
  # also evaluate the starting model before training (results/start.json, its retrieval files in
  # WORKDIR/start): the final table shows its value and the change beside each column
  before_training: bool = False

  @property
  def sts_sets(self) -> tuple[tuple[str, str, str], ...]:
    return parse_eval_sets(self.sts, "eval.sts")

  @property
  def retrieval_sets(self) -> tuple[tuple[str, str, str], ...]:
    return parse_eval_sets(self.retrieval, "eval.retrieval")

  def check(self) -> None:
    """STS sets whose sources resolve, BEIR folders with a corpus and the split's qrels, funnels."""
    for dataset, split, spec in self.sts_sets:
      sources.check_spec(f"eval.sts ({dataset}/{split})", spec)
    check_range("eval.batch_size", self.batch_size, 1)
    check_choice("eval.dtype", self.dtype, ("float32", "bfloat16", "float16"))
    for dataset, split, source in self.retrieval_sets:
      retrieval.check_source(f"eval.retrieval ({dataset}/{split})", source, split)
    if not self.retrieval_sets:
      return
    check_choice("eval.retrieval_similarity", self.retrieval_similarity, ("dot", "cosine"))
    check_range("eval.query_max_length", self.query_max_length, 1)
    check_range("eval.passage_max_length", self.passage_max_length, 1)
    check_range("eval.retrieval_k", self.retrieval_k, 1)
    for spec in self.retrieval_funnels:
      with config_errors("eval.retrieval_funnels: "):
        search.parse_funnel(spec)
    if self.index_dir and not os.path.isdir(self.index_dir):
      raise ConfigError(
          f"eval.index_dir={self.index_dir!r}: no such folder (make it first to start a shared "
          "index there)")


# method=starbucks_scores_1n (configs/ft.py): the score KL (detached, tau 1) and pair weights 1/n
SCORES_1N_LOSS = {
    "kl": "scores", "kl_detach": True, "kl_temperature": 1.0, "pair_weighting": "inverse_layer"
}
# method=recommended (configs/ft.py, configs/retrieval.py): the loss keys of the recipe the
# ablations recommend over the paper's SRL on CoSENT and MNRL alike (experiments/ablations.md has
# the evidence and its limits)
RECOMMENDED_LOSS = SCORES_1N_LOSS


@frozen
class FinetuneConfig(Block):
  """A fine-tuning config, typed (finetune.describe reads it)."""
  mode: str = "train"  # 'train': fine-tune, then evaluate; 'eval': evaluate model.init_from only
  seed: int = 0  # seeds data order, dropout and the baselines' sampling
  # rerun in a workdir: 'check' stops if the run's meaning changed; 'force' continues
  resume: str = "check"
  model: SentenceModel = SentenceModel()
  schedule: SrlSchedule = SrlSchedule()
  # task, similarity, KL variant, reduction, pair weights (losses.py)
  loss: LossConfig = LossConfig()
  data: ExampleData = ExampleData()
  mesh: Mesh = Mesh()  # shape (data, fsdp, tensor), rules; coordinator etc. for many hosts
  train: SrlTrain = SrlTrain()
  log: Log = Log()
  eval: SentenceEval = SentenceEval()


# ---------------------------------------------------------------------------------------------
# Pre-training (configs/pt.py)
# ---------------------------------------------------------------------------------------------
@frozen
class Smae(Block):
  KEY: ClassVar[str] = "smae"
  mode: str = "smae"  # 'smae' (MLM + MAE per pair) | '2d_mlm' (MLM per pair) | 'mlm' (full model)
  # whole-word masking rate of the encoder copy
  encoder_mask_rate: float = MaskingConfig.encoder_rate
  # ... of the decoder copy (includes every encoder-masked word)
  decoder_mask_rate: float = MaskingConfig.decoder_rate
  mask_token_prob: float = MaskingConfig.mask_prob  # a masked token becomes [MASK] ...
  random_token_prob: float = MaskingConfig.random_prob  # ... or a random token (else it stays)

  def masking(self) -> MaskingConfig:
    with config_errors("smae.*: "):
      return MaskingConfig(encoder_rate=self.encoder_mask_rate, decoder_rate=self.decoder_mask_rate,
                           mask_prob=self.mask_token_prob, random_prob=self.random_token_prob)

  def check(self) -> None:
    check_choice("smae.mode", self.mode, SMAE_MODES)
    self.masking()


@frozen
class TextData(Block):
  KEY: ClassVar[str] = "data"
  train: str = "hf:HuggingFaceFW/fineweb:sample-100BT"  # text source (see data/sources.py)
  text_column: str = "text"  # the column holding each document
  # hf: sources only; read lazily, once (one epoch: the stream's length in batches)
  streaming: bool = True
  # streaming: documents per shuffled block (~0.3 GB of FineWeb text); 0 = in order
  shuffle_buffer: int = 100_000
  # streaming, no length in the metadata: count the rows in one pass (cached)
  count_rows: bool = False
  packing: bool = False  # concatenate documents into full rows instead of one window each
  batch_size: int = 512  # rows per step
  length_buckets: str = "pow2"  # pad to 16,32,64,.. (few compiles: TPU) | 'linear': 16,32,48,..

  def check(self) -> None:
    corpus.check_config(self)


@frozen
class MlmEval(Block):
  KEY: ClassVar[str] = "eval"
  text: str = ""  # text source for masked-token accuracy per pair after training; '' = none
  text_column: str = "text"  # its column
  batch_size: int = 64  # rows per evaluation batch
  max_batches: int = 50  # evaluate at most this many batches (0 = all)

  def check(self) -> None:
    if self.text:
      sources.check_spec("eval.text", self.text)
    check_range("eval.batch_size", self.batch_size, 1)
    check_range("eval.max_batches", self.max_batches, 0)


@frozen
class PretrainConfig(Block):
  """A pre-training config, typed (pretrain.describe reads it)."""
  mode: str = "pretrain"  # this file's runs pre-train (configs/ft.py fine-tunes)
  seed: int = 0  # seeds data order, windows, masks, dropout and a fresh MLM head
  # rerun in a workdir: 'check' stops if the run's meaning changed; 'force' continues
  resume: str = "check"
  model: Model = Model(max_length=512)
  schedule: Schedule = Schedule()
  smae: Smae = Smae()
  data: TextData = TextData()
  mesh: Mesh = Mesh()
  train: Train = Train(lr=1e-4, warmup_ratio=0.05, decay="cosine", weight_decay=0.001,
                       log_every=100, checkpoint_every=2000)
  log: Log = Log()
  eval: MlmEval = MlmEval()
