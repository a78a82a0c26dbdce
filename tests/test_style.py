"""Line length: yapf (pyproject's [tool.yapf], run by CI) formats code to 100 columns; the lines it
cannot shorten (long strings, comments, URLs) are counted here and may only become fewer."""

import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
COLUMNS = 100
LONG_LINES = 373  # when the 100-column formatting came in (issue 42): a ratchet that only goes down


def long_lines() -> list[str]:
  files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
  return [
      f"{f}:{i}" for f in files if not f.startswith("colab/")
      for i, line in enumerate((REPO / f).read_text().splitlines(), 1) if len(line) > COLUMNS
  ]


def test_lines_over_100_columns_only_become_fewer():
  found = long_lines()
  new = f"{len(found) - LONG_LINES} new lines over {COLUMNS} columns (last: {found[-3:]})"
  assert len(found) <= LONG_LINES, new
  assert len(found) > LONG_LINES - 20, f"now {len(found)}: lower LONG_LINES to it (the ratchet)"
