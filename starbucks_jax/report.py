"""Results of many runs as one table and as pictures (drawn by plots.py).

    python -m starbucks_jax.report RUN_OR_SWEEP_DIR [...] --out DIR [--label RUN=LABEL ...]
        [--dataset stsb] [--metric spearman_cosine] [--split test] [--baseline LABEL]

`collect` reads every `results/<name>.json` under the given directories (a workdir, or a folder of
workdirs) with the run's config.json, and labels each record with its method (schedule.method;
`--label` overrides per run directory). The report writes, into --out:
- table.md: one row per label and a column per (layer, dim), best value per column in bold, and the
  mean over the sizes (as the paper's Table A1); separate runs (one pair each) share one row; runs
  of one label at the same pairs (seeds) are averaged, shown as mean ± sample sd (runs); with a
  baseline label, a second table of each label's difference from it, marked where it is beyond the
  seeds' spread (`differences`);
- sizes.png: the metric per size, one line per label; differences.png (with a baseline): each
  label's difference from it per size, seed sd as error bars, over the baseline's spread band;
- grid.png: a layer x dim heatmap per label for runs evaluated on the whole grid (eval.grid=True);
- curves.png: training loss against step from each run's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Iterable

from starbucks_jax import cli, plots
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.config_lib import InputError


def _runs(root: str) -> Iterable[str]:
  """Every directory under `root` (itself included) that holds a results/ folder of JSON files."""
  for here, dirs, files in os.walk(root):
    dirs.sort()
    if os.path.basename(here) == workdir_lib.RESULTS and any(f.endswith(".json") for f in files):
      yield os.path.dirname(here)


def _json(path: str):
  try:
    with open(path, encoding="utf8") as f:
      return json.load(f)
  except ValueError as e:
    raise InputError(f"{path}: not valid JSON ({e}); a run interrupted while writing it?") from None


def collect(roots: Iterable[str], labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
  """Every result record under `roots`, each with run (its directory), label, result (file stem)."""
  labels = {os.path.normpath(k): v for k, v in (labels or {}).items()}
  out = []
  for root in roots:
    if not os.path.isdir(root):
      raise FileNotFoundError(f"{root}: no such run or sweep directory")
    for run in _runs(root):
      method = ""
      config_path = os.path.join(run, workdir_lib.CONFIG)
      if os.path.exists(config_path):
        config = _json(config_path)
        method = config.get("schedule", {}).get("method") or config.get("smae", {}).get("mode", "")
      label = labels.get(os.path.normpath(run),
                         labels.get(os.path.basename(os.path.normpath(run)), method))
      for name in sorted(os.listdir(os.path.join(run, workdir_lib.RESULTS))):
        # start.json: the starting model's (eval.before_training), not the run's
        if not name.endswith(".json") or name == "start.json":
          continue
        for r in _json(os.path.join(run, workdir_lib.RESULTS, name)):
          if r.get("value") is None:  # a non-finite metric: an empty cell, not a number
            continue
          out.append(
              {**r, "run": run, "label": label or os.path.basename(run), "result": name[:-5]})
  return out


def by_run(records: list[dict[str, Any]], dataset: str, metric: str,
           split: str | None = None) -> dict[str, dict[str, dict[tuple[int, int], float]]]:
  """{label: {run: {pair: value}}} for one dataset, metric (and split): runs of one label are its seeds.
  Records of several splits need `split` (a ValueError otherwise: their values would mix)."""
  if split is None:
    splits = sorted(
        {r.get("split") for r in records if r["dataset"] == dataset and r["metric"] == metric})
    if len(splits) > 1:
      raise ValueError(
          f"{dataset} {metric} has splits {', '.join(map(str, splits))}: choose one (--split)")
  out: dict[str, dict[str, dict[tuple[int, int], float]]] = {}
  for r in records:
    mine = r["dataset"] == dataset and r["metric"] == metric and split in (None, r.get("split"))
    if mine and not r.get("funnel"):  # funnels are costs traded for quality: not a size's row
      out.setdefault(r["label"], {}).setdefault(r["run"], {})[(r["layer"], r["dim"])] = r["value"]
  return out


def table(records: list[dict[str, Any]], dataset: str, metric: str, pairs=None,
          split: str | None = None) -> tuple[list, dict]:
  """(pairs, {label: {pair: value}}) for one dataset and metric (and split); a pair several runs of a
  label hold (seeds) gets their mean. `pairs` default: every (layer, dim) seen, sorted."""
  rows = {label: _means(runs) for label, runs in by_run(records, dataset, metric, split).items()}
  if pairs is None:
    pairs = sorted({p for row in rows.values() for p in row})
  return list(pairs), rows


def _means(runs: dict[str, dict]) -> dict[tuple[int, int], float]:
  pairs = {p for row in runs.values() for p in row}
  return {
      p: sum(row[p] for row in runs.values() if p in row) / sum(p in row for row in runs.values())
      for p in sorted(pairs)
  }


def _sd(values: list[float]) -> float:
  mean = sum(values) / len(values)
  return (sum((v - mean)**2 for v in values) / (len(values) - 1))**0.5


def spreads(records: list[dict[str, Any]], dataset: str, metric: str, pairs,
            split: str | None = None) -> dict[str, dict[Any, tuple[float, int]]]:
  """{label: {pair or 'mean': (sample standard deviation, runs)}} where a label has several runs (its
  seeds) at that pair; 'mean' is over the runs' means over `pairs` (runs holding all of them)."""
  out = {}
  for label, runs in by_run(records, dataset, metric, split).items():
    cells = {}
    for p in pairs:
      values = [row[p] for row in runs.values() if p in row]
      if len(values) > 1:
        cells[p] = (_sd(values), len(values))
    means = [
        sum(row[p] for p in pairs) / len(pairs) for row in runs.values()
        if all(p in row for p in pairs)
    ]
    if len(means) > 1:
      cells["mean"] = (_sd(means), len(means))
    if cells:
      out[label] = cells
  return out


