"""Schedules and the baselines' per-step selections."""

import collections

import jax
import numpy as np
import pytest

from starbucks_jax import schedule

S = schedule.STARBUCKS["bert-base"]


def test_starbucks_lists_validate():
  assert schedule.validate(S, 12, 768) == S
  assert schedule.validate(schedule.STARBUCKS["minilm-l6-h384"], 6, 384)[0] == (1, 16)


def test_parse_pair_reads_layer_x_dim_only():
  assert schedule.parse_pair("2x32") == (2, 32) and schedule.parse_pair(" 6 x 384 ") == (6, 384)
  for bad in ("2-32", "2x", "x32", "2x32x1", "-1x3", "2.0x32"):
    with pytest.raises(ValueError, match=f"at 'here': '{bad}' is not LAYERxDIM"):
      schedule.parse_pair(bad, where="at 'here': ")


def test_plans_of_fixed_methods():
  assert schedule.plan("starbucks", S, 12, 768).pairs == S
  assert schedule.plan("full", S, 12, 768).pairs == ((12, 768),)
  assert schedule.plan("mrl", S, 12, 768).pairs == tuple((12, d) for _, d in S)
  assert len(schedule.plan("grid", S, 12, 768).pairs) == 36
  # the diagonal, then the last layer's other dims
  both = schedule.plan("starbucks_mrl", S, 12, 768)
  assert both.pairs == ((2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 32), (12, 64),
                        (12, 128), (12, 256), (12, 512), (12, 768))
  assert both.teacher == (12, 768) and both.use_kl and both.layers == (2, 4, 6, 8, 10, 12)
  sep = schedule.plan("separate", S, 12, 768, separate_pair=(4, 64))
  assert sep.pairs == ((4, 768),) and sep.layers == (4,) and not sep.use_kl
  assert schedule.plan("separate", S, 12, 768, separate_pair=(4, 64),
                       separate_train_dim="dim").pairs == ((4, 64),)
  with pytest.raises(ValueError, match="separate_pair"):
    schedule.plan("separate", S, 12, 768)


def test_2dmse_draws_uniformly_from_the_right_sets():
  """Matryoshka2dLoss: one earlier hidden state of 0..N-1 (0: the embedding output; today's
  library) and, for each call, one dim of S - uniform. Its 2024 releases drew from 1..N-1."""
  assert schedule.plan("2dmse", S, 12, 768).sample_layers == tuple(range(1, 12))
  with pytest.raises(ValueError, match="N=1 layer"):
    schedule.plan("2dmse", ((1, 8),), 1, 8)
  plan = schedule.plan("2dmse", S, 12, 768, sample_embedding_output=True)
  assert plan.sample_layers == tuple(range(12)) and plan.sample_dims == tuple(d for _, d in S)
  assert plan.layers == tuple(range(13))
  draws = jax.vmap(lambda k: schedule.sample(plan, k))(jax.random.split(jax.random.key(0), 6000))
  layers = collections.Counter(np.asarray(draws["layer"]).tolist())
  assert set(layers) == set(range(12))
  assert max(layers.values()) / min(layers.values()) < 1.3
  for key in ("dim_last", "dim_layer"):
    dims = collections.Counter(np.asarray(draws[key]).tolist())
    assert set(dims) == set(range(6)) and max(dims.values()) / min(dims.values()) < 1.2
  assert np.corrcoef(np.asarray(draws["dim_last"]), np.asarray(draws["dim_layer"]))[0, 1] < 0.05
  again = jax.vmap(lambda k: schedule.sample(plan, k))(jax.random.split(jax.random.key(0), 6000))
  np.testing.assert_array_equal(draws["layer"], again["layer"])  # seeded


def test_2dmse_retrieval_samples_layers_of_the_schedule_only():
  plan = schedule.plan("2dmse_retrieval", S, 12, 768)
  assert plan.sample_layers == (2, 4, 6, 8, 10)
  draws = jax.vmap(lambda k: schedule.sample(plan, k))(jax.random.split(jax.random.key(1), 2000))
  assert set(np.asarray(draws["layer"]).tolist()) == set(range(5))


def test_grid_for_evaluation():
  assert schedule.grid(2, 64, [16, 32, 128]) == ((1, 16), (1, 32), (2, 16), (2, 32))


def test_sample_embedding_output_is_2dmse_only():
  from starbucks_jax.config_blocks import SrlSchedule
  from starbucks_jax.config_lib import ConfigError
  block = SrlSchedule.config(method="starbucks", pairs=S, sample_embedding_output=True)
  with pytest.raises(ConfigError,
                     match="sample_embedding_output=True is a choice of schedule.method='2dmse'"):
    schedule.plan_from_config(block, S, 12, 768)
