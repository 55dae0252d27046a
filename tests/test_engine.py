"""The engine on the policy-gradient learner: category meta-learning, outer updates,
MAML as one category (exactly), classification identity, re-adaptation, features."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from maml2_jax.core import category_meta, classification, task_sources
from maml2_jax.core import train as engine_lib
from maml2_jax.core.config import MetaConfig
from maml2_jax.core.outer_update import interpolate
from maml2_jax.core.readaptation import adaptation_curve
from maml2_jax.core.types import Learner, take, tree_norm
from maml2_jax.envs import nav2d
from maml2_jax.errors import ConfigError
from maml2_jax.learners.policy_gradient import (PolicyGradientConfig, make_policy_gradient_adapter,
                                                make_policy_gradient_learner)
from maml2_jax.networks import PolicyConfig, make_gaussian_policy
from maml2_jax.rules.maml_trpo import maml_trpo
from maml2_jax.trpo import TRPOConfig

B = 2  # tasks per category
POOL = 8


@pytest.fixture(scope="module")
def tiny():
    family = nav2d.make_task_family("nav2d-isolated", nav2d.Nav2dConfig(horizon=10))
    policy = make_gaussian_policy(2, 2, PolicyConfig(hidden_sizes=(8,)))
    inner = PolicyGradientConfig(num_trajectories=4)
    adapter = make_policy_gradient_adapter(family, policy, inner)
    learner = make_policy_gradient_learner(family, policy, inner)
    # Damping well above the default keeps CG's solve well-conditioned on this tiny net,
    # so the comparisons below see rounding, not its amplification by a near-singular system.
    rule = maml_trpo(policy, adapter, 1, B, TRPOConfig(cg_damping=0.1))
    source = task_sources.fixed_pool(family.sample_tasks, POOL)
    theta = policy.init(jax.random.key(1))
    return family, adapter, learner, rule, source, theta


def _engine(tiny, **schedule):
    _, _, learner, rule, source, _ = tiny
    config = MetaConfig(**{"tasks_per_category": B, **schedule})
    return engine_lib.make_engine(learner, rule, source, config)


def _with_labels(engine, state, labels):
    members = classification.membership(np.asarray(labels), engine.config.categories)
    return state.replace(labels=jnp.asarray(labels, jnp.int32), members=jnp.asarray(members),
                         classified=jnp.bool_(True))


def _close(a, b, rtol=1e-6, atol=1e-7):
    np.testing.assert_allclose(ravel_pytree(a)[0], ravel_pytree(b)[0], rtol=rtol, atol=atol)


def _same_step(actual, expected, start):
    """θ_c from the engine and by hand took the same meta-step from ``start``.

    Two compiled programs round a TRPO step differently, and CG and the line search
    amplify that (measured up to 0.4% of the step on this tiny net); a category that
    took the wrong start or the wrong tasks takes a different step altogether (100%).
    So the check is relative to the step: within 5% of its length.
    """
    flat = lambda t: np.asarray(ravel_pytree(t)[0], np.float64)  # noqa: E731
    step = np.linalg.norm(flat(expected) - flat(start))
    error = np.linalg.norm(flat(actual) - flat(expected))
    assert step > 1e-3, "the meta-step did not move θ_c"
    assert error <= 0.05 * step, f"the steps differ by {error / step:.2%} of their length"


def _by_hand(tiny, state, c, start, n, k_in):
    """CatMeta of category c written out: draws and rule steps in the documented key order."""
    _, _, _, rule, source, _ = tiny
    update = jax.jit(rule.update)
    theta_c = start
    for key in category_meta.step_keys(jax.random.wrap_key_data(state.key), state.iteration, c, n, k_in):
        k_task, k_update = jax.random.split(key)
        tasks = source.draw(state.source, state.members[c], k_task, B)
        theta_c, _, _ = update(theta_c, (), tasks, k_update, jnp.sum(state.members[c]).astype(jnp.float32))
    return theta_c


def test_parallel_categories_equal_a_loop_over_categories(tiny):
    theta = tiny[5]
    engine = _engine(tiny, categories=3, inner_iterations=2, outer_update="parallel", category_init="persistent")
    state = _with_labels(engine, engine.init(jax.random.key(5), theta), [0, 1, 1, 2, 0, 1, 2, 2])
    # Distinct starting θ_c, so a mix-up of categories would show.
    state = state.replace(category_params=jax.tree.map(
        lambda x: x + 0.01 * jnp.arange(3, dtype=x.dtype).reshape((3,) + (1,) * (x.ndim - 1)), state.category_params))
    new, metrics = engine.step(state)
    loop = [_by_hand(tiny, state, c, take(state.category_params, c), 3, 2) for c in range(3)]
    for c in range(3):
        _same_step(take(new.category_params, c), loop[c], take(state.category_params, c))
    _close(new.theta, jax.tree.map(lambda *xs: sum(xs) / 3, *[take(new.category_params, c) for c in range(3)]))
    assert metrics["post_return"].shape == (3,) and int(new.iteration) == 1
    assert float(tree_norm(jax.tree.map(jnp.subtract, loop[0], loop[2]))) > 0.01


def test_sequential_mode_moves_theta_after_each_category(tiny):
    theta = tiny[5]
    engine = _engine(tiny, categories=3, inner_iterations=1, outer_update="sequential", category_init="global")
    state = _with_labels(engine, engine.init(jax.random.key(6), theta), [0, 1, 1, 2, 0, 1, 2, 2])
    new, _ = engine.step(state)
    moving = theta
    for c in range(3):
        # Each category is checked from the θ the engine's own earlier categories gave,
        # so one TRPO step's rounding is compared, not rounding amplified through a chain.
        _same_step(take(new.category_params, c), _by_hand(tiny, state, c, moving, 3, 1), moving)
        moving = interpolate(moving, take(new.category_params, c), 1.0 / 3)
    _close(new.theta, moving, rtol=1e-6, atol=1e-7)


def test_one_category_is_maml_exactly_in_every_mode(tiny):
    """N = 1 is a single code path: both outer updates trace to the same program, both
    category inits give MAML's parameters bit for bit (θ_c starts from θ or from the
    θ_c that equals it), and the step is the rule applied by hand."""
    theta = tiny[5]
    results = []
    for init in ("persistent", "global"):
        programs = []
        for mode in ("parallel", "sequential"):
            engine = _engine(tiny, categories=1, inner_iterations=1, outer_update=mode, category_init=init)
            state = engine.init(jax.random.key(10), theta)
            assert bool(state.members.all())  # one category holds the whole pool
            programs.append(str(jax.make_jaxpr(engine.step)(state)))
        assert programs[0] == programs[1]  # one program: compiled once below, not twice
        state, _ = engine.step(state)
        results.append(np.asarray(ravel_pytree(state.theta)[0]))
        np.testing.assert_array_equal(ravel_pytree(state.category_params)[0], results[-1])
        engine.step(state)
        assert engine.step._cache_size() == 1  # no retracing across iterations
    np.testing.assert_array_equal(results[1], results[0])
    state = engine.init(jax.random.key(10), theta)
    by_hand = _by_hand(tiny, state, 0, theta, 1, 1)
    _same_step(by_hand, ravel_pytree_inverse(theta, results[0]), theta)


def ravel_pytree_inverse(template, flat):
    return ravel_pytree(template)[1](jnp.asarray(flat))


def test_maml_from_the_cli_config_is_the_one_category_engine():
    from maml2_jax import deep_training

    config = deep_training.TrainConfig(algo="maml", meta_batch_size=4)
    schedule = config.schedule()
    assert (schedule.categories, schedule.inner_iterations, schedule.tasks_per_category) == (1, 1, 4)
    assert deep_training.Parts(config).source.name == "fresh"


def test_category_draws_come_from_members_only():
    pool = jnp.arange(7, dtype=jnp.float32)[:, None] * jnp.ones((1, 2))
    source = task_sources.given_pool(pool)
    state = source.init(jax.random.key(0))
    labels = np.asarray([0, 1, 1, 1, 1, 1, 2])  # ragged: sizes 1, 5, 1
    members = classification.membership(labels, 3)
    drawn = np.stack([np.asarray(source.draw(state, jnp.asarray(members[c]), jax.random.key(c), 200))
                      for c in range(3)])
    assert drawn.shape == (3, 200, 2)
    ids = drawn[..., 0].astype(int)
    assert set(ids[0]) == {0} and set(ids[2]) == {6}
    counts = np.bincount(ids[1], minlength=7)[1:6]
    assert counts.min() > 20  # all five members drawn, about uniformly (expected 40 each)


def test_early_stop_keeps_the_step_that_fell_below_the_tolerance():
    # A rule whose k-th step moves by 2^-k: with tolerance 0.1 the steps of 1/2, 1/4, 1/8
    # are taken, 1/16 (< 0.1) is taken too, and nothing after it.
    from maml2_jax.core.types import MetaRule

    def update(params, count, tasks, key, size):
        return params + 0.5 ** (count + 1), count + 1, {"count": count}

    rule = MetaRule(lambda p: 0, update)
    source = task_sources.given_pool(jnp.zeros((2, 1)))
    keys = jax.random.split(jax.random.key(0), 8)
    params, count, _ = category_meta.category_meta(rule, source, source.init(None), jnp.ones(2, bool),
                                                   jnp.float32(0.0), 0, keys, 1, stop_tolerance=0.1)
    assert int(count) == 4
    assert float(params) == 0.5 + 0.25 + 0.125 + 0.0625


def test_classification_keeps_category_identity_across_reclustering():
    rng = np.random.default_rng(0)
    centres = np.asarray([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    truth = np.asarray([0, 1, 2, 1, 0, 2, 2, 1, 0, 0])
    features = centres[truth] + 0.1 * rng.normal(size=(10, 2))
    labels, centroids = classification.classify(features, 3, seed=0)
    assert len({(int(t), int(l)) for t, l in zip(truth, labels)}) == 3  # the true partition
    # Later: features drifted a little and the tasks come in another order, so k-means
    # numbers its clusters differently; matching restores the old numbers.
    order = np.asarray([9, 6, 3, 0, 1, 2, 4, 5, 7, 8])
    drifted = features[order] + 0.3
    relabelled, new_centroids = classification.classify(drifted, 3, seed=3, previous_centroids=centroids)
    np.testing.assert_array_equal(relabelled, labels[order])
    np.testing.assert_allclose(new_centroids, centroids + 0.3, atol=0.2)
    raw = classification.kmeans_labels(drifted, 3, seed=3)
    assert not np.array_equal(raw, labels[order])  # without matching the numbers would change


def test_engine_classification_writes_labels_members_and_centroids(tiny):
    engine = _engine(tiny, categories=2, classify_every=2, outer_update="parallel", category_init="persistent")
    state = engine.init(jax.random.key(2), tiny[5])
    assert not bool(state.classified) and not bool(state.members.any())
    calls = []
    state = engine_lib.run(engine, state, 3, lambda s, m, classified: calls.append(classified))
    assert calls == [True, False, True] and int(state.iteration) == 3
    members = np.asarray(state.members)
    np.testing.assert_array_equal(members, classification.membership(np.asarray(state.labels), 2))
    assert members.sum(axis=1).min() >= 1 and state.centroids.shape == (2, ravel_pytree(tiny[5])[0].size)


def test_adaptation_curve_resets_to_the_category_the_update_moves_towards(tiny):
    family, adapter, learner, _, source, theta = tiny
    pool = source.init(jax.random.key(0)).pool
    task, key = pool[0], jax.random.key(3)
    theta_1, _ = learner.adapt(theta, task, jax.random.fold_in(key, 0))
    direction = jax.tree.map(jnp.subtract, theta_1, theta)
    # Category 1 lies ahead along the first update, category 0 behind it.
    categories = jax.tree.map(lambda t, d: jnp.stack([t - 5 * d, t + 5 * d]), theta, direction)
    curve = jax.jit(lambda t, k, c: adaptation_curve(learner, 2, t, task, k, c))
    returns, chosen = curve(theta, key, categories)
    assert int(chosen) == 1
    _, expected = learner.adapt(take(categories, 1), task, jax.random.fold_in(key, 1))
    np.testing.assert_allclose(returns[1], expected[0], rtol=1e-5)
    # Without reset (and without categories) the first return is the same, the rest follow θ₁.
    no_reset, _ = jax.jit(lambda t, k, c: adaptation_curve(learner, 2, t, task, k, c, reset_enabled=False))(
        theta, key, categories)
    plain, none = jax.jit(lambda t, k: adaptation_curve(learner, 2, t, task, k))(theta, key)
    assert returns.shape == (3,) and int(none) == -1
    np.testing.assert_allclose(no_reset, plain, rtol=1e-6)
    np.testing.assert_allclose(returns[0], plain[0], rtol=1e-6)
    _, expected_1 = learner.adapt(theta_1, task, jax.random.fold_in(key, 1))
    np.testing.assert_allclose(plain[1], expected_1[0], rtol=1e-5)


def _shift_learner(direction):
    """A learner whose adaptation adds ``direction`` (and the key's first bits, so a
    round's key shows in its result); its score is the sum of the adapted parameters."""

    def adapt(params, task, key):
        del task
        adapted = params + direction + 1e-3 * jax.random.uniform(key)
        return adapted, jnp.sum(adapted)[None]

    return Learner(init=lambda key: jnp.zeros(2), adapt=adapt, feature=lambda p, a, s: a - p, score=lambda s: s)


def test_the_tendency_learner_picks_the_category_and_nothing_else():
    # The adapting learner moves along x, the tendency learner along y; category 0
    # lies along x, category 1 along y.
    learner, pointer = _shift_learner(jnp.array([1.0, 0.0])), _shift_learner(jnp.array([0.0, 1.0]))
    theta, key = jnp.zeros(2), jax.random.key(5)
    categories = jnp.array([[5.0, 0.0], [0.0, 7.0]])  # unequal, so the scores tell them apart
    plain, chosen = adaptation_curve(learner, 2, theta, None, key, categories)
    assert int(chosen) == 0
    returns, chosen = adaptation_curve(learner, 2, theta, None, key, categories, tendency_learner=pointer)
    assert int(chosen) == 1
    # Round 0 is the adapting learner's either way; then the reset continues from category 1.
    assert returns[0] == plain[0]
    expected = learner.adapt(categories[1], None, jax.random.fold_in(key, 1))[1][0]
    np.testing.assert_allclose(returns[1], expected, rtol=1e-6)  # scanned vs eager: float32 rounding at most
    # Without the reset the tendency learner changes nothing.
    no_reset, _ = adaptation_curve(learner, 2, theta, None, key, categories, reset_enabled=False)
    with_pointer, _ = adaptation_curve(learner, 2, theta, None, key, categories, reset_enabled=False,
                                       tendency_learner=pointer)
    np.testing.assert_array_equal(no_reset, with_pointer)


def test_the_carry_rule_resets_to_the_category_plus_the_first_update():
    learner, pointer = _shift_learner(jnp.array([1.0, 0.0])), _shift_learner(jnp.array([0.0, 1.0]))
    theta, key = jnp.array([0.5, -0.5]), jax.random.key(6)
    categories = jnp.array([[5.0, 0.0], [0.0, 7.0]])
    theta_1, _ = learner.adapt(theta, None, jax.random.fold_in(key, 0))
    step = theta_1 - theta  # the adapting learner's, not the tendency learner's
    for tendency, picked in ((None, 0), (pointer, 1)):
        paper, chosen = adaptation_curve(learner, 2, theta, None, key, categories, tendency_learner=tendency)
        carry, carried_chosen = adaptation_curve(learner, 2, theta, None, key, categories, tendency_learner=tendency,
                                                 reset_rule="carry")
        assert int(chosen) == int(carried_chosen) == picked
        assert carry[0] == paper[0]
        expected = learner.adapt(categories[picked] + step, None, jax.random.fold_in(key, 1))[1][0]
        np.testing.assert_allclose(carry[1], expected, rtol=1e-6)  # scanned vs eager: float32 rounding at most
        assert abs(float(carry[1] - paper[1]) - float(jnp.sum(step))) < 1e-4  # one update further along
    with pytest.raises(ValueError, match="reset rule"):
        adaptation_curve(learner, 2, theta, None, key, categories, reset_rule="towards")


def test_features_are_the_update_or_the_adapted_parameters(tiny):
    family, _, _, rule, source, theta = tiny
    policy = make_gaussian_policy(2, 2, PolicyConfig(hidden_sizes=(8,)))
    inner = PolicyGradientConfig(num_trajectories=4)
    out = {}
    for feature in ("update", "adapted"):
        learner = make_policy_gradient_learner(family, policy, inner, feature)
        engine = engine_lib.make_engine(learner, rule, source, MetaConfig(categories=2, tasks_per_category=B))
        out[feature] = np.asarray(engine.features(engine.init(jax.random.key(4), theta)))
    flat_theta = np.asarray(ravel_pytree(theta)[0])
    assert out["update"].shape == (POOL, flat_theta.size)
    np.testing.assert_allclose(out["adapted"] - flat_theta, out["update"], atol=1e-6)
    assert np.abs(out["update"]).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(categories=0), "categories"), (dict(outer_update="async"), "outer update"),
     (dict(category_init="random"), "category init"), (dict(classify_every=-1), "classify every"),
     (dict(inner_iterations=0), "inner iterations"), (dict(stop_tolerance=float("nan")), "stop tolerance"),
     (dict(classify_from="nowhere"), "classify from")],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MetaConfig(**kwargs)


def test_fresh_draws_serve_one_category_only(tiny):
    _, _, learner, rule, _, _ = tiny
    source = task_sources.fresh(tiny[0].sample_tasks)
    with pytest.raises(ValueError, match="one category"):
        engine_lib.make_engine(learner, rule, source, MetaConfig(categories=2))
    assert dataclasses.is_dataclass(MetaConfig())
