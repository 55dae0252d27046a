r"""One MAML-TRPO meta-iteration for the policy-gradient learner (DESIGN §1.2).

For a meta-batch of tasks :math:`T_i` drawn from the family:

1. inner batches :math:`D^{in}_{i,k}` sampled while adapting,
   :math:`θ'_i(θ) = \mathrm{Adapt}(θ, D^{in}_i)` (K policy-gradient steps, replayable on
   the stored batches so that :math:`θ'_i` is a differentiable function of θ);
2. outer batches :math:`D^{out}_i` sampled with :math:`θ'_i(θ_{old})`;
3. the surrogate of the adapted policies

   .. math:: S(θ) = \frac{1}{T}\sum_i \hat{\mathbb{E}}_{D^{out}_i}
      \Big[\frac{π_{θ'_i(θ)}(a \mid o)}{π_{θ'_i(θ_{old})}(a \mid o)}\, A\Big]

   is maximised by :func:`maml2_jax.trpo.trpo_step` under the mean
   :math:`KL(π_{θ'_i(θ)} \,\|\, π_{θ'_i(θ_{old})})` on the outer observations (new
   policy first, as pytorch-maml-rl has it; both orders have the same Hessian at
   :math:`θ_{old}`, so only the line search's KL check depends on it).
   Both means are :func:`maml2_jax.returns.episode_mean` over the episodes' steps.

The whole update (sampling, adaptation, CG, line search) is one pure function of
``(params, tasks, key)``; MAML is the engine of :mod:`maml2_jax.core.train` with one
category and fresh tasks at every step, MAML² vmaps it over categories.

**Curvature on a subsample** (``curvature_fraction`` < 1, off by default): the
curvature products of CG, which dominate the cost, use only the first
``ceil(fraction · T)`` tasks of the meta-batch (tasks are drawn i.i.d., so these are a
random subset); the gradient, the step size's KL and the line search's KL check still
use every task, so the trust region is enforced on the full batch.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from maml2_jax import sharding, trpo
from maml2_jax.core.types import MetaRule, task_mean
from maml2_jax.errors import ConfigError, check_positive_int
from maml2_jax.learners.policy_gradient import Batch, PolicyGradientAdapter
from maml2_jax.networks import GaussianPolicy, gaussian_kl, gaussian_log_prob
from maml2_jax.returns import episode_mean, episode_weights


class IterationMetrics(NamedTuple):
    """Per-iteration figures: mean per-episode return before and after adaptation, and TRPO's."""

    pre_return: jax.Array
    post_return: jax.Array
    trpo: trpo.TRPOStats


def collect_inner(adapter: PolicyGradientAdapter, inner_steps: int, params, task, key):
    """Adapts on one task, keeping every inner batch: ``(batches [K, ...], adapted)``."""

    def inner(params, k):
        batch = adapter.sample(params, task, jax.random.fold_in(key, k))
        return adapter.step(params, batch), batch

    adapted, batches = jax.lax.scan(inner, params, jnp.arange(inner_steps))
    return batches, adapted


def replay(adapter: PolicyGradientAdapter, params, batches: Batch):
    """θ'(θ): the K inner steps again on stored batches, differentiable in ``params``."""
    adapted, _ = jax.lax.scan(lambda p, batch: (adapter.step(p, batch), None), params, batches)
    return adapted


def task_policies(policy: GaussianPolicy, adapted_params, observations):
    """Each task's policy on its observations: ``(means, log_stds)``, both ``[T, ..., A]``.

    ``adapted_params`` has a leading task axis ``[T]``, ``observations`` is
    ``[T, ..., obs]``; the log-stds are broadcast to the means.
    """
    means, log_stds = jax.vmap(policy.mean_and_log_std)(adapted_params, observations)
    return means, jnp.broadcast_to(log_stds[:, None, None, :], means.shape)


def adapted_policies(policy: GaussianPolicy, adapter: PolicyGradientAdapter, params, batches: Batch, observations):
    """The distributions the MAML-TRPO curvature differentiates: θ'_i(θ) replayed from
    ``params`` on each task's inner ``batches`` ``[T, K, ...]``, on its ``observations``."""
    return task_policies(policy, jax.vmap(lambda b: replay(adapter, params, b))(batches), observations)


