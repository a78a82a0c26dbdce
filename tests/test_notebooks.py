"""colab/quickstart.ipynb runs top to bottom on CPU (a few training steps) so it cannot rot."""

import pytest

from conftest import REPO


def run_notebook(name: str, folder) -> list[dict]:
  """Executes colab/NAME top to bottom in `folder` (its kernel inherits this environment); the code
  cells' outputs."""
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  nb = nbformat.read(str(REPO / "colab" / name), as_version=4)
  nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": str(folder)}}).execute()
  return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def test_quickstart_notebook_runs_top_to_bottom(minilm_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("STARBUCKS_NOTEBOOK_QUICK", "1")  # the kernel inherits it: 3 training steps
  monkeypatch.setenv("TQDM_DISABLE", "1")
  outputs = run_notebook("quickstart.ipynb", tmp_path)
  text = "\n".join(o.get("text", "") for o in outputs)
  assert "(2,32) shape (3, 32)" in text and "(6,384) shape (3, 384)" in text
  assert "| SRL (demo) |" in text  # the report's table
  assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 1


def test_tpu_nli_notebook_runs_in_quick_mode(minilm_dir, tmp_path, monkeypatch):
  """The TPU notebook's path on CPU: training through `main` (which raises the stack limit), the
  paper's Table A1 layout printed, and the run's files saved where SAVE_TO points."""
  monkeypatch.setenv("STARBUCKS_NOTEBOOK_QUICK", "1")
  monkeypatch.setenv("STARBUCKS_NOTEBOOK_SAVE_TO", str(tmp_path / "drive"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  text = "\n".join(o.get("text", "") for o in run_notebook("tpu_nli.ipynb", tmp_path))
  assert "| Demi | (2, 32) | starbucks |" in text and "| Demi | (2, 32) | paper BERT-SRL |" in text
  assert "Mean of the Average over the six sizes, paper BERT-SRL: 0.7682" in text
  saved = list((tmp_path / "drive").glob("nli_*"))
  assert len(saved) == 1 and (saved[0] / "results" / "final.json").exists()
  assert (saved[0] / "report" / "paper_table.md").exists()
  assert not (saved[0] / "checkpoints").exists()


@pytest.mark.parametrize("name, extra", [("quickstart.ipynb", ""), ("tpu_nli.ipynb", "[tpu]")])
def test_install_cell_picks_git_url_then_wheel_then_says_what_to_do(name, extra, tmp_path,
                                                                    monkeypatch):
  """The notebooks' first code cell where starbucks_jax is missing (find_spec and pip stubbed): a
  REPO_URL installs from git, else a wheel in the folder, else it stops naming both."""
  import importlib.util
  import json
  import subprocess
  cell = next(c for c in json.loads((REPO / "colab" / name).read_text())["cells"]
              if c["cell_type"] == "code")
  source = "".join(cell["source"])
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None
                      if n == "starbucks_jax" else real_find_spec(n, *a))
  installs = []
  monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: installs.append(cmd[-1]))
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit, match="set REPO_URL .* or put a starbucks_jax wheel"):
    exec(source, {})
  assert not installs
  wheel = tmp_path / "starbucks_jax-0.1.0-py3-none-any.whl"
  wheel.touch()
  exec(source, {})
  assert installs[0] == f"{wheel}{extra}"
  installs.clear()
  exec(source.replace('REPO_URL = ""', 'REPO_URL = "https://example.org/me/starbucks_jax"', 1), {})
  assert installs[0] == f"starbucks_jax{extra} @ git+https://example.org/me/starbucks_jax"
