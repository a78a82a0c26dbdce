"""Which of jax's platforms a process asks for, decided before jax starts.

With the `tpu` or `gpu` extra installed, jax initialises libtpu and the CUDA plugin on every start;
on a machine with neither chip they print pages of errors ("unexpected worker hostname", "Unable to
load cuFFT") before falling back to the CPU. A Linux machine with no accelerator device file asks
for the CPU alone (JAX_PLATFORMS=cpu), which keeps both quiet and still lets `compile` build TPU
and GPU programs deviceless. A JAX_PLATFORMS the user set is left as it is.
"""

from __future__ import annotations

import glob
import os
import sys

# device files of the accelerators jax drives: TPU VMs (accel or vfio), NVIDIA and AMD GPUs
DEVICE_FILES = ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")


def has_accelerator(patterns=DEVICE_FILES) -> bool:
  return any(glob.glob(p) for p in patterns)


def choose(environ=os.environ, patterns=DEVICE_FILES) -> str | None:
  """Set JAX_PLATFORMS=cpu in `environ` where it is unset and no accelerator is present (and in
  jax's config, if jax is already imported and has started no backend); the value chosen, or None."""
  # Linux only: elsewhere (a Mac's Metal plugin) the device files say nothing
  if environ.get("JAX_PLATFORMS") or not sys.platform.startswith("linux") or has_accelerator(
      patterns):
    return None
  environ["JAX_PLATFORMS"] = "cpu"
  jax = sys.modules.get("jax")
  if jax is not None and environ is os.environ:
    try:  # jax read the variable when it was imported; a started backend cannot change
      from jax._src import xla_bridge
      if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")
    except (ImportError, AttributeError):  # a jax without these internals: the variable alone
      pass
  return "cpu"
