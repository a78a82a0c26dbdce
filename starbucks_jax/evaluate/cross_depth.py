"""Cross-depth retrieval (eval.retrieval_cross_depth): queries encoded with n_q layers against
passages encoded with n_doc >= n_q layers, at the same dim d. Passages are encoded once, offline, at
any depth; a query is encoded online, so a shallow query encoder is where a 2D model can save.

Every cell (n_q, n_doc, d) over the schedule's layers and dims is searched exactly from the one-pass
index (every layer of the schedule stored at the largest dim) with the queries' vectors of the same
early-exit pass. Written per collection to WORKDIR/cross_depth/ (apart from results/, whose records
are one per size): NAME_SPLIT.json (records with `query_layer`, and the query encoder's FLOPs per
cell), NAME_SPLIT.md (rows n_q, columns n_doc, a block per metric and dim) and a heat-map per metric.

    python -m starbucks_jax.evaluate.cross_depth --workdir W [--label L] [...] --collection NAME
        --split SPLIT --out DIR [--dim D] [--metric nDCG@10] [--baseline L]

tables the cells of shallow queries against the deepest passages over runs (a label's runs are
seeds: mean ± sd), as report.write does sizes: table.md (columns (n_q, d)), sizes.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

import numpy as np

from starbucks_jax import cli, schedule
from starbucks_jax import workdir as workdir_lib
from starbucks_jax.config_lib import InputError
from starbucks_jax.evaluate import cost, results, search
from starbucks_jax.evaluate import index as index_lib


def stored_pairs(pairs) -> tuple[tuple[int, int], ...]:
  """The index pairs every cell reads: each layer of `pairs` at their largest dim."""
  dim = max(d for _, d in pairs)
  return tuple((n, dim) for n in sorted({n for n, _ in pairs}))


def cells(pairs) -> list[tuple[int, int, int]]:
  """(n_q, n_doc, d) for every pair of the schedule's layers n_q <= n_doc and every dim d."""
  layers, dims = sorted({n for n, _ in pairs}), sorted({d for _, d in pairs})
  return [(q, n, d) for d in dims for n in layers for q in layers if q <= n]


