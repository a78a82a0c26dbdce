"""platforms.choose: the CPU alone where no accelerator device file exists, so that libtpu and the
CUDA plugin stay quiet; a user's JAX_PLATFORMS and a machine with an accelerator are left alone."""

import os
import subprocess
import sys

import pytest

from starbucks_jax import platforms

from conftest import REPO


def test_choose_asks_for_the_cpu_only_without_an_accelerator(tmp_path):
  none = (str(tmp_path / "accel[0-9]*"),)
  env = {}
  assert platforms.choose(env, none) == "cpu" and env == {"JAX_PLATFORMS": "cpu"}
  mine = {"JAX_PLATFORMS": "tpu"}
  assert platforms.choose(mine, none) is None and mine == {"JAX_PLATFORMS": "tpu"}
  (tmp_path / "accel0").touch()  # a TPU VM's chip
  env = {}
  assert platforms.choose(env, none) is None and env == {}


@pytest.mark.skipif(platforms.has_accelerator(), reason="this machine has an accelerator")
def test_importing_the_package_keeps_jax_quiet_on_a_cpu():
  """With the tpu and gpu extras installed (the test install), jax started through the package on a
  machine with neither chip prints nothing: no libtpu hostname errors, no CUDA plugin traceback."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  done = subprocess.run(
      [sys.executable, "-c", "import starbucks_jax, jax; print(jax.devices()[0].platform)"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0 and done.stdout.strip() == "cpu", done.stderr[-2000:]
  assert done.stderr == "", done.stderr[-2000:]
