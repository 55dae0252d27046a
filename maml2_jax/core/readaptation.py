r"""Re-adaptation on a new task: update tendency, reset, continue.

Adapt once from θ to θ₁, then read the *update tendency* — the category the first
update moved towards most (Fu et al. 2023, Sec. 3.3):

.. math:: c^* = \arg\min_c \; ‖θ_1 − θ_c‖ − ‖θ − θ_c‖,

reset the working parameters to :math:`θ_{c^*}` and keep adapting. The ablation
"no reset" keeps adapting from θ₁.

Reset rules (``rule``):

* ``"category"`` (the paper's): continue from :math:`θ_{c^*}`. The first round's
  update only reads the tendency; its samples do not adapt what comes next.
* ``"carry"`` (an extension for policy-gradient learners): continue from
  :math:`θ_{c^*} + (θ_1 − θ)`, the first update carried over to the category's
  parameters. It costs no samples: it stands in for adapting :math:`θ_{c^*}` on the
  first round's batch, with the update computed at θ in place of the one at
  :math:`θ_{c^*}`. Entry k of the curve is then one step further along than under
  ``"category"`` for the same samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maml2_jax.core.types import Learner, take, tree_norm
from maml2_jax.errors import check_choice

RESET_RULES = ("category", "carry")


def rule_note(rule: str | None) -> str:
    """A results table's line naming MAML²'s reset rule; "" for the paper's ("category",
    or None: a summary written before the rule was recorded)."""
    return "" if rule in (None, "category") else f"MAML² resets by the {rule!r} rule"


def update_tendency(theta, theta_1, category_params, active=None) -> jax.Array:
    """``argmin_c ‖θ₁ − θ_c‖ − ‖θ − θ_c‖`` (int32); ``category_params`` is ``[N, ...]``.

    ``active`` (``[N]`` bool, optional) restricts the choice to the slots that hold a
    category (a run with an automatic N keeps idle slots).
    """

    def distance(a, b):
        return jax.vmap(lambda c: tree_norm(jax.tree.map(jnp.subtract, a, c)))(b)

    tendency = distance(theta_1, category_params) - distance(theta, category_params)
    if active is not None:
        tendency = jnp.where(active, tendency, jnp.inf)
    return jnp.argmin(tendency).astype(jnp.int32)


def reset(theta, theta_1, category_params, enabled=True, active=None, pointer=None, rule: str = "category"):
    """``(params to continue from, c*)``: by ``rule``, θ_{c*} or θ_{c*} + (θ₁ − θ), when
    ``enabled`` (a bool, may be traced), else θ₁. ``active``: the slots that may be
    chosen (default all); ``pointer``: the adapted parameters the tendency is read
    from, if not θ₁ (the carried update stays θ₁ − θ)."""
    check_choice("reset rule", rule, RESET_RULES)
    chosen = update_tendency(theta, theta_1 if pointer is None else pointer, category_params, active)
    reset_params = take(category_params, chosen)
    if rule == "carry":
        reset_params = jax.tree.map(lambda c, t1, t: c + (t1 - t), reset_params, theta_1, theta)
    params = jax.tree.map(lambda r, t: jnp.where(enabled, r, t), reset_params, theta_1)
    return params, chosen


def adaptation_curve(learner: Learner, rounds: int, params, task, key, category_params=None,
                     reset_enabled: bool = True, active=None, tendency_learner: Learner | None = None,
                     reset_rule: str = "category"):
    """Scores of ``rounds + 1`` adaptation rounds on one task, with the update-tendency reset.

    ``learner.adapt`` is one round (one policy-gradient step, one episode); round k
    uses ``fold_in(key, k)``. Round 0 adapts θ to θ₁; with ``category_params``
    ``[N, ...]`` and ``reset_enabled`` the parameters then become θ_{c*}, otherwise
    they stay θ₁ (``reset_rule`` "carry": θ_{c*} + (θ₁ − θ), see :func:`reset`);
    rounds 1..``rounds`` adapt on. Entry k of the curve is
    ``learner.score`` of round k (for a policy-gradient learner: the return of the
    batch sampled before that round's update).

    ``tendency_learner`` (optional, with ``category_params``): the update tendency is
    read from its own adaptation of θ (key ``fold_in(key, rounds + 1)``) instead of
    round 0's; round 0's score and θ₁ (the no-reset path) stay the learner's. A
    policy-gradient learner with a larger batch gives a less noisy tendency.

    Returns:
      ``(scores [rounds + 1], c*)``, c* = −1 without categories.
    """
    theta_1, stats = learner.adapt(params, task, jax.random.fold_in(key, 0))
    first = jnp.mean(learner.score(stats))
    chosen = jnp.int32(-1)
    current = theta_1
    if category_params is not None:
        pointer = None
        if tendency_learner is not None:
            pointer, _ = tendency_learner.adapt(params, task, jax.random.fold_in(key, rounds + 1))
        current, chosen = reset(params, theta_1, category_params, reset_enabled, active, pointer, reset_rule)

    def body(p, k):
        p, stats = learner.adapt(p, task, jax.random.fold_in(key, k))
        return p, jnp.mean(learner.score(stats))

    _, later = jax.lax.scan(body, current, jnp.arange(1, rounds + 1))
    return jnp.concatenate([first[None], later]), chosen