def _mean_over(row: dict, pairs) -> float | None:
  """The row's mean over `pairs`, or None when it lacks one of them."""
  return sum(row[p] for p in pairs) / len(pairs) if all(p in row for p in pairs) else None


def markdown(pairs, rows: dict[str, dict], *, digits: int = 4, spread: dict | None = None) -> str:
  """One row per label; a cell with several runs (seeds) reads 'mean ± sd (n)'."""
  spread = spread or {}
  best = {p: max((row[p] for row in rows.values() if p in row), default=None) for p in pairs}

  def cell(label, key, v, bold=False):
    text = f"**{v:.{digits}f}**" if bold else f"{v:.{digits}f}"
    if key in spread.get(label, {}):
      sd, n = spread[label][key]
      text += f" ± {sd:.{digits}f} ({n})"
    return text

  lines = [
      "| method | " + " | ".join(f"({n},{d})" for n, d in pairs) + " | mean |",
      "|---|" + "---:|" * (len(pairs) + 1)
  ]
  for label, row in rows.items():
    cells = ["" if row.get(p) is None else cell(label, p, row[p], row[p] == best[p]) for p in pairs]
    mean = _mean_over(row, pairs)
    mean = "" if mean is None else cell(label, "mean", mean)
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} |")
  return "\n".join(lines)


BEYOND = 2.0  # a difference counts when above BEYOND x the larger seed sd of the two labels


def differences(pairs, rows: dict[str, dict], spread: dict, baseline: str, *,
                digits: int = 4) -> str:
  """Each label's value minus the baseline's per pair and for the mean over `pairs`, marked + or -
  where |difference| > BEYOND x the larger sample sd (over seeds) of the two labels; a label with
  one run brings no sd, and without the baseline's seeds nothing is marked (the table says so)."""
  if baseline not in rows:
    raise ValueError(
        f"baseline {baseline!r} is not a label of the report; labels: {', '.join(rows)}")
  base_sd = spread.get(baseline, {})

  def value(row, key):
    return _mean_over(row, pairs) if key == "mean" else row.get(key)

  rule = (f"; + or - where it is beyond {BEYOND:g} x the larger seed sd of the two" if base_sd else
          f": {baseline} has one run, so its spread is unknown and nothing is marked")
  lines = [
      f"Difference from {baseline} per (layer, dim){rule}.", "",
      "| method | " + " | ".join(f"({n},{d})" for n, d in pairs) + " | mean |",
      "|---|" + "---:|" * (len(pairs) + 1)
  ]
  for label, row in rows.items():
    if label == baseline:
      continue
    cells = []
    for key in list(pairs) + ["mean"]:
      mine, theirs = value(row, key), value(rows[baseline], key)
      if mine is None or theirs is None:
        cells.append("")
        continue
      diff = mine - theirs if abs(mine - theirs) >= 0.5 * 10**-digits else 0.0  # no '-0.0000'
      sd = max(base_sd.get(key, (0.0, 1))[0], spread.get(label, {}).get(key, (0.0, 1))[0])
      beyond = key in base_sd and abs(diff) > BEYOND * sd
      cells.append(f"{diff:+.{digits}f}" + ((" +" if diff > 0 else " -") if beyond else ""))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def grid_markdown(row: dict, *, digits: int = 4) -> str:
  """A layer x dim grid as a Markdown matrix: rows = layers, columns = dims."""
  layers, dims = sorted({n for n, _ in row}), sorted({d for _, d in row})
  lines = [
      "| layers \\ dims | " + " | ".join(str(d) for d in dims) + " |", "|---|" + "---:|" * len(dims)
  ]
  for n in layers:
    lines.append(f"| {n} | " + " | ".join(f"{row[(n, d)]:.{digits}f}" if (n, d) in row else ""
                                          for d in dims) + " |")
  return "\n".join(lines)


