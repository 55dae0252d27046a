"""The three interfaces the MAML² core knows, and the state of a run.

The core (:mod:`maml2_jax.core`) never sees a grid, an MLP, TRPO or a physics
engine: only these bundles of pure functions, parameter pytrees and tasks as arrays.
A new learner, meta-update rule or task source is a new bundle; nothing in the core
changes.

Terms:
  params: the learner's parameters, any pytree (a Q-table, MLP weights).
  task:   a pytree of arrays describing one task (a goal cell, a target velocity,
          a sine wave's amplitude and phase). A batch of tasks has a leading axis.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

Params = Any
Task = Any
Stats = Any


class Learner(NamedTuple):
    """How one task is learned (single task: callers vmap).

    Attributes:
      init: ``key -> params``, a fresh initialisation θ_init.
      adapt: ``(params, task, key) -> (adapted, stats)``: ``Adapt(θ, T)`` — E episodes
        of SARSA, K policy-gradient steps, K SGD steps. ``stats`` is whatever the
        learner reports about it (steps per episode, returns, losses).
      feature: ``(params, adapted, stats) -> [F]``, the classification feature of an
        adaptation started from ``params`` (θ_T ⊙ μ_T, the update θ_T − θ, or θ_T).
      score: ``stats -> [K]``, a score per adaptation round (steps, return, loss).
      meta_loss: ``(params, task, key) -> (loss, metrics)``, the loss *after*
        adaptation from ``params``, differentiable in ``params`` (MAML's objective).
        Needed only by gradient meta-update rules; None for a learner without one
        (tabular SARSA).
    """

    init: Callable[[jax.Array], Params]
    adapt: Callable[[Params, Task, jax.Array], tuple[Params, Stats]]
    feature: Callable[[Params, Params, Stats], jax.Array]
    score: Callable[[Stats], jax.Array]
    meta_loss: Callable[[Params, Task, jax.Array], tuple[jax.Array, Any]] | None = None


class MetaRule(NamedTuple):
    """A meta-update of one parameter set over a batch of tasks, as a pure pair.

    Attributes:
      init: ``params -> rule_state`` (an optimiser's moments; ``()`` for none).
      update: ``(params, rule_state, tasks [B, ...], key, category_size[, weights]) ->
        (params, rule_state, metrics)``. ``category_size`` is |C|, the number of
        tasks of the category being meta-learned (the Reptile step scales by β/|C|);
        rules that do not need it ignore it. ``weights`` ``[B]`` (summing to 1), passed
        only under the proportional category batch, weigh the tasks in place of the
        plain mean; a task of weight 0 must not change the result. ``metrics`` is a
        pytree of scalars.
    """

    init: Callable[[Params], Any]
    update: Callable[..., tuple[Params, Any, Any]]


class SourceState(NamedTuple):
    """The tasks a run draws from.

    Attributes:
      pool: ``[P, ...]`` task pool (P = 0 for a source of fresh draws).
      truth: ``[P]`` int32 ground-truth category of each pool task (0 when unknown).
      size: how many leading pool entries are in use (a growing pool fills up).
    """

    pool: Task
    truth: jax.Array
    size: jax.Array


class TaskSource(NamedTuple):
    """Where meta-training tasks come from.

    Attributes:
      name: "pool" (a fixed pool, MAML²'s classified tasks), "fresh" (new draws
        from the family every step, MAML's customary sampling) or "growing" (a pool
        that tasks join one at a time: the online setting).
      init: ``key -> SourceState``.
      draw: ``(source, members [P] bool, key, count) -> tasks [count, ...]``, tasks
        of one category (uniform over its members, with replacement); a source of
        fresh draws ignores ``members``.
      add: ``(source, task, truth) -> source``, a task joining the pool (growing
        sources only; None otherwise).
    """

    name: str
    init: Callable[[jax.Array], SourceState]
    draw: Callable[[SourceState, jax.Array, jax.Array, int], Task]
    add: Callable[[SourceState, Task, jax.Array], SourceState] | None = None


@struct.dataclass
class RunState:
    """Everything a MAML² (or MAML: N = 1) run needs to continue.

    A checkpoint is this state, so a resumed run is the uninterrupted one.

    Attributes:
      theta: global meta-parameters θ.
      category_params: ``[N, ...]`` θ_c of every category, stacked.
      rule_state: ``[N, ...]`` every category's meta-update-rule state, stacked.
      source: the task source's state (pool, ground truth, size).
      labels: ``[P]`` int32, each pool task's category at the last classification.
      members: ``[N, P]`` bool, ``members[c, t]``: pool task t is in category c.
      centroids: ``[N, F]`` float32, the categories' feature centroids (for the
        matching that keeps category identities across re-classification).
      classified: whether a classification has happened yet.
      iteration: outer iterations done.
      key: ``[2]`` uint32, the run's key data (``jax.random.wrap_key_data``);
        stored raw so that a checkpoint holds plain arrays.
    """

    theta: Params
    category_params: Params
    rule_state: Any
    source: SourceState
    labels: jax.Array
    members: jax.Array
    centroids: jax.Array
    classified: jax.Array
    iteration: jax.Array
    key: jax.Array

    @property
    def num_categories(self) -> int:
        return self.members.shape[-2]


def tree_norm(tree) -> jax.Array:
    """Euclidean norm of all leaves together."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def take(tree, index):
    """Entry ``index`` of the leading axis of every leaf."""
    return jax.tree.map(lambda x: x[index], tree)


def task_mean(x: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean of ``x`` ``[T, ...]`` over tasks: plain, or each task's mean weighed by ``weights`` ``[T]``
    (summing to 1; a task of weight 0 enters as an exact 0)."""
    if weights is None:
        return jnp.mean(x)
    return jnp.sum(weights * jnp.mean(x.reshape(x.shape[0], -1), axis=-1))


def stack_copies(tree, count: int):
    """``count`` copies of ``tree`` on a new leading axis."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (count,) + jnp.shape(x)), tree)
