"""The tick-machine learner interface of the grid world's fast path (:mod:`maml2_jax.lane_maml2`).

A tick learner is a bundle of pure, *single-lane* functions (no batch axis; the fast
path vmaps them over lanes = runs × tasks × …). Adaptation is written as a resumable
machine advanced one ``tick`` at a time, so that the fast path can interleave its own
work (meta-updates, resets) with the learner's at arbitrary points while many lanes
with different episode lengths share one compiled loop (see :mod:`maml2_jax.adaptation`).
The engine's learner interface is :class:`maml2_jax.core.types.Learner`;
:func:`maml2_jax.learners.sarsa.make_sarsa_learner` puts SARSA behind it.

Terms:
  params: the learner's parameters, any pytree (a Q-table, MLP weights).
  task:   a pytree of arrays describing one task (a goal cell, a target velocity).
  agent:  the full state of one adaptation in progress: current params plus the
          learner's own bookkeeping (exploration schedule, position in the episode,
          random stream). The fast path never looks inside it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

Params = Any
Task = Any
Agent = Any


class TickLearner(NamedTuple):
    """Pure functions describing one learner. All act on a single lane.

    Attributes:
      init_params: ``() -> params``, the untrained initialisation θ_init.
      start: ``(params, task, key) -> agent``, an adaptation starting from
        ``params`` with a fresh exploration schedule and random stream ``key``.
      tick: ``(agent, task, active) -> agent``, one unit of work (an environment
        step for a tabular learner). Must return ``agent`` unchanged where
        ``active`` is False — cheaply: lanes that have finished keep being ticked
        until every lane in the loop has finished.
      episodes: ``agent -> int32``, completed episodes (adaptation rounds) so far.
      params: ``agent -> params``, the agent's current (adapted) parameters.
      with_params: ``(agent, params) -> agent``, replace the parameters and keep
        everything else (the exploration schedule goes on). Used by the reset of
        re-adaptation; only called between episodes.
      feature: ``agent -> [F] float32``, the classification feature of a finished
        adaptation.
      performance: ``agent -> [L]``, a per-episode score of the first ``L``
        episodes (steps to goal for the grid world: lower is better).
    """

    init_params: Callable[[], Params]
    start: Callable[[Params, Task, jax.Array], Agent]
    tick: Callable[[Agent, Task, jax.Array], Agent]
    episodes: Callable[[Agent], jax.Array]
    params: Callable[[Agent], Params]
    with_params: Callable[[Agent, Params], Agent]
    feature: Callable[[Agent], jax.Array]
    performance: Callable[[Agent], jax.Array]
