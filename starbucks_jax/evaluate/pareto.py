"""Quality against cost for every size and funnel a run evaluated, with the Pareto front marked.

    python -m starbucks_jax.evaluate.pareto --workdir W [--workdir W2 ...] [--metric nDCG@10]
        [--out DIR] [--corpus-size N] [--tolerance 0.005] [--select-on dev]

Reads each workdir's retrieval records (results/*.json) and costs (costs/*.json, written with
eval.retrieval_costs=True) and writes, per collection and split, DIR/NAME_SPLIT.md (one row per
configuration: the metric, query and search FLOPs, measured ms per query, index bytes per passage,
'front' where no other configuration of the same run is at least as good for at most the cost) and
DIR/NAME_SPLIT.png (metric against FLOPs per query, log scale, fronts joined). DIR defaults to the
first workdir's pareto/. Cost is analytic FLOPs (query encoding + search) with the measured ms beside.
Cross-depth cells (eval.retrieval_cross_depth with eval.retrieval_costs) are configurations too:
`qQ@NxD`, queries through Q layers against passages through N at dim D. --select-on dev makes the
summary choose on the dev split and report that choice on the others (test).
--corpus-size N puts each configuration's search FLOPs at a corpus of N passages (a small test
collection's search is cheap next to encoding the query; a production corpus's is not) and writes
NAME_SPLIT_N{N}.md/.png; the measured ms stay those of the collection evaluated. Each table opens
with each run's cheapest configuration within --tolerance of its largest size.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from starbucks_jax import cli, plots
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.config_lib import InputError
from starbucks_jax.evaluate import cost as cost_lib


def rows_of(workdir: str, metric: str,
            corpus_size: int | None = None) -> dict[tuple[str, str], list[dict[str, Any]]]:
  """{(dataset, split): [cost row + 'value' of `metric`]} for every configuration with both;
  `corpus_size`: the rows' search FLOPs over that many passages instead of the collection's own."""
  values = {}
  folder = os.path.join(workdir, workdir_lib.RESULTS)
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
    if name.endswith(".json"):
      for r in json.load(open(os.path.join(folder, name))):
        if r.get("metric") == metric and r.get("value") is not None:
          config = r.get("funnel") or f"{r['layer']}x{r['dim']}"
          values[(r["dataset"], r["split"], config)] = r["value"]
  out = {}
  for key, costs in cost_lib.read(workdir).items():
    rows = [
        dict(c, value=values[(*key, c["configuration"])]) for c in costs
        if (*key, c["configuration"]) in values
    ]
    rows += cross_depth_rows(workdir, key, metric, {r["configuration"] for r in rows})
    for r in rows if corpus_size else ():
      r["search_flops"] = cost_lib.search_flops_at(r["configuration"], corpus_size)
    if rows:
      out[key] = rows
  return out


def cross_depth_rows(workdir: str, key: tuple[str, str], metric: str,
                     known: set[str]) -> list[dict[str, Any]]:
  """Rows of the run's cross-depth cells (eval.retrieval_cross_depth) of collection `key`: `qQ@NxD`
  (queries through Q layers against passages through N at dim D), and `NxD` for a cell with Q = N
  not already among `known`; only records that carry their costs."""
  path = os.path.join(workdir, workdir_lib.CROSS_DEPTH, f"{key[0]}_{key[1]}.json")
  out = []
  for r in json.load(open(path)) if os.path.isfile(path) else ():
    if r.get("metric") != metric or r.get("value") is None or "query_flops" not in r:
      continue
    q, n, d = r["query_layer"], r["layer"], r["dim"]
    name = f"{n}x{d}" if q == n else f"q{q}@{n}x{d}"
    if name not in known:
      out.append({
          "configuration": name, "layers": q, "query_flops": r["query_flops"],
          "search_flops": r["search_flops"], "index_bytes": cost_lib.index_bytes((((n, d), 0),)),
          "query_ms": r.get("query_ms"), "search_ms": r.get("search_ms"), "value": r["value"]
      })
  return out


def total_flops(row: dict[str, Any]) -> float:
  return row["query_flops"] + row["search_flops"]


def front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The configurations no other beats: none with at most their FLOPs and at least their value, one
  of the two strictly."""
  def beaten(r):
    return any(
        total_flops(o) <= total_flops(r) and o["value"] >= r["value"] and
        (total_flops(o) < total_flops(r) or o["value"] > r["value"]) for o in rows)

  return sorted((r for r in rows if not beaten(r)), key=total_flops)


