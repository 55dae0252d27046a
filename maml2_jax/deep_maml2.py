r"""MAML² with neural policies (DESIGN §1.2): categories of a task pool, each with its
own MAML-TRPO meta-update, and the global initialisation meta-learned from them.

A fixed **pool** of P training tasks is drawn once from the family. Every R outer
iterations the pool is **classified**: each task is adapted from the global θ and its
feature — the adapted parameters θ_T or the update θ_T − θ, flattened — goes to
k-means (host side, between compiled calls). New clusters keep the identity of the
old categories by Hungarian matching of their centroids to the previous ones, so
category c's parameters stay with "its" tasks across re-clustering.

One **outer iteration** (one jitted call):

.. code-block:: text

   for every category c (vmapped over the stacked θ_c in "parallel" mode,
                         one after another in "sequential" mode):
     θ_c ← θ                     (category_init="global", the published rule)
        or θ_c kept              (category_init="persistent")
     repeat K_in times:
       T_c ~ U(members of c)^B    (B tasks per category, drawn with replacement)
       θ_c ← MAML-TRPO(θ_c; T_c)  (:func:`maml2_jax.maml_trpo.make_maml_trpo_update`)
     sequential: θ ← θ + (1/N)(θ_c − θ)
   parallel: θ ← θ + (1/N) Σ_c (θ_c − θ) = (1/N) Σ_c θ_c

**Ragged categories.** Category sizes differ; a membership mask ``[N, P]`` turns
each category into a categorical distribution over its own pool tasks, so every
category's meta-batch has the same size B and the vmapped arrays are rectangular: no
compute is spent on padding, and a category of 2 tasks is meta-learned with as many
samples per step as one of 50.

**Re-adaptation** on a new task (:func:`adaptation_curve`): one policy-gradient
step from θ gives θ₁; the update tendency
:math:`c^* = \arg\min_c ‖θ₁ − θ_c‖ − ‖θ − θ_c‖` (on flattened parameters,
:func:`maml2_jax.maml2.update_tendency`) picks a category; the policy resets to
θ_{c*} and adapts on from there.

With one category holding the whole pool, "global" initialisation and K_in = 1, an
outer iteration is exactly one MAML-TRPO iteration on the pool.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy.optimize import linear_sum_assignment

from maml2_jax import clustering, meta_updates
from maml2_jax.errors import ConfigError, check_positive_int
from maml2_jax.learners.policy_gradient import PolicyGradientAdapter
from maml2_jax.maml2 import OUTER_MODES, update_tendency

FEATURES = ("update", "adapted")
CATEGORY_INITS = ("persistent", "global")


@dataclasses.dataclass(frozen=True)
class DeepMAML2Config:
    """How deep MAML² classifies and meta-trains.

    Attributes:
      num_categories: N, categories of the task pool.
      pool_size: P, training tasks drawn once from the family and classified.
      tasks_per_category: B, tasks of each category's meta-update per step (drawn
        with replacement from its members); N·B tasks are adapted per step.
      category_steps: K_in, meta-updates of each category per outer iteration.
      recluster_every: R, outer iterations between classifications (the first is
        before iteration 0).
      feature: "update" (θ_T − θ) or "adapted" (θ_T), the classification feature.
      outer_update: "parallel" (categories vmapped, then the mean) or "sequential"
        (the published rule: each category starts from θ moved by the previous ones).
      category_init: "persistent" (θ_c carries on from its previous value, so each
        category keeps specialising) or "global" (θ_c ← θ at every outer iteration,
        as in the published tabular algorithm).
    """

    num_categories: int = 3
    pool_size: int = 40
    tasks_per_category: int = 10
    category_steps: int = 1
    recluster_every: int = 10
    feature: str = "update"
    outer_update: str = "parallel"
    category_init: str = "persistent"

    def __post_init__(self):
        check_positive_int("number of categories", self.num_categories)
        check_positive_int("pool size", self.pool_size)
        check_positive_int("tasks per category", self.tasks_per_category)
        check_positive_int("category steps", self.category_steps)
        check_positive_int("recluster interval", self.recluster_every)
        if self.num_categories > self.pool_size:
            raise ConfigError(f"cannot make {self.num_categories} categories of a pool of {self.pool_size} tasks")
        if self.feature not in FEATURES:
            raise ConfigError(f"feature must be one of {', '.join(FEATURES)}, got {self.feature!r}")
        if self.outer_update not in OUTER_MODES:
            raise ConfigError(f"outer update must be one of {', '.join(OUTER_MODES)}, got {self.outer_update!r}")
        if self.category_init not in CATEGORY_INITS:
            raise ConfigError(f"category init must be one of {', '.join(CATEGORY_INITS)}, got {self.category_init!r}")


class DeepMAML2State(NamedTuple):
    """The meta-learned parameters.

    Attributes:
      theta: the global initialisation θ.
      category_params: θ_c stacked on a leading axis ``[N, ...]``.
    """

    theta: object
    category_params: object


class CategoryMetrics(NamedTuple):
    """Per-category figures of one outer iteration, each ``[N]`` (last category step)."""

    pre_return: jax.Array
    post_return: jax.Array
    kl: jax.Array
    step_fraction: jax.Array


def init_state(theta, num_categories: int) -> DeepMAML2State:
    """Every θ_c starts at θ."""
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_categories,) + x.shape), theta)
    return DeepMAML2State(theta, stacked)


def make_features(adapter: PolicyGradientAdapter, feature: str) -> Callable:
    """``features(theta, tasks [P, ...], key) -> [P, D]``: flattened θ_T or θ_T − θ per task."""
    if feature not in FEATURES:
        raise ConfigError(f"feature must be one of {', '.join(FEATURES)}, got {feature!r}")

    def one(theta, task, key):
        adapted, _ = adapter.adapt(theta, task, key)
        flat_adapted, _ = ravel_pytree(adapted)
        if feature == "adapted":
            return flat_adapted
        return flat_adapted - ravel_pytree(theta)[0]

    def features(theta, tasks, key):
        keys = jax.random.split(key, jax.tree.leaves(tasks)[0].shape[0])
        return jax.vmap(one, in_axes=(None, 0, 0))(theta, tasks, keys)

    return features


def match_to_previous(centroids: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """``perm [N]``: new cluster k becomes category ``perm[k]``, the assignment that
    minimises the summed distance between matched centroids (Hungarian method)."""
    cost = np.linalg.norm(centroids[:, None, :] - previous[None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(rows), np.int64)
    perm[rows] = cols
    return perm


def classify(features: np.ndarray, num_categories: int, seed: int,
             previous_centroids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Host side: k-means labels ``[P]`` and centroids ``[N, D]``, renumbered to match
    ``previous_centroids`` when given (category identity kept across re-clustering)."""
    features = np.asarray(features, np.float64)
    labels = clustering.kmeans_labels(features, num_categories, seed)
    centroids = np.stack([features[labels == c].mean(axis=0) for c in range(num_categories)])
    if previous_centroids is not None:
        perm = match_to_previous(centroids, previous_centroids)
        labels = perm[labels].astype(np.int32)
        centroids = centroids[np.argsort(perm)]
    return labels, centroids


