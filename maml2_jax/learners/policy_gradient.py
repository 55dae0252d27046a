r"""Policy-gradient adaptation of the deep track (DESIGN §1.2): ``Adapt(θ, task, key)``.

One inner step samples ``N`` trajectories with the current parameters, computes
advantages (linear feature baseline, GAE) and takes a vanilla policy-gradient step

.. math::
   L_{in}(θ) = -\frac{1}{N} \sum_n \frac{1}{H_n} \sum_{t < H_n} \log π_θ(a_t^n \mid o_t^n)\, A_t^n,
   \qquad θ_{k+1} = θ_k - α \nabla_θ L_{in}(θ_k),

where :math:`H_n` is the length of episode ``n`` (``H`` unless it ended early;
:func:`maml2_jax.returns.episode_mean`).

Trajectories and advantages are data: no gradient flows through the sampling. The
step itself is differentiable, so MAML's second-order meta-gradient is ``jax.grad``
through :func:`PolicyGradientAdapter.adapt`; with ``first_order`` the inner gradient
is held constant (``stop_gradient``), which gives first-order MAML: the meta-gradient
is the outer gradient at the adapted parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from maml2_jax import returns, rollout
from maml2_jax.core.types import Learner
from maml2_jax.errors import ConfigError, check_float, check_positive_int
from maml2_jax.networks import GaussianPolicy


@dataclasses.dataclass(frozen=True)
class PolicyGradientConfig:
    """The inner loop (defaults: the customary MAML-RL 2-D navigation settings).

    Attributes:
      num_trajectories: trajectories per task per inner step.
      inner_steps: K, policy-gradient steps of one adaptation.
      inner_lr: α, the inner step size.
      discount: γ.
      gae_lambda: λ of GAE (1: Monte-Carlo returns minus the baseline).
      normalize_advantages: standardise the advantages of each task's batch.
      first_order: stop gradients through the inner gradient (first-order MAML).
    """

    num_trajectories: int = 20
    inner_steps: int = 1
    inner_lr: float = 0.1
    discount: float = 0.99
    gae_lambda: float = 1.0
    normalize_advantages: bool = True
    first_order: bool = False

    def __post_init__(self):
        check_positive_int("number of trajectories", self.num_trajectories)
        check_positive_int("inner steps", self.inner_steps)
        # No upper cap on α: a step size that diverges is caught when the loss does.
        object.__setattr__(self, "inner_lr", check_float("inner learning rate", self.inner_lr, low=0, low_open=True))
        object.__setattr__(self, "discount", check_float("discount", self.discount, 0, 1))
        object.__setattr__(self, "gae_lambda", check_float("GAE lambda", self.gae_lambda, 0, 1))
        for name in ("normalize_advantages", "first_order"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name.replace('_', ' ')} must be true or false, got {getattr(self, name)!r}")


class Batch(NamedTuple):
    """One task's inner batch: trajectories ``[N, H, ...]`` and their advantages ``[N, H]``."""

    trajectories: rollout.Trajectory
    advantages: jax.Array


class PolicyGradientAdapter(NamedTuple):
    """Pure functions of the inner loop for one task (callers vmap over tasks).

    Attributes:
      sample: ``(params, task, key) -> Batch``, trajectories with ``params`` and
        their advantages (data: no gradient flows through it).
      loss: ``(params, batch) -> scalar``, the surrogate :math:`L_{in}`.
      step: ``(params, batch) -> params``, one inner step.
      adapt: ``(params, task, key) -> (adapted, returns [K])``, K inner steps; the
        mean per-episode return of each step's batch (before its update) comes back.
    """

    sample: Callable
    loss: Callable
    step: Callable
    adapt: Callable


def make_policy_gradient_adapter(family, policy: GaussianPolicy,
                                 config: PolicyGradientConfig = PolicyGradientConfig()) -> PolicyGradientAdapter:
    """Builds the inner loop of ``policy`` on a task family (``reset``, ``step``, ``config.horizon``)."""
    horizon = family.config.horizon

    def sample(params, task, key):
        params = jax.lax.stop_gradient(params)
        trajectories = rollout.rollout_batch(
            family.reset, family.step, policy.sample, params, task, key, horizon, config.num_trajectories,
            family.terminated,
        )
        advantages = returns.advantages_for_task(
            trajectories.obs, trajectories.rewards, config.discount, config.gae_lambda,
            normalize=config.normalize_advantages, mask=trajectories.mask,
        ).advantages
        return Batch(trajectories, advantages)

    def loss(params, batch: Batch):
        log_probs = policy.log_prob(params, batch.trajectories.obs, batch.trajectories.actions)
        return -returns.episode_mean(log_probs * batch.advantages, batch.trajectories.mask)

    def step(params, batch: Batch):
        grads = jax.grad(loss)(params, batch)
        if config.first_order:
            grads = jax.lax.stop_gradient(grads)
        return jax.tree.map(lambda p, g: p - config.inner_lr * g, params, grads)

    def adapt(params, task, key):
        def inner(params, k):
            batch = sample(params, task, jax.random.fold_in(key, k))
            episode_return = jnp.mean(jnp.sum(batch.trajectories.rewards, axis=-1))
            return step(params, batch), episode_return

        return jax.lax.scan(inner, params, jnp.arange(config.inner_steps))

    return PolicyGradientAdapter(sample, loss, step, adapt)


FEATURES = ("update", "adapted")


def make_policy_gradient_learner(family, policy: GaussianPolicy, config: PolicyGradientConfig = PolicyGradientConfig(),
                                 feature: str = "update") -> Learner:
    """The policy-gradient learner behind the core's :class:`~maml2_jax.core.types.Learner`.

    ``adapt`` is K inner steps (stats: the mean per-episode return of each step's
    batch, ``[K]``), ``score`` those returns, ``feature`` the flattened update
    θ_T − θ (``"update"``) or θ_T (``"adapted"``), and ``meta_loss`` the inner
    surrogate :math:`L_{in}` of the adapted policy on a fresh batch sampled with it —
    differentiable through the K steps (MAML's objective for a gradient rule).
    """
    if feature not in FEATURES:
        raise ConfigError(f"feature must be one of {', '.join(FEATURES)}, got {feature!r}")
    adapter = make_policy_gradient_adapter(family, policy, config)

    def features(params, adapted, stats):
        del stats
        flat = ravel_pytree(adapted)[0]
        return flat if feature == "adapted" else flat - ravel_pytree(params)[0]

    def meta_loss(params, task, key):
        k_inner, k_outer = jax.random.split(key)
        adapted, inner_returns = adapter.adapt(params, task, k_inner)
        batch = adapter.sample(adapted, task, k_outer)
        post_return = jnp.mean(jnp.sum(batch.trajectories.rewards, axis=-1))
        return adapter.loss(adapted, batch), {"pre_return": inner_returns[0], "post_return": post_return}

    return Learner(init=policy.init, adapt=adapter.adapt, feature=features, score=lambda returns: returns,
                   meta_loss=meta_loss)
