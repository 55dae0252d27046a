"""Deep MAML²: vmapped categories, reductions to MAML, classification identity, re-adaptation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from maml2_jax import clustering, deep_maml2, meta_updates
from maml2_jax.envs import nav2d
from maml2_jax.errors import ConfigError
from maml2_jax.learners.policy_gradient import PolicyGradientConfig, make_policy_gradient_adapter
from maml2_jax.maml_trpo import make_maml_trpo_update
from maml2_jax.networks import PolicyConfig, make_gaussian_policy
from maml2_jax.trpo import TRPOConfig

B = 2  # tasks per category


@pytest.fixture(scope="module")
def tiny():
    family = nav2d.make_task_family("nav2d-isolated", nav2d.Nav2dConfig(horizon=10))
    policy = make_gaussian_policy(2, 2, PolicyConfig(hidden_sizes=(8,)))
    adapter = make_policy_gradient_adapter(family, policy, PolicyGradientConfig(num_trajectories=4))
    # Damping well above the default keeps CG's solve well-conditioned on this tiny net,
    # so the comparisons below see rounding, not its amplification by a near-singular system.
    update = make_maml_trpo_update(policy, adapter, 1, B, TRPOConfig(cg_damping=0.1))
    pool, truth = family.sample_tasks(jax.random.key(0), 8)
    theta = policy.init(jax.random.key(1))
    return adapter, update, pool, np.asarray(truth), theta


def _close(a, b, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(ravel_pytree(a)[0], ravel_pytree(b)[0], rtol=rtol, atol=atol)


def _by_hand_inputs(config, pool, members, key):
    """The tasks and keys each category step uses, derived as the iteration documents."""
    k_tasks, k_update = jax.random.split(key)
    tasks = [deep_maml2.sample_category_tasks(pool, members, jax.random.fold_in(k_tasks, k), B)
             for k in range(config.category_steps)]
    keys = [jax.random.split(jax.random.fold_in(k_update, k), config.num_categories)
            for k in range(config.category_steps)]
    return tasks, keys


def test_vmapped_categories_equal_a_loop_over_categories(tiny):
    _, update, pool, truth, theta = tiny
    config = deep_maml2.DeepMAML2Config(num_categories=3, pool_size=8, tasks_per_category=B, category_steps=2)
    members = jnp.asarray(clustering.membership(truth, 3))
    # Distinct starting θ_c, so a mix-up of categories would show.
    state = deep_maml2.init_state(theta, 3)
    state = state._replace(category_params=jax.tree.map(
        lambda x: x + 0.01 * jnp.arange(3, dtype=x.dtype).reshape((3,) + (1,) * (x.ndim - 1)), state.category_params))
    key = jax.random.key(5)
    new_state, metrics = jax.jit(deep_maml2.make_maml2_iteration(update, config))(state, pool, members, key)

    tasks, keys = _by_hand_inputs(config, pool, members, key)
    loop = []
    for c in range(3):
        theta_c = jax.tree.map(lambda x: x[c], state.category_params)
        for k in range(config.category_steps):
            theta_c, _ = jax.jit(update)(theta_c, jax.tree.map(lambda x: x[c], tasks[k]), keys[k][c])
        loop.append(theta_c)
        _close(jax.tree.map(lambda x: x[c], new_state.category_params), theta_c)
    _close(new_state.theta, jax.tree.map(lambda *xs: sum(xs) / 3, *loop))
    assert metrics.post_return.shape == (3,)
    # The categories really moved apart from their different starts and tasks.
    assert float(meta_updates.tree_norm(jax.tree.map(jnp.subtract, loop[0], loop[2]))) > 0.01


def test_sequential_mode_moves_theta_after_each_category(tiny):
    _, update, pool, truth, theta = tiny
    config = deep_maml2.DeepMAML2Config(num_categories=3, pool_size=8, tasks_per_category=B,
                                        outer_update="sequential", category_init="global")
    members = jnp.asarray(clustering.membership(truth, 3))
    key = jax.random.key(6)
    new_state, _ = jax.jit(deep_maml2.make_maml2_iteration(update, config))(
        deep_maml2.init_state(theta, 3), pool, members, key)
    tasks, keys = _by_hand_inputs(config, pool, members, key)
    moving = theta
    for c in range(3):
        theta_c, _ = jax.jit(update)(moving, jax.tree.map(lambda x: x[c], tasks[0]), keys[0][c])
        # Chained TRPO steps carry rounding from one category to the next (~3e-5 here);
        # a category taking the wrong start or tasks is off by more than 1e-2.
        _close(jax.tree.map(lambda x: x[c], new_state.category_params), theta_c, atol=1e-4)
        moving = meta_updates.interpolate(moving, theta_c, 1.0 / 3)
    _close(new_state.theta, moving, atol=1e-4)


@pytest.mark.parametrize("outer_update", ["parallel", "sequential"])
@pytest.mark.parametrize("category_init", ["persistent", "global"])
def test_one_category_is_maml(tiny, outer_update, category_init):
    """N = 1 over the whole pool: θ after an outer iteration is the MAML-TRPO update
    (to rounding: the parallel mode runs it under a vmap of size 1)."""
    _, update, pool, _, theta = tiny
    config = deep_maml2.DeepMAML2Config(num_categories=1, pool_size=8, tasks_per_category=B,
                                        outer_update=outer_update, category_init=category_init)
    members = jnp.ones((1, 8), bool)
    iteration = jax.jit(deep_maml2.make_maml2_iteration(update, config))
    maml = jax.jit(update)
    state = deep_maml2.init_state(theta, 1)
    params = theta
    for i in range(2):
        key = jax.random.key(10 + i)
        state, _ = iteration(state, pool, members, key)
        tasks, keys = _by_hand_inputs(config, pool, members, key)
        params, _ = maml(params, jax.tree.map(lambda x: x[0], tasks[0]), keys[0][0])
        _close(state.theta, params)
    assert iteration._cache_size() == 1  # no retracing across iterations


def test_category_draws_come_from_members_only():
    pool = jnp.arange(7, dtype=jnp.float32)[:, None] * jnp.ones((1, 2))
    labels = np.asarray([0, 1, 1, 1, 1, 1, 2])  # ragged: sizes 1, 5, 1
    members = jnp.asarray(clustering.membership(labels, 3))
    drawn = deep_maml2.sample_category_tasks(pool, members, jax.random.key(0), 200)
    assert drawn.shape == (3, 200, 2)
    ids = np.asarray(drawn[..., 0]).astype(int)
    assert set(ids[0]) == {0} and set(ids[2]) == {6}
    counts = np.bincount(ids[1], minlength=7)[1:6]
    assert counts.min() > 20  # all five members drawn, about uniformly (expected 40 each)


def test_classification_keeps_category_identity_across_reclustering():
    rng = np.random.default_rng(0)
    centres = np.asarray([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    truth = np.asarray([0, 1, 2, 1, 0, 2, 2, 1, 0, 0])
    features = centres[truth] + 0.1 * rng.normal(size=(10, 2))
    labels, centroids = deep_maml2.classify(features, 3, seed=0)
    assert len({(int(t), int(l)) for t, l in zip(truth, labels)}) == 3  # the true partition
    # Later: features drifted a little and the tasks come in another order, so k-means
    # numbers its clusters differently; matching restores the old numbers.
    order = np.asarray([9, 6, 3, 0, 1, 2, 4, 5, 7, 8])
    drifted = features[order] + 0.3
    relabelled, new_centroids = deep_maml2.classify(drifted, 3, seed=3, previous_centroids=centroids)
    np.testing.assert_array_equal(relabelled, labels[order])
    np.testing.assert_allclose(new_centroids, centroids + 0.3, atol=0.2)
    raw = clustering.kmeans_labels(drifted, 3, seed=3)
    assert not np.array_equal(raw, labels[order])  # without matching the numbers would change


def test_adaptation_curve_resets_to_the_category_the_update_moves_towards(tiny):
    adapter, _, pool, _, theta = tiny
    task, key = pool[0], jax.random.key(3)
    batch = adapter.sample(theta, task, jax.random.fold_in(key, 0))
    theta_1 = adapter.step(theta, batch)
    direction = jax.tree.map(jnp.subtract, theta_1, theta)
    # Category 1 lies ahead along the first update, category 0 behind it.
    categories = jax.tree.map(lambda t, d: jnp.stack([t - 5 * d, t + 5 * d]), theta, direction)
    curve = jax.jit(lambda t, k, c: deep_maml2.adaptation_curve(adapter, 2, t, task, k, c))
    returns, chosen = curve(theta, key, categories)
    assert int(chosen) == 1
    theta_c = jax.tree.map(lambda x: x[1], categories)
    expected = adapter.sample(theta_c, task, jax.random.fold_in(key, 1)).trajectories.rewards.sum(-1).mean()
    np.testing.assert_allclose(returns[1], expected, rtol=1e-5)
    # Without reset (and without categories) the first return is the same, the rest follow θ₁.
    no_reset, _ = jax.jit(lambda t, k, c: deep_maml2.adaptation_curve(adapter, 2, t, task, k, c, reset=False))(
        theta, key, categories)
    plain, none = jax.jit(lambda t, k: deep_maml2.adaptation_curve(adapter, 2, t, task, k))(theta, key)
    assert returns.shape == (3,) and int(none) == -1
    np.testing.assert_allclose(no_reset, plain, rtol=1e-6)
    np.testing.assert_allclose(returns[0], plain[0], rtol=1e-6)
    expected_1 = adapter.sample(theta_1, task, jax.random.fold_in(key, 1)).trajectories.rewards.sum(-1).mean()
    np.testing.assert_allclose(plain[1], expected_1, rtol=1e-5)


def test_features_are_the_update_or_the_adapted_parameters(tiny):
    adapter, _, pool, _, theta = tiny
    key = jax.random.key(4)
    update = jax.jit(deep_maml2.make_features(adapter, "update"))(theta, pool[:3], key)
    adapted = jax.jit(deep_maml2.make_features(adapter, "adapted"))(theta, pool[:3], key)
    flat_theta = ravel_pytree(theta)[0]
    assert update.shape == (3, flat_theta.size)
    np.testing.assert_allclose(adapted - flat_theta, update, atol=1e-6)
    one, _ = adapter.adapt(theta, pool[1], jax.random.split(key, 3)[1])
    np.testing.assert_allclose(adapted[1], ravel_pytree(one)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(num_categories=0), "categories"), (dict(num_categories=5, pool_size=4), "cannot make"),
     (dict(feature="grad"), "feature"), (dict(outer_update="async"), "outer update"),
     (dict(category_init="random"), "category init"), (dict(recluster_every=0), "recluster")],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        deep_maml2.DeepMAML2Config(**kwargs)
