"""The (layer, dim) pairs a model is trained and evaluated at.

The Starbucks schedule is a fixed list, small to large, used in full on every step. Lists here are
for the backbones we ship configs for; any other backbone states its own list in its config.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable

import jax

from starbucks_jax.config_lib import ConfigError, InputError, config_errors

Pair = tuple[int, int]

# docs/method.md: Demi, Short, Tall, Grande, Venti, Trenta for BERT-base.
STARBUCKS = {
    "bert-base": ((2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 768)),
    "minilm-l6-h384": ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384)),
    # the paper's six sizes at the same fractions of depth over ModernBERT-base's 22 layers (layer
    # round(22 k / 6), BERT-base's 2k of 12) and its dims 32..768
    "modernbert-base": ((4, 32), (7, 64), (11, 128), (15, 256), (18, 512), (22, 768)),
}


def check_pair(layer: int, dim: int, num_layers: int, hidden_size: int, where: str = "") -> None:
  """A (layer, dim) sub-model must exist: 1 <= layer <= N, 1 <= dim <= D. `where` starts the message."""
  if not 1 <= layer <= num_layers:
    raise InputError(
        f"{where}layer={layer} is outside 1..{num_layers} (the model has {num_layers} layers)")
  if not 1 <= dim <= hidden_size:
    raise InputError(
        f"{where}dim={dim} is outside 1..{hidden_size} (the model's hidden size is {hidden_size})")


def parse_pair(text: str, where: str = "") -> Pair:
  """'2x32' -> (2, 32) (spaces allowed); anything else an InputError starting with `where`."""
  m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
  if not m:
    raise InputError(f"{where}{text!r} is not LAYERxDIM (e.g. 2x32)")
  return int(m[1]), int(m[2])


def validate(pairs: Iterable[Iterable[int]], num_layers: int, hidden_size: int,
             key: str = "schedule.pairs") -> tuple[Pair, ...]:
  """Pairs as int tuples; each a sub-model of the backbone; n and d strictly increasing. Errors name `key`."""
  try:
    out = tuple((int(n), int(d)) for n, d in pairs)
  except (TypeError, ValueError):
    raise ValueError(f"{key}={pairs!r}: expected a list of (layer, dim) pairs") from None
  if not out:
    raise ValueError(f"{key} is empty: give at least one (layer, dim) pair")
  for i, (n, d) in enumerate(out):
    check_pair(n, d, num_layers, hidden_size, where=f"{key}[{i}]=({n}, {d}): ")
  for i in range(1, len(out)):
    (n0, d0), (n1, d1) = out[i - 1], out[i]
    if not (n1 > n0 and d1 > d0):
      raise ValueError(f"{key}[{i - 1}:{i + 1}]={out[i - 1]}, {out[i]}: layers and dims must both "
                       "strictly increase along the schedule")
  return out


def grid(num_layers: int, hidden_size: int, dims: Iterable[int]) -> tuple[Pair, ...]:
  """Every layer 1..N with every dim of `dims` (for the grid evaluation)."""
  dims = sorted({int(d) for d in dims if int(d) <= hidden_size})
  return tuple((n, d) for n in range(1, num_layers + 1) for d in dims)


# ---------------------------------------------------------------------------------------------
# What each method trains on a step (docs/method.md, "SRL fine-tuning" and "Baselines").
# ---------------------------------------------------------------------------------------------
METHODS = ("starbucks", "full", "mrl", "starbucks_mrl", "2dmse", "2dmse_retrieval", "grid",
           "separate")


@dataclasses.dataclass(frozen=True)
class Plan:
  """A method's per-step selection of (layer, dim) pairs, all static except the sampled part.

  pairs:       trained on every step, each with the task loss (and the KL term when use_kl).
  teacher:     the pair the KL compares against (the full model; for 'separate' its own (n, D)).
  layers:      the layers whose pooled vectors a step needs; the forward stops at the deepest.
  sample_layers / sample_dims: where the sampled methods draw from (empty for fixed methods).
  """
  method: str
  pairs: tuple[Pair, ...]
  teacher: Pair
  layers: tuple[int, ...]
  use_kl: bool
  sample_layers: tuple[int, ...] = ()
  sample_dims: tuple[int, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "layers", tuple(sorted(set(self.layers))))


def plan(method: str, pairs: tuple[Pair, ...], num_layers: int, hidden_size: int, *,
         separate_pair: Pair | None = None, separate_train_dim: str = "full",
         sample_embedding_output: bool = False) -> Plan:
  """The Plan of `method` over the validated schedule `pairs` of an N-layer, D-dim backbone.
  `sample_embedding_output`: 2dmse draws from hidden states 0..N-1 (sentence-transformers 6.x)
  instead of 1..N-1 (its 2024 releases, 3.0: the embedding output is never drawn)."""
  N, D = num_layers, hidden_size
  dims = tuple(d for _, d in pairs)
  layers = tuple(n for n, _ in pairs)
  if method == "starbucks":  # every pair, every step, with KL to (N, D)
    return Plan(method, pairs, (N, D), layers + (N,), use_kl=True)
  if method == "full":  # the task loss on the last layer at full width
    return Plan(method, ((N, D),), (N, D), (N,), use_kl=False)
  # every dim of S on the last layer, no KL (sentence-transformers' MatryoshkaLoss)
  if method == "mrl":
    return Plan(method, tuple((N, d) for d in dims), (N, D), (N,), use_kl=False)
  if method == "starbucks_mrl":  # the diagonal and every dim of S on the last layer, KL to (N, D)
    both = sorted(set(pairs) | {(N, d) for d in dims})
    return Plan(method, tuple(both), (N, D), layers + (N,), use_kl=True)
  if method == "grid":  # every layer of S with every dim of S, KL to (N, D)
    return Plan(method, tuple((n, d) for n in layers for d in dims), (N, D), layers + (N,),
                use_kl=True)
  # last layer + one sampled earlier hidden state (1..N-1, or 0..N-1), one sampled dim of S each
  if method == "2dmse":
    drawable = tuple(range(0 if sample_embedding_output else 1, N))
    if not drawable:
      raise ValueError(f"schedule.method='2dmse' draws an earlier hidden state of 1..N-1; this "
                       f"backbone has N={N} layer")
    return Plan(method, (), (N, D), drawable + (N,), use_kl=True, sample_layers=drawable,
                sample_dims=dims)
  if method == "2dmse_retrieval":  # one sampled layer of S (not N) + N, each with every dim of S
    return Plan(method, (), (N, D), layers + (N,), use_kl=True,
                sample_layers=tuple(n for n in layers if n != N), sample_dims=dims)
  if method == "separate":  # one model per pair: the encoder cut to n layers
    if separate_pair is None:
      raise ValueError("schedule.separate_pair: 'separate' trains one (layer, dim) pair; set it")
    n, d = separate_pair
    if separate_train_dim not in ("full", "dim"):
      raise ValueError(
          f"schedule.separate_train_dim={separate_train_dim!r}; expected 'full' or 'dim'")
    train_d = D if separate_train_dim == "full" else d
    return Plan(method, ((n, train_d),), (n, D), (n,), use_kl=False)
  raise ValueError(f"schedule.method={method!r}; expected one of {METHODS} (a preset that sets "
                   "more keys, e.g. starbucks_scores_1n, is the config file's argument: "
                   "--config=configs/ft.py:VARIANT,method=NAME)")


def plan_from_config(schedule_cfg, pairs: tuple[Pair, ...], num_layers: int,
                     hidden_size: int) -> Plan:
  """The schedule block's Plan over the validated `pairs`; a ConfigError names the key."""
  separate = None
  if schedule_cfg.method == "separate":
    try:
      separate = validate([tuple(schedule_cfg.separate_pair)], num_layers, hidden_size,
                          key="schedule.separate_pair")[0]
    except ValueError as e:
      raise ConfigError(f"{e} (method=separate trains one pair: set layer=N,dim=D)") from None
  if schedule_cfg.sample_embedding_output and schedule_cfg.method != "2dmse":
    raise ConfigError(f"schedule.sample_embedding_output=True is a choice of schedule.method="
                      f"'2dmse'; this run has method={schedule_cfg.method!r}")
  with config_errors():
    return plan(schedule_cfg.method, pairs, num_layers, hidden_size, separate_pair=separate,
                separate_train_dim=schedule_cfg.separate_train_dim,
                sample_embedding_output=schedule_cfg.sample_embedding_output)


def sample(p: Plan, rng) -> dict[str, Any]:
  """The sampled part of a step (jax, inside jit): indices into p.sample_layers / p.sample_dims.

  2dmse: 'layer' (one earlier layer), 'dim_last' and 'dim_layer' (one dim of S for each call, drawn
  independently, as Matryoshka2dLoss draws once per loss call). 2dmse_retrieval: 'layer' only.
  """
  k1, k2, k3 = jax.random.split(rng, 3)
  out = {"layer": jax.random.randint(k1, (), 0, len(p.sample_layers))}
  if p.method == "2dmse":
    out["dim_last"] = jax.random.randint(k2, (), 0, len(p.sample_dims))
    out["dim_layer"] = jax.random.randint(k3, (), 0, len(p.sample_dims))
  return out
