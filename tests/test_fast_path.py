"""The grid world's fused lane machine (lane_maml2) gives the engine's result.

The engine (core.train with the SARSA learner and the Reptile rule) is the reference;
the fast path must produce the same category parameters, θ and test steps for the
same seed, at a small size, in both outer-update modes and for MAML.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml2_jax import lane_maml2
from maml2_jax.core import classification, task_sources
from maml2_jax.core import train as engine_lib
from maml2_jax.core.config import MetaConfig
from maml2_jax.learners.sarsa import make_sarsa, make_sarsa_learner
from maml2_jax.rules import reptile

LABELS = np.asarray([0, 0, 1, 1, 1, 1, 1, 1, 1, 2])  # the published grouping


@pytest.fixture(scope="module")
def setup(published_world):
    goals = jnp.asarray(published_world.task_array())
    ticks = make_sarsa(published_world, log_episodes=10, track_visits=False)
    learner = make_sarsa_learner(published_world, episodes=5, track_visits=False)
    # Features as published: learning each task from scratch (the categories below are given).
    classifier = make_sarsa_learner(published_world, episodes=2000, log_episodes=1)
    return goals, ticks, learner, classifier


def _engine_run(setup, key, categories, outer, inner, mode, labels=LABELS):
    goals, ticks, learner, classifier = setup
    config = MetaConfig(categories=categories, outer_iterations=outer, inner_iterations=inner, outer_update=mode,
                        category_init="global", stop_tolerance=1e-5)
    engine = engine_lib.make_engine(learner, reptile(learner, beta=1.0), task_sources.given_pool(goals), config,
                                     classifier=classifier)
    state = engine.init(key, ticks.init_params())
    if categories > 1:
        members = classification.membership(labels, categories)
        state = state.replace(labels=jnp.asarray(labels), members=jnp.asarray(members), classified=jnp.bool_(True))
    return engine_lib.run(engine, state, outer)


def _fast_run(setup, key, labels, outer, inner, mode):
    goals, ticks, _, _ = setup
    members = jnp.asarray(classification.membership(labels, int(labels.max()) + 1))[None]
    theta, category_params = jax.jit(lane_maml2.meta_train, static_argnums=(0, 1))(
        ticks, lane_maml2.Schedule(outer, inner, outer_update=mode), ticks.init_params()[None], members, goals[None],
        key[None])
    return np.asarray(theta[0]), np.asarray(category_params[0])


def test_lane_machine_gives_the_engines_parameters_parallel(setup):
    key = jax.random.key(3)
    state = _engine_run(setup, key, 3, 2, 3, "parallel")
    theta, category_params = _fast_run(setup, key, LABELS, 2, 3, "parallel")
    # Same schedule, same keys, same SARSA ticks: the same numbers, bit for bit.
    np.testing.assert_array_equal(category_params, np.asarray(state.category_params))
    np.testing.assert_array_equal(theta, np.asarray(state.theta))
    assert np.abs(theta - 0.5).max() > 1e-3  # meta-training moved θ


def test_lane_machine_gives_the_engines_parameters_sequential(setup):
    """Sequential: the category parameters are bit-identical while the θ they start
    from is; θ itself is the interpolation (1 − 1/N)·θ + θ_c/N, which XLA may round
    differently in the two programs (a fused multiply-add or not: 1 ulp). After that
    ulp, a greedy tie in SARSA can break the other way, so with three categories the
    third one's trajectories may differ; two categories show the equality."""
    labels = np.asarray([0] * 9 + [1])
    key = jax.random.key(3)
    state = _engine_run(setup, key, 2, 1, 3, "sequential", labels)
    theta, category_params = _fast_run(setup, key, labels, 1, 3, "sequential")
    np.testing.assert_array_equal(category_params, np.asarray(state.category_params))
    np.testing.assert_allclose(theta, np.asarray(state.theta), rtol=0, atol=2e-7)  # a few ulp of values ≤ 1
    assert np.abs(theta - 0.5).max() > 1e-3


def test_lane_machine_maml_is_the_one_category_engine(setup):
    goals, ticks, _, _ = setup
    key = jax.random.key(4)
    state = _engine_run(setup, key, 1, 1, 12, "sequential")
    theta = jax.jit(lane_maml2.maml, static_argnums=(0, 1))(ticks, 12, ticks.init_params()[None], goals[None],
                                                            key[None])
    np.testing.assert_array_equal(np.asarray(theta[0]), np.asarray(state.theta))


def test_same_test_steps_after_the_engine_and_the_fast_path(setup):
    goals, ticks, _, _ = setup
    key = jax.random.key(5)
    state = _engine_run(setup, key, 3, 2, 3, "parallel")
    theta, category_params = _fast_run(setup, key, LABELS, 2, 3, "parallel")
    theta, category_params = theta[None], category_params[None]
    readapt = jax.jit(lane_maml2.readapt, static_argnums=(0, 5, 7))
    keys = jax.random.split(jax.random.key(6), 10)
    reset = jnp.ones(10, bool)

    def steps(theta, category_params):
        agents, chosen = readapt(ticks, jnp.broadcast_to(theta, (10,) + theta.shape),
                                 jnp.broadcast_to(category_params, (10,) + category_params.shape), goals, keys, 10,
                                 reset, 1)
        return np.asarray(jax.vmap(ticks.performance)(agents)), np.asarray(chosen)

    engine_steps, engine_chosen = steps(state.theta, state.category_params)
    fast_steps, fast_chosen = steps(theta[0], category_params[0])
    np.testing.assert_array_equal(engine_steps, fast_steps)
    np.testing.assert_array_equal(engine_chosen, fast_chosen)
