"""The proportional category batch: the shares, the task weights, and the rules' use of them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from maml2_jax import deep_training
from maml2_jax.core import category_meta, classification, task_sources
from maml2_jax.core import train as engine_lib
from maml2_jax.core.config import MetaConfig
from maml2_jax.core.types import Learner, MetaRule
from maml2_jax.envs import nav2d
from maml2_jax.errors import ConfigError
from maml2_jax.learners.policy_gradient import PolicyGradientConfig, make_policy_gradient_adapter
from maml2_jax.networks import PolicyConfig, make_gaussian_policy
from maml2_jax.returns import episode_mean, episode_weights
from maml2_jax.rules.gradient import gradient
from maml2_jax.rules.maml_trpo import make_maml_trpo_update
from maml2_jax.rules.reptile import reptile
from maml2_jax.trpo import TRPOConfig


@pytest.mark.parametrize("sizes,total,expected", [
    ((36, 4), 20, (18, 2)),  # ant-dir-isolated's pool: MAML's share of each category
    ((5, 5), 4, (2, 2)),
    ((3, 3, 3), 10, (4, 3, 3)),  # one left over: a tie, to the lower index
    ((2, 7), 3, (1, 2)),  # 0.67 and 2.33: the larger remainder takes the spare task
    ((39, 1), 4, (3, 1)),  # 3.9 and 0.1: the small category is not starved
    ((1, 1, 0, 7), 3, (1, 1, 0, 1)),  # two starved categories each take one from the largest
    ((0, 5), 6, (0, 6)),  # an empty category gets none
    ((0, 0), 4, (0, 0)),
])
def test_batch_counts_share_by_size(sizes, total, expected):
    counts = np.asarray(category_meta.batch_counts(jnp.asarray(sizes), total))
    np.testing.assert_array_equal(counts, expected)


def test_batch_counts_properties_over_random_pools():
    rng = np.random.default_rng(0)
    count_fn = jax.jit(category_meta.batch_counts, static_argnums=1)
    for _ in range(200):
        n = int(rng.integers(1, 6))
        sizes = rng.integers(0, 12, size=n)
        total = int(rng.integers(max(n, 1), 4 * n + 1))
        counts = np.asarray(count_fn(jnp.asarray(sizes), total))
        if sizes.sum() == 0:
            assert counts.sum() == 0
            continue
        assert counts.sum() == total
        assert np.all(counts[sizes == 0] == 0) and np.all(counts[sizes > 0] >= 1)
        quota = total * sizes / sizes.sum()
        if np.all(quota[sizes > 0] >= 1):  # nobody starved: within one task of the exact share
            assert np.all(np.abs(counts - quota) < 1)


THIRD = np.float32(1) / np.float32(3)  # what the float32 division gives


def test_share_weights():
    np.testing.assert_array_equal(category_meta.share_weights(jnp.int32(3), 6), [THIRD] * 3 + [0] * 3)
    # An idle slot's (discarded) step weighs every task alike, so it stays finite.
    np.testing.assert_array_equal(category_meta.share_weights(jnp.int32(0), 4), [0.25] * 4)


def test_episode_mean_with_task_weights_is_the_weighted_mean_of_task_means():
    # Dyadic values and masks of 1, 2, 4 or 8 steps: every sum and quotient is exact in
    # float32, so the weighted mean and its per-step weights compare exactly.
    rng = np.random.default_rng(1)
    x = rng.integers(-4, 5, size=(4, 2, 8)).astype(np.float32)
    lengths = rng.choice([1, 2, 4, 8], size=(4, 2))
    mask = (np.arange(8) < lengths[..., None]).astype(np.float32)
    w = np.asarray([0.5, 0.25, 0.25, 0.0], np.float32)
    per_task = [np.mean([x[t, e, :lengths[t, e]].mean() for e in range(2)]) for t in range(4)]
    expected = float(np.dot(w, per_task))
    assert float(episode_mean(jnp.asarray(x), jnp.asarray(mask), jnp.asarray(w))) == expected
    step_weights = np.asarray(episode_weights(jnp.asarray(mask), jnp.asarray(w)))
    assert float(np.sum(step_weights * x)) == expected and float(step_weights.sum()) == 1.0
    assert np.all(step_weights[3] == 0)
    # Uniform weights are the plain episode mean.
    uniform = jnp.full((4,), 0.25)
    assert float(episode_mean(jnp.asarray(x), jnp.asarray(mask), uniform)) == float(
        episode_mean(jnp.asarray(x), jnp.asarray(mask)))


@pytest.fixture(scope="module")
def trpo_update():
    family = nav2d.make_task_family("nav2d", nav2d.Nav2dConfig(horizon=10))
    policy = make_gaussian_policy(2, 2, PolicyConfig(hidden_sizes=(8,)))
    adapter = make_policy_gradient_adapter(family, policy, PolicyGradientConfig(num_trajectories=4))
    update = jax.jit(make_maml_trpo_update(policy, adapter, 1, 4, TRPOConfig(cg_damping=0.1)))
    tasks, _ = family.sample_tasks(jax.random.key(0), 4)
    return update, policy.init(jax.random.key(1)), tasks


def test_maml_trpo_ignores_tasks_of_weight_zero(trpo_update):
    update, theta, tasks = trpo_update
    weights = jnp.asarray([0.5, 0.5, 0.0, 0.0])
    key = jax.random.key(2)
    other = tasks.at[2:].set(-tasks[2:])  # the weightless tasks replaced by their mirror images
    first, m1 = update(theta, tasks, key, weights)
    second, m2 = update(theta, other, key, weights)
    # The same program; the replaced tasks enter only multiplied by an exact 0.
    np.testing.assert_array_equal(ravel_pytree(first)[0], ravel_pytree(second)[0])
    assert float(m1.post_return) == float(m2.post_return)
    # The weights do act: weighing the other half moves θ elsewhere.
    third, _ = update(theta, tasks, key, jnp.asarray([0.0, 0.0, 0.5, 0.5]))
    assert float(jnp.max(jnp.abs(ravel_pytree(third)[0] - ravel_pytree(first)[0]))) > 1e-4
    assert float(jnp.max(jnp.abs(ravel_pytree(first)[0] - ravel_pytree(theta)[0]))) > 1e-4


def _toy_learner():
    # Adapt moves halfway to the task's point; the loss after adaptation is the squared distance.
    def adapt(params, task, key):
        adapted = params + 0.5 * (task - params)
        return adapted, jnp.sum((adapted - task) ** 2)[None]

    def meta_loss(params, task, key):
        _, loss = adapt(params, task, key)
        return loss[0], {"distance": jnp.sqrt(loss[0])}

    return Learner(lambda key: jnp.zeros(2), adapt, lambda p, a, s: a - p, lambda s: s, meta_loss)


@pytest.mark.parametrize("make_rule", [lambda l: gradient(l, optax.sgd(0.1)), lambda l: reptile(l)],
                         ids=["gradient", "reptile"])
def test_gradient_and_reptile_weigh_tasks(make_rule):
    rule = make_rule(_toy_learner())
    theta = jnp.asarray([0.5, -1.0])
    tasks = jnp.asarray([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-2.0, 1.0]])
    weights = jnp.asarray([0.75, 0.25, 0.0, 0.0])
    key = jax.random.key(0)
    first, _, m1 = rule.update(theta, rule.init(theta), tasks, key, 4.0, weights)
    second, _, m2 = rule.update(theta, rule.init(theta), tasks.at[2:].set(100.0), key, 4.0, weights)
    np.testing.assert_array_equal(first, second)  # a task of weight 0 enters as an exact 0
    assert jax.tree.map(float, m1) == jax.tree.map(float, m2)
    # The weighted step is the weighted mix of the one-task steps (both rules are linear in the task here).
    ones = [rule.update(theta, rule.init(theta), tasks[i:i + 1], key, 4.0)[0] for i in range(2)]
    # Values of order 1 after a few float32 operations each: a few ulps apart at most.
    np.testing.assert_allclose(first, 0.75 * ones[0] + 0.25 * ones[1], rtol=1e-6, atol=1e-6)


def test_engine_gives_each_category_its_share():
    # A rule that returns, as θ_c, the weights it was given: after one parallel step
    # with pool categories of 3 and 1 tasks and B = 2, θ_c holds each category's share.
    def update(params, state, tasks, key, size, weights=None):
        return weights, state, {}

    rule = MetaRule(lambda p: (), update)
    source = task_sources.given_pool(jnp.zeros((4, 1)))
    config = MetaConfig(categories=2, tasks_per_category=2, category_batch="proportional", outer_update="parallel",
                        category_init="persistent")
    assert config.tasks_per_step == 4
    engine = engine_lib.make_engine(_StubLearner(), rule, source, config)
    state = engine.init(jax.random.key(0), jnp.zeros(4))
    labels = np.asarray([0, 0, 1, 0])
    state = state.replace(labels=jnp.asarray(labels), members=jnp.asarray(classification.membership(labels, 2)),
                          classified=jnp.bool_(True))
    state, _ = engine.step(state)
    np.testing.assert_array_equal(state.category_params, [[THIRD] * 3 + [0], [1, 0, 0, 0]])


class _StubLearner:
    """Just what the engine's init reads: a feature of fixed size."""

    @staticmethod
    def init(key):
        return jnp.zeros(4)

    @staticmethod
    def adapt(params, task, key):
        return params, ()

    @staticmethod
    def feature(start, adapted, stats):
        return adapted


def test_config_checks():
    with pytest.raises(ConfigError, match="category batch"):
        MetaConfig(category_batch="sized")
    assert MetaConfig(categories=3, tasks_per_category=5).tasks_per_step == 5
    assert MetaConfig(categories="auto", max_categories=4, tasks_per_category=5,
                      category_batch="proportional").tasks_per_step == 20
    proportional = dataclasses.replace(deep_training.DEEP_SCHEDULE, category_batch="proportional")
    with pytest.raises(ConfigError, match="proportional category batch needs --algo maml2"):
        deep_training.TrainConfig(algo="maml", meta=proportional)
    config = deep_training.TrainConfig(algo="maml2", meta=proportional)
    assert config.tasks_per_update == 3 * 10
