"""Task sources: where meta-training draws its tasks (:class:`~maml2_jax.core.types.TaskSource`).

A family's sampler ``sample_tasks(key, count) -> (tasks [count, ...], truth [count])``
is all they need, so every task family (grid goals, 2-D goals, brax velocities,
sine waves) works with every source.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from maml2_jax.core.types import SourceState, TaskSource, take
from maml2_jax.errors import check_positive_int


def _draw_from_pool(source: SourceState, members: jax.Array, key: jax.Array, count: int):
    # Uniform over the category's members, with replacement (a Gumbel-max draw).
    logits = jnp.where(members, 0.0, -jnp.inf)
    return take(source.pool, jax.random.categorical(key, logits, shape=(count,)))


def _add_to_pool(source: SourceState, task, truth) -> SourceState:
    index = source.size
    pool = jax.tree.map(lambda p, t: p.at[index].set(t), source.pool, task)
    return SourceState(pool, source.truth.at[index].set(truth), index + 1)


def fixed_pool(sample_tasks: Callable, size: int) -> TaskSource:
    """A pool of ``size`` tasks drawn once from the family (MAML²'s classified pool)."""
    check_positive_int("pool size", size)

    def init(key):
        tasks, truth = sample_tasks(key, size)
        return SourceState(tasks, jnp.asarray(truth, jnp.int32), jnp.int32(size))

    return TaskSource("pool", init, _draw_from_pool)


def given_pool(tasks, truth=None) -> TaskSource:
    """A fixed pool of the given tasks ``[P, ...]`` (the grid world's ten goals)."""
    size = jax.tree.leaves(tasks)[0].shape[0]
    truth = jnp.zeros((size,), jnp.int32) if truth is None else jnp.asarray(truth, jnp.int32)

    def init(key):
        del key
        return SourceState(jax.tree.map(jnp.asarray, tasks), truth, jnp.int32(size))

    return TaskSource("pool", init, _draw_from_pool)


def fresh(sample_tasks: Callable) -> TaskSource:
    """New tasks from the family at every step (MAML's customary sampling); no pool."""

    def init(key):
        tasks, truth = sample_tasks(key, 1)
        return SourceState(jax.tree.map(lambda x: x[:0], tasks), jnp.asarray(truth, jnp.int32)[:0], jnp.int32(0))

    def draw(source, members, key, count):
        del source, members
        return sample_tasks(key, count)[0]

    return TaskSource("fresh", init, draw)


def growing(sample_tasks: Callable, capacity: int, initial: int) -> TaskSource:
    """A pool of room ``capacity`` that starts with ``initial`` tasks and grows by ``add``
    (the online setting). Entries past ``size`` are placeholders no category contains."""
    check_positive_int("pool capacity", capacity)
    check_positive_int("initial pool size", initial)
    if initial > capacity:
        raise ValueError(f"initial pool size {initial} exceeds the capacity {capacity}")

    def init(key):
        tasks, truth = sample_tasks(key, capacity)
        return SourceState(tasks, jnp.asarray(truth, jnp.int32), jnp.int32(initial))

    return TaskSource("growing", init, _draw_from_pool, _add_to_pool)
