"""The method's losses as pure functions of pooled embeddings (docs/method.md, "SRL fine-tuning").

Shapes: `pooled` is [R, B, D] for one layer: R text roles (anchor, positive, negatives... or
sentence1, sentence2), B examples, D features, float32, raw (not normalised); or, for retrieval
groups, a tuple (queries [B, D], passages [B * G, D]) (see `queries_and_candidates`). A (layer, dim)
sub-model's embeddings are `pooled[..., :d]`; each pair's scores are its own `q[:, :d] @ p[:, :d].T`.

    L = R( sum over (n, d) of  w[n,d] * L_task(s[n,d]) + beta * KL_term(n, d) )

- task: contrastive (MNRL / InfoNCE; cosine x scale or dot / temperature) or CoSENT.
- KL 'scores': KL(softmax(s[N,D] / tau) || softmax(s[n,d] / tau)), summed over candidates, mean
  over queries (the authors' retrieval code, with `kl_detach`: the teacher's gradient stopped).
- KL 'features': KL(softmax(e[N][:, :d]) || softmax(e[n][:, :d])) over the features of every input's
  raw pooled vector, mean over inputs, times `kl_temperature` (0.3) which is a plain multiplier
  there (the authors' STS code; teacher not detached).
- KL 'tempered_features': the same over softmax(e / 0.3), times 0.3 (sentence-transformers'
  AdaptiveLayerLoss, every version; its teacher is detached since the fix of its issue #3757).
- `kl_detach`: stop the teacher's gradient through the KL (any kind); `kl_max_layer` > 0: the KL
  only for pairs of at most that many layers. Reduction R: 'sum' over pairs or 'mean' (1/|S|).
- teacher 'frozen': the KL's teacher is the starting model's (N, D) vectors, (N, D) then has a KL too.
- w[n,d]: 1, or `pair_weights`, or a named `pair_weighting` (mean 1), times `full_weight` at (N, D).

SMAE (docs/method.md, "SMAE pre-training"): `masked_lm_loss` is the mean cross-entropy over the masked
positions of a batch (gathered logits [B, K, V], labels [B, K] with -1 for none); `smae_loss` is
the mean over pairs of (MLM + MAE) / 2 of those, or of MLM alone when there is no MAE term.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp

from starbucks_jax import schedule
from starbucks_jax.config_lib import Block, ConfigError, check_choice, check_range

TASKS = ("contrastive", "cosent")
SIMILARITIES = ("cosine", "dot")
KL_KINDS = ("features", "tempered_features", "scores", "none")
REDUCTIONS = ("sum", "mean")
KL_METHODS = ("starbucks", "grid", "starbucks_mrl")  # fixed plans with a KL to (N, D)
LAYER_WEIGHTINGS = ("uniform", "linear", "log")  # sentence-transformers' AdaptiveLayerLoss names
TEACHERS = ("self", "frozen")
PAIR_WEIGHTINGS = ("uniform", "inverse_layer", "log_layer", "inverse_loss")  # see pair_task_weights


@dataclasses.dataclass(frozen=True)
class LossConfig(Block):
  """The `loss` block of a fine-tuning config (config_blocks.FinetuneConfig): its keys and defaults,
  its own checks (`check`) and those against the schedule (`check_plan`)."""
  KEY: ClassVar[str] = "loss"
  task: str = "contrastive"  # 'contrastive' (MNRL / InfoNCE) | 'cosent' (graded pairs)
  similarity: str = "cosine"  # 'cosine' (truncate, then L2-normalise) | 'dot'
  scale: float = 20.0  # cosine similarity multiplier (MNRL and CoSENT use 20)
  temperature: float = 1.0  # dot-product divisor
  # 'features' (authors' STS code) | 'tempered_features' (sentence-transformers) | 'scores' (retrieval, the paper) | 'none'
  kl: str = "features"
  # stop the teacher's gradient through the KL (the paper's retrieval code: True)
  kl_detach: bool = False
  kl_weight: float = 1.0  # beta
  kl_max_layer: int = 0  # > 0: the KL only for pairs (n, d) with n <= this (fixed schedules)
  kl_temperature: float = 0.3  # features: multiplier on the KL; scores: softmax temperature tau
  reduction: str = "sum"  # over pairs: 'sum' (the authors' code) | 'mean' (the paper's 1/|S|)
  pair_weights: tuple[float, ...] = ()  # one weight per pair on its task loss; () = all 1
  # named weights, mean 1: 'inverse_layer' | 'log_layer' | 'inverse_loss'
  pair_weighting: str = "uniform"
  full_weight: float = 1.0  # times the full pair's (N, D) task weight
  # KL teacher: 'self' (own (N, D), the paper) | 'frozen' (the starting model's)
  teacher: str = "self"
  # 2dmse: the sampled layer i's task weight: 1 | 'linear' 1/(1+i) | 'log' 1/(1+ln(1+i))
  layer_weighting: str = "uniform"
  # shallow queries, deep documents (evaluate/cross_depth.py): each pair (n < N, d) also trains its
  # queries at layer n against the documents at layer N (the same d), with this weight on that task
  # loss and, with kl='scores', on its score KL from the full pair; 0 = off
  cross_depth_weight: float = 0.0

  def check(self) -> None:
    check_choice("loss.task", self.task, TASKS)
    check_choice("loss.similarity", self.similarity, SIMILARITIES)
    check_choice("loss.kl", self.kl, KL_KINDS)
    check_choice("loss.reduction", self.reduction, REDUCTIONS)
    check_choice("loss.layer_weighting", self.layer_weighting, LAYER_WEIGHTINGS)
    check_range("loss.scale", self.scale, 0, low_open=True)
    check_range("loss.temperature", self.temperature, 0, low_open=True)
    check_range("loss.kl_weight", self.kl_weight, 0)
    check_range("loss.kl_max_layer", self.kl_max_layer, 0)
    check_range("loss.kl_temperature", self.kl_temperature, 0, low_open=True)
    check_choice("loss.pair_weighting", self.pair_weighting, PAIR_WEIGHTINGS)
    check_range("loss.full_weight", self.full_weight, 0)
    check_choice("loss.teacher", self.teacher, TEACHERS)
    check_range("loss.cross_depth_weight", self.cross_depth_weight, 0)
    if self.cross_depth_weight and self.task != "contrastive":
      raise ConfigError(f"loss.cross_depth_weight pairs queries with documents; loss.task="
                        f"{self.task!r} scores symmetric pairs: use 'contrastive' or set it to 0")

  def check_plan(self, num_pairs: int, method: str) -> None:
    """Against the schedule: `num_pairs` its length (for pair_weights), `method` its method
    (layer_weighting weighs 2dmse's sampled layer only)."""
    weights = self.pair_weights
    if self.layer_weighting != "uniform" and method != "2dmse":
      raise ConfigError(
          f"loss.layer_weighting={self.layer_weighting!r} weighs the sampled layer of "
          f"schedule.method='2dmse'; schedule.method={method!r} has none: set it to 'uniform'")
    if weights and len(weights) != num_pairs:
      raise ConfigError(
          f"loss.pair_weights has {len(weights)} weights for {num_pairs} pairs in schedule.pairs")
    if weights and method != "starbucks":
      raise ConfigError(
          f"loss.pair_weights weighs the pairs of schedule.method='starbucks' one by one; "
          f"schedule.method={method!r} trains other pairs: use loss.pair_weighting")
    if weights and self.pair_weighting != "uniform":
      raise ConfigError(
          f"loss.pair_weights and loss.pair_weighting={self.pair_weighting!r} both set the "
          "pair weights: keep one")
    if self.teacher == "frozen" and (self.kl == "none" or method not in KL_METHODS):
      raise ConfigError(
          f"loss.teacher='frozen' is the KL's teacher for schedule.method in {KL_METHODS} with a "
          f"loss.kl; this run has method={method!r}, kl={self.kl!r}")
    sampled = method in ("2dmse", "2dmse_retrieval")
    if sampled and self.cross_depth_weight:
      raise ConfigError(f"loss.cross_depth_weight adds terms to a fixed schedule's pairs; "
                        f"schedule.method={method!r} samples its own")
    if sampled and (self.pair_weighting != "uniform" or self.full_weight != 1.0 or
                    self.kl_max_layer):
      raise ConfigError(
          "loss.pair_weighting, full_weight and kl_max_layer set a fixed schedule's pairs; "
          f"schedule.method={method!r} samples its own (see loss.layer_weighting)")


def truncate_normalise(x, d: int | None = None, eps: float = 1e-12):
  x = x if d is None else x[..., :d]
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def similarity_logits(q, p, cfg: LossConfig):
  """[Bq, d] x [Bp, d] -> [Bq, Bp] logits: cos * scale, or dot / temperature."""
  if cfg.similarity == "cosine":
    return truncate_normalise(q) @ truncate_normalise(p).T * cfg.scale
  return q @ p.T / cfg.temperature


def contrastive_loss(logits, labels):
  """Mean cross-entropy of each query's row against its positive's column."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1).mean()


def cosent_loss(pred, gold):
  """CoSENT: log(1 + sum over (i, j) with gold_i < gold_j of exp(pred_i - pred_j))."""
  diff = pred[:, None] - pred[None, :]
  wanted = gold[:, None] < gold[None, :]
  diff = jnp.where(wanted, diff, -jnp.inf)
  return jax.nn.logsumexp(jnp.concatenate([jnp.zeros((1,), diff.dtype), diff.reshape(-1)]))


def kl_divergence(teacher_logits, student_logits):
  """sum_j p_j (log p_j - log q_j) with p = softmax(teacher), q = softmax(student); mean over rows."""
  logp = jax.nn.log_softmax(teacher_logits, axis=-1)
  logq = jax.nn.log_softmax(student_logits, axis=-1)
  return (jnp.exp(logp) * (logp - logq)).sum(-1).mean()


def queries_and_candidates(pooled):
  """(queries [B, D], candidates [C, D], labels [B]) of one layer's pooled vectors, in either layout:
  - roles [R, B, D] (anchor, positive, negatives...): candidates role-major, query i's positive is
    candidate i (the first B candidates are the positives);
  - groups (queries [B, D], passages [B * G, D]) (retrieval, Tevatron's layout): query i's group is
    passages i*G .. i*G + G - 1, its positive first, so its label is i * G; every other passage of
    the batch, its own hard negatives included, is a negative."""
  if isinstance(pooled, tuple):
    q, p = pooled
    group = p.shape[0] // q.shape[0]
    return q, p, jnp.arange(q.shape[0]) * group
  q = pooled[0]
  return q, pooled[1:].reshape(-1, pooled.shape[-1]), jnp.arange(pooled.shape[1])


def task_logits(pooled, d: int, cfg: LossConfig):
  """Contrastive logits [B, C] of one sub-model: every query against every candidate of the batch."""
  q, cands, _ = queries_and_candidates(pooled)
  return similarity_logits(q[:, :d], cands[:, :d], cfg)


def task_loss(pooled, d: int, cfg: LossConfig, scores=None):
  """The task loss of one (layer, dim) from that layer's pooled vectors (roles or groups)."""
  if cfg.task == "cosent":
    pred = (truncate_normalise(pooled[0], d) * truncate_normalise(pooled[1], d)).sum(-1) * cfg.scale
    return cosent_loss(pred, scores)
  return contrastive_loss(task_logits(pooled, d, cfg), queries_and_candidates(pooled)[2])


def pair_logits(pooled, d: int, cfg: LossConfig):
  """The score matrix the 'scores' KL compares: contrastive logits, or CoSENT's pairwise cosines."""
  if cfg.task == "cosent":
    a, b = truncate_normalise(pooled[0], d), truncate_normalise(pooled[1], d)
    return a @ b.T * cfg.scale
  return task_logits(pooled, d, cfg)


def _teacher(x, cfg: LossConfig):
  return jax.lax.stop_gradient(x) if cfg.kl_detach else x


def kl_scores(teacher_pooled, student_pooled, d: int, cfg: LossConfig):
  """KL of the score distributions of (N, D) and (n, d), both over tau."""
  t = _teacher(pair_logits(teacher_pooled, teacher_pooled[0].shape[-1], cfg), cfg)
  s = pair_logits(student_pooled, d, cfg)
  return kl_divergence(t / cfg.kl_temperature, s / cfg.kl_temperature)


def kl_features(teacher_pooled, student_pooled, d: int, cfg: LossConfig):
  """KL of the feature distributions of every input's raw pooled vector (first d features), x0.3;
  'tempered_features' also divides the features by 0.3 inside the softmax."""
  every = lambda x: jnp.concatenate(
      [v.reshape(-1, v.shape[-1]) for v in jax.tree_util.tree_leaves(x)])
  t, s = _teacher(every(teacher_pooled)[:, :d], cfg), every(student_pooled)[:, :d]
  if cfg.kl == "tempered_features":
    t, s = t / cfg.kl_temperature, s / cfg.kl_temperature
  return kl_divergence(t, s) * cfg.kl_temperature


def kl_term(teacher_pooled, student_pooled, d: int, cfg: LossConfig):
  if cfg.kl == "scores":
    return kl_scores(teacher_pooled, student_pooled, d, cfg)
  if cfg.kl in ("features", "tempered_features"):
    return kl_features(teacher_pooled, student_pooled, d, cfg)
  return jnp.zeros((), jnp.float32)


def layer_weight(index, weighting: str):
  """The task weight of the drawn layer by its `index` in the list drawn from (Plan.sample_layers),
  as sentence-transformers' AdaptiveLayerLoss weighs its `layer_idx` into its cached hidden states:
  'uniform' 1, 'linear' 1/(1+i), 'log' 1/(1+ln(1+i)). Hidden state k is entry k of 0..N-1 (6.x) and
  entry k-1 of 1..N-1 (3.0, 2024: 'linear' gives it 1/k)."""
  i = jnp.asarray(index, jnp.float32)
  if weighting == "linear":
    return 1.0 / (1.0 + i)
  if weighting == "log":
    return 1.0 / (1.0 + jnp.log1p(i))
  return jnp.ones((), jnp.float32)


def pair_task_weights(pairs: Sequence[tuple[int, int]], full_pair: tuple[int, int], cfg: LossConfig,
                      tasks: Sequence[jax.Array]) -> list:
  """The task weight of each pair: `pair_weights` as given, or a named scheme scaled to mean 1 over
  the pairs ('inverse_layer' 1/n, 'log_layer' 1/(1 + ln n), 'inverse_loss' 1/L of the pair's task
  loss this step, gradient stopped); then the full pair's times `full_weight`."""
  if cfg.pair_weights:
    weights = list(cfg.pair_weights)
  elif cfg.pair_weighting == "uniform":
    weights = [1.0] * len(pairs)
  else:
    if cfg.pair_weighting == "inverse_layer":
      raw = [1.0 / n for n, _ in pairs]
    elif cfg.pair_weighting == "log_layer":
      raw = [1.0 / (1.0 + math.log(n)) for n, _ in pairs]
    else:
      raw = [1.0 / jnp.maximum(jax.lax.stop_gradient(t), 1e-6) for t in tasks]
    weights = [w * len(raw) / sum(raw) for w in raw]
  return [w * cfg.full_weight if pair == tuple(full_pair) else w for pair, w in zip(pairs, weights)]


def srl_loss(pooled_by_layer: dict[int, Any], pairs: Sequence[tuple[int, int]],
             full_pair: tuple[int, int], cfg: LossConfig, *, scores=None, use_kl: bool = True,
             teacher=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Sum (or mean) over `pairs` of w * task + beta * KL to the full pair (N, D); KL of (N, D) skipped;
  w from `pair_task_weights`. `teacher` (loss.teacher='frozen'): the starting model's pooled (N, D)
  vectors of the batch, [R, B, D], the KL's teacher for every pair, (N, D) included.

  `pooled_by_layer[n]` is layer n's pooled [R, B, D] from ONE encoder forward. Returns the loss and
  per-pair metrics {'task/n_d', 'kl/n_d'} (and 'weight/n_d' when the weights change per step).
  """
  n_full, d_full = full_pair
  own = teacher is None
  teacher = pooled_by_layer[n_full] if own else jax.lax.stop_gradient(teacher)
  tasks = [task_loss(pooled_by_layer[n], d, cfg, scores) for n, d in pairs]
  weights = pair_task_weights(pairs, full_pair, cfg, tasks)
  total = jnp.zeros((), jnp.float32)
  metrics = {}
  for (n, d), w, task in zip(pairs, weights, tasks):
    metrics[f"task/{n}_{d}"] = task
    if cfg.pair_weighting == "inverse_loss":
      metrics[f"weight/{n}_{d}"] = w
    total = total + w * task
    if (use_kl and cfg.kl != "none" and (not own or (n, d) != (n_full, d_full)) and
        (not cfg.kl_max_layer or n <= cfg.kl_max_layer)):
      kl = kl_term(teacher, pooled_by_layer[n], d, cfg)
      metrics[f"kl/{n}_{d}"] = kl
      total = total + cfg.kl_weight * kl
  if cfg.cross_depth_weight:
    total = total + cross_depth_loss(pooled_by_layer, pairs, n_full, teacher, cfg, metrics,
                                     use_kl=use_kl)
  if cfg.reduction == "mean":
    total = total / len(pairs)
  return total, metrics


def cross_depth_loss(pooled_by_layer, pairs, n_full: int, teacher, cfg: LossConfig, metrics: dict,
                     *, use_kl: bool = True):
  """loss.cross_depth_weight x (task + beta x score KL from `teacher`) of every pair (n < N, d): its
  queries (role 0, or the groups' queries) at layer n against the documents (the other roles, or the
  passages) at layer N; adds 'cross/n_d' ('cross_kl/n_d') to metrics."""
  total = jnp.zeros((), jnp.float32)
  for n, d in pairs:
    if n == n_full:
      continue
    q, docs = pooled_by_layer[n], pooled_by_layer[n_full]
    mixed = (q[0], docs[1]) if isinstance(q, tuple) else jnp.concatenate([q[:1], docs[1:]])
    metrics[f"cross/{n}_{d}"] = task = task_loss(mixed, d, cfg)
    total = total + cfg.cross_depth_weight * task
    if use_kl and cfg.kl == "scores":
      metrics[f"cross_kl/{n}_{d}"] = kl = kl_scores(teacher, mixed, d, cfg)
      total = total + cfg.cross_depth_weight * cfg.kl_weight * kl
  return total


def mask_dims(x, d):
  """Zero the features at and beyond `d` (a traced int): for unit-normalised or dot-product scores this
  equals truncating to d, without a shape that depends on the sample."""
  return x * (jnp.arange(x.shape[-1]) < d).astype(x.dtype)


def plan_loss(plan: schedule.Plan, pooled_by_layer: dict[int, Any], cfg: LossConfig, *, rng=None,
              scores=None, teacher=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss of one step of `plan` (schedule.Plan) from one forward's pooled vectors per layer.

  Fixed plans (starbucks, full, mrl, grid, separate) are `srl_loss` over plan.pairs. The sampled
  baselines draw with `rng` and always sum their terms, as their reference code does:
  - 2dmse: task(N, d1) + w(n') task(n', d2) + beta * KL(N || n') over all D features (the KL
    compares full-width pooled vectors, as Matryoshka2dLoss's layer KL does), n' one of
    plan.sample_layers (hidden states 1..N-1, or 0..N-1), w = `layer_weight(i, cfg.layer_weighting)`
    with i the draw's index in that list.
  - 2dmse_retrieval: task(N, D) + sum over d of S of [task(n', d) + beta KL] + [task(N, d) + beta KL]
    for d < D.
  """
  if not plan.sample_layers:
    return srl_loss(pooled_by_layer, plan.pairs, plan.teacher, cfg, scores=scores,
                    use_kl=plan.use_kl, teacher=teacher)
  if teacher is not None:
    raise ValueError(f"a frozen teacher is for fixed plans; {plan.method!r} samples")
  draw = schedule.sample(plan, rng)
  teacher = pooled_by_layer[plan.teacher[0]]
  D = teacher[0].shape[-1]  # roles [R, B, D] or groups (queries, passages)
  student = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs)[draw["layer"]],
                                   *[pooled_by_layer[n] for n in plan.sample_layers])
  layer = jnp.asarray(plan.sample_layers)[draw["layer"]]
  metrics = {"sampled/layer": layer}
  kl = lambda t, s, d: cfg.kl_weight * kl_term(t, s, d, cfg) if cfg.kl != "none" else 0.0
  if plan.method == "2dmse":
    dims = jnp.asarray(plan.sample_dims)
    d_last, d_layer = dims[draw["dim_last"]], dims[draw["dim_layer"]]
    metrics.update({"sampled/dim_last": d_last, "sampled/dim_layer": d_layer})
    masked = lambda x, d: jax.tree_util.tree_map(lambda v: mask_dims(v, d), x)
    total = (task_loss(masked(teacher, d_last), D, cfg, scores) +
             layer_weight(draw["layer"], cfg.layer_weighting) *
             task_loss(masked(student, d_layer), D, cfg, scores) + kl(teacher, student, D))
  elif plan.method == "2dmse_retrieval":
    total = task_loss(teacher, D, cfg, scores)
    for d in plan.sample_dims:
      total = total + task_loss(student, d, cfg, scores) + kl(teacher, student, d)
      if d < D:
        total = total + task_loss(teacher, d, cfg, scores) + kl(teacher, teacher, d)
  else:
    raise ValueError(f"no sampled loss for method {plan.method!r}")
  return total, metrics


# ---------------------------------------------------------------------------------------------
# SMAE pre-training
# ---------------------------------------------------------------------------------------------
# full SMAE | MLM on every pair | plain MLM on the full model
SMAE_MODES = ("smae", "2d_mlm", "mlm")


def masked_lm_loss(logits, labels, count=None):
  """Mean cross-entropy of gathered logits [..., K, V] at labels [..., K] (-1: padding, ignored).
  `count` replaces the number of labelled tokens as the denominator (gradient accumulation divides
  every microbatch by the whole batch's count, so the sum over microbatches is the batch's mean)."""
  valid = labels >= 0
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(valid.sum() if count is None else count,
                                                           1)


def smae_loss(mlm: dict[tuple[int, int], Any], mae: dict[tuple[int, int], Any] | None = None):
  """Mean over the pairs of (MLM + MAE) / 2, or of MLM alone without `mae`; per-pair terms in aux.
  `mlm`/`mae` map each pair to its `masked_lm_loss`."""
  total, aux = 0.0, {}
  for n, d in mlm:
    aux[f"mlm/{n}_{d}"] = mlm[(n, d)]
    if mae is None:
      total += mlm[(n, d)]
    else:
      aux[f"mae/{n}_{d}"] = mae[(n, d)]
      total += (mlm[(n, d)] + mae[(n, d)]) / 2
  return total / len(mlm), aux
