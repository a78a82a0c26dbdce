"""Sweeps: a list of runs launched through the normal entry point, one after another here or printed
as commands for a cluster; finished runs are skipped, interrupted ones resume from their checkpoint.

A sweep script (experiments/sweep_*.py) lists `Run`s and calls `main(runs, ...)`, which gives it
the command line: `--root DIR` (where the workdirs go), `--only NAME_PREFIX` (a subset),
`--print-only` (the commands, in order, for a scheduler), `--report-only` (skip training). After
the runs, each `Report` collects the results under the root (starbucks_jax.report) into a table and
pictures: in its own folder (the recorded experiments/results_*) for the sweep's default root, in
ROOT/reports/ for any other root, so a trial elsewhere never overwrites the recorded tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from typing import Sequence

from starbucks_jax import report


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # the workdir under the sweep's root; may contain '/'
  config: str  # e.g. 'configs/ft.py:sts_cpu,method=2dmse'
  overrides: tuple[str, ...] = ()  # e.g. ('--config.train.epochs=1',); '{root}' expands to the root
  label: str = ""  # the report's row (default: the run's method)
  result: str = "final"  # results/<result>.json marks the run done ('eval' for evaluation-only runs)

  def workdir(self, root: str) -> str:
    return os.path.join(root, self.name)

  def command(self, root: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "starbucks_jax.main", f"--config={self.config}", f"--workdir={self.workdir(root)}",
            *(o.replace("{root}", root) for o in self.overrides)]

  def done(self, root: str) -> bool:
    return os.path.exists(os.path.join(self.workdir(root), report.RESULTS, f"{self.result}.json"))


@dataclasses.dataclass(frozen=True)
class Report:
  out: str  # folder for table.md and the pictures
  runs: tuple[str, ...]  # run-name prefixes whose results go in
  dataset: str
  metric: str
  title: str = ""
  split: str | None = None  # only this split of the dataset (None: any)


def launch(runs: Sequence[Run], root: str, *, print_only: bool = False, cwd: str | None = None) -> None:
  for run in runs:
    cmd = run.command(root)
    if print_only:
      print(shlex.join(cmd))
      continue
    if run.done(root):
      print(f"skip {run.name}: done")
      continue
    print(f"run {run.name}: {shlex.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def write_reports(runs: Sequence[Run], reports: Sequence[Report], root: str, into: str | None = None) -> None:
  """Each report's table and pictures, in its own folder or, given `into`, in into/<its name>."""
  for rep in reports:
    out = rep.out if into is None else os.path.join(into, os.path.basename(os.path.normpath(rep.out)))
    chosen = [r for r in runs if any(r.name.startswith(prefix) for prefix in rep.runs)]
    finished = [r for r in chosen if r.done(root)]
    if not finished:
      print(f"report {out}: no finished runs yet")
      continue
    labels = {os.path.normpath(r.workdir(root)): r.label for r in finished if r.label}
    records = report.collect([r.workdir(root) for r in finished], labels)
    files = report.write(records, out, dataset=rep.dataset, metric=rep.metric, title=rep.title, split=rep.split)
    missing = [r.name for r in chosen if not r.done(root)]
    commits = {}
    for r in finished:
      info = os.path.join(r.workdir(root), "run.json")
      commit = json.load(open(info))[-1]["commit"] if os.path.exists(info) else "not recorded"
      commits.setdefault(commit, []).append(r.name)
    with open(files["table"], "a", encoding="utf8") as f:
      f.write(f"\nRuns: {', '.join(r.name for r in finished)} (under `{root}`). Code: "
              + "; ".join(f"`{c}`: {', '.join(names)}" for c, names in commits.items()) + ".\n")
      script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "SWEEP.py"
      f.write(f"Reproduce: `python {script} " + " ".join(f"--only {p}" for p in rep.runs) + "`\n")
      if missing:
        f.write(f"Not finished yet (the same command resumes them): {', '.join(missing)}.\n")
    print(open(files["table"]).read())


def main(runs: Sequence[Run], reports: Sequence[Report] = (), *, default_root: str, argv=None,
         description: str = "") -> None:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--root", default=default_root, help="where the runs' workdirs go")
  p.add_argument("--only", action="append", default=[], help="run-name prefix (repeatable)")
  p.add_argument("--print-only", action="store_true", help="print the commands, in order")
  p.add_argument("--report-only", action="store_true", help="only collect what has finished")
  args = p.parse_args(argv)
  chosen = [r for r in runs if not args.only or any(r.name.startswith(o) for o in args.only)]
  if not chosen:
    p.error(f"--only {args.only}: no run matches; runs: {', '.join(r.name for r in runs)}")
  if not args.report_only:
    launch(chosen, args.root, print_only=args.print_only)
  if not args.print_only:
    same_root = os.path.abspath(args.root) == os.path.abspath(default_root)
    write_reports(runs, reports, args.root, None if same_root else os.path.join(args.root, "reports"))
