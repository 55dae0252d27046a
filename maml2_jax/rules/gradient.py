r"""A meta-gradient through any optax optimiser (MAML with SGD, Adam, …).

.. math:: g = \nabla_θ \frac1B \sum_b L_b\big(\mathrm{Adapt}(θ, T_b)\big)
   \quad \big(\text{or } \textstyle\sum_b w_b L_b \text{ with task weights}\big),
   \qquad (u, s) = \mathrm{opt.update}(g, s, θ), \quad θ \leftarrow θ + u,

where :math:`L_b` is the learner's ``meta_loss`` (its loss after adaptation,
differentiable through the adaptation: second-order MAML unless the learner stops
the inner gradients).
"""

from __future__ import annotations

import functools

import jax
import optax

from maml2_jax.core.types import Learner, MetaRule, task_mean


def gradient(learner: Learner, optimizer: optax.GradientTransformation) -> MetaRule:
    """The rule; metrics: ``loss`` (the mean post-adaptation loss before the step),
    ``grad_norm`` and the means of the learner's ``meta_loss`` metrics. Task b of the
    batch uses ``split(key, B)[b]``."""
    if learner.meta_loss is None:
        raise ValueError("this learner has no differentiable meta_loss; use a first-order rule such as reptile")

    def init(params):
        return optimizer.init(params)

    def update(params, state, tasks, key, category_size, weights=None):
        del category_size
        count = jax.tree.leaves(tasks)[0].shape[0]
        mean = functools.partial(task_mean, weights=weights)  # task weights [B], or the plain mean

        def loss(p):
            losses, aux = jax.vmap(learner.meta_loss, in_axes=(None, 0, 0))(p, tasks, jax.random.split(key, count))
            return mean(losses), jax.tree.map(mean, aux)

        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, state = optimizer.update(grads, state, params)
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads), **aux}
        return optax.apply_updates(params, updates), state, metrics

    return MetaRule(init, update)
