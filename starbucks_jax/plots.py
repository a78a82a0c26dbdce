"""The report's pictures (report.py decides what to draw): metric per size, differences from a
baseline, layer x dim heatmaps and training curves, as PNG files through matplotlib (Agg)."""

from __future__ import annotations

import os

from starbucks_jax import workdir as workdir_lib


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display), or a one-line exit without it."""
  try:
    import matplotlib
  except ImportError:
    raise SystemExit("pictures need matplotlib: pip install matplotlib") from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _style(plt, i: int) -> dict:
  """Line i's colour and marker: 20 colours, then the markers change, so many labels stay apart."""
  return {"color": plt.get_cmap("tab20")(i % 20), "marker": "osD^v"[i // 20 % 5]}


def _save_lines(plt, fig, ax, path: str, xlabel: str, ylabel: str, *, legend_size: int) -> str:
  """Axis labels, a light grid and the legend (beside the axes when it is long); saved as PNG, closed."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  if len(ax.get_legend_handles_labels()[1]) > 6:
    ax.legend(fontsize=legend_size, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  else:
    ax.legend(fontsize=legend_size)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def plot_sizes(pairs, rows: dict[str, dict], path: str, ylabel: str) -> str:
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  x = list(range(len(pairs)))
  for i, (label, row) in enumerate(rows.items()):
    xs = [j for j, p in zip(x, pairs) if p in row]
    ax.plot(xs, [row[pairs[j]] for j in xs], label=label, **_style(plt, i))
  ax.set_xticks(x, [f"({n},{d})" for n, d in pairs])
  return _save_lines(plt, fig, ax, path, "(layers, dims)", ylabel, legend_size=8)


def plot_differences(pairs, rows: dict[str, dict], spread: dict, baseline: str, path: str,
                     ylabel: str, *, beyond: float) -> str:
  """Each label minus the baseline per size, with its seeds' sd as error bars, over the band of
  `beyond` x the baseline's sd (what a difference must clear: report.differences)."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  x, base = list(range(len(pairs))), rows[baseline]
  base_sd = spread.get(baseline, {})
  if base_sd:
    band = [beyond * base_sd.get(p, (0.0, 1))[0] for p in pairs]
    ax.fill_between(x, [-b for b in band], band, color="0.85", label=f"{baseline}: ±{beyond:g} sd")
  ax.axhline(0.0, color="0.3", lw=0.8)
  for i, (label, row) in enumerate(rows.items()):  # i as in sizes.png: each label keeps its colour
    if label == baseline:
      continue
    xs = [j for j, p in zip(x, pairs) if p in row and p in base]
    sd = spread.get(label, {})
    ax.errorbar(xs, [row[pairs[j]] - base[pairs[j]] for j in xs], capsize=2, label=label,
                yerr=[sd.get(pairs[j], (0.0, 1))[0] for j in xs] if sd else None, **_style(plt, i))
  ax.set_xticks(x, [f"({n},{d})" for n, d in pairs])
  return _save_lines(plt, fig, ax, path, "(layers, dims)", f"{ylabel} - {baseline}", legend_size=8)


def plot_grids(grids: dict[str, dict], path: str, title: str, *, xlabel: str = "dims",
               ylabel: str = "layers") -> str:
  """A heatmap for each label's grid ({(row, column): value}; by default (layer, dim))."""
  plt = pyplot()
  fig, axes = plt.subplots(1, len(grids), figsize=(4.8 * len(grids), 4.0), squeeze=False)
  for ax, (label, row) in zip(axes[0], grids.items()):
    layers, dims = sorted({n for n, _ in row}), sorted({d for _, d in row})
    values = [[row.get((n, d), float("nan")) for d in dims] for n in layers]
    im = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(dims)), dims)
    ax.set_yticks(range(len(layers)), layers)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{label}: {title}", fontsize=9)
    for i, line in enumerate(values):
      for j, v in enumerate(line):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot_curves(runs: dict[str, str], path: str) -> str | None:
  """Training loss against step for each {label: run dir} with a metrics.jsonl."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  drawn = 0
  for label, run in runs.items():
    metrics = os.path.join(run, workdir_lib.METRICS)
    if not os.path.exists(metrics):
      continue
    rows = workdir_lib.read_metrics(metrics)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label,
            color=_style(plt, drawn)["color"])
    drawn += 1
  if not drawn:
    plt.close(fig)
    return None
  return _save_lines(plt, fig, ax, path, "step", "training loss", legend_size=7)
