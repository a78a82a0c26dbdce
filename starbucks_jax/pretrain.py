"""SMAE pre-training (docs/method.md, "SMAE pre-training"): the run description, the 2D masked-LM
step, the run and its masked-token evaluation.

The state's params hold three groups: `bert` (the encoder), `mlm_head` (HF's cls.predictions; from
the starting checkpoint, or fresh when it has none) and `mae_decoder` (one BERT layer, a copy of the
starting checkpoint's layer 0). One step runs the encoder once up to the deepest layer of the
schedule; for each pair (n, d):
- MLM: the head on `hidden_states[n][:, :, :d]` at the encoder-masked positions (gathered first);
- MAE: the decoder over the embedded decoder copy with position 0 replaced by the head transform
  of `hidden_states[n][:, 0, :d]`, then the head at the decoder-masked positions.
The loss is the mean over pairs of (MLM + MAE) / 2 (`losses.smae_loss`); `smae.mode` 2d_mlm drops
the MAE term and mlm trains the full model only (plain MLM, the control). Each pair's vocabulary
logits are recomputed in the backward pass (jax.checkpoint), so at most one pair's [B, K, vocab]
is alive at a time. At the end the run writes WORKDIR/bert_mlm, an HF masked-LM directory (its
architecture's: BertForMaskedLM, ModernBertForMaskedLM, ...) that fine-tuning takes as
model.init_from (so does the workdir itself).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from starbucks_jax import losses, metrics, model_dirs, schedule, sharding, timing, trainer
from starbucks_jax import step as step_lib
from starbucks_jax.config_blocks import PretrainConfig
from starbucks_jax.config_lib import ConfigError, check_choice, check_finite
from starbucks_jax.data import sources
from starbucks_jax.data.corpus import TextBatcher
from starbucks_jax.data.masking import Masker, MaskingConfig, budget
from starbucks_jax.evaluate import results
from starbucks_jax.models import encoders, hf
from starbucks_jax.models.encoders import EncoderConfig, hidden_states, param_logical_axes
from starbucks_jax.models.heads import MaeDecoder, MlmHead

log = logging.getLogger(__name__)
EXPORT_DIR = "bert_mlm"


# ---------------------------------------------------------------------------------------------
# The run description
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PretrainRun:
  """A pre-training config, checked before any compute (configs/pt.py)."""
  blocks: PretrainConfig  # the config, typed
  model: trainer.ModelSpec  # backbone, compute settings and schedule.pairs
  train_pairs: tuple[schedule.Pair, ...]  # the pairs smae.mode trains
  masking: MaskingConfig  # the smae block's masking rates


def mode_pairs(mode: str, pairs, config: EncoderConfig) -> tuple[schedule.Pair, ...]:
  """The pairs a mode trains: the schedule, or the full model alone for plain MLM."""
  return ((config.num_hidden_layers, config.hidden_size),) if mode == "mlm" else tuple(pairs)


def describe(config: ml_collections.ConfigDict, *, backbone: EncoderConfig | None = None,
             devices=None) -> PretrainRun:
  """Checks everything that can be checked without compute; a ConfigError names the key.
  `backbone` and `devices` stand in for config.json and this host's devices (as finetune.describe)."""
  check_finite(config)
  c = PretrainConfig.from_config(config)
  check_choice("mode", c.mode, ("pretrain",))
  c.model.check()
  model = trainer.ModelSpec.from_config(c.model, c.schedule, backbone=backbone)
  c.smae.check()
  c.data.check()
  if c.data.streaming and c.train.epochs != 1 and not c.train.max_steps:
    raise ConfigError(
        f"train.epochs={c.train.epochs}: a streamed source is read once; set 1 (or train.max_steps)"
    )
  trainer.check_train(c, sharding.check_mesh(c.mesh, devices))
  c.eval.check()
  return PretrainRun(blocks=c, model=model, train_pairs=mode_pairs(c.smae.mode, model.pairs,
                                                                   model.config),
                     masking=c.smae.masking())


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------
def init_params(pre: model_dirs.Pretrained, config: EncoderConfig,
                rng: jax.Array) -> dict[str, Any]:
  """{bert, mlm_head, mae_decoder} from a checkpoint; a missing MLM head is initialised fresh."""
  params = {"bert": pre.params["bert"]}
  if "mlm_head" in pre.params:
    params["mlm_head"] = pre.params["mlm_head"]
  else:
    log.warning(
        "%s has no MLM head (a sentence model?): initialising a fresh one (normal(%g), "
        "LayerNorm 1/0, bias 0)", pre.path, config.initializer_range)
    emb = encoders.word_embeddings(pre.params["bert"], config)
    variables = MlmHead(config).init(rng, jnp.zeros((1, config.hidden_size)), emb)
    params["mlm_head"] = jax.tree_util.tree_map(np.asarray, nn.meta.unbox(variables["params"]))
  params["mae_decoder"] = {
      "layer_0": jax.tree_util.tree_map(np.array, encoders.first_layer(params["bert"], config))
  }
  return params


