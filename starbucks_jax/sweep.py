"""Sweeps: a list of runs launched through the normal entry point, one after another here or printed
as commands for a cluster; finished runs are skipped, interrupted ones resume from their checkpoint.

A sweep script (experiments/sweep_*.py) lists `Run`s and calls `main(runs, ...)`, which gives it
the command line: `--root DIR` (where the workdirs go), `--only NAME_PREFIX` (a subset),
`--print-only` (the commands, in order, for a scheduler), `--report-only` (skip training). After
the runs, each `Report` collects the results under the root (starbucks_jax.report) into a table and
pictures: in its own folder (the recorded experiments/results_*) for the sweep's default root, in
ROOT/reports/ for any other root, so a trial elsewhere never overwrites the recorded tables.

A sweep longer than one machine's life keeps each finished run's record (config, metrics, timing,
results: kilobytes, no checkpoints) in an archive folder committed with the reports (`archive=`,
for the default root only): a run recorded there counts as done and reports from its record.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
from typing import Sequence

from starbucks_jax import paper, report
from starbucks_jax import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # the workdir under the sweep's root; may contain '/'
  config: str  # e.g. 'configs/ft.py:sts_cpu,method=2dmse'
  overrides: tuple[str, ...] = ()  # e.g. ('--config.train.epochs=1',); '{root}' expands to the root
  label: str = ""  # the report's row (default: the run's method)
  # results/<result>.json marks the run done ('eval' for evaluation-only runs)
  result: str = "final"

  def workdir(self, root: str) -> str:
    return os.path.join(root, self.name)

  def command(self, root: str, python: str = sys.executable) -> list[str]:
    return [
        python, "-m", "starbucks_jax.main", f"--config={self.config}",
        f"--workdir={self.workdir(root)}", *(o.replace("{root}", root) for o in self.overrides)
    ]

  def done(self, root: str, archive: str | None = None) -> bool:
    return self.records(root, archive) is not None

  def records(self, root: str, archive: str | None = None) -> str | None:
    """The folder holding the finished run's results: its workdir, else its archived record."""
    for folder in (self.workdir(root), os.path.join(archive, self.name) if archive else None):
      if folder and os.path.exists(os.path.join(folder, workdir_lib.RESULTS,
                                                f"{self.result}.json")):
        return folder
    return None


def archive_run(workdir: str, dest: str) -> None:
  """Copies a finished run's record (not its checkpoints) to `dest`, replacing an older copy."""
  os.makedirs(os.path.join(dest, workdir_lib.RESULTS), exist_ok=True)
  for name in workdir_lib.RECORD_FILES:
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copyfile(os.path.join(workdir, name), os.path.join(dest, name))
  for path in glob.glob(os.path.join(workdir, workdir_lib.RESULTS, "*.json")):
    shutil.copyfile(path, os.path.join(dest, workdir_lib.RESULTS, os.path.basename(path)))


@dataclasses.dataclass(frozen=True)
class Report:
  out: str  # folder for table.md and the pictures
  runs: tuple[str, ...]  # run-name prefixes whose results go in
  dataset: str
  metric: str
  title: str = ""
  split: str | None = None  # only this split of the dataset (None: any)
  baseline: str | None = None  # a label: the table of differences from it (report.differences)
  paper: str = ""  # 'a1' | 'a2': also paper_table.md, the paper's table beside ours (paper.py)


def launch(runs: Sequence[Run], root: str, *, print_only: bool = False, cwd: str | None = None,
           archive: str | None = None) -> None:
  for run in runs:
    cmd = run.command(root)
    if print_only:
      print(shlex.join(cmd))
      continue
    if run.done(root, archive):
      print(f"skip {run.name}: done")
      continue
    print(f"run {run.name}: {shlex.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)
    if archive:
      archive_run(run.workdir(root), os.path.join(archive, run.name))


def archive_finished(runs: Sequence[Run], root: str, archive: str) -> None:
  """Archives every run finished in `root` (say, by a sweep stopped before it archived)."""
  for run in runs:
    if run.records(root) is not None:
      archive_run(run.workdir(root), os.path.join(archive, run.name))


def write_reports(runs: Sequence[Run], reports: Sequence[Report], root: str,
                  into: str | None = None, archive: str | None = None) -> None:
  """Each report's table and pictures, in its own folder or, given `into`, in into/<its name>."""
  for rep in reports:
    out = rep.out if into is None else os.path.join(into, os.path.basename(os.path.normpath(
        rep.out)))
    chosen = [r for r in runs if any(r.name.startswith(prefix) for prefix in rep.runs)]
    finished = [r for r in chosen if r.done(root, archive)]
    if not finished:
      print(f"report {out}: no finished runs yet")
      continue
    folders = {r.name: r.records(root, archive) for r in finished}
    labels = {os.path.normpath(folders[r.name]): r.label for r in finished if r.label}
    records = report.collect([folders[r.name] for r in finished], labels)
    files = report.write(
        records, out, dataset=rep.dataset, metric=rep.metric, title=rep.title, split=rep.split,
        baseline=rep.baseline if rep.baseline in {r.label for r in finished} else None)
    if rep.paper:
      with open(os.path.join(out, "paper_table.md"), "w", encoding="utf8") as f:
        f.write(f"# {rep.title}: the paper's Table {rep.paper.upper()} layout\n\n")
        f.write(paper.markdown(records, rep.paper))
    missing = [r.name for r in chosen if not r.done(root, archive)]
    commits = {}
    for r in finished:
      info = os.path.join(folders[r.name], workdir_lib.RUN)
      commit = json.load(open(info))[-1]["commit"] if os.path.exists(info) else "not recorded"
      commits.setdefault(commit, []).append(r.name)
    with open(files["table"], "a", encoding="utf8") as f:
      f.write(f"\nRuns: {', '.join(r.name for r in finished)} (under `{root}`). Code: " +
              "; ".join(f"`{c}`: {', '.join(names)}" for c, names in commits.items()) + ".\n")
      script = os.path.relpath(
          sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "SWEEP.py"
      f.write(f"Reproduce: `python {script} " + " ".join(f"--only {p}" for p in rep.runs) + "`\n")
      if missing:
        f.write(f"Not finished yet (the same command resumes them): {', '.join(missing)}.\n")
    print(open(files["table"]).read())


def main(runs: Sequence[Run], reports: Sequence[Report] = (), *, default_root: str, argv=None,
         description: str = "", archive: str | None = None) -> None:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--root", default=default_root, help="where the runs' workdirs go")
  p.add_argument("--only", action="append", default=[], help="run-name prefix (repeatable)")
  p.add_argument("--print-only", action="store_true", help="print the commands, in order")
  p.add_argument("--report-only", action="store_true", help="only collect what has finished")
  args = p.parse_args(argv)
  chosen = [r for r in runs if not args.only or any(r.name.startswith(o) for o in args.only)]
  if not chosen:
    p.error(f"--only {args.only}: no run matches; runs: {', '.join(r.name for r in runs)}")
  same_root = os.path.abspath(args.root) == os.path.abspath(default_root)
  archive = archive if same_root else None  # a trial elsewhere keeps its records to itself
  if archive and not args.print_only:
    archive_finished(runs, args.root, archive)
  if not args.report_only:
    launch(chosen, args.root, print_only=args.print_only, archive=archive)
  if not args.print_only:
    write_reports(runs, reports, args.root,
                  None if same_root else os.path.join(args.root, "reports"), archive)
