r"""The outer update: how the global θ moves from the category parameters θ_c.

For categories :math:`C_1..C_N` and the category meta-learning
:math:`\mathrm{CatMeta}(c, θ_{start})` of :mod:`maml2_jax.core.category_meta`:

* **sequential** (the published rule, Fu et al. 2023, Alg. 1): for c = 1..N in order,
  :math:`θ_c \leftarrow \mathrm{CatMeta}(c, θ)`, then :math:`θ \leftarrow θ + \frac1N(θ_c - θ)`;
  later categories start from a θ already moved by earlier ones;
* **parallel**: every :math:`θ_c` from the same θ (vmapped over categories), then
  :math:`θ \leftarrow θ + \frac1N\sum_c(θ_c - θ) = \frac1N\sum_c θ_c`.

The start of each θ_c is θ (``category_init="global"``, the published rule) or its
own previous value (``"persistent"``: each category keeps specialising).

With an automatic N the run holds N_max category slots and a mask of the active
ones: idle slots are computed (shapes stay static) but keep their θ_c and do not
move θ, and N is the number of active slots.

With one category both modes are the plain call :math:`θ \leftarrow \mathrm{CatMeta}(1, θ)`
— no vmap, no interpolation — so MAML (N = 1) is literally the same computation in
either mode.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from maml2_jax.core.types import Params, take

OUTER_UPDATES = ("sequential", "parallel")
CATEGORY_INITS = ("global", "persistent")


def interpolate(theta, theta_c, weight):
    """``(1 − w)·θ + w·θ_c``: the sequential global move with ``w = 1/N``."""
    return jax.tree.map(lambda a, b: (1.0 - weight) * a + weight * b, theta, theta_c)


def mean_over_categories(stacked):
    """``(1/N) Σ_c θ_c`` over the leading axis: the parallel global move."""
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), stacked)


def outer_update(category_fn: Callable, theta: Params, category_params: Params, rule_state,
                 num_categories: int, mode: str, category_init: str, active=None):
    """One outer iteration: every category meta-learned, then θ moved.

    Args:
      category_fn: ``(c, θ_start, rule_state_c) -> (θ_c, rule_state_c, metrics)``,
        the category meta-learning of category ``c`` (a traced int32).
      theta: θ.
      category_params: ``[N, ...]`` the previous θ_c (the start in "persistent" mode).
      rule_state: ``[N, ...]`` the categories' rule states.
      num_categories: N (static).
      mode: "sequential" or "parallel".
      category_init: "global" (θ_c ← θ) or "persistent" (θ_c carries on).
      active: ``[N]`` bool, the slots holding a category (None: all, and the program is
        the unmasked one). An idle slot keeps its θ_c and rule state and leaves θ alone.

    Returns:
      ``(θ, θ_c [N, ...], rule_state [N, ...], metrics [N, ...])``.
    """
    if mode not in OUTER_UPDATES:
        raise ValueError(f"outer update must be one of {OUTER_UPDATES}, got {mode!r}")
    if category_init not in CATEGORY_INITS:
        raise ValueError(f"category init must be one of {CATEGORY_INITS}, got {category_init!r}")
    persistent = category_init == "persistent"

    def add_axis(tree):
        return jax.tree.map(lambda x: x[None], tree)

    if active is not None:
        return _masked(category_fn, theta, category_params, rule_state, num_categories, mode, persistent, active)
    if num_categories == 1:
        start = take(category_params, 0) if persistent else theta
        theta_c, state_c, metrics = category_fn(jnp.int32(0), start, take(rule_state, 0))
        return theta_c, add_axis(theta_c), add_axis(state_c), add_axis(metrics)

    categories = jnp.arange(num_categories, dtype=jnp.int32)
    if mode == "parallel":
        starts = category_params if persistent else jax.tree.map(
            lambda c, t: jnp.broadcast_to(t, c.shape), category_params, theta)
        stacked, states, metrics = jax.vmap(category_fn)(categories, starts, rule_state)
        return mean_over_categories(stacked), stacked, states, metrics

    # 1/N in float32, with (1 − w) rounded in float32 too: the same numbers as the
    # grid world's fast path, whose greedy ties make rounding visible in the steps.
    weight = 1.0 / jnp.int32(num_categories)

    def one_category(theta, inputs):
        c, stored, state_c = inputs
        theta_c, state_c, metrics = category_fn(c, stored if persistent else theta, state_c)
        return interpolate(theta, theta_c, weight), (theta_c, state_c, metrics)

    theta, (stacked, states, metrics) = jax.lax.scan(one_category, theta, (categories, category_params, rule_state))
    return theta, stacked, states, metrics


def _masked(category_fn, theta, category_params, rule_state, num_categories, mode, persistent, active):
    """:func:`outer_update` over slots of which only ``active`` hold a category."""

    def keep_idle(new, old):
        return jax.tree.map(lambda a, b: jnp.where(active.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)

    categories = jnp.arange(num_categories, dtype=jnp.int32)
    count = jnp.maximum(jnp.sum(active), 1).astype(jnp.int32)
    if mode == "parallel":
        starts = category_params if persistent else jax.tree.map(
            lambda c, t: jnp.broadcast_to(t, c.shape), category_params, theta)
        stacked, states, metrics = jax.vmap(category_fn)(categories, starts, rule_state)
        stacked, states = keep_idle(stacked, category_params), keep_idle(states, rule_state)
        weights = active.astype(jnp.float32) / count.astype(jnp.float32)
        theta = jax.tree.map(lambda x: jnp.tensordot(weights, x, axes=1).astype(x.dtype), stacked)
        return theta, stacked, states, metrics

    weight = 1.0 / count

    def one_category(theta, inputs):
        c, on, stored, state_c = inputs
        theta_c, new_state, metrics = category_fn(c, stored if persistent else theta, state_c)
        theta_c = jax.tree.map(lambda a, b: jnp.where(on, a, b), theta_c, stored)
        new_state = jax.tree.map(lambda a, b: jnp.where(on, a, b), new_state, state_c)
        moved = jax.tree.map(lambda a, b: jnp.where(on, a, b), interpolate(theta, theta_c, weight), theta)
        return moved, (theta_c, new_state, metrics)

    theta, (stacked, states, metrics) = jax.lax.scan(
        one_category, theta, (categories, active, category_params, rule_state))
    return theta, stacked, states, metrics