def param_specs(config: EncoderConfig) -> dict[str, Any]:
  """Logical axes of {bert, mlm_head, mae_decoder} (for the mesh shardings)."""
  # shapes only: callable under any mesh
  x = jax.ShapeDtypeStruct((1, 2, config.hidden_size), jnp.float32)
  emb = jax.ShapeDtypeStruct((config.vocab_size, config.hidden_size), jnp.float32)
  return {
      "bert": param_logical_axes(config),
      "mlm_head": sharding.logical_specs(MlmHead(config), x, emb),
      "mae_decoder": sharding.logical_specs(
          MaeDecoder(config), x, jax.ShapeDtypeStruct((1, config.hidden_size), jnp.float32),
          jax.ShapeDtypeStruct((1, 2), jnp.int32))
  }


def _gather(x, positions):
  """x [B, T, D], positions [B, K] -> [B, K, D]."""
  return jnp.take_along_axis(x, positions[..., None], axis=1)


def pair_losses(params, config: EncoderConfig, batch, pairs, mode: str, *,
                deterministic: bool = True, rng=None) -> tuple[dict, dict | None]:
  """({pair: MLM loss}, {pair: MAE loss} or None) from one encoder forward."""
  rngs = lambda i: None if deterministic else {"dropout": jax.random.fold_in(rng, i)}
  hidden = hidden_states(params["bert"], config, batch["ids"], batch["mask"],
                         num_layers=max(n for n, _ in pairs), deterministic=deterministic,
                         rng=None if deterministic else jax.random.fold_in(rng, 0))
  word_emb = encoders.word_embeddings(params["bert"], config)
  head = MlmHead(config)

  # [B, K, d] -> scalar; logits rebuilt for the gradient
  @jax.checkpoint
  def head_loss(head_params, emb, h, labels, count):
    with jax.named_scope("loss"):
      return losses.masked_lm_loss(head.apply({"params": head_params}, h, emb), labels, count)

  mlm, mae = {}, ({} if mode == "smae" else None)
  for i, (n, d) in enumerate(pairs):
    h = hidden[n][:, :, :d]
    mlm[(n, d)] = head_loss(params["mlm_head"], word_emb, _gather(h, batch["mlm_positions"]),
                            batch["mlm_labels"], batch.get("mlm_count"))
    if mae is None:
      continue
    first = head.apply({"params": params["mlm_head"]}, h[:, 0], method=lambda m, x: m.transform(x))
    embedded = encoders.embed(params["bert"], config, batch["dec_ids"], deterministic,
                              None if deterministic else jax.random.fold_in(rng, 2 * i + 1))
    out = MaeDecoder(config).apply({"params": params["mae_decoder"]}, embedded, first,
                                   batch["mask"], deterministic, rngs=rngs(2 * i + 2))
    mae[(n, d)] = head_loss(params["mlm_head"], word_emb, _gather(out, batch["mae_positions"]),
                            batch["mae_labels"], batch.get("mae_count"))
  return mlm, mae


def make_smae_step(config: EncoderConfig, pairs, mode: str, tx: optax.GradientTransformation,
                   dropout: bool = True, microbatches: int = 1) -> step_lib.TrainStep:
  """The SMAE step; microbatches > 1 accumulates gradients and equals the whole batch's step: each
  microbatch's token means divide by the batch's masked-token counts / k (`make_step`'s prepare)."""
  def loss_fn(params, batch, rng):
    mlm, mae = pair_losses(params, config, batch, pairs, mode, deterministic=not dropout, rng=rng)
    return losses.smae_loss(mlm, mae)

  def prepare(batch, k):
    counts = {
        f"{name}_count": (batch[f"{name}_labels"] >= 0).sum() / k for name in ("mlm", "mae")
        if f"{name}_labels" in batch
    }
    return {**batch, **counts}

  return step_lib.make_step(loss_fn, tx, microbatches=microbatches, prepare=prepare,
                            param_specs=param_specs(config))


