"""Scan rollouts against a plain Python loop, on odd sizes so transpositions show."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml2_jax import rollout
from maml2_jax.envs import nav2d
from maml2_jax.errors import ConfigError

CONFIG = nav2d.Nav2dConfig()
ENV_RESET = functools.partial(nav2d.reset, CONFIG)
ENV_STEP = functools.partial(nav2d.step, CONFIG)
STD = 0.3
H, N, T = 7, 5, 3


def toy_sample(params, obs, key):
    """A linear Gaussian policy: ``a ~ N(W·o + b, STD²·I)``, log-prob written out."""
    mean = params["w"] @ obs + params["b"]
    noise = jax.random.normal(key, mean.shape)
    action = mean + STD * noise
    log_prob = jnp.sum(-0.5 * jnp.square(noise) - math.log(STD) - 0.5 * math.log(2 * math.pi))
    return action, log_prob


def toy_params(seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"w": jax.random.normal(k1, (2, 2)), "b": 0.2 * jax.random.normal(k2, (2,))}


def loop_rollout(params, task, key, horizon, terminated=None):
    """The reference: one Python iteration per step, same keys as the scan; after the
    step that ends the episode, rows are padding (mask 0, reward 0)."""
    state, obs = ENV_RESET(task)
    rows, running = [], True
    for t in range(horizon):
        action, log_prob = toy_sample(params, obs, jax.random.fold_in(key, t))
        state, next_obs, reward = ENV_STEP(state, action, task)
        rows.append((obs, action, reward if running else 0.0, log_prob, float(running)))
        if terminated is not None and bool(terminated(state, task)):
            running = False
        obs = next_obs
    return rollout.Trajectory(*(np.stack([np.asarray(r[i], np.float32) for r in rows]) for i in range(5)))


def check_nav2d_trajectories(traj, goals):
    """Independent numpy check of fields ``[..., H, ...]`` against goals ``[..., 2]``."""
    obs, actions, rewards, log_probs, mask = (np.asarray(x, np.float64) for x in traj)
    np.testing.assert_array_equal(mask, 1.0)
    positions = np.cumsum(np.clip(actions, -0.1, 0.1), axis=-2)
    np.testing.assert_allclose(obs[..., 1:, :], positions[..., :-1, :], atol=1e-5)
    np.testing.assert_allclose(obs[..., 0, :], 0.0, atol=0)
    expected = -np.linalg.norm(positions - np.asarray(goals)[..., None, :], axis=-1)
    np.testing.assert_allclose(rewards, expected, atol=1e-5)


def test_scan_equals_python_loop_on_odd_horizon():
    params, task, key = toy_params(0), jnp.array([0.3, -0.4]), jax.random.key(7)
    scanned = rollout.rollout(ENV_RESET, ENV_STEP, toy_sample, params, task, key, H)
    reference = loop_rollout(params, task, key, H)
    chex.assert_shape(scanned.obs, (H, 2))
    chex.assert_shape(scanned.actions, (H, 2))
    chex.assert_shape(scanned.rewards, (H,))
    chex.assert_shape(scanned.log_probs, (H,))
    chex.assert_trees_all_close(scanned, reference, atol=1e-6, rtol=1e-6)
    check_nav2d_trajectories(scanned, task)


def test_termination_pads_the_rest_of_the_episode():
    # A constant move of (0.1, -0.1) reaches the goal (0.3, -0.3) after 3 steps; the
    # episode ends there, so rows 3.. are padding: mask 0 and no reward.
    params = {"w": jnp.zeros((2, 2)), "b": jnp.array([0.5, -0.5])}
    task, key = jnp.array([0.3, -0.3]), jax.random.key(2)
    terminated = functools.partial(nav2d.terminated, CONFIG)
    traj = rollout.rollout(ENV_RESET, ENV_STEP, toy_sample, params, task, key, H, terminated)
    np.testing.assert_array_equal(traj.mask, [1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(traj.rewards[:3], [-np.hypot(0.2, 0.2), -np.hypot(0.1, 0.1), 0.0], atol=1e-6)
    np.testing.assert_array_equal(traj.rewards[3:], 0.0)
    chex.assert_trees_all_close(traj, loop_rollout(params, task, key, H, terminated), atol=1e-6)
    # Without the termination test the same rollout runs on (and overshoots).
    unterminated = rollout.rollout(ENV_RESET, ENV_STEP, toy_sample, params, task, key, H)
    np.testing.assert_array_equal(unterminated.mask, 1.0)
    assert float(unterminated.rewards[4]) < -0.1


def test_termination_in_a_batch_follows_each_trajectory():
    params, task, key = toy_params(4), jnp.array([0.05, 0.0]), jax.random.key(9)
    loose = nav2d.Nav2dConfig(goal_tolerance=0.15)  # wide, so some but not all trajectories end early
    terminated = functools.partial(nav2d.terminated, loose)
    batch = rollout.rollout_batch(ENV_RESET, ENV_STEP, toy_sample, params, task, key, 11, 8, terminated)
    lengths = np.asarray(batch.mask).sum(-1)
    assert lengths.min() < 11 and lengths.max() > lengths.min()
    for n, k in enumerate(jax.random.split(key, 8)):
        reference = loop_rollout(params, task, k, 11, terminated)
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[n], batch), reference, atol=1e-6)


def test_trajectory_keeps_the_unclipped_action_and_its_log_prob():
    params = {"w": jnp.zeros((2, 2)), "b": jnp.array([0.5, -0.5])}
    traj = rollout.rollout(ENV_RESET, ENV_STEP, toy_sample, params, jnp.zeros(2), jax.random.key(1), H)
    # The env clipped the moves to 0.1, but the trajectory holds the raw samples …
    assert np.abs(np.asarray(traj.actions)).max() > 0.3
    check_nav2d_trajectories(traj, jnp.zeros(2))
    # … and log-probs are those of the raw samples under N(b, STD²).
    z = (np.asarray(traj.actions) - np.array([0.5, -0.5])) / STD
    expected = np.sum(-0.5 * z**2 - math.log(STD) - 0.5 * math.log(2 * math.pi), axis=-1)
    np.testing.assert_allclose(traj.log_probs, expected, rtol=1e-5)


def test_shorter_rollout_is_a_prefix_of_a_longer_one():
    params, task, key = toy_params(1), jnp.array([-0.2, 0.1]), jax.random.key(3)
    short = rollout.rollout(ENV_RESET, ENV_STEP, toy_sample, params, task, key, H)
    long = rollout.rollout(ENV_RESET, ENV_STEP, toy_sample, params, task, key, 11)
    chex.assert_trees_all_close(short, jax.tree.map(lambda x: x[:H], long), atol=1e-6)


def test_rollout_batch_shapes_and_independent_trajectories():
    params, task, key = toy_params(2), jnp.array([0.1, 0.4]), jax.random.key(4)
    batch = rollout.rollout_batch(ENV_RESET, ENV_STEP, toy_sample, params, task, key, H, N)
    chex.assert_shape(batch.obs, (N, H, 2))
    chex.assert_shape(batch.actions, (N, H, 2))
    chex.assert_shape(batch.rewards, (N, H))
    chex.assert_shape(batch.log_probs, (N, H))
    # Trajectory n is the single rollout with key split(key, N)[n].
    for n, k in enumerate(jax.random.split(key, N)):
        reference = loop_rollout(params, task, k, H)
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[n], batch), reference, atol=1e-6, rtol=1e-6)
    assert len({tuple(np.asarray(a).ravel()) for a in batch.actions}) == N


def test_rollout_tasks_shapes_and_each_task_gets_its_own_rewards():
    params, key = toy_params(3), jax.random.key(5)
    tasks = jnp.array([[0.5, 0.5], [-0.5, 0.0], [0.0, -0.3]])
    traj = rollout.rollout_tasks(ENV_RESET, ENV_STEP, toy_sample, params, tasks, key, H, N)
    chex.assert_shape(traj.obs, (T, N, H, 2))
    chex.assert_shape(traj.actions, (T, N, H, 2))
    chex.assert_shape(traj.rewards, (T, N, H))
    chex.assert_shape(traj.log_probs, (T, N, H))
    check_nav2d_trajectories(traj, np.broadcast_to(np.asarray(tasks)[:, None, :], (T, N, 2)))
    for i, k in enumerate(jax.random.split(key, T)):
        reference = rollout.rollout_batch(ENV_RESET, ENV_STEP, toy_sample, params, tasks[i], k, H, N)
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], traj), reference, atol=1e-6)
    # The same moves scored against another task's goal give different rewards.
    wrong_goal = -np.linalg.norm(np.asarray(traj.obs[0, :, 1:]) - np.asarray(tasks[1]), axis=-1)
    assert not np.allclose(np.asarray(traj.rewards[0, :, :-1]), wrong_goal, atol=1e-3)


def test_rollout_tasks_with_parameters_per_task():
    key = jax.random.key(6)
    tasks = jnp.array([[0.2, 0.2], [-0.3, 0.1], [0.0, 0.4]])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(toy_params(s) for s in range(T)))
    traj = rollout.rollout_tasks(ENV_RESET, ENV_STEP, toy_sample, stacked, tasks, key, H, N, params_per_task=True)
    chex.assert_shape(traj.rewards, (T, N, H))
    for i, k in enumerate(jax.random.split(key, T)):
        params_i = jax.tree.map(lambda x: x[i], stacked)
        reference = rollout.rollout_batch(ENV_RESET, ENV_STEP, toy_sample, params_i, tasks[i], k, H, N)
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], traj), reference, atol=1e-6)


def test_generic_env_with_pytree_task():
    # A 1-D env unrelated to navigation: the task is a dict, the state a counter.
    def env_reset(task):
        return jnp.zeros((), jnp.int32), jnp.zeros((1,))

    def env_step(state, action, task):
        return state + 1, jnp.full((1,), state + 1, jnp.float32), task["scale"] * action[0] + task["offset"]

    def sample(params, obs, key):
        return params + obs + jax.random.uniform(key, (1,)), jnp.zeros(())

    tasks = {"scale": jnp.array([1.0, -2.0, 3.0]), "offset": jnp.array([0.0, 1.0, 0.5])}
    traj = rollout.rollout_tasks(env_reset, env_step, sample, jnp.ones(1), tasks, jax.random.key(0), H, N)
    chex.assert_shape(traj.obs, (T, N, H, 1))
    np.testing.assert_array_equal(traj.obs[..., 0], np.broadcast_to(np.arange(H), (T, N, H)))
    expected = np.asarray(tasks["scale"])[:, None, None] * np.asarray(traj.actions[..., 0])
    np.testing.assert_allclose(traj.rewards, expected + np.asarray(tasks["offset"])[:, None, None], rtol=1e-6)


def test_jit_and_no_jit_agree_and_no_retracing():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(params, tasks, key):
        return rollout.rollout_tasks(ENV_RESET, ENV_STEP, toy_sample, params, tasks, key, H, N)

    tasks = nav2d.sample_tasks(jax.random.key(0), T, CONFIG)
    for seed in range(3):
        params, key = toy_params(seed), jax.random.key(100 + seed)
        tasks = tasks + 0.01 * seed
        jitted = run(params, tasks, key)
        eager = rollout.rollout_tasks(ENV_RESET, ENV_STEP, toy_sample, params, tasks, key, H, N)
        chex.assert_trees_all_close(jitted, eager, atol=1e-5, rtol=1e-5)


def test_sizes_must_be_positive_python_ints():
    params, task, key = toy_params(0), jnp.zeros(2), jax.random.key(0)
    with pytest.raises(ConfigError, match="horizon"):
        rollout.rollout(ENV_RESET, ENV_STEP, toy_sample, params, task, key, 0)
    with pytest.raises(ConfigError, match="number of trajectories"):
        rollout.rollout_batch(ENV_RESET, ENV_STEP, toy_sample, params, task, key, H, 0)
