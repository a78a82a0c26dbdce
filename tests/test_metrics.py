"""Metrics sinks: metrics.jsonl, TensorBoard event files read back with TensorBoard's own reader, a
Weights & Biases stand-in (the package is optional and online), and the `log` block's checks. The
sinks during real runs (fresh, resumed, evaluated) are tested in test_finetune.py."""

import importlib.machinery
import json
import sys
import types

import ml_collections
import pytest

from starbucks_jax import metrics
from starbucks_jax.config_blocks import Log
from starbucks_jax.config_lib import ConfigError

from conftest import tb_scalars


def log_cfg(**kw):
  return Log.from_config(Log.config(**kw))


def test_a_resumed_writer_keeps_each_step_once_in_jsonl_and_tensorboard(tmp_path):
  first = metrics.MetricsWriter(str(tmp_path), 0, log_cfg())
  for step in (1, 2, 3):
    first.write(step, {"loss": 1.0 / step, "grad_norm": float("nan")})
  first.close()
  resumed = metrics.MetricsWriter(str(tmp_path), 2, log_cfg())  # the checkpoint was at step 2
  resumed.write(3, {"loss": 0.25, "grad_norm": 2.0})
  resumed.close()
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert rows == [{"step": 1, "loss": 1.0,
                   "grad_norm": None}, {"step": 2, "loss": 0.5, "grad_norm": None},
                  {"step": 3, "loss": 0.25, "grad_norm": 2.0}]
  scalars = tb_scalars(tmp_path / "tb")
  # step 3 of the first run is purged
  assert scalars["train/loss"] == [(1, 1.0), (2, 0.5), (3, 0.25)]
  assert scalars["train/grad_norm"] == [(3, 2.0)]  # a non-finite value is left out, as JSON's null
  metrics.write_results(str(tmp_path), [{
      "dataset": "stsb", "split": "test", "metric": "spearman", "layer": 2, "dim": 32, "value": 0.75
  }, {
      "dataset": "msmarco", "split": "dev", "metric": "RR@10", "layer": 2, "dim": 32, "value": 0.25
  }], log_cfg())
  scalars = tb_scalars(tmp_path / "tb")
  assert scalars["eval/stsb/test/spearman/2x32"] == [(3, 0.75)]  # at the last step
  assert scalars["eval/msmarco/dev/RR_10/2x32"] == [(3, 0.25)]  # '@' is not a tag character


class FakeWandb(types.ModuleType):
  """What the code sends to wandb: init's arguments, logged rows, the summary, finish."""
  def __init__(self):
    super().__init__("wandb")
    self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    self.calls = []
    self.util = types.SimpleNamespace(generate_id=lambda: "run123")

  def init(self, **kw):
    self.calls.append(("init", kw))
    fake = self

    class Run:
      summary = types.SimpleNamespace(update=lambda values: fake.calls.append(("summary", values)))

      def log(self, values, step):
        fake.calls.append(("log", step, values))

      def finish(self):
        fake.calls.append(("finish",))

    return Run()


def test_wandb_run_is_resumable_offline_and_gets_rows_and_results(tmp_path, monkeypatch):
  fake = FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  monkeypatch.delenv("WANDB_MODE", raising=False)
  cfg = log_cfg(tensorboard=False, wandb="starbucks")
  cfg.check()
  writer = metrics.MetricsWriter(str(tmp_path), 0, cfg, ml_collections.ConfigDict({"seed": 3}))
  writer.write(1, {"loss": 0.5})
  writer.close()
  metrics.write_results(
      str(tmp_path),
      [{"dataset": "d", "split": "s", "metric": "m", "layer": 1, "dim": 8, "value": 0.5}], cfg)
  inits = [c[1] for c in fake.calls if c[0] == "init"]
  assert len(inits) == 2 and all(kw["id"] == "run123" and kw["resume"] == "allow" for kw in inits)
  assert inits[0]["mode"] == "offline" and inits[0]["project"] == "starbucks" and inits[0][
      "config"] == {"seed": 3}
  assert ("log", 1, {"train/loss": 0.5}) in fake.calls
  assert ("summary", {"eval/d/s/m/1x8": 0.5}) in fake.calls
  assert (tmp_path / "wandb_id").read_text() == "run123" and not (tmp_path / "tb").exists()


def test_log_block_checks(monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
  with pytest.raises(ConfigError, match=r"log.wandb='p': .*pip install wandb"):
    log_cfg(wandb="p").check()
  log_cfg().check()
