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

The proportional split (``MetaConfig.category_batch``, not the published rule) gives
category c a share :math:`n_c` of the step's :math:`N B` tasks in proportion to its
size (:func:`batch_counts`). Every category still draws :math:`N B` tasks, a static
shape, and the rule weighs them :math:`w_b = [b < n_c]/n_c`: the first :math:`n_c`
count, the rest by exactly 0.

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


def batch_counts(sizes: jax.Array, total: int) -> jax.Array:
    r"""``[N]`` int32: ``total`` tasks shared out in proportion to the category sizes.

    Largest remainder: :math:`n_c = \lfloor t\,s_c/\sum s \rfloor`, and the tasks left
    over go one each to the largest fractional parts (ties to the lower index). Then
    every non-empty category that got none takes one from the category with the most
    (so ``total`` must be at least the number of non-empty categories). Empty
    categories get 0; the counts sum to ``total`` unless every category is empty.

    Args:
      sizes: ``[N]`` the categories' task counts (``members.sum(-1)``).
      total: the tasks of one step, N·B.
    """
    sizes = jnp.asarray(sizes, jnp.int32)
    n = sizes.shape[0]
    whole = jnp.maximum(jnp.sum(sizes), 1)
    counts, remainders = (total * sizes) // whole, (total * sizes) % whole  # integers: no rounding
    # The first ``left`` by remainder (stable: ties to the lower index) get one more.
    order = jnp.argsort(-remainders, stable=True)
    left = jnp.where(jnp.sum(sizes) > 0, total - jnp.sum(counts), 0)
    counts = counts.at[order].add((jnp.arange(n) < left).astype(jnp.int32))
    for _ in range(n):  # at most N − 1 empty shares to fill; static and tiny
        starved = (sizes > 0) & (counts == 0)
        first = jnp.argmax(starved)
        richest = jnp.argmax(counts)
        move = jnp.any(starved)
        counts = counts.at[first].add(move.astype(jnp.int32)).at[richest].add(-move.astype(jnp.int32))
    return counts


def share_weights(count: jax.Array, total: int) -> jax.Array:
    """``[total]`` task weights of one category's step: 1/count on its first ``count`` tasks, 0 after.

    An empty category (count 0; an idle slot of an automatic N, whose step is thrown
    away) weighs all ``total`` alike, so that its discarded step stays finite.
    """
    count = jnp.where(count > 0, count, total)
    return (jnp.arange(total) < count).astype(jnp.float32) / count.astype(jnp.float32)


def category_meta(rule: MetaRule, source: TaskSource, source_state: SourceState, members: jax.Array,
                  theta_c, rule_state, keys: jax.Array, tasks_per_step: int, stop_tolerance: float = 0.0,
                  weights: jax.Array | None = None):
    """CatMeta of one category (pure; vmap over categories).

    Args:
      rule: the meta-update rule.
      source: the task source; ``source_state`` its state.
      members: ``[P]`` bool, the category's pool tasks (ignored by fresh draws).
      theta_c: the start θ_c; ``rule_state`` the category's rule state.
      keys: ``[K_in]`` step keys (:func:`step_keys`).
      tasks_per_step: B (N·B under the proportional split).
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
        # Without weights the rule's own unweighted mean: the equal split stays the computation it always was.
        extra = () if weights is None else (weights,)
        new_params, new_state, metrics = rule.update(params, state, tasks, k_update, size, *extra)
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
