"""The typed config blocks (config_blocks.py): every key declared once with its default, the config
files built from them, and unknown, missing, mistyped and repeated keys refused by name before any
compute."""

import dataclasses

import ml_collections
import pytest

from starbucks_jax import cli, config_blocks, finetune, losses, pretrain
from starbucks_jax.config_blocks import FinetuneConfig, PretrainConfig, SrlTrain, Train
from starbucks_jax.config_lib import ConfigError, load_config

from conftest import REPO

FT_VARIANTS = ("nli", "sts", "sts_cpu", "nli_cpu", "demo", "eval", "demo,method=2dmse",
               "demo,method=separate")
PT_VARIANTS = ("", "cpu", "demo", "tiny")


def dotted(config, prefix=""):
  out = {}
  for k, v in config.items():
    out.update(
        dotted(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else {prefix + k: v})
  return out


@pytest.mark.parametrize("spec", [f"ft.py:{v}"
                                  for v in FT_VARIANTS] + ["retrieval.py", "retrieval.py:demo"] +
                         [f"pt.py{':' + v if v else ''}" for v in PT_VARIANTS])
def test_every_config_has_exactly_the_declared_keys(spec):
  """A config file sets values; which keys exist, and their defaults, come from the dataclasses."""
  config = load_config(str(REPO / "configs" / spec))
  typed = FinetuneConfig if config.mode in ("train", "eval") else PretrainConfig
  assert set(dotted(config)) == set(dotted(typed.config()))
  block = typed.from_config(config)
  assert block.train.lr == config.train.lr and block.schedule.pairs == tuple(
      map(tuple, config.schedule.pairs))


def test_defaults_are_declared_once_and_read_back_unchanged():
  for typed in (FinetuneConfig, PretrainConfig):
    assert typed.from_config(typed.config()) == typed()
  # the shared train block: pre-training's defaults are values over the same keys, not a copy
  assert {f.name
          for f in dataclasses.fields(Train)} < {f.name for f in dataclasses.fields(SrlTrain)}
  assert PretrainConfig().train.lr == 1e-4 and FinetuneConfig().train.lr == 5e-5
  assert losses.LossConfig.config().to_dict() == dataclasses.asdict(losses.LossConfig())


def demo(spec="ft.py:demo"):
  config = load_config(str(REPO / "configs" / spec))
  config.unlock()
  return config


def set_key(path, value):
  def change(d):
    *blocks, key = path.split(".")
    for b in blocks:
      d = d[b]
    d[key] = value

  return change


@pytest.mark.parametrize(
    "change,message",
    [
        (set_key("train.lrr",
                 1e-4), r"train.lrr: no such key in the train block; did you mean train.lr\?"),
        (set_key("sed", 1), r"sed: no such key in the config; did you mean seed\?"),
        (set_key("data.zzz",
                 1), r"data.zzz: no such key in the data block; its keys: train, format"),
        (lambda d: d["train"].pop("profile_steps"),
         r"train.profile_steps is missing: build the config with "
         r"starbucks_jax.config_blocks.SrlTrain.config\(\)"),
        # a config file may build its blocks by hand (ConfigDict type-checks only later overrides)
        (set_key("train.epochs", "3"), r"train.epochs='3': expected int, got str"),
        (set_key("data.packing", 1), r"data.packing=1: expected bool, got int"),
        (set_key("loss.pair_weights", (1.0, "a")), r"loss.pair_weights\[1\]='a': expected float"),
        (set_key("schedule.pairs",
                 ((1, 16, 3),)), r"schedule.pairs\[0\]=\(1, 16, 3\): expected 2 values"),
        (set_key("eval.retrieval_funnels",
                 "2x32:100"), r"eval.retrieval_funnels='2x32:100': expected a tuple"),
        (set_key("model", 3), r"model=3: expected a block of keys"),
    ])
def test_unknown_missing_and_mistyped_keys_fail_by_name(change, message):
  raw = demo().to_dict()
  change(raw)
  with pytest.raises(ConfigError, match=message):
    finetune.describe(ml_collections.ConfigDict(raw))


def test_pretraining_keys_are_its_own():
  """SRL's train keys are not pre-training's: a fine-tuning key in configs/pt.py is refused by name."""
  config = demo("pt.py:tiny")
  config.train.grad_cache_chunks = 2
  with pytest.raises(ConfigError, match="train.grad_cache_chunks: no such key in the train block"):
    pretrain.describe(config)
  config = demo("pt.py:tiny")
  config.smae.encoder_mask_rate = 0.6
  with pytest.raises(ConfigError, match=r"smae.\*: masking rates need"):
    pretrain.describe(config)


def test_a_config_key_given_twice_is_refused(monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(ConfigError, match="--config.train.lr is given 2 times; give it once"):
    cli.check_config_args(
        ["--config=configs/ft.py:demo", "--config.train.lr=1e-4", "--config.train.lr=2e-4"])


def test_widening_and_json_lists():
  """An int where a float is declared widens; a config read back from JSON (lists) is the same config."""
  block = Train.from_config(Train.config(lr=1, profile_steps=[2, 4]))
  assert block.lr == 1.0 and isinstance(block.lr, float) and block.profile_steps == (2, 4)
  with pytest.raises(ConfigError, match=r"train: \['lrr'\] are not keys of the train block"):
    Train.config(lrr=1)
  assert config_blocks.Mesh.from_config(config_blocks.Mesh.config(shape=[1, -1, 1])).shape == (1,
                                                                                               -1,
                                                                                               1)
