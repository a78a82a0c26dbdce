"""The README is a front page (under 12 KB) whose Documentation list links every page of docs/,
and every relative link of the README and docs/ names a file of the tree."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def links(path: pathlib.Path) -> list[str]:
  return [t for t in re.findall(r"\]\(([^)#]+)\)", path.read_text()) if "://" not in t]


def test_the_front_page_is_short_and_links_every_docs_page():
  readme = REPO / "README.md"
  assert readme.stat().st_size < 12_000
  linked = {(REPO / t).resolve() for t in links(readme)}
  assert {p.resolve() for p in (REPO / "docs").glob("*.md")} <= linked
  for page in [readme, *(REPO / "docs").glob("*.md")]:
    for target in links(page):
      assert (page.parent / target).exists(), f"{page.name}: {target}"
