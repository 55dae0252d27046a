"""2-D point navigation: dynamics worked by hand, task distributions, validation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml2_jax.envs import nav2d
from maml2_jax.envs.nav2d import IsolatedLayout, Nav2dConfig, Nav2dState
from maml2_jax.errors import ConfigError

CONFIG = Nav2dConfig()


def test_reset_starts_at_origin():
    state, obs = nav2d.reset(CONFIG, jnp.array([0.3, -0.2]))
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    np.testing.assert_array_equal(state.position, [0.0, 0.0])
    assert obs.dtype == jnp.float32 and obs.shape == (nav2d.OBS_DIM,)
    assert int(state.t) == 0 and state.t.dtype == jnp.int32


def test_reward_is_minus_distance_after_the_clipped_move():
    # (0, 0) + clip((0.3, -0.05)) = (0.1, -0.05); goal (0.5, 0.5) is (0.4, 0.55) away.
    state, _ = nav2d.reset(CONFIG, jnp.array([0.5, 0.5]))
    state, obs, reward = nav2d.step(CONFIG, state, jnp.array([0.3, -0.05]), jnp.array([0.5, 0.5]))
    np.testing.assert_allclose(obs, [0.1, -0.05], rtol=0, atol=1e-7)
    np.testing.assert_allclose(state.position, [0.1, -0.05], rtol=0, atol=1e-7)
    np.testing.assert_allclose(reward, -math.sqrt(0.4**2 + 0.55**2), rtol=1e-6)
    assert int(state.t) == 1 and reward.shape == () and reward.dtype == jnp.float32


@pytest.mark.parametrize(
    "action, move",
    [
        ((5.0, -5.0), (0.1, -0.1)),
        ((-0.1, 0.1), (-0.1, 0.1)),  # the bounds themselves pass
        ((0.02, -0.3), (0.02, -0.1)),
        ((-1e6, 0.0), (-0.1, 0.0)),
    ],
)
def test_actions_are_clipped_per_coordinate(action, move):
    start = Nav2dState(jnp.array([0.2, -0.4], jnp.float32), jnp.array(3, jnp.int32))
    state, obs, _ = nav2d.step(CONFIG, start, jnp.array(action), jnp.zeros(2))
    np.testing.assert_allclose(obs, np.array([0.2, -0.4]) + move, rtol=0, atol=1e-7)
    assert int(state.t) == 4


def test_clip_bound_follows_config():
    config = Nav2dConfig(max_action=0.25)
    state, _ = nav2d.reset(config, jnp.zeros(2))
    _, obs, _ = nav2d.step(config, state, jnp.array([1.0, -0.2]), jnp.zeros(2))
    np.testing.assert_allclose(obs, [0.25, -0.2], rtol=0, atol=1e-7)


def test_the_step_itself_goes_on_at_the_goal():
    # Stepping is oblivious of termination: at the goal the reward is 0 and t counts on.
    goal = jnp.array([0.1, 0.0])
    state, _ = nav2d.reset(CONFIG, goal)
    rewards = []
    for action in ([0.1, 0.0], [0.0, 0.0], [0.0, 0.0]):
        state, _, r = nav2d.step(CONFIG, state, jnp.array(action), goal)
        rewards.append(float(r))
    np.testing.assert_allclose(rewards, [0.0, 0.0, 0.0], atol=1e-7)
    assert int(state.t) == 3


@pytest.mark.parametrize(
    "position, expected",
    [
        ([0.305, -0.295], True),  # within 0.01 in both coordinates
        ([0.309, -0.309], True),
        ([0.311, -0.3], False),  # x just outside
        ([0.3, -0.289], False),  # y just outside
        ([0.307, -0.307], True),  # Euclidean 0.0099, box test passes
        ([0.2, -0.3], False),
    ],
)
def test_episode_ends_within_goal_tolerance_in_both_coordinates(position, expected):
    goal = jnp.array([0.3, -0.3])
    state = nav2d.Nav2dState(jnp.asarray(position, jnp.float32), jnp.int32(5))
    assert bool(nav2d.terminated(CONFIG, state, goal)) is expected
    # With tolerance 0 the episode never ends early, even exactly at the goal.
    at_goal = nav2d.Nav2dState(goal, jnp.int32(5))
    assert not bool(nav2d.terminated(Nav2dConfig(goal_tolerance=0.0), at_goal, goal))


def test_family_terminates_only_with_a_tolerance():
    assert nav2d.make_task_family("nav2d").terminated is not None
    assert nav2d.make_task_family("nav2d-isolated").terminated is not None
    assert nav2d.make_task_family("nav2d", Nav2dConfig(goal_tolerance=0.0)).terminated is None


def test_tasks_in_one_vmapped_batch_get_their_own_rewards():
    goals = jnp.array([[0.5, 0.5], [-0.5, 0.0], [0.0, -0.3]])
    actions = jnp.array([[0.3, -0.05], [0.05, 0.05], [-0.2, -0.2]])
    step = jax.jit(jax.vmap(lambda s, a, g: nav2d.step(CONFIG, s, a, g)))
    states, obs = jax.vmap(lambda g: nav2d.reset(CONFIG, g))(goals)
    states, obs, rewards = step(states, actions, goals)
    moved = np.array([[0.1, -0.05], [0.05, 0.05], [-0.1, -0.1]])
    expected = -np.linalg.norm(moved - np.asarray(goals), axis=1)
    np.testing.assert_allclose(obs, moved, atol=1e-7)
    np.testing.assert_allclose(rewards, expected, rtol=1e-6)
    # And each equals the single-environment step.
    for i in range(3):
        start, _ = nav2d.reset(CONFIG, goals[i])
        single = nav2d.step(CONFIG, start, actions[i], goals[i])[2]
        np.testing.assert_allclose(rewards[i], single, rtol=1e-6)


def test_wrong_shapes_are_refused():
    state, _ = nav2d.reset(CONFIG, jnp.zeros(2))
    with pytest.raises(ConfigError, match="shape"):
        nav2d.step(CONFIG, state, jnp.zeros(3), jnp.zeros(2))
    with pytest.raises(ConfigError, match="shape"):
        nav2d.reset(CONFIG, jnp.zeros((2, 2)))


def test_sample_tasks_bounds_shape_and_determinism():
    config = Nav2dConfig(goal_low=-0.2, goal_high=0.7)
    goals = nav2d.sample_tasks(jax.random.key(0), 501, config)
    assert goals.shape == (501, 2) and goals.dtype == jnp.float32
    assert float(goals.min()) >= -0.2 and float(goals.max()) <= 0.7
    # Spread over the box, not stuck in a corner.
    assert float(goals.min()) < -0.1 and float(goals.max()) > 0.6
    np.testing.assert_array_equal(goals, nav2d.sample_tasks(jax.random.key(0), 501, config))
    assert not np.array_equal(goals, nav2d.sample_tasks(jax.random.key(1), 501, config))


@pytest.mark.parametrize(
    "num_tasks, fraction, expected",
    [(10, 0.1, 1), (20, 0.1, 2), (5, 0.1, 1), (2, 0.1, 1), (2, 0.9, 1), (25, 0.1, 3), (7, 0.5, 4), (1, 0.1, 0), (1, 0.5, 1)],
)
def test_number_of_isolated_tasks_is_deterministic(num_tasks, fraction, expected):
    # round half up (25·0.1 = 2.5 → 3; 7·0.5 = 3.5 → 4), then at least 1 and at
    # most T−1 when T >= 2.
    assert nav2d.num_isolated(num_tasks, fraction) == expected


def _min_cross_distance(a, b):
    return float(np.min(np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)))


def test_isolated_distribution_counts_clusters_and_categories():
    num_tasks = 41
    goals, category = nav2d.sample_isolated_tasks(jax.random.key(3), num_tasks, CONFIG, isolated_fraction=0.1)
    goals, category = np.asarray(goals), np.asarray(category)
    assert goals.shape == (num_tasks, 2) and goals.dtype == np.float32
    assert category.shape == (num_tasks,) and category.dtype == np.int32
    # round(4.1) = 4 isolated; 37 dense dealt 19 / 18 to the two dense clusters.
    np.testing.assert_array_equal(np.bincount(category, minlength=3), [19, 18, 4])

    centres = {0: (0.35, 0.35), 1: (0.35, -0.35), 2: (-0.4, 0.0)}
    for c, centre in centres.items():
        d = np.linalg.norm(goals[category == c] - np.array(centre), axis=1)
        assert d.max() <= 0.05 + 1e-6, f"cluster {c} is not tight"
        assert d.std() > 0.005, f"cluster {c} has collapsed to a point"
    dense, isolated = goals[category < 2], goals[category == 2]
    # Isolated goals far from every dense one; the dense clusters lie on the same side.
    assert _min_cross_distance(isolated, dense) > 0.7
    assert np.all(dense[:, 0] > 0.25) and np.all(isolated[:, 0] < -0.3)
    assert _min_cross_distance(goals[category == 0], goals[category == 1]) > 0.55
    assert goals.min() >= CONFIG.goal_low and goals.max() <= CONFIG.goal_high
    # The order is shuffled: the isolated tasks are not all at the end.
    assert not np.all(category[-4:] == 2)


def test_isolated_distribution_is_deterministic_by_key_and_configurable():
    draw = lambda k: nav2d.sample_isolated_tasks(jax.random.key(k), 12, CONFIG, 0.25)
    (g0, c0), (g0b, c0b), (g1, c1) = draw(0), draw(0), draw(1)
    np.testing.assert_array_equal(g0, g0b)
    np.testing.assert_array_equal(c0, c0b)
    assert not np.array_equal(g0, g1)
    np.testing.assert_array_equal(np.bincount(np.asarray(c1), minlength=3), [5, 4, 3])

    layout = IsolatedLayout(dense_centres=((0.3, 0.0),), isolated_centres=((-0.3, 0.3), (-0.3, -0.3)), dense_radius=0.0)
    goals, category = nav2d.sample_isolated_tasks(jax.random.key(2), 10, CONFIG, 0.4, layout)
    goals, category = np.asarray(goals), np.asarray(category)
    np.testing.assert_array_equal(np.bincount(category, minlength=3), [6, 2, 2])
    np.testing.assert_allclose(goals[category == 0], np.tile([0.3, 0.0], (6, 1)), atol=1e-7)
    assert layout.num_categories == 3


def test_isolated_sampler_jits_with_static_sizes():
    sample = jax.jit(nav2d.sample_isolated_tasks, static_argnums=(1, 2, 3))
    goals, category = sample(jax.random.key(5), 9, CONFIG, 0.2)
    eager = nav2d.sample_isolated_tasks(jax.random.key(5), 9, CONFIG, 0.2)
    np.testing.assert_allclose(goals, eager[0], atol=1e-6)
    np.testing.assert_array_equal(category, eager[1])


def test_task_family_registry():
    family = nav2d.make_task_family("nav2d")
    assert (family.obs_dim, family.action_dim, family.num_categories) == (2, 2, 1)
    tasks, category = family.sample_tasks(jax.random.key(0), 6)
    assert tasks.shape == (6, 2)
    np.testing.assert_array_equal(category, np.zeros(6))
    np.testing.assert_array_equal(tasks, nav2d.sample_tasks(jax.random.key(0), 6, family.config))
    state, obs = family.reset(tasks[0])
    _, _, reward = family.step(state, jnp.array([0.3, -0.05]), jnp.array([0.5, 0.5]))
    np.testing.assert_allclose(reward, -math.sqrt(0.4**2 + 0.55**2), rtol=1e-6)

    config = Nav2dConfig(horizon=200)
    family = nav2d.make_task_family("nav2d-isolated", config, isolated_fraction=0.2)
    assert family.config.horizon == 200 and family.num_categories == 3
    tasks, category = family.sample_tasks(jax.random.key(0), 10)
    np.testing.assert_array_equal(np.bincount(np.asarray(category), minlength=3), [4, 4, 2])

    with pytest.raises(ConfigError, match="valid names: nav2d, nav2d-isolated"):
        nav2d.make_task_family("cheetah-vel")
    with pytest.raises(ConfigError, match="nav2d-isolated"):
        nav2d.make_task_family("nav2d", isolated_fraction=0.2)
    with pytest.raises(ConfigError, match="isolated_fraction"):
        nav2d.make_task_family("nav2d-isolated", isolated_fraction=1.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"horizon": 0}, "horizon"),
        ({"horizon": 10.0}, "horizon"),
        ({"horizon": True}, "horizon"),
        ({"max_action": 0.0}, "max_action"),
        ({"max_action": -0.1}, "max_action"),
        ({"max_action": float("nan")}, "max_action"),
        ({"goal_low": 0.5, "goal_high": 0.5}, "goal_low < goal_high"),
        ({"goal_low": 1.0, "goal_high": -1.0}, "goal_low < goal_high"),
        ({"goal_high": "1"}, "goal_high"),
        ({"goal_tolerance": -0.01}, "goal_tolerance"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Nav2dConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dense_centres": ()}, "at least one"),
        ({"isolated_centres": ((0.1, 0.2, 0.3),)}, "pairs"),
        ({"dense_radius": -0.1}, "dense_radius"),
        ({"isolated_centres": ((float("inf"), 0.0),)}, "isolated_centres"),
    ],
)
def test_layout_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        IsolatedLayout(**kwargs)


def test_isolated_sampler_validation():
    key = jax.random.key(0)
    with pytest.raises(ConfigError, match="isolated_fraction"):
        nav2d.sample_isolated_tasks(key, 10, CONFIG, isolated_fraction=0.0)
    with pytest.raises(ConfigError, match="number of tasks"):
        nav2d.sample_isolated_tasks(key, 0, CONFIG)
    with pytest.raises(ConfigError, match="leaves the goal box"):
        nav2d.sample_isolated_tasks(key, 10, Nav2dConfig(goal_low=-0.2, goal_high=0.2))
    with pytest.raises(ConfigError, match="number of tasks"):
        nav2d.sample_tasks(key, 0, CONFIG)
