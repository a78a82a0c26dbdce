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


def report(workdir: str, name: str, records: list[dict[str, Any]],
           start: list[dict[str, Any]] | None = None, notes=()) -> list[dict[str, Any]]:
  """Writes WORKDIR/results/<name>.json and the per-size plot beside it (sizes.png for the final
  results, else <name>_sizes.png), prints the table (with `start`, the starting model's records:
  its column and the change), a line per note (what each column's data is) and the path; returns
  the records."""
  path = write(workdir, name, records)
  print(table(records, start))
  for note in notes:
    print(f"- {note}")
  picture = os.path.join(os.path.dirname(path),
                         "sizes.png" if name == "final" else f"{name}_sizes.png")
  print(f"results: {path}" + (f" (plot: {picture})" if plot_sizes(records, start, picture) else ""))
  return records


def _columns(records) -> tuple[list, list, dict]:
  cols = sorted({(r["dataset"], r["split"], r["metric"], r.get("funnel", "")) for r in records})
  pairs = sorted({(r["layer"], r["dim"]) for r in records})
  value = {
      (r["layer"], r["dim"], r["dataset"], r["split"], r["metric"], r.get("funnel", "")): r["value"]
      for r in records if r["value"] is not None
  }
  return cols, pairs, value


def table(records: Iterable[dict[str, Any]], start: Iterable[dict[str, Any]] | None = None) -> str:
  """Rows = (layer, dim) pairs, columns = dataset/split/metric (a funnel's own column, in its last
  stage's row), plus the mean over pairs; with `start` (the starting model's records), each column
  is followed by the starting model's value and the change."""
  cols, pairs, value = _columns(list(records))
  before = _columns(list(start))[2] if start is not None else None
  heads = []
  for d, s, m, f in cols:
    heads.append(f"{d}/{s} {m}" + (f" [{f}]" if f else ""))
    heads += ["start", "change"] if before is not None else []
  widths = [max(len(h), 7) for h in heads]

  def cells(get):
    out = []
    for c in cols:
      now = get(value, c)
      out.append("" if now is None else f"{now:.4f}")
      if before is not None:
        then = get(before, c)
        out += [
            "" if then is None else f"{then:.4f}",
            "" if None in (now, then) else f"{now - then:+.4f}"
        ]
    return " | ".join(x.rjust(w) for x, w in zip(out, widths))

  def mean(table_, c):
    vals = [table_[(layer, dim, *c)] for layer, dim in pairs if (layer, dim, *c) in table_]
    return sum(vals) / len(vals) if vals else None

  lines = [
      "| layer | dim | " + " | ".join(h.rjust(w) for h, w in zip(heads, widths)) + " |",
      "|---:|---:|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
  ]
  for layer, dim in pairs:
    lines.append(f"| {layer} | {dim} | " + cells(lambda t, c: t.get((layer, dim, *c))) + " |")
  lines.append("| mean | | " + cells(mean) + " |")
  return "\n".join(lines)


def plot_sizes(records: list[dict[str, Any]], start: list[dict[str, Any]] | None,
               path: str) -> str | None:
  """Each column's value per (layer, dim) (funnels left out), the starting model's beside it;
  the path, or None when there is nothing to draw or no matplotlib."""
  from starbucks_jax import plots
  cols, pairs, value = _columns(records)
  before = _columns(start)[2] if start else {}
  rows = {}
  for c in (c for c in cols if not c[3]):
    label = f"{c[0]}/{c[1]} {c[2]}"
    rows[label] = {p: value[(*p, *c)] for p in pairs if (*p, *c) in value}
    if before:
      rows[f"{label}, start"] = {p: before[(*p, *c)] for p in pairs if (*p, *c) in before}
  if not any(rows.values()):
    return None
  try:
    return plots.plot_sizes(pairs, rows, path, "score")
  except SystemExit:  # no matplotlib: the numbers are in the JSON and the table
    return None
