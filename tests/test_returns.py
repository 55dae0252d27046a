"""Tests of maml2_jax.returns: discounted returns, GAE and the linear feature baseline."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml2_jax import returns as rt

# Every function is run both as is and jitted.
VARIANTS = pytest.mark.parametrize("variant", [lambda f: f, jax.jit], ids=["nojit", "jit"])


# ---------------------------------------------------------------- references


def returns_loop(r, gamma):
    """Python-loop discounted returns of one trajectory (float64)."""
    g, out = 0.0, np.zeros(len(r))
    for t in reversed(range(len(r))):
        g = r[t] + gamma * g
        out[t] = g
    return out


def gae_loop(r, v, gamma, lam):
    """Python-loop GAE of one trajectory, value after the horizon 0 (float64)."""
    h = len(r)
    out = np.zeros(h)
    for t in range(h):
        acc = 0.0
        for k in range(h - t):
            v_next = v[t + k + 1] if t + k + 1 < h else 0.0
            delta = r[t + k] + gamma * v_next - v[t + k]
            acc += (gamma * lam) ** k * delta
        out[t] = acc
    return out


def features_np(obs, scale=100.0):
    """Independent NumPy construction of [o, o², a, a², a³, 1], a = t/scale."""
    h = obs.shape[0]
    a = (np.arange(h) / scale)[:, None]
    return np.concatenate([obs, obs**2, a, a**2, a**3, np.ones((h, 1))], axis=1)


def ridge_lstsq(phi, g, reg):
    """The regularised problem as an augmented least-squares problem, in float64:
    min ‖[Φ; √reg·I] w − [g; 0]‖²."""
    f = phi.shape[1]
    a = np.concatenate([phi, np.sqrt(reg) * np.eye(f)])
    b = np.concatenate([g, np.zeros(f)])
    return np.linalg.lstsq(a, b, rcond=None)[0]


def point_nav_batch(seed, n=20, h=100, d=2):
    """Trajectories in the plane drifting towards a goal, reward −distance.

    Returns float64 (obs [N, H, D], rewards [N, H]); with γ = 0.99 the returns are
    of order −50, the scale of the point-navigation task of DESIGN §1.2.
    """
    rng = np.random.default_rng(seed)
    goal = rng.uniform(-0.5, 0.5, (1, 1, d))
    start = rng.uniform(-1.0, 1.0, (n, 1, d))
    drift = 0.3 * (goal - start) / h
    obs = start + np.cumsum(drift + rng.normal(0.0, 0.05, (n, h, d)), axis=1)
    rewards = -np.linalg.norm(obs - goal, axis=-1) - 0.5
    return obs, rewards


# ---------------------------------------------------------------- discounted returns


@VARIANTS
def test_discounted_returns_hand_example(variant):
    r = jnp.array([[1.0, 0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 2.0, 0.0, -1.0]])
    # Worked backwards with γ = 0.5, G_5 = 0:
    #   row 0: G4 = 1, G3 = .5, G2 = .25, G1 = .125, G0 = 1 + .0625
    #   row 1: G4 = −1, G3 = −.5, G2 = 2 − .25, G1 = 1 + .875, G0 = .9375
    expected = np.array([[1.0625, 0.125, 0.25, 0.5, 1.0], [0.9375, 1.875, 1.75, -0.5, -1.0]])
    got = variant(jax.vmap(rt.discounted_returns, in_axes=(0, None)))(r, 0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@VARIANTS
def test_discounted_returns_per_step_discount(variant):
    r = jnp.array([0.0, 1.0, 2.0, 0.0, -1.0])
    discount_t = jnp.array([0.5, 0.5, 0.0, 0.5, 0.5])  # nothing flows back past t = 2
    # G4 = −1, G3 = −.5, G2 = 2 + 0·G3 = 2, G1 = 1 + .5·2 = 2, G0 = 0 + .5·2 = 1
    got = variant(rt.discounted_returns)(r, discount_t)
    np.testing.assert_allclose(got, [1.0, 2.0, 2.0, -0.5, -1.0], rtol=1e-6)


@VARIANTS
@pytest.mark.parametrize("h", [1, 7, 123])
def test_discounted_returns_python_loop(variant, h):
    rng = np.random.default_rng(h)
    r = rng.normal(size=(3, h))
    got = variant(jax.vmap(rt.discounted_returns, in_axes=(0, None)))(jnp.float32(r), 0.99)
    expected = np.stack([returns_loop(row, 0.99) for row in r])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_jit_and_nojit_agree():
    rng = np.random.default_rng(0)
    r, v = jnp.float32(rng.normal(size=(2, 7)))
    np.testing.assert_allclose(
        jax.jit(rt.discounted_returns)(r, 0.9), rt.discounted_returns(r, 0.9), rtol=1e-6
    )
    np.testing.assert_allclose(
        jax.jit(rt.gae_advantages)(r, v, 0.9, 0.8), rt.gae_advantages(r, v, 0.9, 0.8), rtol=1e-6
    )


def test_rank_is_checked():
    with pytest.raises(AssertionError):
        rt.discounted_returns(jnp.zeros((2, 5)), 0.9)
    with pytest.raises(AssertionError):
        rt.gae_advantages(jnp.zeros(5), jnp.zeros(4), 0.9, 1.0)


# ---------------------------------------------------------------- GAE


@VARIANTS
def test_gae_lambda_one_is_returns_minus_baseline(variant):
    rng = np.random.default_rng(1)
    r, v = jnp.float32(rng.normal(size=(2, 4, 9)))
    gae = variant(jax.vmap(rt.gae_advantages, in_axes=(0, 0, None, None)))(r, v, 0.95, 1.0)
    g = jax.vmap(rt.discounted_returns, in_axes=(0, None))(r, 0.95)
    np.testing.assert_allclose(gae, g - v, rtol=1e-5, atol=1e-5)


@VARIANTS
def test_gae_lambda_zero_is_td_error(variant):
    rng = np.random.default_rng(2)
    r, v = jnp.float32(rng.normal(size=(2, 4, 9)))
    gae = variant(jax.vmap(rt.gae_advantages, in_axes=(0, 0, None, None)))(r, v, 0.95, 0.0)
    v_next = jnp.concatenate([v[:, 1:], jnp.zeros((4, 1))], axis=1)
    np.testing.assert_allclose(gae, r + 0.95 * v_next - v, rtol=1e-6, atol=1e-6)


@VARIANTS
@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_python_loop(variant, gamma, lam):
    rng = np.random.default_rng(3)
    r = rng.normal(size=(5, 13))
    v = rng.normal(size=(5, 13))
    batched = jax.vmap(rt.gae_advantages, in_axes=(0, 0, None, None))
    got = variant(batched)(jnp.float32(r), jnp.float32(v), gamma, lam)
    expected = np.stack([gae_loop(r[i], v[i], gamma, lam) for i in range(5)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- linear baseline


def test_baseline_features_layout():
    obs = np.random.default_rng(4).normal(size=(150, 3))
    got = rt.baseline_features(jnp.float32(obs))
    chex.assert_shape(got, (150, 2 * 3 + 4))
    np.testing.assert_allclose(got, features_np(obs), rtol=1e-6, atol=1e-6)
    scaled = rt.baseline_features(jnp.float32(obs), horizon_scale=200.0)
    np.testing.assert_allclose(scaled[:, 6], np.arange(150) / 200.0)
    clipped = rt.baseline_features(jnp.float32(10 * obs), obs_clip=1.0)
    assert float(jnp.max(jnp.abs(clipped[:, :3]))) == 1.0


def _task_problem(seed, n=20, h=100):
    obs, rewards = point_nav_batch(seed, n=n, h=h)
    g = np.stack([returns_loop(row, 0.99) for row in rewards])
    phi = np.stack([features_np(o) for o in obs])
    return phi, g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_matches_regularised_lstsq(seed):
    """Weights agree with float64 lstsq on the augmented problem.

    Tolerance: relative 1e-4 on ‖w‖ and 1e-4 of the returns' scale on the fitted
    values. With float32 (ε ≈ 6e-8) and κ(Φ) ≈ 140 here the refined normal-equations
    solve measures 3–6e-6 on the weights; an unrefined solve measures 2e-5–2e-4 and
    fails this test for seeds 0 and 1.
    """
    phi, g = _task_problem(seed)
    assert -70.0 < g.mean() < -30.0  # realistic scale
    w = jax.jit(rt.fit_linear_baseline)(jnp.float32(phi), jnp.float32(g))
    w_ref = ridge_lstsq(phi.reshape(-1, phi.shape[-1]), g.reshape(-1), 1e-5)
    w = np.asarray(w, np.float64)
    assert np.linalg.norm(w - w_ref) <= 1e-4 * np.linalg.norm(w_ref)
    np.testing.assert_allclose(phi @ w, phi @ w_ref, atol=1e-4 * np.abs(g).max())


def test_fit_matches_lstsq_on_ill_conditioned_features():
    """Large observations (κ(Φ) ≈ 6e4): still ≤ 1e-4 relative on the weights (measured 4e-6)."""
    rng = np.random.default_rng(5)
    obs = 20.0 * rng.normal(size=(20, 1, 2)) + np.cumsum(rng.normal(0.0, 1.0, (20, 100, 2)), axis=1)
    phi = np.stack([features_np(o) for o in obs])
    flat = phi.reshape(-1, phi.shape[-1])
    assert np.linalg.cond(flat) > 1e4
    g = flat @ rng.normal(size=flat.shape[1]) + rng.normal(size=len(flat)) - 50.0
    w = np.asarray(rt.fit_linear_baseline(jnp.float32(phi), jnp.float32(g.reshape(20, 100))), np.float64)
    w_ref = ridge_lstsq(flat, g, 1e-5)
    assert np.linalg.norm(w - w_ref) <= 1e-4 * np.linalg.norm(w_ref)


def test_fit_reduces_variance_on_linear_data():
    rng = np.random.default_rng(6)
    obs, _ = point_nav_batch(6)
    phi = np.stack([features_np(o) for o in obs])
    w_true = np.array([3.0, -2.0, 5.0, 4.0, -30.0, 10.0, -5.0, -40.0])
    g = phi @ w_true + rng.normal(0.0, 1.0, size=phi.shape[:2])
    features = jax.vmap(rt.baseline_features)(jnp.float32(obs))
    w = rt.fit_linear_baseline(features, jnp.float32(g))
    values = rt.linear_baseline_values(features, w)
    chex.assert_shape(values, (20, 100))
    residual_var = float(jnp.var(jnp.float32(g) - values))
    assert residual_var < 0.05 * g.var()  # the baseline explains ≥ 95% of the variance (var G ≈ 60)
    assert 0.8 < residual_var < 1.2  # what is left is the unit noise


def test_fit_escalates_reg_on_rank_deficient_features():
    # Constant observations: o = o² = 1 duplicate the bias column, so ΦᵀΦ is singular.
    phi = np.stack([features_np(np.ones((100, 2))) for _ in range(20)])
    flat = phi.reshape(-1, phi.shape[-1])
    g = np.random.default_rng(7).normal(size=flat.shape[0]) - 50.0
    phi32, g32 = jnp.float32(flat), jnp.float32(g)
    # The escalation is really exercised: at reg = 1e-5 the float32 Cholesky fails.
    assert not np.all(np.isfinite(rt._solve_regularised(phi32, g32, 1e-5)))
    w = jax.jit(rt.fit_linear_baseline)(jnp.float32(phi), jnp.float32(g.reshape(20, 100)))
    chex.assert_tree_all_finite(w)
    # Φw is determined even though w is not: it is the projection of g on the time terms.
    regs = [1e-5 * 10**k for k in range(5)]
    chosen = next(reg for reg in regs if np.all(np.isfinite(rt._solve_regularised(phi32, g32, reg))))
    w_ref = ridge_lstsq(flat, g, chosen)
    np.testing.assert_allclose(flat @ np.asarray(w, np.float64), flat @ w_ref, atol=1e-3)  # |G| ≈ 50


def test_fit_all_failing_gives_zero_weights():
    phi = jnp.full((2, 5, 8), jnp.nan)
    w = rt.fit_linear_baseline(phi, jnp.zeros((2, 5)))
    np.testing.assert_array_equal(w, np.zeros(8))


# ---------------------------------------------------------------- advantages_for_task


def test_advantages_for_task_shapes_and_normalisation():
    obs, rewards = point_nav_batch(8)
    out = jax.jit(rt.advantages_for_task, static_argnames="normalize")(
        jnp.float32(obs), jnp.float32(rewards), 0.99, 1.0
    )
    adv, ret, val = out  # unpacks as a 3-tuple
    chex.assert_shape([adv, ret, val], (20, 100))
    assert abs(float(jnp.mean(adv))) < 1e-5
    assert abs(float(jnp.std(adv)) - 1.0) < 1e-5
    np.testing.assert_allclose(ret, np.stack([returns_loop(row, 0.99) for row in rewards]), rtol=1e-4)


def test_advantages_for_task_unnormalised_is_gae_of_fitted_baseline():
    obs, rewards = point_nav_batch(9, n=6, h=40)
    obs, rewards = jnp.float32(obs), jnp.float32(rewards)
    adv, ret, val = rt.advantages_for_task(obs, rewards, 0.9, 0.95, normalize=False)
    w = rt.fit_linear_baseline(jax.vmap(rt.baseline_features)(obs), ret)
    phi = np.stack([features_np(o) for o in np.asarray(obs)])
    np.testing.assert_allclose(val, phi @ np.asarray(w), rtol=1e-4, atol=1e-4)
    expected = np.stack([gae_loop(np.asarray(rewards[i]), np.asarray(val[i]), 0.9, 0.95) for i in range(6)])
    np.testing.assert_allclose(adv, expected, rtol=1e-4, atol=1e-4)
    lam_one, _, _ = rt.advantages_for_task(obs, rewards, 0.9, 1.0, normalize=False)
    np.testing.assert_allclose(lam_one, ret - val, rtol=1e-5, atol=1e-4)


def test_cholesky_and_triangular_solves_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(9, 9))
    spd = a @ a.T + 0.1 * np.eye(9)
    factor = jax.jit(rt._cholesky_lower)(jnp.float32(spd))
    np.testing.assert_allclose(factor, np.linalg.cholesky(spd), rtol=1e-4, atol=1e-4)
    b = rng.normal(size=9)
    x = rt._solve_lower_transposed(factor, rt._solve_lower(factor, jnp.float32(b)))
    np.testing.assert_allclose(x, np.linalg.solve(spd, b), rtol=1e-3, atol=1e-3)
    # An indefinite matrix has no factor: NaNs, which the baseline fit escalates on.
    assert np.isnan(np.asarray(rt._cholesky_lower(jnp.float32(np.diag([1.0, -1.0, 2.0]))))).any()


def test_episode_mean_weighs_each_episode_equally():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(rt.episode_mean(x, mask), (1.5 + 5.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(rt.episode_mean(x, jnp.ones_like(x)), 3.5, rtol=1e-6)
    np.testing.assert_allclose(rt.episode_mean(x), 3.5, rtol=1e-6)
    weights = rt.episode_weights(mask)
    np.testing.assert_allclose(jnp.sum(weights), 1.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(weights * x), rt.episode_mean(x, mask), rtol=1e-6)


def test_masked_advantages_equal_those_of_the_truncated_episodes():
    """Padding after an episode's end changes nothing: the baseline is fitted on the
    valid steps only, and the normalisation weighs each episode equally (float64
    reference on the truncated episodes)."""
    obs, rewards = point_nav_batch(13, n=5, h=30)
    lengths = np.array([30, 12, 1, 25, 7])
    mask = (np.arange(30)[None] < lengths[:, None]).astype(np.float64)
    padded_rewards = rewards * mask
    # Padding rows hold junk observations (as a terminated episode keeps stepping).
    adv, ret, val = rt.advantages_for_task(
        jnp.float32(obs), jnp.float32(padded_rewards), 0.99, 1.0, mask=jnp.float32(mask)
    )
    truncated_returns = [returns_loop(rewards[n, :l], 0.99) for n, l in enumerate(lengths)]
    phi = np.concatenate([features_np(obs[n])[:l] for n, l in enumerate(lengths)])
    w = ridge_lstsq(phi, np.concatenate(truncated_returns), 1e-5)
    raw = [g - features_np(obs[n])[:l] @ w for n, (g, l) in enumerate(zip(truncated_returns, lengths))]
    mean = np.mean([a.mean() for a in raw])
    std = np.sqrt(np.mean([((a - mean) ** 2).mean() for a in raw]))
    for n, l in enumerate(lengths):
        np.testing.assert_allclose(ret[n, :l], truncated_returns[n], rtol=1e-4)
        np.testing.assert_allclose(adv[n, :l], (raw[n] - mean) / std, rtol=1e-3, atol=2e-3)
        np.testing.assert_array_equal(adv[n, l:], 0.0)
        np.testing.assert_array_equal(val[n, l:], 0.0)


def test_advantages_for_task_stops_gradients():
    obs, rewards = point_nav_batch(10, n=4, h=20)

    def loss(o, r):
        return jnp.sum(rt.advantages_for_task(o, r, 0.99, 1.0, normalize=False).advantages ** 2)

    grads = jax.grad(loss, argnums=(0, 1))(jnp.float32(obs), jnp.float32(rewards))
    for gr in grads:
        np.testing.assert_array_equal(gr, np.zeros_like(gr))


def test_advantages_for_task_compiles_once():
    fn = jax.jit(chex.assert_max_traces(rt.advantages_for_task, n=1))
    for seed in (11, 12):
        obs, rewards = point_nav_batch(seed, n=4, h=30)
        chex.assert_tree_all_finite(fn(jnp.float32(obs), jnp.float32(rewards), 0.99, 0.95))