def sample_category_tasks(pool, members: jax.Array, key: jax.Array, per_category: int):
    """``[N, B, ...]`` tasks: row c drawn uniformly with replacement from category c.

    Args:
      pool: ``[P, ...]`` the training tasks.
      members: ``[N, P]`` bool, the membership mask; every row needs a True.
      key: PRNG key; category c uses ``fold_in(key, c)``.
      per_category: B.
    """
    logits = jnp.where(members, 0.0, -jnp.inf)

    def draw(c, row):
        return jax.random.categorical(jax.random.fold_in(key, c), row, shape=(per_category,))

    index = jax.vmap(draw)(jnp.arange(members.shape[0]), logits)
    return jax.tree.map(lambda x: x[index], pool)


def make_maml2_iteration(update: Callable, config: DeepMAML2Config) -> Callable:
    """Returns ``iteration(state, pool, members, key) -> (state, CategoryMetrics)`` (pure; jit it).

    Args:
      update: ``(params, tasks [B, ...], key) -> (params, metrics)``, the meta-update
        of one parameter set (:func:`maml2_jax.maml_trpo.make_maml_trpo_update` with
        ``num_tasks = B``).
      config: the schedule.

    Keys: step ``k`` of category ``c`` draws its tasks with ``fold_in(k_tasks, k)``
    (row c as in :func:`sample_category_tasks`) and updates with
    ``split(fold_in(k_update, k), N)[c]``, in both outer modes.
    """
    n = config.num_categories
    weight = 1.0 / n

    def category_steps(theta_c, tasks, keys):
        # K_in meta-updates of one category; ``tasks`` [K_in, B, ...], ``keys`` [K_in].
        def body(params, inputs):
            step_tasks, step_key = inputs
            return update(params, step_tasks, step_key)

        theta_c, metrics = jax.lax.scan(body, theta_c, (tasks, keys))
        return theta_c, jax.tree.map(lambda x: x[-1], metrics)

    def iteration(state: DeepMAML2State, pool, members, key):
        k_tasks, k_update = jax.random.split(key)
        steps = jnp.arange(config.category_steps)
        # [K_in, N, B, ...] -> [N, K_in, B, ...]; keys [N, K_in]
        tasks = jax.vmap(lambda k: sample_category_tasks(pool, members, jax.random.fold_in(k_tasks, k),
                                                         config.tasks_per_category))(steps)
        tasks = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), tasks)
        keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k_update, k), n))(steps).T

        if config.outer_update == "parallel":
            start = state.category_params
            if config.category_init == "global":
                start = jax.tree.map(lambda c, t: jnp.broadcast_to(t, c.shape), start, state.theta)
            category_params, metrics = jax.vmap(category_steps)(start, tasks, keys)
            theta = meta_updates.mean_over_categories(category_params)
        else:
            def one_category(theta, inputs):
                stored, cat_tasks, cat_keys = inputs
                start = theta if config.category_init == "global" else stored
                theta_c, metrics = category_steps(start, cat_tasks, cat_keys)
                return meta_updates.interpolate(theta, theta_c, weight), (theta_c, metrics)

            theta, (category_params, metrics) = jax.lax.scan(
                one_category, state.theta, (state.category_params, tasks, keys))
        figures = CategoryMetrics(metrics.pre_return, metrics.post_return, metrics.trpo.kl,
                                  metrics.trpo.step_fraction)
        return DeepMAML2State(theta, category_params), figures

    return iteration


