r"""The Reptile step of the published tabular MAML² (Fu et al. 2023, CatMeta):

.. math:: θ_c \leftarrow θ_c + \frac{β}{|C|}\Big(\frac1B\sum_b θ'_b - θ_c\Big),
   \qquad θ'_b = \mathrm{Adapt}(θ_c, T_b),

first order: only the learner's ``adapt`` is needed. A one-task category
(|C| = 1, β = 1) copies the adapted parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maml2_jax.core.types import Learner, MetaRule, task_mean, tree_norm


def reptile_step(theta_c, adapted, step_size):
    """``(θ_c + step_size·(θ' − θ_c), ‖step‖₂)``; the norm is of the step itself, as the
    published early stop reads it."""
    update = jax.tree.map(lambda a, t: step_size * (a - t), adapted, theta_c)
    return jax.tree.map(jnp.add, theta_c, update), tree_norm(update)


def reptile(learner: Learner, beta: float = 1.0) -> MetaRule:
    """The rule; metrics: ``score``, the mean of the learner's scores over the adaptations,
    and ``step_norm``, the length of the step (CatMeta's early stop reads it).

    Keys: a batch of one task adapts with the step's key itself; task b of a larger
    batch with ``split(key, B)[b]``.
    """
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")

    def init(params):
        del params
        return ()

    def update(params, state, tasks, key, category_size, weights=None):
        count = jax.tree.leaves(tasks)[0].shape[0]
        if count == 1:  # a one-task batch's weight can only be 1
            adapted, stats = learner.adapt(params, jax.tree.map(lambda x: x[0], tasks), key)
            score = jnp.mean(learner.score(stats))
        else:
            adapted, stats = jax.vmap(learner.adapt, in_axes=(None, 0, 0))(params, tasks, jax.random.split(key, count))
            score = task_mean(jax.vmap(learner.score)(stats), weights)
            if weights is None:
                adapted = jax.tree.map(lambda x: jnp.mean(x, axis=0), adapted)
            else:  # the weighted mean of the adapted parameters [B] -> θ'
                adapted = jax.tree.map(lambda x: jnp.tensordot(weights, x, axes=1), adapted)
        params, step_norm = reptile_step(params, adapted, beta / category_size)
        return params, state, {"score": score, "step_norm": step_norm}

    return MetaRule(init, update)
