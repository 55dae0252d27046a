"""The policy-gradient inner loop: descent, first- and second-order meta-gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml2_jax.envs import nav2d
from maml2_jax.errors import ConfigError
from maml2_jax.learners.policy_gradient import PolicyGradientConfig, make_policy_gradient_adapter
from maml2_jax.networks import PolicyConfig, make_gaussian_policy

GOAL = jnp.asarray([0.3, -0.2])


def _setup(hidden=(64, 64), horizon=100, **kwargs):
    family = nav2d.make_task_family("nav2d", nav2d.Nav2dConfig(horizon=horizon))
    policy = make_gaussian_policy(family.obs_dim, family.action_dim, PolicyConfig(hidden_sizes=hidden))
    adapter = make_policy_gradient_adapter(family, policy, PolicyGradientConfig(**kwargs))
    return family, policy, adapter


def _outer_loss(adapter, batch):
    """A fixed second batch's surrogate: the post-adaptation loss of MAML."""
    return lambda params: adapter.loss(params, batch)


def test_inner_loss_falls_after_one_step_on_a_fixed_batch():
    _, policy, adapter = _setup()
    params = policy.init(jax.random.key(0))
    batch = adapter.sample(params, GOAL, jax.random.key(1))
    before = adapter.loss(params, batch)
    after = adapter.loss(adapter.step(params, batch), batch)
    assert after < before - 1e-3


def test_inner_loss_ignores_the_padding_of_terminated_episodes():
    # A wide goal tolerance ends most episodes early; the loss is the mean over
    # episodes of each episode's mean of -log π·A over its own steps.
    family = nav2d.make_task_family("nav2d", nav2d.Nav2dConfig(horizon=30, goal_tolerance=0.1))
    policy = make_gaussian_policy(2, 2, PolicyConfig(hidden_sizes=(8,)))
    adapter = make_policy_gradient_adapter(family, policy, PolicyGradientConfig(num_trajectories=6))
    params = policy.init(jax.random.key(11))
    batch = adapter.sample(params, jnp.asarray([0.1, 0.05]), jax.random.key(12))
    lengths = np.asarray(batch.trajectories.mask).sum(-1).astype(int)
    assert lengths.min() < 30  # some episodes did end early
    log_probs = np.asarray(policy.log_prob(params, batch.trajectories.obs, batch.trajectories.actions))
    advantages = np.asarray(batch.advantages)
    expected = -np.mean([np.mean(log_probs[n, :l] * advantages[n, :l]) for n, l in enumerate(lengths)])
    np.testing.assert_allclose(adapter.loss(params, batch), expected, rtol=1e-5)
    # Rewards after the end are zero, so the returns reported are the episodes' own.
    padding = np.asarray(batch.trajectories.mask) == 0
    np.testing.assert_array_equal(np.asarray(batch.trajectories.rewards)[padding], 0.0)


def test_adaptation_improves_the_return():
    # Averaged over tasks and seeds: one step at the customary settings must help.
    family, policy, adapter = _setup(inner_steps=2)
    params = policy.init(jax.random.key(2))
    goals, _ = family.sample_tasks(jax.random.key(3), 8)
    keys = jax.random.split(jax.random.key(4), 8)
    _, step_returns = jax.jit(jax.vmap(adapter.adapt, in_axes=(None, 0, 0)))(params, goals, keys)
    chex.assert_shape(step_returns, (8, 2))
    # Measured +48 here; a wrong-signed or vanishing gradient gives <= 0.
    assert float(jnp.mean(step_returns[:, 1] - step_returns[:, 0])) > 15.0


def test_first_order_gradient_is_the_gradient_at_the_adapted_parameters():
    _, policy, adapter = _setup(first_order=True)
    params = policy.init(jax.random.key(5))
    inner = adapter.sample(params, GOAL, jax.random.key(6))
    outer = adapter.sample(params, GOAL, jax.random.key(7))
    f = _outer_loss(adapter, outer)
    meta_grad = jax.grad(lambda p: f(adapter.step(p, inner)))(params)
    chex.assert_trees_all_close(meta_grad, jax.grad(f)(adapter.step(params, inner)), rtol=1e-6, atol=1e-7)


def test_second_order_meta_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        _, policy, adapter = _setup(hidden=(4,), horizon=6, num_trajectories=3, inner_lr=0.5)
        params = jax.tree.map(lambda x: x.astype(jnp.float64), policy.init(jax.random.key(8)))
        inner = adapter.sample(params, GOAL, jax.random.key(9))
        outer = adapter.sample(params, GOAL, jax.random.key(10))
        inner = jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, inner)
        outer = jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, outer)
        f = _outer_loss(adapter, outer)

        def meta_loss(p):
            return f(adapter.step(p, inner))

        grad = jax.grad(meta_loss)(params)
        direction = jax.tree.map(lambda x: jax.random.normal(jax.random.key(11), x.shape, x.dtype), params)
        eps = 1e-5
        plus = meta_loss(jax.tree.map(lambda p, d: p + eps * d, params, direction))
        minus = meta_loss(jax.tree.map(lambda p, d: p - eps * d, params, direction))
        numeric = (plus - minus) / (2 * eps)
        analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6)
        # The second-order term matters: the first-order gradient is measurably different.
        first_order = jax.grad(f)(adapter.step(params, inner))
        fo = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(first_order), jax.tree.leaves(direction)))
        assert abs(float(fo - analytic)) > 1e-4 * abs(float(analytic))
        assert abs(float(analytic)) > 1e-6  # non-zero meta-gradient


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(inner_steps=0), "inner steps"), (dict(inner_lr=0.0), "learning rate"), (dict(discount=1.5), "discount"),
     (dict(gae_lambda=-0.1), "lambda"), (dict(num_trajectories=0), "trajectories")],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PolicyGradientConfig(**kwargs)
