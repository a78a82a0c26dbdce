"""Result records `{dataset, split, metric, layer, dim, value}`: written as JSON, printed as a table."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

from starbucks_jax import workdir as workdir_lib


def record(dataset: str, split: str, metric: str, layer: int, dim: int, value: float, *,
           funnel: str | None = None) -> dict[str, Any]:
  """One result; a non-finite value (a constant embedding's correlation) is null, never a bare NaN.
  `funnel`: the search chain that made it (search.parse_funnel), its last stage being (layer, dim)."""
  value = float(value)
  out = {
      "dataset": dataset, "split": split, "metric": metric, "layer": int(layer), "dim": int(dim),
      "value": value if math.isfinite(value) else None
  }
  return {**out, "funnel": funnel} if funnel else out


def write(workdir: str, name: str, records: list[dict[str, Any]]) -> str:
  path = os.path.join(workdir, workdir_lib.RESULTS, f"{name}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  workdir_lib.write_atomically(path, json.dumps(records, indent=1, allow_nan=False) + "\n")
  return path


def report(workdir: str, name: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Writes WORKDIR/results/<name>.json and prints the table and the path; returns the records."""
  path = write(workdir, name, records)
  print(table(records))
  print(f"results: {path}")
  return records


def table(records: Iterable[dict[str, Any]]) -> str:
  """Rows = (layer, dim) pairs, columns = dataset/split/metric (a funnel's own column, in its last
  stage's row), plus the mean over pairs."""
  records = list(records)
  cols = sorted({(r["dataset"], r["split"], r["metric"], r.get("funnel", "")) for r in records})
  pairs = sorted({(r["layer"], r["dim"]) for r in records})
  value = {
      (r["layer"], r["dim"], r["dataset"], r["split"], r["metric"], r.get("funnel", "")): r["value"]
      for r in records if r["value"] is not None
  }
  heads = [f"{d}/{s} {m}" + (f" [{f}]" if f else "") for d, s, m, f in cols]
  widths = [max(len(h), 7) for h in heads]
  lines = [
      "| layer | dim | " + " | ".join(h.rjust(w) for h, w in zip(heads, widths)) + " |",
      "|---:|---:|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
  ]
  for layer, dim in pairs:
    cells = [f"{value[(layer, dim, *c)]:.4f}" if (layer, dim, *c) in value else "" for c in cols]
    lines.append(f"| {layer} | {dim} | " + " | ".join(x.rjust(w)
                                                      for x, w in zip(cells, widths)) + " |")
  means = []
  for c in cols:
    vals = [value[(layer, dim, *c)] for layer, dim in pairs if (layer, dim, *c) in value]
    means.append(f"{sum(vals) / len(vals):.4f}" if vals else "")
  lines.append("| mean | | " + " | ".join(x.rjust(w) for x, w in zip(means, widths)) + " |")
  return "\n".join(lines)
