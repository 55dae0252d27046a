"""The MuJoCo XLA backend (``--backend mjx``): every brax family's reward on one step
equals the definition worked by hand from the MJX physics state.

A file of its own so its two MJX compilations (one physics step per robot) run beside
the default backend's tests on the other pytest worker.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from maml2_jax import envs
from maml2_jax.envs import brax_tasks
from maml2_jax.envs.brax_tasks import BraxTaskConfig
from test_brax_tasks import check_hand_reward, step_every_family

MJX = BraxTaskConfig(backend="mjx")


@pytest.fixture(scope="module")
def mjx_stepped():
    families = {name: brax_tasks.make_task_family(name, MJX) for name in brax_tasks.TASK_FAMILIES}
    return families, step_every_family(families)


@pytest.mark.parametrize("name", brax_tasks.TASK_FAMILIES)
def test_mjx_reward_matches_hand_computation_from_the_mjx_state(mjx_stepped, name):
    check_hand_reward(name, mjx_stepped[1][name], "mjx")


def test_mjx_physics_is_mujoco_and_moves_the_robot(mjx_stepped):
    families, stepped = mjx_stepped
    for name in ("halfcheetah-vel", "ant-vel"):
        _, start, state, obs, _, _ = stepped[name]
        # MJX's state is MuJoCo's data, not brax's own pipeline state.
        assert type(state.pipeline_state).__module__.startswith("brax.mjx")
        assert obs.shape == (2, families[name].obs_dim) and np.all(np.isfinite(np.asarray(obs)))
        moved = np.abs(np.asarray(state.pipeline_state.q) - np.asarray(start.pipeline_state.q)).max()
        assert moved > 1e-4  # the action did something
    # Same observation sizes as the default backend: a policy's shapes do not change.
    assert families["halfcheetah-vel"].obs_dim == 17 and families["ant-goal"].obs_dim == 29


def test_mjx_is_reachable_from_the_registry():
    family = envs.make_task_family("ant-dir-isolated", 10, "mjx")
    assert family.config == BraxTaskConfig(horizon=10, backend="mjx")
    tasks, category = family.sample_tasks(jax.random.key(0), 10)
    assert tasks.shape == (10, 1) and category.shape == (10,)
