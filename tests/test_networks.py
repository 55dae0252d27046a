"""The Gaussian MLP policy: densities, KL, sampling, shapes."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from maml2_jax.errors import ConfigError
from maml2_jax.networks import PolicyConfig, gaussian_kl, make_gaussian_policy


@pytest.fixture(scope="module")
def policy():
    return make_gaussian_policy(2, 2)


def test_default_architecture_parameter_count(policy):
    params = policy.init(jax.random.key(0))
    sizes = jax.tree.map(lambda x: x.size, params)
    # 2->64 (192), 64->64 (4160), 64->2 (130), log-std (2).
    assert sum(jax.tree.leaves(sizes)) == 192 + 4160 + 130 + 2
    np.testing.assert_array_equal(params["log_std"], np.zeros(2))  # σ = 1 initially


@pytest.mark.parametrize("obs_shape", [(2,), (7, 2), (3, 4, 2)])
def test_mean_is_the_plain_mlp_for_any_leading_axes(policy, obs_shape):
    # The output layer is computed column by column; it must still be W·h + b.
    params = policy.init(jax.random.key(9))
    obs = np.asarray(jax.random.normal(jax.random.key(10), obs_shape), np.float64)
    mlp = {name: {k: np.asarray(v, np.float64) for k, v in layer.items()} for name, layer in params["mlp"].items()}
    h = np.tanh(obs @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"])
    h = np.tanh(h @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"])
    expected = h @ mlp["Dense_2"]["kernel"] + mlp["Dense_2"]["bias"]
    mean, _ = policy.mean_and_log_std(params, jnp.float32(obs))
    chex.assert_shape(mean, obs_shape)
    np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-5)


def test_log_prob_matches_scipy(policy):
    params = policy.init(jax.random.key(1))
    params["log_std"] = jnp.asarray([-0.3, 0.4])
    obs = jax.random.normal(jax.random.key(2), (5, 2))
    action = jax.random.normal(jax.random.key(3), (5, 2))
    mean, log_std = policy.mean_and_log_std(params, obs)
    expected = stats.norm.logpdf(np.asarray(action), np.asarray(mean), np.exp(np.asarray(log_std))).sum(-1)
    np.testing.assert_allclose(policy.log_prob(params, obs, action), expected, rtol=1e-5, atol=1e-5)


def test_sample_moments_and_its_log_prob(policy):
    params = policy.init(jax.random.key(4))
    params["log_std"] = jnp.asarray([math.log(0.5), math.log(2.0)])
    obs = jnp.asarray([0.2, -0.1])
    keys = jax.random.split(jax.random.key(5), 20000)
    actions, log_probs = jax.vmap(lambda k: policy.sample(params, obs, k))(keys)
    mean, _ = policy.mean_and_log_std(params, obs)
    np.testing.assert_allclose(actions.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(actions.std(0), [0.5, 2.0], rtol=0.03)
    np.testing.assert_allclose(log_probs, jax.vmap(lambda a: policy.log_prob(params, obs, a))(actions), rtol=1e-5)


def test_kl_closed_form_and_properties(policy):
    p = policy.init(jax.random.key(6))
    q = policy.init(jax.random.key(7))
    q["log_std"] = jnp.asarray([0.5, -0.2])
    obs = jax.random.normal(jax.random.key(8), (4, 2))
    np.testing.assert_allclose(policy.kl(p, p, obs), np.zeros(4), atol=1e-6)
    kl = policy.kl(p, q, obs)
    assert np.all(kl > 0)
    # Against the univariate formula, dimension by dimension.
    mp, lp = policy.mean_and_log_std(p, obs)
    mq, lq = policy.mean_and_log_std(q, obs)
    sp, sq = np.exp(np.asarray(lp)), np.exp(np.asarray(lq))
    by_hand = (np.log(sq / sp) + (sp**2 + (np.asarray(mp) - np.asarray(mq)) ** 2) / (2 * sq**2) - 0.5).sum(-1)
    np.testing.assert_allclose(kl, by_hand, rtol=1e-5)
    chex.assert_shape(gaussian_kl(mp, lp, mq, lq), (4,))


def test_entropy_matches_scipy(policy):
    params = policy.init(jax.random.key(9))
    params["log_std"] = jnp.asarray([0.1, -1.0])
    expected = stats.norm.entropy(scale=np.exp([0.1, -1.0])).sum()
    np.testing.assert_allclose(policy.entropy(params), expected, rtol=1e-5)


def test_min_std_floor_keeps_log_prob_finite():
    policy = make_gaussian_policy(2, 1, PolicyConfig(min_std=1e-3))
    params = policy.init(jax.random.key(10))
    params["log_std"] = jnp.asarray([-50.0])
    _, log_std = policy.mean_and_log_std(params, jnp.zeros(2))
    np.testing.assert_allclose(log_std, [math.log(1e-3)], rtol=1e-6)
    assert np.isfinite(policy.log_prob(params, jnp.zeros(2), jnp.asarray([1.0])))


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(hidden_sizes=(64, 0)), "width"), (dict(activation="gelu"), "activation"), (dict(init_std=0.0), "init_std")],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PolicyConfig(**kwargs)


def test_xavier_uniform_init_is_bounded_and_differs_from_the_default():
    xavier = make_gaussian_policy(2, 2, PolicyConfig(weight_init="xavier_uniform")).init(jax.random.key(0))
    lecun = make_gaussian_policy(2, 2).init(jax.random.key(0))
    kernel = np.asarray(xavier["mlp"]["Dense_1"]["kernel"])  # 64 x 64
    bound = np.sqrt(6.0 / (64 + 64))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3.0), rtol=0.05)  # uniform's std
    assert not np.allclose(kernel, lecun["mlp"]["Dense_1"]["kernel"])
    assert np.all(np.asarray(xavier["mlp"]["Dense_1"]["bias"]) == 0)
    with pytest.raises(ConfigError, match="weight_init"):
        PolicyConfig(weight_init="orthogonal")
