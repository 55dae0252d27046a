"""A short fixed-seed MAML-TRPO run on 2-D navigation learns, and its outputs are complete."""

import json

import jax
import numpy as np
import pytest
from flax import serialization

from maml2_jax import deep_training
from maml2_jax.errors import ConfigError
from maml2_jax.learners.policy_gradient import PolicyGradientConfig


def test_short_training_run_improves_post_adaptation_return(tmp_path):
    config = deep_training.TrainConfig(iterations=8, seed=1, meta_batch_size=10,
                                       inner=PolicyGradientConfig(num_trajectories=10))
    params, history = deep_training.train(config, out=str(tmp_path))
    first, last = history[0], history[-1]
    # Measured here: post-adaptation return -173 at iteration 0, -44 at iteration 7
    # (pre -228 -> -55). A broken meta-gradient leaves it near the start.
    assert last["post_return"] > first["post_return"] + 50
    # Adaptation helps at the end of the run.
    assert np.mean([h["post_return"] - h["pre_return"] for h in history[-3:]]) > 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(8))
    assert all({"pre_return", "post_return", "seconds"} <= set(r) for r in rows)
    restored = serialization.from_bytes(params, (tmp_path / "params.msgpack").read_bytes())
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(env="cheetah"), "unknown env"), (dict(algo="reptile"), "algo"), (dict(iterations=0), "iterations"),
     (dict(curvature_fraction=2.0), "curvature")],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        deep_training.TrainConfig(**kwargs)