def evaluate(collection, query_vecs: dict[int, np.ndarray], folder: str, pairs, *, k: int,
             normalize: bool, metrics, measure, skip_self: bool = False, config=None,
             query_lengths: list[int] | None = None,
             cost_rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
  """Records of every cell: `measure(qrels, run, metrics)` of the exact top-k of the queries' (n_q,
  d) vectors over the passages' (n_doc, d) vectors (`skip_self`: retrieval.evaluate_collection's).
  With `config` and the queries' token counts, each record has the query encoder's mean matmul
  FLOPs through n_q layers (cost.query_flops) and the search's over the collection; with the
  schedule's cost rows (cost.measure), the measured ms per query: encoding through n_q layers and
  searching at dim d (each size's own, the same for every n_doc)."""
  lengths = query_lengths if config is not None else None
  encode_ms, search_ms = measured_ms(cost_rows or [])
  out = []
  for q, n, d in cells(pairs):
    scores, rows = search.exact_topk(query_vecs[q][:, :d], index_lib.shards(folder, n, d),
                                     min(k + skip_self, len(collection.doc_ids)),
                                     normalize=normalize)
    run = search.run_dict(collection.query_ids, collection.doc_ids, scores, rows)
    run = search.without_self(run, k) if skip_self else run
    costs = {} if lengths is None else {
        "query_flops": cost.query_flops(config, lengths, q), "search_flops": cost.search_flops(
            (((n, d), 0),), len(collection.doc_ids))
    }
    if q in encode_ms and d in search_ms:
      costs.update(query_ms=encode_ms[q], search_ms=search_ms[d])
    for metric, value in measure(collection.qrels, run, metrics).items():
      r = results.record(collection.name, collection.split, metric, n, d, value)
      out.append({**r, "query_layer": q, **costs})
  return out


def measured_ms(cost_rows: list[dict[str, Any]]) -> tuple[dict[int, float], dict[int, float]]:
  """({layers: encoding ms per query}, {dim: search ms per query}) of the single sizes' cost
  rows."""
  sizes = [r for r in cost_rows if ":" not in r["configuration"]]
  return ({r["layers"]: r["query_ms"] for r in sizes},
          {schedule.parse_pair(r["configuration"])[1]: r["search_ms"] for r in sizes})


def table(records: list[dict[str, Any]]) -> str:
  """One block per (metric, dim): rows the query's layers, columns the passages' layers."""
  lines = []
  for metric in sorted({r["metric"] for r in records}):
    for d in sorted({r["dim"] for r in records}):
      rows = [r for r in records if r["metric"] == metric and r["dim"] == d]
      docs, queries = sorted({r["layer"] for r in rows}), sorted({r["query_layer"] for r in rows})
      value = {(r["query_layer"], r["layer"]): r["value"] for r in rows}
      lines += [
          f"{metric}, dim {d} (rows: query layers, columns: passage layers)", "",
          "| query \\ passage | " + " | ".join(map(str, docs)) + " |",
          "|---:|" + "---:|" * len(docs)
      ]
      for q in queries:
        cells_ = [f"{value[(q, n)]:.4f}" if value.get((q, n)) is not None else "" for n in docs]
        lines.append(f"| {q} | " + " | ".join(cells_) + " |")
      lines.append("")
  lines += cost_lines(records)
  return "\n".join(lines)


def cost_lines(records: list[dict[str, Any]]) -> list[str]:
  """What a query costs per cell: the encoder's MFLOPs and ms by query layers, the search's by
  dim."""
  if not any("query_flops" in r for r in records):
    return []
  enc = {r["query_layer"]: (r["query_flops"], r.get("query_ms")) for r in records}
  srch = {r["dim"]: (r["search_flops"], r.get("search_ms")) for r in records}
  ms = lambda x: "-" if x is None else f"{x:.3f}"
  return [
      "Cost per query: the encoder's by query layers, the search's by dim (any passage layer)", "",
      "| query layers | encoder MFLOPs | encoder ms |", "|---:|---:|---:|"
  ] + [f"| {q} | {f / 1e6:.1f} | {ms(t)} |" for q, (f, t) in sorted(enc.items())] + [
      "", "| dim | search MFLOPs | search ms |", "|---:|---:|---:|"
  ] + [f"| {d} | {f / 1e6:.2f} | {ms(t)} |" for d, (f, t) in sorted(srch.items())] + [""]


def write(workdir: str, records: list[dict[str, Any]], *, plot: bool = True) -> str:
  """WORKDIR/cross_depth/NAME_SPLIT.json and .md, and NAME_SPLIT_METRIC.png (a heat-map per dim)."""
  dataset, split = records[0]["dataset"], records[0]["split"]
  folder = os.path.join(workdir, workdir_lib.CROSS_DEPTH)
  base = os.path.join(folder, f"{dataset}_{split}")
  os.makedirs(folder, exist_ok=True)
  workdir_lib.write_atomically(base + ".json", json.dumps(records, indent=1) + "\n")
  workdir_lib.write_atomically(base + ".md", table(records) + "\n")
  if plot:
    from starbucks_jax import plots
    for metric in sorted({r["metric"] for r in records}):
      grids = {
          f"dim {d}": {(r["query_layer"], r["layer"]): np.nan if r["value"] is None else r["value"]
                       for r in records if r["metric"] == metric and r["dim"] == d}
          for d in sorted({r["dim"] for r in records})
      }
      plots.plot_grids(grids, f"{base}_{re.sub(r'[^A-Za-z0-9]+', '_', metric)}.png", metric,
                       xlabel="passage layers", ylabel="query layers")
  return base + ".json"


def deep_passage_records(workdirs, labels, collection: str, split: str,
                         dim: int | None = None) -> list[dict[str, Any]]:
  """Each run's cells of queries through n_q layers against its deepest passages (at `dim`, default
  the largest), as report records whose (layer, dim) is the query's (n_q, d), with run and label."""
  out = []
  for workdir, label in zip(workdirs, labels):
    path = os.path.join(workdir, workdir_lib.CROSS_DEPTH, f"{collection}_{split}.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no cross-depth cells (a run with "
                              "eval.retrieval_cross_depth=True writes them)")
    rows = [r for r in json.load(open(path)) if r["value"] is not None]
    deepest, widest = max(r["layer"] for r in rows), max(r["dim"] for r in rows)
    out += [{**r, "layer": r["query_layer"], "run": workdir, "label": label} for r in rows
            if r["layer"] == deepest and r["dim"] == (dim or widest)]
  return out


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(
      prog="python -m starbucks_jax.evaluate.cross_depth",
      description="Shallow queries against the deepest passages, per run "
      "label (seeds averaged)")
  p.add_argument("--workdir", action="append", required=True, help="a run's workdir (repeatable)")
  p.add_argument("--label", action="append", help="a name per --workdir (default: the folder name)")
  p.add_argument("--collection", required=True, help="the eval.retrieval name, e.g. scifact")
  p.add_argument("--split", required=True)
  p.add_argument("--metric", default="nDCG@10")
  p.add_argument("--dim", type=int, help="default: the largest")
  p.add_argument("--baseline", help="a label: adds the differences from it")
  p.add_argument("--out", required=True, help="folder for table.md and sizes.png")
  args = p.parse_args(argv)
  labels = args.label or [os.path.basename(os.path.normpath(w)) for w in args.workdir]
  if len(labels) != len(args.workdir):
    raise InputError(f"--label: {len(labels)} labels for {len(args.workdir)} --workdir")
  records = deep_passage_records(args.workdir, labels, args.collection, args.split, args.dim)
  if not records:
    raise InputError(f"--dim {args.dim}: no cells at that dim in the runs' {args.collection} "
                     f"{args.split} cells")
  if args.baseline and args.baseline not in labels:
    raise InputError(f"--baseline {args.baseline!r}: not one of the labels {sorted(set(labels))}")
  from starbucks_jax import report
  d = records[0]["dim"]
  files = report.write(
      records, args.out, dataset=args.collection, metric=args.metric, split=args.split,
      baseline=args.baseline, title=f"Queries through n_q layers against the deepest passages at "
      f"dim {d}: {args.collection} {args.split} {args.metric} (columns: (n_q, {d}))")
  print(open(files["table"]).read())


if __name__ == "__main__":
  cli.run(main)
