r"""Returns, GAE and the linear feature baseline of the deep track (DESIGN §1.2).

Trajectories have ``H`` rows; an episode that ended early is padded with rows whose
``mask`` is 0 and reward 0 (:mod:`maml2_jax.rollout`). Nothing is bootstrapped after an
episode's last step, so the return and the value after it are both zero.

* :func:`discounted_returns` and :func:`gae_advantages` handle *one* trajectory
  (``[H]``); callers batch them with ``jax.vmap``.
* :func:`baseline_features`, :func:`fit_linear_baseline` and
  :func:`linear_baseline_values` are the linear feature baseline customary in
  MAML-RL (Duan et al., 2016, "Benchmarking deep reinforcement learning for
  continuous control"; Finn et al., 2017, MAML-TRPO): a least-squares fit of the
  discounted returns on hand-made per-step features, refitted on each task's batch
  of trajectories before its advantages are computed.
* :func:`advantages_for_task` composes them for one task's batch ``[N, H]``.
* :func:`episode_mean` is the average every loss of the deep track takes over steps;
  :func:`episode_weights` gives the same average as per-step weights.

Everything is jit-able; nothing branches in Python on array values.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from maml2_jax.core.types import task_mean

# On GPUs with TF32 tensor cores (A100, H100) the default float32 matmul precision
# keeps only ~10 mantissa bits; the least-squares fit below needs full float32.
_HIGHEST = jax.lax.Precision.HIGHEST


def discounted_returns(r_t: chex.Array, discount: chex.Numeric) -> chex.Array:
    r"""Discounted returns of one fixed-horizon trajectory.

    .. math::
        G_t = \sum_{k=t}^{H-1} γ^{k-t} r_k,
        \qquad\text{i.e. } G_t = r_t + γ_t G_{t+1},\quad G_H = 0,

    computed by a reverse scan. ``discount`` may be a scalar γ or a per-step
    ``γ_t`` (``[H]``), the factor applied to the continuation after step ``t``.

    Args:
      r_t: ``[H]`` rewards ``r_0 … r_{H−1}``.
      discount: scalar or ``[H]`` discount.

    Returns:
      ``[H]`` returns ``G_0 … G_{H−1}``.
    """
    chex.assert_rank(r_t, 1)
    chex.assert_rank(discount, {0, 1})
    discount_t = jnp.broadcast_to(jnp.asarray(discount, r_t.dtype), r_t.shape)

    def step(g_tp1, inputs):
        r, gamma = inputs
        g_t = r + gamma * g_tp1
        return g_t, g_t

    _, g_t = jax.lax.scan(step, jnp.zeros((), r_t.dtype), (r_t, discount_t), reverse=True)
    return g_t


def gae_advantages(
    r_t: chex.Array, v_t: chex.Array, discount: chex.Numeric, lambda_: chex.Numeric
) -> chex.Array:
    r"""Generalised advantage estimates (Schulman et al., 2016) of one trajectory.

    With the value after the horizon taken as zero (:math:`v_H = 0`):

    .. math::
        δ_t = r_t + γ v_{t+1} - v_t, \qquad
        A_t = \sum_{k=0}^{H-1-t} (γλ)^k δ_{t+k}
            = δ_t + γλ A_{t+1},\quad A_H = 0.

    Special cases: λ = 1 gives :math:`A_t = G_t - v_t` (discounted return minus
    baseline); λ = 0 gives the one-step TD error :math:`A_t = δ_t`.

    Args:
      r_t: ``[H]`` rewards.
      v_t: ``[H]`` baseline values ``v_0 … v_{H−1}`` at the states where each
        reward was earned.
      discount: scalar or ``[H]`` discount γ (per-step γ_t as in
        :func:`discounted_returns`).
      lambda_: scalar or ``[H]`` GAE mixing parameter λ ∈ [0, 1].

    Returns:
      ``[H]`` advantages ``A_0 … A_{H−1}``.
    """
    chex.assert_rank([r_t, v_t], 1)
    chex.assert_equal_shape([r_t, v_t])
    chex.assert_rank([discount, lambda_], {0, 1})
    discount_t = jnp.broadcast_to(jnp.asarray(discount, r_t.dtype), r_t.shape)
    lambda_t = jnp.broadcast_to(jnp.asarray(lambda_, r_t.dtype), r_t.shape)

    v_tp1 = jnp.concatenate([v_t[1:], jnp.zeros((1,), v_t.dtype)])
    delta_t = r_t + discount_t * v_tp1 - v_t

    def step(a_tp1, inputs):
        delta, gamma, lam = inputs
        a_t = delta + gamma * lam * a_tp1
        return a_t, a_t

    _, a_t = jax.lax.scan(
        step, jnp.zeros((), r_t.dtype), (delta_t, discount_t, lambda_t), reverse=True
    )
    return a_t


def baseline_features(
    obs: chex.Array, horizon_scale: float = 100.0, obs_clip: float | None = None
) -> chex.Array:
    r"""Per-step features of the linear baseline for one trajectory.

    .. math::
        φ(o_t, t) = [\,o_t,\; o_t^2,\; a_t,\; a_t^2,\; a_t^3,\; 1\,],
        \qquad a_t = t / \text{horizon\_scale},

    with ``t = 0 … H−1`` and squares taken elementwise. Dividing the time index by
    100 is the customary scaling (it keeps ``a_t³`` of order one for horizons of
    100–200 steps).

    Args:
      obs: ``[H, D]`` observations ``o_0 … o_{H−1}``.
      horizon_scale: the divisor of the time index.
      obs_clip: if given, observations are clipped to ``[−obs_clip, obs_clip]``
        first (rllab clips to ±10; pytorch-maml-rl does not clip). ``None`` (the
        default) leaves them as they are.

    Returns:
      ``[H, 2D + 4]`` features.
    """
    chex.assert_rank(obs, 2)
    if obs_clip is not None:
        obs = jnp.clip(obs, -obs_clip, obs_clip)
    horizon = obs.shape[0]
    a_t = (jnp.arange(horizon, dtype=obs.dtype) / horizon_scale)[:, None]
    ones = jnp.ones((horizon, 1), obs.dtype)
    return jnp.concatenate([obs, obs**2, a_t, a_t**2, a_t**3, ones], axis=-1)


def _cholesky_lower(a: chex.Array) -> chex.Array:
    r"""Lower Cholesky factor ``L`` (``a = L Lᵀ``) of a small SPD matrix, column by column.

    Plain jnp ops in a ``fori_loop`` over the ``F`` columns, :math:`O(F^3)` in all
    (``F`` ≤ ~60 features here). Why not ``jnp.linalg.cholesky`` (and ``cho_solve``):
    on CPU those are LAPACK calls that, when batched, hand sub-batches to XLA's
    intra-op thread pool and block until they finish. With the task axis split over
    several CPU devices each device's call can occupy one of the pool's threads
    (one per core) waiting for work that no free thread is left to run: measured on
    2 cores, brax sampling split over 2 devices deadlocked in ``lapack_spotrf``.
    A non-positive pivot gives NaN, as LAPACK's failure does in JAX.
    """
    n = a.shape[-1]
    index = jnp.arange(n)

    def column(j, factor):
        row = factor[j]  # L[j, :j]; the columns from j on are still zero
        pivot = jnp.sqrt(a[j, j] - jnp.dot(row, row, precision=_HIGHEST))
        below = (a[:, j] - jnp.matmul(factor, row, precision=_HIGHEST)) / pivot
        return factor.at[:, j].set(jnp.where(index > j, below, jnp.where(index == j, pivot, 0.0)))

    return jax.lax.fori_loop(0, n, column, jnp.zeros_like(a))


def _solve_lower(factor: chex.Array, rhs: chex.Array) -> chex.Array:
    """``L⁻¹ rhs`` by forward substitution (``L`` lower triangular, ``rhs`` ``[F]``)."""

    def row(i, x):  # x[i:] is still zero, so the dot sums over the solved entries
        return x.at[i].set((rhs[i] - jnp.dot(factor[i], x, precision=_HIGHEST)) / factor[i, i])

    return jax.lax.fori_loop(0, rhs.shape[0], row, jnp.zeros_like(rhs))


def _solve_lower_transposed(factor: chex.Array, rhs: chex.Array) -> chex.Array:
    """``L⁻ᵀ rhs`` by back substitution."""
    n = rhs.shape[0]

    def row(k, x):  # x[:i + 1] is still zero
        i = n - 1 - k
        return x.at[i].set((rhs[i] - jnp.dot(factor[:, i], x, precision=_HIGHEST)) / factor[i, i])

    return jax.lax.fori_loop(0, n, row, jnp.zeros_like(rhs))


def _solve_regularised(phi: chex.Array, g: chex.Array, reg: chex.Numeric) -> chex.Array:
    r"""``argmin_w ‖Φw − g‖² + reg‖w‖²`` by the normal equations, one refinement step.

    Numerics (float32). Forming ``ΦᵀΦ`` squares the condition number of Φ; with
    the collinear time monomials ``a, a², a³, 1`` and ``o, o²`` that reaches
    ``κ(ΦᵀΦ) ~ 1e4–1e8`` on realistic data, so a plain float32 solve loses up to
    ``κ·ε`` (ε ≈ 6e-8) of relative accuracy in ``w`` — measured up to ~2e-2. The
    fitted values ``Φw`` are much less affected (the error lies along directions Φ
    barely sees), but we want ``w`` itself right, so:

    * ``ΦᵀΦ + reg·I`` is factored by Cholesky (:func:`_cholesky_lower`). It is
      symmetric positive definite in exact arithmetic; when rounding makes it
      numerically indefinite (a rank-deficient Φ and a regulariser below the
      rounding of ``ΦᵀΦ``'s entries), the factor gets NaNs, which
      :func:`fit_linear_baseline` detects to escalate ``reg``. (An LU solve would
      instead return huge but finite garbage.)
    * One step of iterative refinement with the residual of the *original*
      problem, ``r = Φᵀ(g − Φw) − reg·w`` (computed from Φ, not from the rounded
      ``ΦᵀΦ``), and ``w ← w + (ΦᵀΦ + reg·I)⁻¹ r`` through the same factor (the
      "corrected semi-normal equations"). This brought the relative error of ``w``
      from ≤ 2e-2 to ≤ 1e-5 at κ(Φ) ≈ 1e5 in our measurements; further steps did
      not help.
    * All products use ``Precision.HIGHEST`` so TF32 is never used on GPUs.
    """
    num_features = phi.shape[-1]
    gram = jnp.matmul(phi.T, phi, precision=_HIGHEST)
    gram = gram + reg * jnp.eye(num_features, dtype=phi.dtype)
    chol = _cholesky_lower(gram)

    def solve(rhs):
        return _solve_lower_transposed(chol, _solve_lower(chol, rhs))

    w = solve(jnp.matmul(phi.T, g, precision=_HIGHEST))
    residual = g - jnp.matmul(phi, w, precision=_HIGHEST)
    residual = jnp.matmul(phi.T, residual, precision=_HIGHEST) - reg * w
    return w + solve(residual)


def fit_linear_baseline(
    features: chex.Array, returns: chex.Array, reg: chex.Numeric = 1e-5, num_tries: int = 5
) -> chex.Array:
    r"""Fits the linear baseline on all the trajectories of one task.

    Minimises over ``w`` the regularised least-squares objective on the stacked
    ``[N·H, F]`` feature matrix Φ and returns ``G``:

    .. math::
        \min_w \; ‖Φ w - G‖^2 + \text{reg}\,‖w‖^2
        \;\Longleftrightarrow\; (Φ^\top Φ + \text{reg}\, I)\, w = Φ^\top G.

    The customary regularisation escalation: try ``reg``, then ``10·reg``, … (``num_tries``
    values, ``reg·10^k`` for ``k < num_tries``) and keep the first solve that is
    finite. To stay jit-able all candidates are solved (they are ``F × F`` systems,
    ``F = 2D + 4``, so this costs little next to forming ``ΦᵀΦ``) and the first
    finite one is selected with ``argmax``. If none is finite (e.g. NaN in the
    data) the weights are all zero: the baseline is then 0 and the advantages are
    plain (GAE-weighted) returns — still an unbiased policy gradient. See
    :func:`_solve_regularised` for the float32 numerics.

    Gradients: candidates that fail are NaN, and NaN leaks into gradients through
    the selection even when not selected; differentiate through this function only
    if every candidate is finite. :func:`advantages_for_task` stops gradients.

    Args:
      features: ``[N, H, F]`` features (:func:`baseline_features` vmapped over N).
      returns: ``[N, H]`` discounted returns (:func:`discounted_returns` vmapped).
      reg: the first regularisation coefficient (customary 1e-5).
      num_tries: how many regularisation values to try (static).

    Returns:
      ``[F]`` weights ``w``.
    """
    chex.assert_rank(features, 3)
    chex.assert_rank(returns, 2)
    chex.assert_equal_shape_prefix([features, returns], 2)
    num_features = features.shape[-1]
    phi = features.reshape(-1, num_features)
    g = returns.reshape(-1).astype(phi.dtype)

    regs = reg * (10.0 ** jnp.arange(num_tries, dtype=phi.dtype))
    candidates = jax.vmap(_solve_regularised, in_axes=(None, None, 0))(phi, g, regs)
    finite = jnp.all(jnp.isfinite(candidates), axis=-1)
    first = jnp.argmax(finite)  # index of the first finite candidate (0 if none)
    return jnp.where(jnp.any(finite), candidates[first], jnp.zeros_like(candidates[first]))


def linear_baseline_values(features: chex.Array, w: chex.Array) -> chex.Array:
    """Baseline values ``Φ w`` for features of any leading shape (``[..., F] → [...]``)."""
    chex.assert_rank(w, 1)
    chex.assert_axis_dimension(features, -1, w.shape[0])
    return jnp.matmul(features, w, precision=_HIGHEST)


def episode_mean(x: chex.Array, mask: chex.Array | None = None, task_weights: chex.Array | None = None) -> chex.Array:
    r"""Mean over episodes of each episode's mean over its own steps.

    .. math:: \frac{1}{N} \sum_n \frac{\sum_t m_{n,t}\, x_{n,t}}{\sum_t m_{n,t}}

    over all leading axes of ``x`` ``[..., H]`` taken as episodes. Each episode weighs
    the same however long it lasted, as in pytorch-maml-rl's ``weighted_mean``; with
    no mask (or all ones) it is the plain mean. With ``task_weights`` :math:`w_k` over
    the first axis (tasks), each task's episodes are averaged and the tasks weighed:
    :math:`\sum_k w_k \bar x_k`.

    Args:
      x: ``[..., H]`` per-step values (``[T, ..., H]`` with task weights).
      mask: ``[..., H]`` 1 on an episode's steps, 0 on padding (every episode has at
        least one step), or None.
      task_weights: ``[T]`` summing to 1, or None (every episode alike).

    Returns:
      A scalar.
    """
    if mask is None and task_weights is None:
        return jnp.mean(x)
    mask = jnp.ones_like(x) if mask is None else mask
    chex.assert_equal_shape([x, mask])
    return task_mean(jnp.sum(x * mask, axis=-1) / jnp.sum(mask, axis=-1), task_weights)


def episode_weights(mask: chex.Array, task_weights: chex.Array | None = None) -> chex.Array:
    """Per-step weights ``w`` ``[..., H]`` with ``Σ w·x = episode_mean(x, mask, task_weights)`` (they sum to 1)."""
    if task_weights is None:
        return mask / (jnp.sum(mask, axis=-1, keepdims=True) * (mask.size // mask.shape[-1]))
    per_task = mask[0].size // mask.shape[-1]  # episodes of one task
    scale = task_weights.reshape((-1,) + (1,) * (mask.ndim - 1)) / per_task
    return scale * mask / jnp.sum(mask, axis=-1, keepdims=True)


class TaskAdvantages(NamedTuple):
    """What :func:`advantages_for_task` returns; unpacks as a 3-tuple."""

    advantages: chex.Array  # [N, H] GAE advantages, normalised if asked
    returns: chex.Array  # [N, H] discounted returns G_t
    values: chex.Array  # [N, H] fitted linear-baseline values v_t


def advantages_for_task(
    obs: chex.Array,
    rewards: chex.Array,
    discount: chex.Numeric,
    lambda_: chex.Numeric,
    normalize: bool = True,
    *,
    mask: chex.Array | None = None,
    reg: chex.Numeric = 1e-5,
    horizon_scale: float = 100.0,
    obs_clip: float | None = None,
    epsilon: float = 1e-8,
    stop_gradient: bool = True,
) -> TaskAdvantages:
    r"""Advantages of one task's batch of trajectories, as the MAML-RL inner loss uses.

    1. ``G = discounted_returns(r, γ)`` per trajectory;
    2. the linear baseline is fitted on all ``N`` trajectories of the task
       (:func:`fit_linear_baseline`) and evaluated, ``v = Φw``;
    3. ``A = gae_advantages(r, v, γ, λ)`` per trajectory;
    4. if ``normalize``: :math:`A \leftarrow (A - \bar A) / (σ_A + ε)` with mean and
       (population) standard deviation taken by :func:`episode_mean` over the
       task's steps.

    Padding rows (``mask`` 0) get zero features, hence zero baseline values, and zero
    advantages.

    Args:
      obs: ``[N, H, D]`` observations ``o_t`` at which the rewards were earned.
      rewards: ``[N, H]`` rewards.
      discount: γ (scalar).
      lambda_: GAE λ (scalar).
      normalize: whether to standardise the advantages over the task's batch
        (static).
      mask: ``[N, H]`` trajectory masks, or None when every episode lasts ``H``.
      reg: first regularisation coefficient of the baseline fit.
      horizon_scale: divisor of the time feature (:func:`baseline_features`).
      obs_clip: optional clipping of observations in the features.
      epsilon: added to the standard deviation when normalising.
      stop_gradient: treat ``obs`` and ``rewards`` as data (the default): the
        advantages of a score-function policy gradient are constants, and a
        differentiable rollout (reparameterised actions in a differentiable
        simulator) must not leak a path-wise gradient into them.

    Returns:
      ``TaskAdvantages(advantages, returns, values)``, each ``[N, H]``.
    """
    chex.assert_rank(obs, 3)
    chex.assert_rank(rewards, 2)
    chex.assert_equal_shape_prefix([obs, rewards], 2)
    chex.assert_rank([discount, lambda_], 0)
    if stop_gradient:
        obs, rewards = jax.lax.stop_gradient((obs, rewards))

    returns = jax.vmap(discounted_returns, in_axes=(0, None))(rewards, discount)
    features = jax.vmap(lambda o: baseline_features(o, horizon_scale, obs_clip))(obs)
    if mask is not None:
        # Zero rows add nothing to the least-squares fit and give zero values.
        features = features * mask[..., None].astype(features.dtype)
    w = fit_linear_baseline(features, returns, reg)
    values = linear_baseline_values(features, w).astype(rewards.dtype)
    advantages = jax.vmap(gae_advantages, in_axes=(0, 0, None, None))(
        rewards, values, discount, lambda_
    )
    if normalize:
        centred = advantages - episode_mean(advantages, mask)
        if mask is not None:
            centred = centred * mask
        advantages = centred / (jnp.sqrt(episode_mean(jnp.square(centred), mask)) + epsilon)
    return TaskAdvantages(advantages, returns, values)
