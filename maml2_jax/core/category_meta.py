r"""Category meta-learning: K_in meta-update-rule steps of one category's θ_c.

.. code-block:: text

   CatMeta(c, θ_start):
     θ_c ← θ_start
     for i = 0..K_in−1 (stop early once a step is shorter than the tolerance):
       T ~ U(C_c)^B                        (B tasks of the category, with replacement)
       θ_c ← rule.update(θ_c; T, |C_c|)    (Reptile β/|C|, MAML-TRPO, an optax step)

Ragged categories: category c's tasks are drawn through its row of the membership
mask, so every category's batch has the same shape B whatever its size and the
categories vmap without padding.

Keys: step i of category c in outer iteration k uses ``fold_in(key, n)`` with
``n = (k·N + c)·K_in + i``, split into (task draw, rule update). One counter for
both outer modes means MAML² with N = 1 and (K_out, K_in) = (1, K) is MAML with K
iterations, and (K, 1) the same draws in a different grouping.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maml2_jax.core.types import MetaRule, SourceState, TaskSource, tree_norm


def step_keys(key: jax.Array, outer: jax.Array, category: jax.Array, num_categories: int,
              inner_iterations: int) -> jax.Array:
    """``[K_in]`` keys of category ``category``'s steps in outer iteration ``outer``."""
    first = (outer * num_categories + category) * inner_iterations
    return jax.vmap(lambda i: jax.random.fold_in(key, first + i))(jnp.arange(inner_iterations))


def category_meta(rule: MetaRule, source: TaskSource, source_state: SourceState, members: jax.Array,
                  theta_c, rule_state, keys: jax.Array, tasks_per_step: int, stop_tolerance: float = 0.0):
    """CatMeta of one category (pure; vmap over categories).

    Args:
      rule: the meta-update rule.
      source: the task source; ``source_state`` its state.
      members: ``[P]`` bool, the category's pool tasks (ignored by fresh draws).
      theta_c: the start θ_c; ``rule_state`` the category's rule state.
      keys: ``[K_in]`` step keys (:func:`step_keys`).
      tasks_per_step: B.
      stop_tolerance: stop once a step is shorter than this (the step that falls
        below it is kept); 0 never stops. The length is the rule's ``step_norm``
        metric where it reports one, else ``‖θ_c^{new} − θ_c‖``.

    Returns:
      ``(θ_c, rule_state, metrics)``: ``metrics`` of the last step.
    """
    size = jnp.maximum(jnp.sum(members), 1).astype(jnp.float32)

    def body(carry, key):
        params, state, stopped = carry
        k_task, k_update = jax.random.split(key)
        tasks = source.draw(source_state, members, k_task, tasks_per_step)
        new_params, new_state, metrics = rule.update(params, state, tasks, k_update, size)
        if isinstance(metrics, dict) and "step_norm" in metrics:
            moved = metrics["step_norm"]  # the rule's own measure of its step (Reptile's)
        else:
            moved = tree_norm(jax.tree.map(jnp.subtract, new_params, params))

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(stopped, b, a), new, old)

        carry = (keep(new_params, params), keep(new_state, state), stopped | (moved < stop_tolerance))
        return carry, metrics

    (theta_c, rule_state, _), metrics = jax.lax.scan(body, (theta_c, rule_state, jnp.bool_(False)), keys)
    return theta_c, rule_state, jax.tree.map(lambda x: x[-1], metrics)
