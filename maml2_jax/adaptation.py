"""Lane-batched adaptation loops.

A *lane* is one independent adaptation (one run × task × method …). All the lanes of
an experiment advance in one ``lax.while_loop`` whose body ticks every lane
(``vmap(learner.tick)``) and whose condition is "some lane still has work".

Why not ``vmap`` of a per-lane ``while_loop``? Batching a while loop makes JAX select
the *whole* carry of every lane on every iteration (a copy of each Q-table per step),
and nesting loops under ``vmap`` makes each inner loop wait for its slowest lane
(the sum of maxima instead of the maximum of sums). Here the learner masks its own
writes for finished lanes at O(1) cost, and every loop runs at the top level.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from maml2_jax.tick_learner import Agent, Task
from maml2_jax.tick_learner import TickLearner as Learner


def tick_while(learner: Learner, has_work: Callable[[Agent], jax.Array], agents: Agent, tasks: Task) -> Agent:
    """Ticks lanes until ``has_work`` (per lane) is False everywhere.

    Args:
      learner: the learner.
      has_work: ``agents -> [L] bool``, batched over lanes.
      agents: ``[L, ...]`` agents.
      tasks: ``[L, ...]`` the task of each lane.
    """
    tick = jax.vmap(learner.tick)
    return jax.lax.while_loop(
        lambda a: jnp.any(has_work(a)),
        lambda a: tick(a, tasks, has_work(a)),
        agents,
    )


def run_episodes(learner: Learner, agents: Agent, tasks: Task, target: jax.Array | int) -> Agent:
    """Continues every lane until it has completed ``target`` episodes in all.

    ``target`` is a scalar or ``[L]``. Lanes already past it are left as they are.
    """
    episodes = jax.vmap(learner.episodes)
    return tick_while(learner, lambda a: episodes(a) < target, agents, tasks)


def adapt(learner: Learner, params, tasks: Task, keys: jax.Array, episodes: int) -> Agent:
    """``Adapt(θ, T, E)`` on every lane: ``episodes`` episodes from ``params``.

    Args:
      params: ``[L, ...]`` start parameters of each lane.
      tasks: ``[L, ...]`` tasks.
      keys: ``[L]`` random keys.
      episodes: ``E``.

    Returns:
      ``[L, ...]`` finished agents (``learner.params`` gives the adapted parameters).
    """
    agents = jax.vmap(learner.start)(params, tasks, keys)
    return run_episodes(learner, agents, tasks, episodes)