def adaptation_curve(adapter: PolicyGradientAdapter, steps: int, params, task, key, category_params=None,
                     reset: bool = True):
    """Mean per-episode return of the policy in use before each of ``steps + 1`` batches.

    Batch 0 is sampled with ``params`` (θ) and gives θ₁ by one policy-gradient step.
    With ``category_params`` ``[N, ...]`` and ``reset``, the policy then becomes θ_{c*}
    (update tendency); otherwise it stays θ₁. Each later batch k is sampled with the
    current policy, then a step is taken. Single task; callers vmap.

    Returns:
      ``(returns [steps + 1], chosen)``: ``chosen`` is c* (−1 without categories).
    """
    batch = adapter.sample(params, task, jax.random.fold_in(key, 0))
    first = jnp.mean(jnp.sum(batch.trajectories.rewards, axis=-1))
    theta_1 = adapter.step(params, batch)
    chosen = jnp.int32(-1)
    current = theta_1
    if category_params is not None:
        chosen = update_tendency(params, theta_1, category_params)
        if reset:
            current = jax.tree.map(lambda x: x[chosen], category_params)

    def body(p, k):
        batch = adapter.sample(p, task, jax.random.fold_in(key, k))
        return adapter.step(p, batch), jnp.mean(jnp.sum(batch.trajectories.rewards, axis=-1))

    _, later = jax.lax.scan(body, current, jnp.arange(1, steps + 1))
    return jnp.concatenate([first[None], later]), chosen
