r"""Trust-region policy optimisation as a meta-update (DESIGN §1.2, MAML-TRPO).

Maximise the surrogate :math:`S(θ)` subject to :math:`\bar{KL}(θ_{old}, θ) ≤ δ`:

1. :math:`g = \nabla S(θ_{old})`;
2. solve :math:`(F + λI)\,x = g` by conjugate gradient, F the Hessian of the mean KL
   at :math:`θ_{old}`;
3. full step :math:`s = \sqrt{2δ / x^\top F x}\; x`, then backtracking
   :math:`θ = θ_{old} + c^k s`, k = 0, 1, …, accepting the first step that improves S
   and keeps the KL within δ (else keep :math:`θ_{old}`).

**Curvature products.** At :math:`θ_{old}` the KL between Gaussians is the
Gauss-Newton form :math:`F = J^\top M J`, where J is the Jacobian of the policy's
distribution parameters (means and log-stds over the batch, here *after* the inner
adaptation) and M the Fisher metric of a Gaussian in those coordinates
(:math:`1/σ^2` for a mean, 2 for a log-std). This is exact at the current point, so
``F v = J^T (M (J v))`` needs one JVP and one VJP, no third derivative. Both reuse one
linearisation (``jax.linearize``), so the CG iterations do not recompute the
forward pass (the adaptation) at all.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from maml2_jax.errors import check_float, check_positive_int


@dataclasses.dataclass(frozen=True)
class TRPOConfig:
    """TRPO settings (defaults: the customary MAML-TRPO ones).

    Attributes:
      max_kl: δ, the trust-region radius in mean KL.
      cg_iterations: conjugate-gradient iterations.
      cg_damping: λ added to the curvature.
      line_search_steps: backtracking steps tried.
      line_search_ratio: c, the backtracking factor.
    """

    max_kl: float = 0.01
    cg_iterations: int = 10
    cg_damping: float = 1e-5
    line_search_steps: int = 15
    line_search_ratio: float = 0.8

    def __post_init__(self):
        object.__setattr__(self, "max_kl", check_float("max KL", self.max_kl, low=0, low_open=True))
        check_positive_int("CG iterations", self.cg_iterations)
        check_positive_int("line search steps", self.line_search_steps)
        object.__setattr__(self, "cg_damping", check_float("CG damping", self.cg_damping, low=0))
        object.__setattr__(self, "line_search_ratio", check_float("line search ratio", self.line_search_ratio, 0, 1,
                                                                  low_open=True, high_open=True))


def conjugate_gradient(matvec: Callable, b: jax.Array, iterations: int) -> tuple[jax.Array, jax.Array]:
    """Approximately solves ``A x = b`` for symmetric positive-definite ``A`` (flat vectors).

    Returns ``(x, xᵀA x)``. The quadratic form comes from CG's own residual,
    ``A x = b − r``, so TRPO's step size costs no extra curvature product.
    """

    def body(_, carry):
        x, r, p, rr = carry
        ap = matvec(p)
        alpha = rr / jnp.maximum(jnp.vdot(p, ap), 1e-30)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = jnp.vdot(r, r)
        p = r + (rr_new / jnp.maximum(rr, 1e-30)) * p
        return x, r, p, rr_new

    x0 = jnp.zeros_like(b)
    x, r, *_ = jax.lax.fori_loop(0, iterations, body, (x0, b, b, jnp.vdot(b, b)))
    return x, jnp.vdot(x, b - r)


def gaussian_fisher_product(distribution: Callable, params, weights: jax.Array | None = None) -> Callable:
    """``v ↦ J^T M J v`` at ``params``, flat in and out (see the module docstring).

    Args:
      distribution: ``params -> (means [..., A], log_stds [..., A])`` of every sample
        the KL averages over (broadcastable to each other).
      params: the point θ_old.
      weights: ``[...]`` the weight of each sample in the averaged KL (summing to 1),
        or None for the plain mean (``1 / number of samples`` each). M is scaled by
        them, so F is the Hessian of the averaged KL.
    """
    flat, unravel = ravel_pytree(params)
    (means, log_stds), jvp = jax.linearize(lambda f: distribution(unravel(f)), flat)
    vjp = jax.linear_transpose(jvp, flat)
    if weights is None:
        weights = jnp.full(means.shape[:-1], 1.0 / (means.size // means.shape[-1]), means.dtype)
    weights = weights[..., None]
    metric_mean = jnp.exp(-2.0 * log_stds) * weights
    metric_log_std = 2.0 * jnp.ones_like(log_stds) * weights

    def product(v):
        d_mean, d_log_std = jvp(v)
        (out,) = vjp((metric_mean * d_mean, metric_log_std * d_log_std))
        return out

    return product


class TRPOStats(NamedTuple):
    """What one TRPO step did."""

    surrogate_before: jax.Array
    surrogate_after: jax.Array
    kl: jax.Array
    step_fraction: jax.Array  # c^k of the accepted step, 0 if none was accepted


def trpo_step(config: TRPOConfig, objective: Callable, distribution: Callable, params,
              curvature_weights: jax.Array | None = None):
    """One constrained step. Pure and jit-able.

    Args:
      config: TRPO settings.
      objective: ``params -> (surrogate, kl)``: the scalar to maximise and the mean
        KL from the old policy (0 at ``params``). One function for both, because the
        line search needs both at every candidate and they usually share their
        expensive part (for MAML, replaying the adaptation).
      distribution: ``params -> (means, log_stds)`` for the curvature (see
        :func:`gaussian_fisher_product`); may cover a subsample of the samples the
        KL averages over.
      params: θ_old.
      curvature_weights: the samples' weights in the KL (see
        :func:`gaussian_fisher_product`); None for the plain mean.

    Returns:
      ``(new params, TRPOStats)``.
    """
    flat, unravel = ravel_pytree(params)
    (before, _), grad = jax.value_and_grad(lambda f: objective(unravel(f)), has_aux=True)(flat)
    fisher = gaussian_fisher_product(distribution, params, curvature_weights)

    def damped(v):
        return fisher(v) + config.cg_damping * v

    direction, curvature = conjugate_gradient(damped, grad, config.cg_iterations)
    full_step = jnp.sqrt(2.0 * config.max_kl / jnp.maximum(curvature, 1e-30)) * direction

    def not_accepted(carry):
        k, _, value, divergence = carry
        ok = (value > before) & (divergence <= config.max_kl) & jnp.isfinite(value)
        return (~ok) & (k < config.line_search_steps)

    def try_next(carry):
        k, _, _, _ = carry
        fraction = config.line_search_ratio ** k.astype(jnp.float32)
        value, divergence = objective(unravel(flat + fraction * full_step))
        return k + 1, fraction, value, divergence

    k0 = jnp.int32(0)
    init = (k0, jnp.float32(0.0), jnp.float32(-jnp.inf), jnp.float32(jnp.inf))
    k, fraction, value, divergence = jax.lax.while_loop(not_accepted, try_next, init)
    accepted = (value > before) & (divergence <= config.max_kl) & jnp.isfinite(value)
    fraction = jnp.where(accepted, fraction, 0.0)
    new_params = unravel(flat + fraction * full_step)
    stats = TRPOStats(before, jnp.where(accepted, value, before), jnp.where(accepted, divergence, 0.0), fraction)
    return new_params, stats
