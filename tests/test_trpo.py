"""TRPO: conjugate gradient, the Gauss-Newton curvature product, the KL constraint, MAML-TRPO."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from maml2_jax import trpo
from maml2_jax.envs import nav2d
from maml2_jax.errors import ConfigError
from maml2_jax.learners.policy_gradient import PolicyGradientConfig, make_policy_gradient_adapter
from maml2_jax.networks import PolicyConfig, gaussian_kl, make_gaussian_policy

from helpers import maml_trpo_iteration


def test_conjugate_gradient_solves_an_spd_system():
    a = jax.random.normal(jax.random.key(0), (6, 6))
    matrix = a @ a.T + 0.5 * jnp.eye(6)
    b = jax.random.normal(jax.random.key(1), (6,))
    x, quadratic = trpo.conjugate_gradient(lambda v: matrix @ v, b, iterations=6)  # exact in n steps
    np.testing.assert_allclose(matrix @ x, b, rtol=1e-3, atol=1e-3)
    # The quadratic form read off CG's residual is xᵀAx computed directly.
    np.testing.assert_allclose(quadratic, x @ matrix @ x, rtol=1e-4)


def _tiny_policy_problem():
    policy = make_gaussian_policy(2, 2, PolicyConfig(hidden_sizes=(3,)))
    params = policy.init(jax.random.key(2))
    params["log_std"] = jnp.asarray([-0.2, 0.3])
    obs = jax.random.normal(jax.random.key(3), (7, 2))

    def distribution(p):
        means, log_std = policy.mean_and_log_std(p, obs)
        return means, jnp.broadcast_to(log_std, means.shape)

    return policy, params, obs, distribution


def test_fisher_product_equals_the_explicit_kl_hessian_at_the_current_point():
    policy, params, obs, distribution = _tiny_policy_problem()
    flat, unravel = ravel_pytree(params)
    old_means, old_log_stds = distribution(params)

    def mean_kl(f):
        means, log_stds = distribution(unravel(f))
        return jnp.mean(gaussian_kl(old_means, old_log_stds, means, log_stds))

    hessian = jax.hessian(mean_kl)(flat)
    product = trpo.gaussian_fisher_product(distribution, params)
    v = jax.random.normal(jax.random.key(4), flat.shape)
    np.testing.assert_allclose(product(v), hessian @ v, rtol=1e-4, atol=1e-6)


def test_weighted_fisher_product_is_the_hessian_of_the_weighted_kl():
    # Padding rows (weight 0) of terminated episodes must not bend the curvature.
    policy, params, obs, distribution = _tiny_policy_problem()
    flat, unravel = ravel_pytree(params)
    old_means, old_log_stds = distribution(params)
    weights = jnp.array([0.3, 0.0, 0.1, 0.2, 0.0, 0.25, 0.15])

    def weighted_kl(f):
        means, log_stds = distribution(unravel(f))
        return jnp.sum(weights * gaussian_kl(means, log_stds, old_means, old_log_stds))

    hessian = jax.hessian(weighted_kl)(flat)
    product = trpo.gaussian_fisher_product(distribution, params, weights)
    v = jax.random.normal(jax.random.key(4), flat.shape)
    np.testing.assert_allclose(product(v), hessian @ v, rtol=1e-4, atol=1e-6)
    uniform = trpo.gaussian_fisher_product(distribution, params)
    assert not np.allclose(product(v), uniform(v), rtol=1e-2)


def test_trpo_step_improves_the_surrogate_within_max_kl():
    policy, params, obs, distribution = _tiny_policy_problem()
    actions = jax.random.normal(jax.random.key(5), (7, 2))
    advantages = jax.random.normal(jax.random.key(6), (7,))
    old_log_probs = policy.log_prob(params, obs, actions)
    old_means, old_log_stds = distribution(params)

    def surrogate(p):
        return jnp.mean(jnp.exp(policy.log_prob(p, obs, actions) - old_log_probs) * advantages)

    def kl(p):
        means, log_stds = distribution(p)
        return jnp.mean(gaussian_kl(old_means, old_log_stds, means, log_stds))

    for max_kl in (0.01, 0.001):
        config = trpo.TRPOConfig(max_kl=max_kl)
        objective = lambda p: (surrogate(p), kl(p))  # noqa: E731
        new_params, stats = jax.jit(lambda p: trpo.trpo_step(config, objective, distribution, p))(params)
        assert float(stats.step_fraction) > 0
        assert float(surrogate(new_params)) > float(surrogate(params))
        assert 0 < float(kl(new_params)) <= max_kl
        # The quadratic model puts the full step near the boundary: the KL used is not tiny.
        assert float(kl(new_params)) > 0.05 * max_kl


def test_maml_trpo_iteration_improves_and_respects_max_kl():
    family = nav2d.make_task_family("nav2d", nav2d.Nav2dConfig(horizon=20))
    policy = make_gaussian_policy(2, 2, PolicyConfig(hidden_sizes=(16, 16)))
    adapter = make_policy_gradient_adapter(family, policy, PolicyGradientConfig(num_trajectories=8))
    iteration = maml_trpo_iteration(family, policy, adapter, inner_steps=1, num_tasks=4)
    params = policy.init(jax.random.key(7))
    for i in range(3):
        params, metrics = iteration(params, jax.random.key(8 + i))
        assert float(metrics["kl"]) <= 0.01 + 1e-6
        assert float(metrics["post_return"]) > -1e9  # finite
    assert iteration._cache_size() == 1  # no retracing across iterations


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(max_kl=0.0), "max KL"), (dict(cg_iterations=0), "CG"), (dict(line_search_ratio=1.0), "ratio")],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        trpo.TRPOConfig(**kwargs)


def test_curvature_on_a_task_subsample_still_respects_max_kl():
    # With a fraction, CG's curvature covers the first tasks only: the step differs
    # from the full-batch one and still honours max KL on the full batch.
    family = nav2d.make_task_family("nav2d", nav2d.Nav2dConfig(horizon=10))
    policy = make_gaussian_policy(2, 2, PolicyConfig(hidden_sizes=(8,)))
    adapter = make_policy_gradient_adapter(family, policy, PolicyGradientConfig(num_trajectories=4))
    params = policy.init(jax.random.key(20))
    full = maml_trpo_iteration(family, policy, adapter, 1, 8)
    half = maml_trpo_iteration(family, policy, adapter, 1, 8, curvature_fraction=0.25)
    p_full, m_full = full(params, jax.random.key(21))
    p_half, m_half = half(params, jax.random.key(21))
    # Same data: same surrogate at the start (≈ 0: normalised advantages, ratio 1).
    np.testing.assert_array_equal(m_full["pre_return"], m_half["pre_return"])
    assert float(m_half["kl"]) <= 0.01 + 1e-6 and float(m_half["step_fraction"]) > 0
    assert not np.allclose(ravel_pytree(p_full)[0], ravel_pytree(p_half)[0])
    with pytest.raises(ConfigError, match="curvature fraction"):
        maml_trpo_iteration(family, policy, adapter, 1, 8, curvature_fraction=0.0)