def run_step(run: PretrainRun, tx: optax.GradientTransformation) -> step_lib.TrainStep:
  """The step a pre-training run trains with, as its config sets it."""
  c = run.blocks
  return make_smae_step(run.model.config, run.train_pairs, c.smae.mode, tx, dropout=c.train.dropout,
                        microbatches=c.train.microbatches)


def abstract_params(config: EncoderConfig) -> dict[str, Any]:
  """Shapes and dtypes of {bert, mlm_head, mae_decoder} (no memory) in their storage dtype
  (model.param_dtype)."""
  def build():
    bert = encoders.init_params(config, jax.random.key(0))
    emb = encoders.word_embeddings(bert, config)
    head = nn.meta.unbox(
        MlmHead(config).init(jax.random.key(0), jnp.zeros((1, config.hidden_size)), emb)["params"])
    params = {
        "bert": bert, "mlm_head": head,
        "mae_decoder": {"layer_0": encoders.first_layer(bert, config)}
    }
    return jax.tree.map(lambda x: x.astype(config.storage_dtype), params)

  return jax.eval_shape(build)


def abstract_batch(run: PretrainRun, length: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a batch padded to `length`, as the masker makes it."""
  B, i32 = run.blocks.data.batch_size, jnp.int32
  ke, kd = budget(length, run.masking.encoder_rate), budget(length, run.masking.decoder_rate)
  return {
      "ids": jax.ShapeDtypeStruct((B, length), i32), "dec_ids": jax.ShapeDtypeStruct(
          (B, length), i32), "mask": jax.ShapeDtypeStruct((B, length), i32),
      "mlm_positions": jax.ShapeDtypeStruct((B, ke), i32), "mlm_labels": jax.ShapeDtypeStruct(
          (B, ke), i32), "mae_positions": jax.ShapeDtypeStruct(
              (B, kd), i32), "mae_labels": jax.ShapeDtypeStruct((B, kd), i32)
  }


def train_program(config: ml_collections.ConfigDict, run: PretrainRun,
                  length: int) -> trainer.TrainProgram:
  """The step over batches of data.batch_size windows of `length` tokens."""
  cfg, B = run.model.config, run.blocks.data.batch_size
  batch = abstract_batch(run, length)
  masked = (batch["mlm_positions"].shape[1], batch["mae_positions"].shape[1])
  flops = matmul_flops(cfg, B, length, run.train_pairs, run.blocks.smae.mode, masked)
  return trainer.TrainProgram(lambda tx: run_step(run, tx), abstract_params(cfg), param_specs(cfg),
                              batch, None, flops, f"batch {B} x {length} tokens")


def matmul_flops(config: EncoderConfig, rows: int, length: int, pairs, mode: str,
                 masked: tuple[int, int]) -> int:
  """Model matmul FLOPs of one SMAE training step (forward and backward: x3) over `rows` texts of
  `length` tokens with `masked` = (encoder, decoder) gathered positions per row: the encoder to the
  deepest pair; per pair the MLM head on the encoder-masked positions (dense d x D, vocabulary
  projection) and, for smae, the decoder layer over every position and the head on the
  decoder-masked ones. The heads' logits recomputed in the backward pass (jax.checkpoint) are not
  model FLOPs: the compiled program's count has them (HFU)."""
  D, V = config.hidden_size, config.vocab_size
  encoder = config.replace(num_hidden_layers=max(n for n, _ in pairs)).matmul_flops(rows, length)
  head = lambda d, k: 2 * rows * k * (d * D + D * V)
  layer = config.replace(num_hidden_layers=1).matmul_flops(rows, length, train=False)
  total = encoder
  for _, d in pairs:
    total += 3 * head(d, masked[0])
    if mode == "smae":
      total += 3 * layer + 3 * head(D, masked[1])
  return total


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def pretrain(config: ml_collections.ConfigDict, workdir: str,
             run: PretrainRun) -> model_dirs.Pretrained:
  """Pre-train from model.init_from (or resume the workdir); exports WORKDIR/bert_mlm."""
  c, d = run.blocks, run.blocks.data
  setup = trainer.setup_model(c.model, run.model, default_length=run.model.config.max_tokens)
  pre = setup.pretrained
  batcher = TextBatcher(d.train, pre.tokenizer, Masker(pre.tokenizer,
                                                       run.masking), batch_size=d.batch_size,
                        max_length=setup.max_length, seed=c.seed, column=d.text_column,
                        streaming=d.streaming, packing=d.packing, length_buckets=d.length_buckets,
                        shuffle_buffer=d.shuffle_buffer, count_rows=d.count_rows)
  steps = trainer.total_steps(c.train, batcher)
  params = init_params(pre, setup.config, jax.random.key(c.seed))
  log.info("SMAE (%s) for %d steps, batch %d, max length %d, pairs %s", c.smae.mode, steps,
           d.batch_size, setup.max_length, run.train_pairs)

  trained = trainer.train_model(config, c, workdir, setup, params, lambda tx: run_step(run, tx),
                                batcher, steps, param_specs=param_specs(setup.config))
  model = dataclasses.replace(pre, params={k: trained[k] for k in ("bert", "mlm_head")})
  if not sharding.is_primary():  # the primary process exports
    return model
  out = model_dirs.save_pretrained(os.path.join(workdir, EXPORT_DIR), model.config, model.params,
                                   model.tokenizer, sentence=model.sentence)
  masked_lm = hf.architecture(model.config.model_type).masked_lm
  print(f"{masked_lm}: {out} (fine-tune from it with --config.model.init_from={out})")
  return model


def evaluate_mlm(model: model_dirs.Pretrained, run: PretrainRun, workdir: str,
                 name: str) -> list[dict]:
  """Masked-token accuracy and loss of every pair (MLM) on `eval.text` -> WORKDIR/results/<name>.json."""
  c, e = run.blocks, run.blocks.eval
  if not e.text:
    return []
  max_length = min(c.model.max_length or model.config.max_tokens, model.config.max_tokens)
  batcher = TextBatcher(e.text, model.tokenizer, Masker(model.tokenizer,
                                                        run.masking), batch_size=e.batch_size,
                        max_length=max_length, seed=c.seed + 1, column=e.text_column)
  pairs = run.model.pairs
  steps = batcher.steps_in(1)
  if e.max_batches:
    steps = min(steps, e.max_batches)
  params = {k: jax.device_put(v) for k, v in model.params.items()}

  @jax.jit
  def mlm_stats(params, batch):
    hidden = hidden_states(params["bert"], model.config, batch["ids"], batch["mask"],
                           num_layers=max(n for n, _ in pairs))
    emb = encoders.word_embeddings(params["bert"], model.config)
    out = {}
    for n, d in pairs:
      logits = MlmHead(model.config).apply({"params": params["mlm_head"]},
                                           _gather(hidden[n][:, :, :d], batch["mlm_positions"]),
                                           emb)
      valid = batch["mlm_labels"] >= 0
      out[(n, d)] = (jnp.sum(jnp.where(valid,
                                       logits.argmax(-1) == batch["mlm_labels"], 0)),
                     losses.masked_lm_loss(logits, batch["mlm_labels"]) * valid.sum(), valid.sum())
    return out

  totals = {p: np.zeros(3) for p in pairs}
  for _, batch in batcher.batches(0, steps):
    for p, v in jax.device_get(mlm_stats(params, batch)).items():
      totals[p] += np.array([float(x) for x in v])
  dataset = os.path.splitext(os.path.basename(e.text.removeprefix("demo:")))[0]
  records = []
  for (n, d), (correct, loss_sum, count) in totals.items():
    records.append(results.record(dataset, "eval", "mlm_accuracy", n, d, correct / count))
    records.append(results.record(dataset, "eval", "mlm_loss", n, d, loss_sum / count))
  metrics.write_results(workdir, records, c.log)
  masked = int(next(iter(totals.values()))[2])
  return results.report(
      workdir, name, records, notes=[
          f"{dataset}/eval: each (layer, dim)'s masked-token accuracy and mean loss through the MLM "
          f"head, {masked} masked tokens in {steps} batch{'es' if steps > 1 else ''} of {e.text} ({e.text_column})"
      ])


@trainer.releases_workdir
def run(config: ml_collections.ConfigDict, workdir: str,
        defaults: ml_collections.ConfigDict | None = None) -> list[dict]:
  """Pre-train, export and evaluate masked-token accuracy per pair.
  `defaults`: the config file's values, for resuming a run made before a key existed
  (workdir.check_resume)."""
  spec = trainer.start(config, workdir, describe, defaults)
  e = spec.blocks.eval
  if e.text:  # every evaluation row read and checked before training, not after it
    for _ in sources.read_rows(e.text, {"text": str}, {"text": e.text_column}):
      pass
  model = pretrain(config, workdir, spec)
  if not sharding.is_primary():  # the primary process evaluates and writes the results
    return []
  with timing.current().phase("eval"):
    return evaluate_mlm(model, spec, workdir, name="final")


OBJECTIVE = trainer.Objective(name="pretrain", modes=("pretrain",), describe=describe, run=run,
                              train_program=train_program)
