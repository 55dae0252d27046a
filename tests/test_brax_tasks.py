"""Brax task families: rewards worked by hand from the physics state, batches of mixed
tasks, task distributions, validation.

Compiling brax physics takes seconds on a CPU, so every physics call here uses the
fastest backend (spring, the default), a batch of exactly two lanes and eager
``vmap``: the module-level jitted physics step then compiles once per robot and is
shared by all families of that robot. Under ``jit`` the fast suite only lowers a
rollout; the compiled rollout is checked against eager steps with ``-m slow``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml2_jax.envs import brax_tasks, nav2d
from maml2_jax.envs.brax_tasks import BraxTaskConfig
from maml2_jax.errors import ConfigError
from maml2_jax.rollout import rollout_tasks

CONFIG = BraxTaskConfig()
BASE_FAMILIES = ("halfcheetah-vel", "halfcheetah-dir", "ant-vel", "ant-dir", "ant-goal")

# Two different tasks per family, one per batch lane.
TWO_TASKS = {
    "halfcheetah-vel": [[0.4], [1.8]],
    "halfcheetah-dir": [[1.0], [-1.0]],
    "ant-vel": [[0.5], [2.7]],
    "ant-dir": [[0.3], [2.0]],
    "ant-goal": [[1.0, -2.0], [-0.5, 0.5]],
}


def _robot(name: str) -> str:
    return name.split("-")[0]


def _raw_action(robot: str) -> np.ndarray:
    """A fixed raw action with entries outside [-1, 1], so clipping matters."""
    values = [1.7, -0.3, 0.5, -2.0, 0.0, 0.9, -0.6, 3.0]
    return np.asarray(values[: 6 if robot == "halfcheetah" else 8], np.float32)


def _hand_reward(name: str, before, after, clipped: np.ndarray, task: np.ndarray, dt: float) -> float:
    """The reward of the module doc's table, in float64 numpy from brax's fields."""
    p0 = np.asarray(before.x.pos[0, :2], np.float64)
    p1 = np.asarray(after.x.pos[0, :2], np.float64)
    v = (p1 - p0) / dt
    cost = 0.05 * float(np.sum(np.square(clipped.astype(np.float64))))
    base = name.removesuffix("-isolated")
    if base.endswith("-vel"):
        return -abs(v[0] - task[0]) - cost
    if base == "halfcheetah-dir":
        return task[0] * v[0] - cost
    if base == "ant-dir":
        return v[0] * math.cos(task[0]) + v[1] * math.sin(task[0]) - cost
    return -float(np.sum(np.abs(p1 - task))) - cost  # ant-goal


def _lane(tree, i: int):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


@pytest.fixture(scope="module")
def families():
    return {name: brax_tasks.make_task_family(name) for name in brax_tasks.TASK_FAMILIES}


def step_every_family(families) -> dict:
    """For every family: two lanes reset, then stepped once with the same raw action
    and two different tasks. ``{name: (tasks, start, state', obs', reward, action)}``."""
    out = {}
    for name, family in families.items():
        base = name.removesuffix("-isolated")
        tasks = jnp.asarray(TWO_TASKS[base], jnp.float32)
        start, _ = jax.vmap(family.reset)(tasks)
        action = jnp.asarray(np.tile(_raw_action(_robot(name)), (2, 1)))
        state, obs, reward = jax.vmap(family.step)(start, action, tasks)
        out[name] = (tasks, start, state, obs, reward, action)
    return out


def check_hand_reward(name: str, stepped_family, backend: str) -> None:
    """The family's reward of both lanes equals :func:`_hand_reward` of brax's state."""
    tasks, start, state, _, reward, action = stepped_family
    dt = brax_tasks.control_dt(_robot(name), backend)
    assert dt == pytest.approx(0.05)
    clipped = np.clip(np.asarray(action[0]), -1.0, 1.0)
    for i in range(2):
        expected = _hand_reward(
            name, _lane(start.pipeline_state, i), _lane(state.pipeline_state, i), clipped, np.asarray(tasks[i]), dt
        )
        # float32 physics state read in float64: the reward is a few float32 operations
        # on it, so agreement is to float32 rounding of values of order 10.
        np.testing.assert_allclose(reward[i], expected, rtol=1e-5, atol=1e-5)
    assert reward.shape == (2,) and reward.dtype == jnp.float32
    np.testing.assert_array_equal(state.t, [1, 1])


@pytest.fixture(scope="module")
def stepped(families):
    return step_every_family(families)


@pytest.mark.parametrize("name", brax_tasks.TASK_FAMILIES)
def test_reward_matches_hand_computation_from_the_brax_state(stepped, name):
    check_hand_reward(name, stepped[name], CONFIG.backend)


@pytest.mark.parametrize("name", BASE_FAMILIES)
def test_one_batch_serves_different_tasks(stepped, name):
    # Same start and action in both lanes: the physics agrees, only the task differs,
    # and the rewards differ by exactly the task term of the formula.
    tasks, start, state, obs, reward, _ = stepped[name]
    pos = np.asarray(state.pipeline_state.x.pos[:, 0, :2], np.float64)
    np.testing.assert_array_equal(pos[0], pos[1])
    np.testing.assert_array_equal(obs[0], obs[1])
    dt = brax_tasks.control_dt(_robot(name), CONFIG.backend)
    v = (pos[0] - np.asarray(start.pipeline_state.x.pos[0, 0, :2], np.float64)) / dt
    t = np.asarray(tasks, np.float64)
    if name.endswith("-vel"):
        term = [-abs(v[0] - t[i, 0]) for i in range(2)]
    elif name == "halfcheetah-dir":
        term = [t[i, 0] * v[0] for i in range(2)]
    elif name == "ant-dir":
        term = [v @ [math.cos(t[i, 0]), math.sin(t[i, 0])] for i in range(2)]
    else:
        term = [-np.sum(np.abs(pos[0] - t[i])) for i in range(2)]
    np.testing.assert_allclose(reward[0] - reward[1], term[0] - term[1], rtol=1e-4, atol=1e-4)
    assert abs(term[0] - term[1]) > 1e-3  # the tasks were chosen to matter


@pytest.mark.parametrize("name", BASE_FAMILIES)
def test_isolated_variant_steps_like_its_base(stepped, name):
    np.testing.assert_array_equal(stepped[name][4], stepped[name + "-isolated"][4])


def test_actions_are_clipped_to_the_control_range(families, stepped):
    family = families["halfcheetah-vel"]
    tasks, start, state, obs, reward, action = stepped["halfcheetah-vel"]
    state2, obs2, reward2 = jax.vmap(family.step)(start, jnp.clip(action, -1.0, 1.0), tasks)
    np.testing.assert_array_equal(obs2, obs)
    np.testing.assert_array_equal(reward2, reward)


def test_observations_are_brax_obs_float32(families, stepped):
    for name, family in families.items():
        _, _, state, obs, _, _ = stepped[name]
        assert obs.shape == (2, family.obs_dim) and obs.dtype == jnp.float32
    assert families["halfcheetah-vel"].obs_dim == 17 and families["ant-vel"].obs_dim == 27
    # ant-goal sees the torso's (x, y) in front of brax's usual observation.
    _, _, state, obs, _, _ = stepped["ant-goal"]
    np.testing.assert_array_equal(obs[:, :2], state.pipeline_state.q[:, :2])
    np.testing.assert_array_equal(obs[:, 2:], stepped["ant-vel"][3])
    assert families["ant-goal"].obs_dim == 29


def test_reset_is_deterministic_and_the_same_for_every_task(families, stepped):
    # Two lanes, as in the fixture, so the compiled reset is reused.
    tasks, start, _, _, _, _ = stepped["ant-goal"]
    again, obs = jax.vmap(families["ant-goal"].reset)(tasks[::-1])
    np.testing.assert_array_equal(again.pipeline_state.q, start.pipeline_state.q)
    np.testing.assert_array_equal(start.pipeline_state.q[0], start.pipeline_state.q[1])
    np.testing.assert_array_equal(obs[0], obs[1])
    np.testing.assert_array_equal(again.t, [0, 0])


def _jitted_rollout(family, horizon: int):
    """``jit`` of ``rollout_tasks`` (one trajectory per task) with a Gaussian policy of
    learned mean ``params [A]`` and unit variance."""

    def policy_sample(params, obs, key):
        del obs
        action = params + jax.random.normal(key, params.shape)
        return action, -0.5 * jnp.sum(jnp.square(action - params))

    return jax.jit(lambda p, t, k: rollout_tasks(family.reset, family.step, policy_sample, p, t, k, horizon, 1))


def test_rollout_tasks_lowers_under_jit(families):
    # Lowering traces everything a compile would (no Python-side values of traced
    # arrays, consistent shapes) without XLA's seconds-long compile of the physics.
    family = families["ant-goal-isolated"]
    tasks, _ = family.sample_tasks(jax.random.key(3), 2)
    params = jnp.zeros((family.action_dim,), jnp.float32)
    lowered = _jitted_rollout(family, 4).lower(params, tasks, jax.random.key(0))
    assert lowered.out_info.rewards.shape == (2, 1, 4)
    assert lowered.out_info.obs.shape == (2, 1, 4, family.obs_dim)


@pytest.mark.slow
def test_rollout_tasks_under_jit_matches_eager_steps(families):
    # Tasks come straight from sample_tasks, mixing the two categories in one batch.
    family = families["halfcheetah-dir-isolated"]
    tasks, category = family.sample_tasks(jax.random.key(3), 2)
    assert set(np.asarray(category).tolist()) == {0, 1}
    params = jnp.full((family.action_dim,), 0.2, jnp.float32)
    trajectory = _jitted_rollout(family, 3)(params, tasks, jax.random.key(0))
    assert trajectory.rewards.shape == (2, 1, 3) and trajectory.obs.shape == (2, 1, 3, family.obs_dim)
    start, obs0 = jax.vmap(family.reset)(tasks)
    np.testing.assert_allclose(trajectory.obs[:, 0, 0], obs0, rtol=1e-5, atol=1e-5)
    _, _, reward = jax.vmap(family.step)(start, trajectory.actions[:, 0, 0], tasks)
    np.testing.assert_allclose(trajectory.rewards[:, 0, 0], reward, rtol=1e-4, atol=1e-4)


# --- task distributions (no physics) -------------------------------------------------


@pytest.mark.parametrize("name", brax_tasks.TASK_FAMILIES)
def test_sample_tasks_shapes_and_determinism(families, name):
    family = families[name]
    tasks, category = family.sample_tasks(jax.random.key(1), 20)
    dim = 2 if "goal" in name else 1
    assert tasks.shape == (20, dim) and tasks.dtype == jnp.float32
    assert category.shape == (20,) and category.dtype == jnp.int32
    again, again_category = family.sample_tasks(jax.random.key(1), 20)
    np.testing.assert_array_equal(tasks, again)
    np.testing.assert_array_equal(category, again_category)
    other, _ = family.sample_tasks(jax.random.key(2), 20)
    assert not np.array_equal(tasks, other)
    assert family.config.horizon == 200
    if not name.endswith("-isolated"):
        assert family.num_categories == 1
        np.testing.assert_array_equal(category, 0)


def test_uniform_task_ranges(families):
    key = jax.random.key(4)
    t = {name: np.asarray(families[name].sample_tasks(key, 500)[0]) for name in BASE_FAMILIES}
    assert 0 <= t["halfcheetah-vel"].min() and t["halfcheetah-vel"].max() < 2
    assert t["halfcheetah-vel"].max() > 1.9  # spans the range, not a corner of it
    assert 0 <= t["ant-vel"].min() and 2.9 < t["ant-vel"].max() < 3
    assert set(np.unique(t["halfcheetah-dir"])) == {-1.0, 1.0}
    assert 0 <= t["ant-dir"].min() and t["ant-dir"].max() < 2 * math.pi
    radius = np.linalg.norm(t["ant-goal"], axis=1)
    assert radius.max() <= 3.0 and radius.max() > 2.9
    # Uniform in area: about a quarter of the goals lie within half the radius.
    assert 0.18 < np.mean(radius < 1.5) < 0.32


# (name, isolated category's check, dense category's check) on a [T] or [T, 2] array.
def _angle_gap(phi, centre):
    return np.abs((phi - centre + math.pi) % (2 * math.pi) - math.pi)


ISOLATED_CHECKS = {
    "halfcheetah-vel": (lambda x: (0 <= x) & (x <= 0.5), lambda x: (1.75 <= x) & (x <= 2.0)),
    "halfcheetah-dir": (lambda x: x == 1.0, lambda x: x == -1.0),
    "ant-vel": (lambda x: (0 <= x) & (x <= 0.75), lambda x: (2.5 <= x) & (x <= 3.0)),
    "ant-dir": (
        lambda x: (_angle_gap(x, 0.0) <= math.pi / 8 + 1e-6) & (x < 2 * math.pi),
        lambda x: _angle_gap(x, math.pi) <= math.pi / 8 + 1e-6,
    ),
}


@pytest.mark.parametrize("name", BASE_FAMILIES)
def test_isolated_counts_categories_and_clusters(families, name):
    family = families[name + "-isolated"]
    tasks, category = family.sample_tasks(jax.random.key(5), 30)
    tasks, category = np.asarray(tasks), np.asarray(category)
    isolated = nav2d.num_isolated(30, 0.1)
    last = family.num_categories - 1
    assert np.sum(category == last) == isolated == 3
    assert np.sum(category < last) == 30 - isolated
    assert not np.all(np.diff(category) >= 0)  # permuted, not sorted by category
    if name == "ant-goal":
        centres = np.asarray(brax_tasks.ANT_GOAL_LAYOUT.dense_centres + brax_tasks.ANT_GOAL_LAYOUT.isolated_centres)
        assert family.num_categories == 3
        assert np.all(np.linalg.norm(tasks - centres[category], axis=1) <= 0.3 + 1e-6)
        assert np.all(np.linalg.norm(tasks, axis=1) <= 3.0)
        assert np.all(tasks[category == 2, 0] < 0) and np.all(tasks[category < 2, 0] > 0)
        return
    dense_ok, isolated_ok = ISOLATED_CHECKS[name]
    assert family.num_categories == 2
    assert np.all(dense_ok(tasks[category == 0, 0])) and np.all(isolated_ok(tasks[category == 1, 0]))


def test_isolated_fraction_is_honoured():
    family = brax_tasks.make_task_family("ant-vel-isolated", isolated_fraction=0.25)
    _, category = family.sample_tasks(jax.random.key(0), 8)
    assert int(np.sum(np.asarray(category) == 1)) == 2


# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backend": "bullet"}, "unknown brax backend 'bullet'"),
        ({"horizon": 0}, "horizon must be a positive integer"),
        ({"horizon": 2.5}, "horizon must be an integer"),
        ({"ctrl_cost_weight": -0.1}, "ctrl_cost_weight must be a finite non-negative number"),
        ({"ctrl_cost_weight": True}, "ctrl_cost_weight must be a finite non-negative number"),
        ({"ctrl_cost_weight": float("nan")}, "ctrl_cost_weight must be a finite non-negative number"),
        ({"reset_seed": -1}, "reset_seed must be a non-negative integer"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        BraxTaskConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_config_is_frozen_and_every_backend_accepted():
    for backend in brax_tasks.BACKENDS:
        assert BraxTaskConfig(backend=backend).backend == backend
    with pytest.raises(Exception):
        CONFIG.horizon = 3


def test_bad_family_options_are_refused():
    with pytest.raises(ConfigError, match="unknown task family 'hopper-vel'; valid names: halfcheetah-vel"):
        brax_tasks.make_task_family("hopper-vel")
    with pytest.raises(ConfigError, match="isolated_fraction applies to '-isolated' families only"):
        brax_tasks.make_task_family("ant-vel", isolated_fraction=0.2)
    with pytest.raises(ConfigError, match="isolated_fraction must be in"):
        brax_tasks.make_task_family("ant-vel-isolated", isolated_fraction=1.5)
    with pytest.raises(ConfigError, match="take a BraxTaskConfig"):
        brax_tasks.make_task_family("ant-vel", nav2d.Nav2dConfig())
    with pytest.raises(ConfigError, match="number of tasks must be a positive integer"):
        brax_tasks.make_task_family("ant-vel").sample_tasks(jax.random.key(0), 0)


def test_wrong_shapes_are_refused(families, stepped):
    family = families["halfcheetah-vel"]
    _, start, _, _, _, _ = stepped["halfcheetah-vel"]
    one = _lane(start, 0)
    with pytest.raises(ConfigError, match=r"halfcheetah takes actions of shape \(6,\)"):
        family.step(one, jnp.zeros(8), jnp.zeros(1))
    with pytest.raises(ConfigError, match=r"a task of this family has shape \(1,\), got shape \(2,\)"):
        family.step(one, jnp.zeros(6), jnp.zeros(2))
    with pytest.raises(ConfigError, match=r"has shape \(2,\)"):
        families["ant-goal"].reset(jnp.zeros(1))