def cheapest_within(rows: list[dict[str, Any]], tolerance: float) -> tuple[dict, dict] | None:
  """(the largest single size, the cheapest configuration whose value is at most `tolerance` below
  it): what a run's full quality costs when a little may be given up."""
  sizes = [r for r in rows if ":" not in r["configuration"] and "@" not in r["configuration"]]
  if not sizes:
    return None
  full = max(sizes, key=lambda r: (r["layers"], total_flops(r)))
  return full, min((r for r in rows if r["value"] >= full["value"] - tolerance), key=total_flops)


def summary(label_rows: dict[str, list[dict[str, Any]]], metric: str, tolerance: float,
            chosen: dict[str, tuple[str, dict, dict]] | None = None) -> str:
  """Each run's cheapest configuration within `tolerance` of its largest size; with `chosen`
  ({label: (split, full row, chosen row)} of a selection split), that choice's value and cost
  here."""
  lines = []
  for label, rows in label_rows.items():
    if chosen and label in chosen:
      split, full, best = chosen[label]
      here = {r["configuration"]: r for r in rows}
      if full["configuration"] in here and best["configuration"] in here:
        f, b = here[full["configuration"]], here[best["configuration"]]
        lines.append(
            f"- {label}: chosen on {split} ({best['configuration']}, {best['value']:.4f} against "
            f"{full['configuration']}'s {full['value']:.4f} there): here {b['value']:.4f} against "
            f"{f['value']:.4f} ({b['value'] - f['value']:+.4f}), at "
            f"{total_flops(b) / total_flops(f):.1%} of its FLOPs per query.")
      continue
    found = cheapest_within(rows, tolerance)
    if found:
      full, best = found
      lines.append(
          f"- {label}: the cheapest configuration within {tolerance} {metric} of {full['configuration']} "
          f"({full['value']:.4f}) is {best['configuration']} ({best['value']:.4f}) at "
          f"{total_flops(best) / total_flops(full):.1%} of its FLOPs per query.")
  return "\n".join(lines)


def markdown(label_rows: dict[str, list[dict[str, Any]]], metric: str) -> str:
  lines = [
      f"| run | configuration | {metric} | query MFLOPs | search MFLOPs | query ms | search ms | "
      "index B/passage | front |", "|---|---|---:|---:|---:|---:|---:|---:|---|"
  ]
  for label, rows in label_rows.items():
    best = {id(r) for r in front(rows)}
    for r in sorted(rows, key=total_flops):
      lines.append(
          f"| {label} | {r['configuration']} | {r['value']:.4f} | {r['query_flops'] / 1e6:.2f} | "
          f"{r['search_flops'] / 1e6:.2f} | {_ms(r['query_ms'])} | {_ms(r['search_ms'])} | "
          f"{r['index_bytes']} | {'front' if id(r) in best else ''} |")
  return "\n".join(lines)


def _ms(x) -> str:
  return "-" if x is None else f"{x:.3f}"


