"""A plain NumPy/Python implementation of one run of the grid-world experiment.

The yardstick for ``benchmarks/gridworld.py``: the way the experiment is usually
written (a Python loop over steps, episodes, tasks and iterations, NumPy tables),
doing the same work as one run of ``maml2 gridworld`` with the same settings. Its
random numbers come from NumPy, so it matches the JAX run in distribution, not draw
for draw (the tests hold the JAX learner to a draw-for-draw reference).
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.cluster import KMeans

from maml2_jax.envs.gridworld import GridWorld
from maml2_jax.gridworld_experiment import GridworldConfig


def adapt(q, goal, episodes, rng, table, config: GridworldConfig, start=0, eps=None):
    """E episodes of SARSA from ``q`` (modified in place). Returns (steps, μ, ε)."""
    s_cfg = config.sarsa
    eps = s_cfg.epsilon if eps is None else eps
    steps_log, visits = [], None

    def choose(s):
        nonlocal eps
        if rng.random() < eps:
            a = int(rng.integers(4))
        else:
            a = int(np.argmax(q[s]))
        eps *= s_cfg.epsilon_decay
        return a

    for _ in range(episodes):
        visits = np.zeros_like(q)
        s = start
        a = choose(s)
        steps = 0
        for steps in range(1, config.world.max_steps + 1):
            s2 = table[s, a]
            visits[s, a] += 1
            if s2 == goal:
                q[s, a] += s_cfg.alpha * (1.0 - q[s, a])
                break
            a2 = choose(s2)
            q[s, a] += s_cfg.alpha * (s_cfg.gamma * q[s2, a2] - q[s, a])
            s, a = s2, a2
        steps_log.append(steps)
    return steps_log, visits / max(steps_log[-1], 1), eps


def cat_meta(theta, tasks, iterations, rng, table, config):
    theta_c = theta.copy()
    for _ in range(iterations):
        goal = tasks[rng.integers(len(tasks))]
        q = theta_c.copy()
        adapt(q, goal, config.adapt_episodes, rng, table, config)
        step = (config.beta / len(tasks)) * (q - theta_c)
        theta_c += step
        if np.linalg.norm(step) < config.stop_tolerance:
            break
    return theta_c


def one_run(config: GridworldConfig, seed: int) -> dict:
    """Times the stages of one run; returns seconds per stage."""
    rng = np.random.default_rng(seed)
    world: GridWorld = config.world
    table = world.next_cell_table()
    goals = list(world.goals)
    init = np.full((world.num_states, 4), config.sarsa.q_init)
    seconds = {}

    t0 = time.perf_counter()
    features = []
    for goal in goals:
        q = init.copy()
        _, mu, _ = adapt(q, goal, config.classify_episodes, rng, table, config)
        features.append((q * mu).ravel())
    labels = KMeans(config.categories, n_init=10, random_state=seed).fit(np.asarray(features)).labels_
    seconds["classify"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    theta = init.copy()
    cats = [None] * config.categories
    for _ in range(config.outer_iterations):
        for c in range(config.categories):
            members = [g for g, l in zip(goals, labels) if l == c]
            cats[c] = cat_meta(theta, members, config.inner_iterations, rng, table, config)
            theta = theta + (cats[c] - theta) / config.categories
    seconds["maml2_train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    theta_maml = cat_meta(init, goals, config.maml_iterations, rng, table, config)
    seconds["maml_train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for goal in goals:
        q = theta.copy()
        _, _, eps = adapt(q, goal, 1, rng, table, config)
        tendency = [np.linalg.norm(q - tc) - np.linalg.norm(theta - tc) for tc in cats]
        q_reset = cats[int(np.argmin(tendency))].copy()
        adapt(q_reset, goal, config.test_episodes - 1, rng, table, config, eps=eps)
        adapt(q, goal, config.test_episodes - 1, rng, table, config, eps=eps)  # no reset
        adapt(theta_maml.copy(), goal, config.test_episodes, rng, table, config)
        adapt(init.copy(), goal, config.test_episodes, rng, table, config)
    seconds["test"] = time.perf_counter() - t0
    seconds["total"] = sum(seconds.values())
    return seconds
