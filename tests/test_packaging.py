"""The package as users install it: every subpackage in pyproject's list, a wheel that carries
configs/ (so `--config=configs/...` works without a clone), config files found from any folder."""

import os
import subprocess
import sys
import tomllib
import zipfile

import pytest

from starbucks_jax import config_lib

from conftest import REPO


def test_pyproject_lists_every_package_and_maps_configs():
  setuptools_table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
  found = {
      ".".join(p.relative_to(REPO).parent.parts)
      for p in (REPO / "starbucks_jax").rglob("__init__.py")
  }
  assert set(setuptools_table["packages"]) == found | {"starbucks_jax.configs"}
  assert setuptools_table["package-dir"] == {"starbucks_jax.configs": "configs"}


def test_config_files_are_found_from_another_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert config_lib.config_file("configs/ft.py") == str(REPO / "configs" / "ft.py")
  assert config_lib.load_config("configs/ft.py:demo").schedule.pairs[-1] == (6, 384)
  assert config_lib.config_file("nope/ft.py") == "nope/ft.py"  # only configs/ is looked up
  with pytest.raises(FileNotFoundError, match=f"configs/nope.py not found from {tmp_path}"):
    config_lib.load_config("configs/nope.py")


def test_wheel_carries_configs_and_main_finds_them(tmp_path):
  """A wheel built from this tree, unpacked on the path ahead of the editable install and run from
  an empty folder: its configs/ load, and `main` reads `--config=configs/ft.py:demo` from it (a
  wrong key then fails on the key, before any compute)."""
  pytest.importorskip("setuptools", minversion="68")  # pyproject's build requirement
  built = subprocess.run([
      sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
      str(REPO), "-w",
      str(tmp_path / "dist")
  ], capture_output=True, text=True, cwd=tmp_path)
  assert built.returncode == 0, built.stderr
  (wheel,) = (tmp_path / "dist").glob("starbucks_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  for config in ("ft.py", "pt.py", "retrieval.py", "modernbert.py"):
    assert f"starbucks_jax/configs/{config}" in names
  assert "starbucks_jax/data/demo/sts_test.jsonl" in names
  zipfile.ZipFile(wheel).extractall(tmp_path / "site")
  (tmp_path / "elsewhere").mkdir()
  env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "JAX_PLATFORMS": "cpu"}
  shown = subprocess.run([
      sys.executable, "-c", "from starbucks_jax import config_lib as c; "
      "print(c.config_file('configs/ft.py')); print(c.load_config('configs/ft.py:demo').mode)"
  ], capture_output=True, text=True, cwd=tmp_path / "elsewhere", env=env)
  assert shown.returncode == 0, shown.stderr
  assert shown.stdout.split() == [
      str(tmp_path / "site" / "starbucks_jax" / "configs" / "ft.py"), "train"
  ]
  bad_key = subprocess.run([
      sys.executable, "-m", "starbucks_jax.main", "--config=configs/ft.py:demo", "--workdir=w",
      "--config.train.lrr=1"
  ], capture_output=True, text=True, cwd=tmp_path / "elsewhere", env=env)
  assert bad_key.returncode == 2
  assert "--config.train.lrr" in bad_key.stderr and "not found" not in bad_key.stderr
