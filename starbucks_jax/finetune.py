"""SRL fine-tuning and its baselines (docs/method.md, "SRL fine-tuning"): the run description, the
run and its per-(layer, dim) evaluation; the step itself is srl.py's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from starbucks_jax import (
    checkpoint,
    losses,
    metrics,
    model_dirs,
    schedule,
    sharding,
    srl,
    timing,
    trainer,
)
from starbucks_jax import step as step_lib
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.config_blocks import FinetuneConfig
from starbucks_jax.config_lib import ConfigError, check_choice, check_finite
from starbucks_jax.data import batching, groups
from starbucks_jax.embed import Embedder
from starbucks_jax.evaluate import results, retrieval, search, sts
from starbucks_jax.models.encoders import EncoderConfig, abstract_params, param_logical_axes

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The run description
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FinetuneRun:
  """A fine-tuning config, checked before any compute (configs/ft.py, configs/retrieval.py)."""
  blocks: FinetuneConfig  # the config, typed
  model: trainer.ModelSpec  # backbone, compute settings and schedule.pairs
  plan: schedule.Plan  # what each step trains (schedule.method)
  loss: losses.LossConfig | None  # the loss block (None in mode=eval)
  # the pairs evaluated: the schedule, the grid, or the separate pair
  eval_pairs: tuple[schedule.Pair, ...]
  # devices a batch's examples are split over (packed batches pack each on its own)
  data_shards: int = 1

  @property
  def sts_sets(self) -> tuple[tuple[str, str, str], ...]:
    """eval.sts as (dataset, split, source)."""
    return self.blocks.eval.sts_sets

  @property
  def retrieval_sets(self) -> tuple[tuple[str, str, str], ...]:
    """eval.retrieval as (dataset, split, folder)."""
    return self.blocks.eval.retrieval_sets


def describe(config: ml_collections.ConfigDict, *, backbone: EncoderConfig | None = None,
             devices=None) -> FinetuneRun:
  """Checks everything that can be checked without compute; a ConfigError names the key.
  `backbone` stands in for the checkpoint's config.json and `devices` for this host's devices
  (compiling for another machine: starbucks_jax.compile)."""
  check_finite(config)
  c = FinetuneConfig.from_config(config)
  check_choice("mode", c.mode, ("train", "eval"))
  c.model.check()
  model = trainer.ModelSpec.from_config(c.model, c.schedule, backbone=backbone)
  N, D = model.config.num_hidden_layers, model.config.hidden_size
  plan = schedule.plan_from_config(c.schedule, model.pairs, N, D)
  c.eval.check()
  for spec in c.eval.retrieval_funnels if c.eval.retrieval_sets else ():
    for (n, d), _ in search.parse_funnel(spec):
      schedule.check_pair(n, d, N, D, where=f"eval.retrieval_funnels {spec!r}: ")
  loss, shards = None, 1
  if c.mode == "train":
    loss = c.loss
    loss.check()
    loss.check_plan(len(model.pairs), plan.method)
    c.data.check()
    check_task_format(c)
    mesh = sharding.check_mesh(c.mesh, devices)
    trainer.check_train(c, mesh)
    shards = sharding.data_parallel_size(mesh)
    check_encoding_splits(c, shards)
    check_packing(c)
    check_teacher(c)
  if c.eval.grid:
    eval_pairs = schedule.grid(N, D, [d for _, d in model.pairs])
  elif plan.method == "separate":
    eval_pairs = (c.schedule.separate_pair,)
  else:
    eval_pairs = model.pairs
  return FinetuneRun(blocks=c, model=model, plan=plan, loss=loss, eval_pairs=eval_pairs,
                     data_shards=shards)


def check_task_format(c: FinetuneConfig) -> None:
  """loss.task against data.format: CoSENT needs scored pairs, the contrastive loss anything else."""
  wants_scores = c.loss.task == "cosent"
  if wants_scores != (c.data.format == "scored_pairs"):
    raise ConfigError(
        f"loss.task={c.loss.task!r} needs data.format="
        f"{'scored_pairs' if wants_scores else 'triplets or pairs'}, not {c.data.format!r}")


def check_encoding_splits(c: FinetuneConfig, data_devices: int) -> None:
  """train.grad_cache_chunks and train.forward_splits against the texts the step encodes together:
  a microbatch (data.batch_size / train.microbatches) is cut into gradient-cache chunks, each chunk
  into forward splits, and every split keeps the data-parallel sharding."""
  t, batch = c.train, c.data.batch_size
  if t.grad_cache_chunks and batch % t.grad_cache_chunks:
    raise ConfigError(
        f"train.grad_cache_chunks={t.grad_cache_chunks} does not divide data.batch_size={batch}")
  splits, k = t.forward_splits, t.microbatches
  micro = batch // k
  if micro % (splits * data_devices):
    raise ConfigError(
        f"train.forward_splits={splits}: data.batch_size={batch}" +
        (f" / train.microbatches={k}" if k > 1 else "") +
        f" does not split into {splits} forwards over the mesh's {data_devices} data-parallel devices"
    )
  chunk = micro // (t.grad_cache_chunks or 1)
  if chunk % splits:
    raise ConfigError(f"train.forward_splits={splits} does not divide the {chunk} examples of each "
                      "train.grad_cache_chunks chunk" + (" of a microbatch" if k > 1 else ""))


def check_packing(c: FinetuneConfig) -> None:
  """data.packing: texts of roles (not retrieval groups), the whole batch encoded in one forward (the
  splitting settings cut a batch by examples; check_encoding_splits has split it over the mesh)."""
  d, t = c.data, c.train
  if not d.packing:
    return
  if d.format == "groups":
    raise ConfigError(
        "data.packing=True packs triplets, pairs and scored_pairs; data.format='groups' "
        "pads queries and passages")
  for key, off in (("grad_cache_chunks", 0), ("microbatches", 1), ("forward_splits", 1)):
    if getattr(t, key) != off:
      raise ConfigError(
          f"data.packing=True encodes the batch in one forward; train.{key}={getattr(t, key)} "
          f"needs data.packing=False (or train.{key}={off})")


def check_teacher(c: FinetuneConfig) -> None:
  """loss.teacher='frozen' serves each example's precomputed teacher vectors with its batch: examples
  of roles (triplets, pairs, scored pairs), not retrieval groups."""
  if c.loss.teacher == "frozen" and c.data.format == "groups":
    raise ConfigError(
        "loss.teacher='frozen' serves teacher vectors with batches of triplets, pairs or "
        "scored_pairs; this run has data.format='groups'")


def frozen_teacher(pretrained: model_dirs.Pretrained, examples: batching.Examples, layer: int,
                   pooling: str, batch_size: int, pack: bool = False) -> np.ndarray:
  """[N, R, D] pooled vectors of every training text at `layer` under the starting weights, without
  dropout (float32): the KL teacher of loss.teacher='frozen', fixed through training (a resumed run
  computes the same)."""
  embedder = Embedder(pretrained, batch_size=batch_size, pack=pack)
  return np.stack(
      [embedder.encode_layers(texts, (layer,), pooling=pooling)[layer] for texts in examples.texts],
      1)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def run_step(run: FinetuneRun, tx: optax.GradientTransformation) -> step_lib.TrainStep:
  """The step a fine-tuning run trains with, as its config sets it."""
  c, t = run.blocks, run.blocks.train
  return srl.make_srl_step(run.model.config, run.plan, run.loss, tx, c.model.pooling,
                           dropout=t.dropout, grad_cache_chunks=t.grad_cache_chunks,
                           microbatches=t.microbatches, forward_splits=t.forward_splits,
                           packed=srl.packing(c.data, run.data_shards))


def train_program(config: ml_collections.ConfigDict, run: FinetuneRun,
                  length: int) -> trainer.TrainProgram:
  """The step at `length` tokens per text (groups: the data block's query and passage lengths)."""
  if run.blocks.mode != "train":
    raise ConfigError(
        f"mode={run.blocks.mode!r}: only a training run (mode=train) has a step to compile")
  cfg = run.model.config
  batch = abstract_batch(run.blocks, length, shards=run.data_shards, hidden=cfg.hidden_size)
  encoder = cfg.replace(num_hidden_layers=max(run.plan.layers))
  if "segments" in batch:
    P, L = batch["ids"].shape
    flops, shape = encoder.matmul_flops(
        P, L), f"{run.blocks.data.batch_size} examples in {P} packed rows x {L} tokens"
  elif "query_ids" in batch:
    (B, Tq), (P, Tp) = batch["query_ids"].shape, batch["passage_ids"].shape
    flops, shape = encoder.matmul_flops(B, Tq) + encoder.matmul_flops(
        P, Tp), f"{B} queries x {Tq} + {P} passages x {Tp}"
  else:
    R, B, T = batch["ids"].shape
    flops, shape = encoder.matmul_flops(R * B, T), f"{B} x {R} texts x {T} tokens"
  return trainer.TrainProgram(lambda tx: run_step(run, tx), abstract_params(cfg),
                              param_logical_axes(cfg), batch, srl.batch_axes(run.blocks.data),
                              flops, shape)


def abstract_batch(c: FinetuneConfig, length: int, query_length: int | None = None,
                   passage_length: int | None = None, *, shards: int = 1, rows: int | None = None,
                   hidden: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a training batch padded to `length` (groups: query and passage lengths,
  default data.query_max_length / passage_max_length), as the data block's batcher makes it. Packed
  (data.packing): `rows` rows of `length` tokens, by default one row per text (the most a batch of
  `shards` shards can need: its memory bound)."""
  d, i32 = c.data, jnp.int32
  if d.packing:
    rows = rows or len(batching.FORMATS[d.format]) * d.batch_size
    if rows % shards:
      raise ValueError(f"{rows} packed rows do not split over {shards} data-parallel shards")
    batch = {k: jax.ShapeDtypeStruct((rows, length), i32) for k in ("ids", "segments", "positions")}
    if d.format == "scored_pairs":
      batch["scores"] = jax.ShapeDtypeStruct((d.batch_size,), jnp.float32)
    return _with_teacher(c, batch, hidden)
  if d.format == "groups":
    q, p = query_length or d.query_max_length, passage_length or d.passage_max_length
    rows = d.batch_size * d.group_size
    return {
        "query_ids": jax.ShapeDtypeStruct(
            (d.batch_size, q), i32), "query_mask": jax.ShapeDtypeStruct((d.batch_size, q), i32),
        "passage_ids": jax.ShapeDtypeStruct((rows, p), i32), "passage_mask": jax.ShapeDtypeStruct(
            (rows, p), i32)
    }
  shape = (len(batching.FORMATS[d.format]), d.batch_size, length)
  batch = {"ids": jax.ShapeDtypeStruct(shape, i32), "mask": jax.ShapeDtypeStruct(shape, i32)}
  if d.format == "scored_pairs":
    batch["scores"] = jax.ShapeDtypeStruct((d.batch_size,), jnp.float32)
  return _with_teacher(c, batch, hidden)


def _with_teacher(c: FinetuneConfig, batch, hidden):
  """loss.teacher='frozen': each example's teacher vectors ride with the batch, [B, R, hidden]."""
  if c.loss.teacher == "frozen":
    if hidden is None:
      raise ValueError("abstract_batch: loss.teacher='frozen' needs the hidden size")
    batch["teacher"] = jax.ShapeDtypeStruct(
        (c.data.batch_size, len(batching.FORMATS[c.data.format]), hidden), jnp.float32)
  return batch


def make_batcher(c: FinetuneConfig, tokenizer, max_length: int, shards: int | None = None,
                 prompts: tuple[str, str] = ("", "")):
  """(batcher, number of training examples) of the data block, the (query, passage) `prompts` before
  its texts (Examples.with_prompts); packed batches are laid out for `shards` data-parallel devices
  (default: this host's mesh.shape)."""
  d = c.data
  if d.format == "groups":
    data = groups.load_groups(d.train).with_prompts(*prompts)
    return groups.GroupBatcher(data, tokenizer, batch_size=d.batch_size, group_size=d.group_size,
                               query_max_length=d.query_max_length,
                               passage_max_length=d.passage_max_length, seed=c.seed,
                               length_buckets=d.length_buckets), len(data.queries)
  examples = batching.load_examples(d.train, d.format, d.columns,
                                    d.score_range).with_prompts(*prompts)
  return batching.Batcher(
      examples, tokenizer, batch_size=d.batch_size, max_length=max_length, seed=c.seed,
      no_duplicates=d.no_duplicates, length_buckets=d.length_buckets, num_buckets=d.num_buckets,
      pack_length=d.pack_length if d.packing else None,
      shards=(shards or sharding.data_parallel_size(sharding.check_mesh(c.mesh)))
      if d.packing else 1), len(examples)


def train(config: ml_collections.ConfigDict, workdir: str,
          run: FinetuneRun) -> model_dirs.Pretrained:
  """Fine-tune from model.init_from (or resume the workdir); returns the trained model."""
  c, t = run.blocks, run.blocks.train
  setup = trainer.setup_model(c.model, run.model, pooling=c.model.pooling,
                              prompts=(c.model.query_prompt, c.model.passage_prompt))
  sentence = setup.pretrained.sentence
  batcher, num_examples = make_batcher(c, setup.pretrained.tokenizer, setup.max_length,
                                       run.data_shards,
                                       (sentence.prompt("query"), sentence.prompt("document")))
  steps = trainer.total_steps(t, batcher)
  if t.microbatches > 1:
    log.warning(
        "train.microbatches=%d: each microbatch of %d is its own in-batch contrastive/CoSENT "
        "batch (fewer negatives than the batch of %d); train.grad_cache_chunks keeps the whole "
        "batch's negatives at the same memory", t.microbatches, c.data.batch_size // t.microbatches,
        c.data.batch_size)
  log.info("training %s for %d steps (%d examples, batch %d), plan: pairs=%s layers=%s",
           run.plan.method, steps, num_examples, c.data.batch_size, run.plan.pairs or "sampled",
           run.plan.layers)

  pre = setup.pretrained
  if run.loss.teacher == "frozen":  # part of the start-up time (timing.json)
    batcher.teacher = frozen_teacher(pre, batcher.examples, run.plan.teacher[0], c.model.pooling,
                                     c.eval.batch_size, pack=c.eval.packing)
    log.info("frozen teacher: %s vectors of the starting model's layer %d", batcher.teacher.shape,
             run.plan.teacher[0])
  trained = trainer.train_model(config, c, workdir, setup, pre.params["bert"],
                                lambda tx: run_step(run, tx), batcher, steps,
                                param_specs=param_logical_axes(setup.config),
                                batch_axes=srl.batch_axes(c.data))
  return dataclasses.replace(pre, params={**pre.params, "bert": trained})


def evaluate(workdir: str, model: model_dirs.Pretrained, run: FinetuneRun, name: str, *,
             start: list[dict] | None = None, report: bool = True) -> list[dict]:
  """STS Spearman (eval.sts) and retrieval metrics (eval.retrieval) for every evaluated pair ->
  WORKDIR/results/<name>.json, printed with `start` (the starting model's records) beside;
  `report=False`: the records alone, nothing written to the run's metrics or results."""
  c, e = run.blocks, run.blocks.eval
  config = model.config.replace(dtype=e.dtype, precision="pure")  # eval.dtype throughout
  # mode=eval: the config's prompts over the checkpoint's (after training: already the run's)
  model = dataclasses.replace(
      model, sentence=model_dirs.with_prompts(model.sentence, c.model.query_prompt,
                                              c.model.passage_prompt))
  embedder = Embedder(dataclasses.replace(model, config=config), batch_size=e.batch_size,
                      pack=e.packing)
  if c.model.max_length:
    embedder.pretrained.sentence = dataclasses.replace(embedder.pretrained.sentence,
                                                       max_seq_length=c.model.max_length)
  pooling = c.model.pooling
  records = sts.evaluate_sets(embedder, run.sts_sets, run.eval_pairs, pooling=pooling)
  notes = sts.notes(run.sts_sets)
  for dataset, split, folder in run.retrieval_sets:
    collection = retrieval.load_collection(folder, split, name=dataset)
    notes.append(f"{dataset}/{split}: {len(collection.query_ids)} judged queries over "
                 f"{len(collection.doc_ids)} passages of {folder}")
    records += retrieval.evaluate_collection(
        embedder, collection, run.eval_pairs, workdir, pooling=pooling,
        normalize=e.retrieval_similarity == "cosine", query_max_length=e.query_max_length,
        passage_max_length=e.passage_max_length, k=e.retrieval_k, funnels=e.retrieval_funnels,
        costs=e.retrieval_costs, index_dir=e.index_dir, skip_self=e.retrieval_skip_self,
        cross_depth=e.retrieval_cross_depth)
  if not report:
    return records
  metrics.write_results(workdir, records, c.log)
  return results.report(workdir, name, records, start, notes)


def evaluate_start(workdir: str, run: FinetuneRun) -> list[dict]:
  """The starting model's records (eval.before_training) -> WORKDIR/results/start.json, evaluated
  once (a resumed run reads them); its retrieval files (index, runs) go to WORKDIR/start."""
  path = os.path.join(workdir, workdir_lib.RESULTS, "start.json")
  if os.path.isfile(path):
    return json.load(open(path))
  with timing.current().phase("eval"):
    records = evaluate(os.path.join(workdir, "start"),
                       checkpoint.load_model(run.blocks.model.init_from), run, "start",
                       report=False)
  results.write(workdir, "start", records)
  return records


@trainer.releases_workdir
def run(config: ml_collections.ConfigDict, workdir: str,
        defaults: ml_collections.ConfigDict | None = None) -> list[dict]:
  """Fine-tune and evaluate (mode=train), or evaluate model.init_from (mode=eval).
  `defaults`: the config file's values, for resuming a run made before a key existed
  (workdir.check_resume)."""
  spec = trainer.start(config, workdir, describe, defaults)
  log.info("backbone %s: %d layers x %d dims; schedule %s", spec.blocks.model.init_from,
           spec.model.config.num_hidden_layers, spec.model.config.hidden_size, spec.model.pairs)
  if spec.blocks.mode == "eval":
    workdir_lib.write_config(workdir, config)
    with timing.current().phase("eval"):
      return evaluate(workdir, checkpoint.load_model(spec.blocks.model.init_from), spec,
                      name="eval")
  # every evaluation row read and checked before training, not after it (read again to evaluate: a
  # corpus is not held in memory through training)
  for _, _, source in spec.sts_sets:
    sts.read_sts(source)
  retrieval.check_collections(spec.retrieval_sets)
  # the primary process evaluates and writes the results
  start = (evaluate_start(workdir, spec)
           if spec.blocks.eval.before_training and sharding.is_primary() else None)
  model = train(config, workdir, spec)
  if not sharding.is_primary():
    return []
  with timing.current().phase("eval"):
    return evaluate(workdir, model, spec, name="final", start=start)


OBJECTIVE = trainer.Objective(name="finetune", modes=("train", "eval"), describe=describe, run=run,
                              train_program=train_program)