def is_grid(row: dict) -> bool:
  """A layer x dim evaluation (some layer at several dims), not a schedule's diagonal of pairs."""
  layers = [n for n, _ in row]
  return len(set(layers)) > 1 and len(layers) > len(set(layers))


def write(records: list[dict[str, Any]], out: str, *, dataset: str, metric: str, title: str = "",
          pairs=None, split: str | None = None, baseline: str | None = None) -> dict[str, str]:
  """table.md, sizes.png, grid.png (when a grid was evaluated) and curves.png into `out`; runs
  sharing a label (seeds) are averaged, with their spread in the table; `baseline` (a label) adds
  the table of differences from it."""
  if not records:
    raise InputError("no result records to report (a finished run has results/*.json)")
  os.makedirs(out, exist_ok=True)
  _, full_rows = table(records, dataset, metric, split=split)
  if not full_rows:
    have = sorted({(r["dataset"], r.get("split"), r["metric"]) for r in records})
    raise InputError(
        f"no records for dataset={dataset!r} split={split!r} metric={metric!r}; the runs have {have}"
    )
  if pairs is None:  # the schedules' sizes: every pair of a run not evaluated on the whole grid
    schedules = [row for row in full_rows.values() if not is_grid(row)] or list(full_rows.values())
    pairs = sorted({p for row in schedules for p in row})
  pairs = list(pairs)
  rows = {label: {p: row[p] for p in pairs if p in row} for label, row in full_rows.items()}
  files = {"table": os.path.join(out, "table.md")}
  grids = "".join(f"\n{label}: {dataset} {metric} at every layer x dim.\n\n{grid_markdown(row)}\n"
                  for label, row in full_rows.items() if is_grid(row))
  head = f"# {title}\n\n" if title else ""
  if not all(is_grid(row) for row in full_rows.values()):  # a grid alone is its matrix only
    spread = spreads(records, dataset, metric, pairs, split)
    where = f"{dataset}{'/' + split if split else ''} {metric}"
    seeds = "; several runs of a method (seeds): mean ± sample standard deviation (runs)" if spread else ""
    head += (f"{where} per (layer, dim); best per column in bold{seeds}.\n\n" +
             markdown(pairs, rows, spread=spread) + "\n")
    if baseline:
      head += "\n" + differences(pairs, rows, spread, baseline) + "\n"
  with open(files["table"], "w", encoding="utf8") as f:
    f.write(head + grids)
  files["sizes"] = plots.plot_sizes(pairs, rows, os.path.join(out, "sizes.png"),
                                    f"{dataset} {metric}")
  if baseline and not all(is_grid(row) for row in full_rows.values()):
    files["differences"] = plots.plot_differences(pairs, rows, spread, baseline,
                                                  os.path.join(out, "differences.png"),
                                                  f"{dataset} {metric}", beyond=BEYOND)
  grids = {label: row for label, row in full_rows.items() if is_grid(row)}
  grid = plots.plot_grids(grids, os.path.join(out, "grid.png"),
                          f"{dataset} {metric}") if grids else None
  if grid:
    files["grid"] = grid
  runs = {}
  for r in records:
    runs.setdefault(
        f"{r['label']} ({os.path.basename(r['run'])})" if r["label"] == "separate" else r["label"],
        r["run"])
  curves = plots.plot_curves(runs, os.path.join(out, "curves.png"))
  if curves:
    files["curves"] = curves
  return files


def only(values: set, default: str) -> str:
  """The one value of `values`, else `default` (and write() names what the runs hold)."""
  return next(iter(values)) if len(values) == 1 else default


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("roots", nargs="+", help="workdirs or folders of workdirs")
  p.add_argument("--out", required=True)
  p.add_argument("--dataset", help="default: the runs' one dataset, else stsb")
  p.add_argument("--metric", help="default: the dataset's one metric, else spearman_cosine")
  p.add_argument("--split", help="only this split of the dataset (e.g. dev or test)")
  p.add_argument("--title", default="")
  p.add_argument(
      "--baseline",
      help="a label: add each label's difference from it, marked beyond the seeds' spread")
  p.add_argument("--label", action="append", default=[], help="RUN_DIR=LABEL (repeatable)")
  args = p.parse_args(argv)
  labels = {}
  for item in args.label:
    if "=" not in item:
      p.error(f"--label {item!r}: expected RUN_DIR=LABEL")
    run, label = item.split("=", 1)
    labels[run] = label
  records = collect(args.roots, labels)
  if not records:
    raise InputError(f"{', '.join(args.roots)}: no results/*.json under them (a finished run has)")
  dataset = args.dataset or only({r["dataset"] for r in records}, "stsb")
  metric = args.metric or only({r["metric"]
                                for r in records if r["dataset"] == dataset}, "spearman_cosine")
  files = write(records, args.out, dataset=dataset, metric=metric, title=args.title,
                split=args.split, baseline=args.baseline)
  print(open(files["table"]).read())
  for kind, path in files.items():
    print(f"{kind}: {path}")


if __name__ == "__main__":
  cli.run(main)