def make_maml_trpo_update(policy: GaussianPolicy, adapter: PolicyGradientAdapter, inner_steps: int,
                          num_tasks: int, config: trpo.TRPOConfig = trpo.TRPOConfig(),
                          curvature_fraction: float = 1.0, mesh: Mesh | None = None) -> Callable:
    """Returns ``update(params, tasks [T, ...], key, weights=None) -> (params, IterationMetrics)``.

    The MAML-TRPO meta-update of one parameter set over the given tasks (pure; jit
    it, or vmap it over categories as deep MAML² does).

    ``weights`` ``[T]`` (summing to 1) weigh the tasks in the surrogate, the KL, the
    curvature and the reported returns; None weighs them alike (the plain mean).
    ``curvature_fraction`` in (0, 1]: share of the tasks used for the curvature
    products (see the module docstring; their weights renormalised). ``mesh``: a
    1-D ``"tasks"`` mesh (:func:`maml2_jax.sharding.task_mesh`) to split the tasks
    over, or None for one device; ``num_tasks`` must be a multiple of its size.
    """
    check_positive_int("meta-batch size", num_tasks)
    sharding.check_divisible(num_tasks, mesh)
    check_positive_int("inner steps", inner_steps)
    if not 0.0 < curvature_fraction <= 1.0:
        raise ConfigError(f"curvature fraction must be in (0, 1], got {curvature_fraction}")
    curvature_tasks = max(1, math.ceil(curvature_fraction * num_tasks))

    def update(params, tasks, key, weights=None):
        tasks = sharding.constrain_tasks(tasks, mesh)
        k_inner, k_outer = jax.random.split(key)
        inner_keys = jax.random.split(k_inner, num_tasks)
        outer_keys = jax.random.split(k_outer, num_tasks)
        batches, adapted = jax.vmap(lambda t, k: collect_inner(adapter, inner_steps, params, t, k))(tasks, inner_keys)
        outer = jax.vmap(adapter.sample)(adapted, tasks, outer_keys)
        obs, actions, mask = outer.trajectories.obs, outer.trajectories.actions, outer.trajectories.mask
        old_log_probs = outer.trajectories.log_probs

        def distribution(p, tasks=num_tasks):
            # The policies of the first ``tasks`` tasks, as functions of θ.
            head = jax.tree.map(lambda x: x[:tasks], batches)
            return adapted_policies(policy, adapter, p, head, obs[:tasks])

        # θ'_i(θ_old) is ``adapted``: the old policies need no replay of the adaptation.
        old_means, old_log_stds = task_policies(policy, adapted, obs)

        def objective(p):
            # One replay of the adaptation serves the surrogate and the KL.
            means, log_stds = distribution(p)
            log_probs = gaussian_log_prob(actions, means, log_stds)
            surrogate = episode_mean(jnp.exp(log_probs - old_log_probs) * outer.advantages, mask, weights)
            return surrogate, episode_mean(gaussian_kl(means, log_stds, old_means, old_log_stds), mask, weights)

        curvature = lambda p: distribution(p, curvature_tasks)  # noqa: E731
        head = None if weights is None else weights[:curvature_tasks] / jnp.sum(weights[:curvature_tasks])
        new_params, stats = trpo.trpo_step(config, objective, curvature, params,
                                           episode_weights(mask[:curvature_tasks], head))
        metrics = IterationMetrics(
            pre_return=task_mean(jnp.sum(batches.trajectories.rewards[:, 0], axis=-1), weights),
            post_return=task_mean(jnp.sum(outer.trajectories.rewards, axis=-1), weights),
            trpo=stats,
        )
        return new_params, metrics

    return update


def maml_trpo(policy: GaussianPolicy, adapter: PolicyGradientAdapter, inner_steps: int, num_tasks: int,
              config: trpo.TRPOConfig = trpo.TRPOConfig(), curvature_fraction: float = 1.0,
              mesh: Mesh | None = None) -> MetaRule:
    """MAML-TRPO as a :class:`~maml2_jax.core.types.MetaRule` (no rule state).

    Metrics: ``pre_return``, ``post_return``, ``kl``, ``step_fraction``.
    """
    update = make_maml_trpo_update(policy, adapter, inner_steps, num_tasks, config, curvature_fraction, mesh)

    def init(params):
        del params
        return ()

    def rule_update(params, state, tasks, key, category_size, weights=None):
        del category_size
        params, m = update(params, tasks, key, weights)
        return params, state, {"pre_return": m.pre_return, "post_return": m.post_return, "kl": m.trpo.kl,
                               "step_fraction": m.trpo.step_fraction}

    return MetaRule(init, rule_update)
