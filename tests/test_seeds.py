"""Seeds as a vmapped axis: `train --seeds S` gives every seed the run it would have alone."""

import dataclasses
import os

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from maml2_jax import deep_evaluation, deep_training
from maml2_jax.learners.policy_gradient import PolicyGradientConfig
from maml2_jax.networks import PolicyConfig


def _config(**kwargs):
    return deep_training.TrainConfig(
        env="nav2d-isolated", horizon=10, meta_batch_size=2, pool_size=6, devices=1, checkpoint_every=0,
        policy=PolicyConfig(hidden_sizes=(8,)), inner=PolicyGradientConfig(num_trajectories=4),
        meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, outer_iterations=1, categories=2, tasks_per_category=2,
                                 classify_every=2), **kwargs)


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def _check_seeds(algo, tmp_path):
    together, _ = deep_training.train(_config(algo=algo, seed=3, seeds=2), str(tmp_path / "together"))
    for s in range(2):
        alone, _ = deep_training.train(_config(algo=algo, seed=3 + s), str(tmp_path / f"alone{s}"))
        start = _flat(deep_training.Parts(_config(algo=algo)).policy.init(jax.random.key(3 + s)))
        mine = jax.tree.map(lambda x: x[s], together)
        # The same draws and the same step; the vmapped program rounds differently from
        # the single one, and CG and the line search amplify that. One iteration is
        # compared: over many, the rounding grows like any chaotic training run's
        # (measured at the customary nav2d config: 1e-4 in the returns at iteration 1,
        # 8-15% of the update after 10 iterations). Another seed's draws or a shuffled
        # batch would give a different step altogether (~100%).
        moved = np.linalg.norm(_flat(alone.theta) - start)
        assert moved > 1e-3
        assert np.linalg.norm(_flat(mine.theta) - _flat(alone.theta)) <= 0.05 * moved
        if algo == "maml2":
            np.testing.assert_array_equal(np.asarray(mine.labels), np.asarray(alone.labels))
    # Each seed has its own complete output directory, which evaluate reads as a run.
    runs = deep_evaluation.find_runs(str(tmp_path / "together"))
    assert [os.path.basename(r) for r in runs] == ["seed_3", "seed_4"]
    loaded = [deep_training.load_run(r)[0] for r in runs]
    assert [c.seed for c in loaded] == [3, 4] and all(c.seeds == 1 for c in loaded)
    # A directory of several such outputs is searched below its first level too.
    everything = deep_evaluation.find_runs(str(tmp_path))
    assert len(everything) == 4 and all("checkpoint" not in r for r in everything)


def test_seeds_axis_maml(tmp_path):
    _check_seeds("maml", tmp_path)


@pytest.mark.slow  # about a minute: three MAML² trainings
def test_seeds_axis_maml2(tmp_path):
    _check_seeds("maml2", tmp_path)
