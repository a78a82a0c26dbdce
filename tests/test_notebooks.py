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