def plot(label_rows: dict[str, list[dict[str, Any]]], metric: str, path: str, title: str) -> str:
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for label, rows in label_rows.items():
    dots = ax.scatter([total_flops(r) for r in rows], [r["value"] for r in rows], s=18,
                      label=f"{label}")
    best = front(rows)
    ax.plot([total_flops(r) for r in best], [r["value"] for r in best],
            color=dots.get_facecolor()[0], lw=1)
    for r in rows if len(rows) <= 40 else best:  # many cells: the front's names only
      ax.annotate(r["configuration"], (total_flops(r), r["value"]), fontsize=5, alpha=0.7)
  ax.set_xscale("log")
  ax.set_xlabel("FLOPs per query (query encoding + search)")
  ax.set_ylabel(metric)
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def write(workdirs: list[str], out: str, metric: str = "nDCG@10", labels: list[str] | None = None,
          corpus_size: int | None = None, tolerance: float = 0.005,
          select_on: str | None = None) -> list[str]:
  """The table and the plot of every collection the workdirs have costs for; returns the files.
  `corpus_size`: search FLOPs over that many passages instead of the collection's own; `tolerance`:
  the summary names each run's cheapest configuration within it of the run's largest size, chosen
  on the split `select_on` when given (its other splits report that choice)."""
  labels = labels or [os.path.basename(os.path.normpath(w)) for w in workdirs]
  per_run = {label: rows_of(w, metric, corpus_size) for label, w in zip(labels, workdirs)}
  keys = sorted({k for rows in per_run.values() for k in rows})
  if not keys:
    raise InputError(
        f"{', '.join(workdirs)}: no retrieval records with costs for {metric} (evaluate with "
        "--config.eval.retrieval_costs=True)")
  os.makedirs(out, exist_ok=True)
  files = []
  for dataset, split in keys:
    label_rows = {
        label: rows[(dataset, split)] for label, rows in per_run.items() if (dataset, split) in rows
    }
    base = os.path.join(out, f"{dataset}_{split}" + (f"_N{corpus_size}" if corpus_size else ""))
    scale = (f" with search FLOPs over {corpus_size:,} passages (ms measured on the collection)"
             if corpus_size else "")
    chosen = None
    if select_on and split != select_on:
      chosen = {
          label: (select_on, *found) for label, rows in per_run.items()
          if (dataset, select_on) in rows
          for found in [cheapest_within(rows[(dataset, select_on)], tolerance)] if found
      }
    with open(base + ".md", "w", encoding="utf8") as f:
      f.write(
          f"{dataset}/{split} {metric} against cost per query{scale}; 'front': no configuration of "
          "the same run is as good for less.\n\n" + summary(label_rows, metric, tolerance, chosen) +
          "\n\n" + markdown(label_rows, metric) + "\n")
    title = f"{dataset}/{split}" + (f", search over {corpus_size:,} passages"
                                    if corpus_size else "")
    files += [base + ".md", plot(label_rows, metric, base + ".png", title)]
  return files


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog="python -m starbucks_jax.evaluate.pareto",
                              description=__doc__.split("\n")[0])
  p.add_argument("--workdir", action="append", required=True, help="a run's workdir (repeatable)")
  p.add_argument("--label", action="append", help="a name per --workdir (default: the folder name)")
  p.add_argument("--metric", default="nDCG@10")
  p.add_argument("--out", help="default: the first workdir's pareto/")
  p.add_argument("--corpus-size", type=int,
                 help="search FLOPs over this many passages (e.g. 8841823)")
  p.add_argument(
      "--tolerance", type=float, default=0.005,
      help="the summary's loss of quality allowed against the largest size (default 0.005)")
  p.add_argument(
      "--select-on",
      help="the split that chooses the summary's configuration (e.g. dev); the others report it")
  args = p.parse_args(argv)
  if args.corpus_size is not None and args.corpus_size < 1:
    raise InputError(f"--corpus-size {args.corpus_size}: give a number of passages of at least 1")
  if args.label and len(args.label) != len(args.workdir):
    raise InputError(f"--label: {len(args.label)} labels for {len(args.workdir)} --workdir")
  for w in args.workdir:
    if not os.path.isdir(w):
      raise FileNotFoundError(f"--workdir {w}: no such directory")
  files = write(args.workdir, args.out or os.path.join(args.workdir[0], "pareto"), args.metric,
                args.label, args.corpus_size, args.tolerance, args.select_on)
  for path in files:
    if path.endswith(".md"):
      print(open(path).read())
  print("wrote " + ", ".join(files))


if __name__ == "__main__":
  cli.run(main)
