"""A two-process jax.distributed run on localhost (CPU, 2 fake devices each): it trains,
checkpoints, stops together when one host is preempted, resumes and evaluates, and its losses and
parameters equal a one-process run on 4 devices with the same global batches."""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from starbucks_jax import checkpoint, config_lib, sharding
from starbucks_jax.config_blocks import Mesh

from conftest import REPO, write_triplets, xla_flags

ENV = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"),
           JAX_PLATFORMS="cpu")


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(args, devices=2):
  env = dict(ENV, XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"))
  return subprocess.Popen(
      [sys.executable, str(REPO / "tests" / "multiprocess_run.py"), *map(str, args)], cwd=REPO,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses(workdir):
  return [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_two_processes_train_checkpoint_and_equal_one_process(tiny2_hf_dir, tmp_path):
  data = write_triplets(tmp_path / "train.jsonl", 40)
  multi, single = tmp_path / "multi", tmp_path / "single"
  # process 1's host is preempted after step 1: JAX's sync manager stops both at one step, saved
  procs = [
      launch([tiny2_hf_dir, data, multi, f"localhost:{port}", 2, i, 4, 1][:6 + 2 * i])
      for port in [free_port()] for i in range(2)
  ]
  ref = launch([tiny2_hf_dir, data, single, "", 1, 0], devices=4)
  stops = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs]
  assert [p.returncode for p in procs] == [143, 143], stops
  step = int(
      re.fullmatch(r"stopped at step (\d) by SIGTERM; rerun the same command to resume",
                   stops[0])[1])
  assert stops[1] == stops[0] and step < 4 and step in checkpoint.manager(
      str(multi), read_only=True).all_steps()
  coordinator = f"localhost:{free_port()}"  # the same command resumes on both
  procs = [launch([tiny2_hf_dir, data, multi, coordinator, 2, i]) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs + [ref]]
  for p, out in zip(procs + [ref], outs):
    assert p.returncode == 0, out[-4000:]
  assert "process 0 of 2: 2 local of 4 devices" in outs[
      0] and "process 1 of 2: 2 local of 4" in outs[1]
  assert "process 0 of 1: 4 local of 4 devices" in outs[2]
  assert len(losses(multi)) == 4  # written once, by the primary process
  np.testing.assert_allclose(losses(multi), losses(single), rtol=1e-5)
  assert checkpoint.manager(str(multi), read_only=True).all_steps()[-1] == 4
  a, b = checkpoint.load_model(str(multi)), checkpoint.load_model(str(single))
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_allclose(x, y, atol=1e-5)
  records = json.load(open(multi / "results" / "final.json"))
  assert {(r["layer"], r["dim"]) for r in records} == {(1, 8), (2, 32)}


@pytest.mark.parametrize("key,value,match", [
    ("coordinator", "localhost", "mesh.coordinator='localhost': expected 'host:port'"),
    ("process_id", 2, r"mesh.process_id=2 is not in 0..1"),
    ("num_processes", 0, "mesh.num_processes"),
])
def test_process_keys_fail_by_name(key, value, match):
  cfg = config_lib.load_config(str(REPO / "configs" / "ft.py") + ":demo")
  with cfg.unlocked():
    cfg.mesh.coordinator, cfg.mesh.num_processes = "localhost:1234", 2
    setattr(cfg.mesh, key, value)
  with pytest.raises(config_lib.ConfigError, match=match):
    Mesh.from_config(cfg.mesh).check()
  assert not jax.distributed.is_initialized() and sharding.is_primary()
