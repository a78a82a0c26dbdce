"""The (layer, dim) pairs a model is trained and evaluated at.

The Starbucks schedule is a fixed list, small to large, used in full on every step. Lists here are
for the backbones we ship configs for; any other backbone states its own list in its config.
"""

from __future__ import annotations

from typing import Iterable

Pair = tuple[int, int]

# METHOD.md: Demi, Short, Tall, Grande, Venti, Trenta for BERT-base.
STARBUCKS = {
    "bert-base": ((2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 768)),
    "minilm-l6-h384": ((1, 16), (2, 32), (3, 64), (4, 128), (5, 256), (6, 384)),
}


def validate(pairs: Iterable[Iterable[int]], num_layers: int, hidden_size: int,
             key: str = "schedule.pairs") -> tuple[Pair, ...]:
  """Pairs as int tuples; each 1 <= n <= N, 1 <= d <= D; n and d strictly increasing. Errors name `key`."""
  try:
    out = tuple((int(n), int(d)) for n, d in pairs)
  except (TypeError, ValueError):
    raise ValueError(f"{key}={pairs!r}: expected a list of (layer, dim) pairs") from None
  if not out:
    raise ValueError(f"{key} is empty: give at least one (layer, dim) pair")
  for i, (n, d) in enumerate(out):
    if not 1 <= n <= num_layers:
      raise ValueError(f"{key}[{i}]=({n}, {d}): layer {n} is outside 1..{num_layers} "
                       f"(the model has {num_layers} layers)")
    if not 1 <= d <= hidden_size:
      raise ValueError(f"{key}[{i}]=({n}, {d}): dim {d} is outside 1..{hidden_size} "
                       f"(the model's hidden size is {hidden_size})")
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
