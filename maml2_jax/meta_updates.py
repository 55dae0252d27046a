r"""Meta-update rules on parameter pytrees.

The tabular track uses first-order, Reptile-style steps (DESIGN §1.1):

* category step: :math:`θ_c \leftarrow θ_c + \frac{β}{|C|}(θ' - θ_c)`, θ' adapted from θ_c;
* sequential global move: :math:`θ \leftarrow θ + \frac{1}{N}(θ_c - θ)` after each category;
* parallel global move: :math:`θ \leftarrow θ + \frac{1}{N}\sum_c (θ_c - θ) = \frac{1}{N}\sum_c θ_c`.

The global moves are written as interpolation and mean so that with one category
(weight 1) they return θ_c *exactly*: MAML² with N = 1 then reduces to MAML bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reptile_step(theta_c, adapted, step_size):
    """Returns ``(θ_c + step_size·(θ' − θ_c), ‖step‖₂)``; ``step_size`` = β/|C|."""
    update = jax.tree.map(lambda a, t: step_size * (a - t), adapted, theta_c)
    return jax.tree.map(jnp.add, theta_c, update), tree_norm(update)


def interpolate(theta, theta_c, weight):
    """``(1 − w)·θ + w·θ_c``: the sequential global move with ``w = 1/N``."""
    return jax.tree.map(lambda a, b: (1.0 - weight) * a + weight * b, theta, theta_c)


def mean_over_categories(stacked):
    """``(1/N) Σ_c θ_c`` over the leading axis: the parallel global move."""
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), stacked)


def tree_norm(tree) -> jax.Array:
    """Euclidean norm of all leaves together."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))
