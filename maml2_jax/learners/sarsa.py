r"""Tabular on-policy SARSA on the grid world, exactly as DESIGN §1.1 states.

One ``Adapt(θ, task, E)`` = ``E`` episodes of SARSA started from ``Q = θ``:

.. math::
   Q(s, a) \leftarrow Q(s, a) + α\,[r + γ Q(s', a') - Q(s, a)]

with target ``r`` alone on entering the goal. Actions are ε-greedy with ε = ε₀ at the
start of the adaptation, multiplied by ``decay`` after every action choice; greedy ties
go to the lowest action index. An episode is cut after ``max_steps`` moves; the last
transition of a cut episode is still bootstrapped with the action chosen at its
next cell (the ordinary ``for step in range(max_steps)`` loop does the same).

Written as a tick machine (:class:`maml2_jax.tick_learner.TickLearner`): one tick makes one
action choice. A normal tick chooses ``a`` at the current cell, completes the pending
transition's update with ``Q(s, a)``, then moves. After a cut, one extra *flush* tick
chooses at the last cell, completes the update and ends the episode without moving.
This reproduces the order of draws and updates of the plain loop
(``reference_adapt`` in the tests), step for step. Float rounding is the compiler's:
XLA on CPU fuses ``γ·Q(s′,a′) − Q(s,a)`` into one multiply-add (one rounding instead
of two), so bit-identical Q-tables are promised only on the same backend.

Randomness: the ``t``-th action choice of an adaptation uses the two 32-bit words of
``fold_in(key, t)`` (:func:`draw`): ``u = w0 / 2^32`` for the ε test and ``w1 mod 4``
for the random action. Keying draws by ``t`` keeps the stream identical however the
adaptation is split into calls (the re-adaptation reset relies on it).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from maml2_jax import prng
from maml2_jax.envs.gridworld import NUM_ACTIONS, GridWorld
from maml2_jax.errors import check_float
from maml2_jax.core.types import Learner as CoreLearner
from maml2_jax.tick_learner import TickLearner


@dataclasses.dataclass(frozen=True)
class SarsaConfig:
    """Hyper-parameters of the tabular learner (defaults: the published ones).

    Attributes:
      alpha: learning rate α.
      gamma: discount γ.
      epsilon: ε at the start of every adaptation.
      epsilon_decay: factor applied to ε after every action choice.
      q_init: value of every entry of θ_init.
    """

    alpha: float = 0.1
    gamma: float = 0.99
    epsilon: float = 0.1
    epsilon_decay: float = 0.999
    q_init: float = 0.5

    def __post_init__(self):
        unit, open_unit = {"low": 0, "high": 1}, {"low": 0, "high": 1, "low_open": True}
        checks = {"alpha": open_unit, "gamma": unit, "epsilon": unit, "epsilon_decay": open_unit,
                  "q_init": {}}  # any finite float32 value
        for name, bounds in checks.items():
            object.__setattr__(self, name, check_float(name.replace("_", " "), getattr(self, name), **bounds))


class SarsaAgent(NamedTuple):
    """One SARSA adaptation in progress (single lane).

    Attributes:
      q: ``[S, 4]`` float32, the Q-table: the adapted parameters.
      cell: current cell.
      epsilon: exploration rate for the next choice.
      choices: action choices made so far; indexes the random stream.
      episodes: completed episodes.
      episode_steps: moves made in the current episode.
      pending: a non-terminal transition ``(prev_cell, prev_action)`` awaits its
        update (its reward is always 0: only the goal pays).
      prev_cell, prev_action: that transition.
      cut: the current episode hit ``max_steps``; the next tick flushes it.
      visits: ``[S, 4]`` int32 visit counts of episode number ``stamp``.
      stamp: ``[S, 4]`` int32, the episode each ``visits`` entry counts.
      last_steps: moves of the last completed episode.
      steps_log: ``[L]`` int32 moves of each of the first ``L`` episodes.
      key: the adaptation's random stream.
    """

    q: jax.Array
    cell: jax.Array
    epsilon: jax.Array
    choices: jax.Array
    episodes: jax.Array
    episode_steps: jax.Array
    pending: jax.Array
    prev_cell: jax.Array
    prev_action: jax.Array
    cut: jax.Array
    visits: jax.Array
    stamp: jax.Array
    last_steps: jax.Array
    steps_log: jax.Array
    key: jax.Array


def draw(key: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The random draws of action choice ``t``: ``(u ∈ [0, 1), random action)``."""
    # The folded key's data is itself the threefry hash of (key, t): two random
    # words for the price of one hash, computed by ``prng``: on a CPU, jax.random
    # hashes in a rolled loop of separately dispatched operations (see prng).
    words = prng.fold_in_words(key, t)
    u = words[0].astype(jnp.float32) * jnp.float32(2.0**-32)
    # float32 rounding can lift the largest words to exactly 1.0; keep u < 1.
    u = jnp.minimum(u, jnp.float32(1.0 - 2.0**-24))
    return u, (words[1] % NUM_ACTIONS).astype(jnp.int32)


def make_sarsa(world: GridWorld, config: SarsaConfig = SarsaConfig(), log_episodes: int = 10,
               track_visits: bool = True) -> TickLearner:
    """Builds the tabular SARSA :class:`~maml2_jax.tick_learner.TickLearner` for ``world``.

    Args:
      world: the layout; its tasks are goal cells (``int32`` scalars).
      config: SARSA hyper-parameters.
      log_episodes: how many leading episodes' step counts ``performance`` returns.
      track_visits: count state-action visits for the feature's μ. Costs about 15%
        of a tick; meta-training and testing, which never ask for features, turn it
        off.

    Returns:
      A learner whose params are ``[S, 4]`` float32 Q-tables and whose feature is
      ``flatten(Q ⊙ μ)``, μ the visit frequencies of the last episode.
    """
    table = jnp.asarray(world.next_cell_table())
    num_states = world.num_states
    start_cell = jnp.int32(world.start)
    max_steps = world.max_steps
    alpha = jnp.float32(config.alpha)
    gamma = jnp.float32(config.gamma)
    decay = jnp.float32(config.epsilon_decay)

    def init_params():
        return jnp.full((num_states, NUM_ACTIONS), config.q_init, jnp.float32)

    def start(params, task, key):
        del task  # every task starts in the same cell
        zero = jnp.int32(0)
        return SarsaAgent(
            q=params,
            cell=start_cell,
            epsilon=jnp.float32(config.epsilon),
            choices=zero,
            episodes=zero,
            episode_steps=zero,
            pending=jnp.bool_(False),
            prev_cell=zero,
            prev_action=zero,
            cut=jnp.bool_(False),
            visits=jnp.zeros((num_states, NUM_ACTIONS), jnp.int32),
            stamp=jnp.full((num_states, NUM_ACTIONS), -1, jnp.int32),
            last_steps=zero,
            steps_log=jnp.zeros((log_episodes,), jnp.int32),
            key=key,
        )

    def tick(agent: SarsaAgent, goal, active) -> SarsaAgent:
        # Every write below is a scalar select or a single-entry scatter, so an
        # inactive lane costs O(1), never a copy of its table.
        q, s = agent.q, agent.cell
        u, random_action = draw(agent.key, agent.choices)
        a = jnp.where(u < agent.epsilon, random_action, jnp.argmax(q[s]).astype(jnp.int32))

        # Complete the pending transition with the action just chosen, then move
        # (unless this is the flush tick of a cut episode). Both updates are computed
        # from the table before the tick and applied in one scatter-add: when both
        # happen they touch different entries (the pending move did not reach the
        # goal, this one does), and a masked update adds exactly 0.
        moves = ~agent.cut
        s_next = table[s, a]
        reached = moves & (s_next == goal)
        pending = q[agent.prev_cell, agent.prev_action]
        current = q[s, a]
        deltas = jnp.stack([
            jnp.where(active & agent.pending, alpha * (gamma * current - pending), 0.0),
            jnp.where(active & reached, alpha * (1.0 - current), 0.0),
        ])
        rows = jnp.stack([agent.prev_cell, s])
        cols = jnp.stack([agent.prev_action, a])
        q = q.at[rows, cols].add(deltas)

        episode = agent.episodes
        visits, stamp = agent.visits, agent.stamp
        if track_visits:
            # ``stamp`` says which episode a count belongs to, so a new episode needs
            # no O(S·A) clearing of ``visits``.
            counted = active & moves
            same_episode = stamp[s, a] == episode
            visits = visits.at[s, a].set(jnp.where(counted, jnp.where(same_episode, visits[s, a] + 1, 1), visits[s, a]))
            stamp = stamp.at[s, a].set(jnp.where(counted, episode, stamp[s, a]))

        steps = agent.episode_steps + moves.astype(jnp.int32)
        ends = reached | agent.cut
        log_slot = jnp.minimum(episode, log_episodes - 1)
        log_it = active & ends & (episode < log_episodes)
        steps_log = jnp.where(log_it & (jnp.arange(log_episodes) == log_slot), steps, agent.steps_log)

        def keep(new, old):
            return jnp.where(active, new, old)

        return SarsaAgent(
            q=q,
            cell=keep(jnp.where(ends, start_cell, s_next), s),
            epsilon=keep(agent.epsilon * decay, agent.epsilon),
            choices=keep(agent.choices + 1, agent.choices),
            episodes=keep(episode + ends.astype(jnp.int32), episode),
            episode_steps=keep(jnp.where(ends, 0, steps), agent.episode_steps),
            pending=keep(~ends, agent.pending),
            prev_cell=keep(s, agent.prev_cell),
            prev_action=keep(a, agent.prev_action),
            cut=keep(~ends & (steps >= max_steps), agent.cut),
            visits=visits,
            stamp=stamp,
            last_steps=keep(jnp.where(ends, steps, agent.last_steps), agent.last_steps),
            steps_log=steps_log,
            key=agent.key,
        )

    def feature(agent: SarsaAgent):
        if not track_visits:
            raise ValueError("this learner was built with track_visits=False: it has no visit counts for features")
        last = agent.episodes - 1
        counts = jnp.where(agent.stamp == last, agent.visits, 0).astype(jnp.float32)
        mu = counts / jnp.maximum(agent.last_steps, 1).astype(jnp.float32)
        return (agent.q * mu).reshape(-1)

    return TickLearner(
        init_params=init_params,
        start=start,
        tick=tick,
        episodes=lambda agent: agent.episodes,
        params=lambda agent: agent.q,
        with_params=lambda agent, params: agent._replace(q=params),
        feature=feature,
        performance=lambda agent: agent.steps_log,
    )


def make_sarsa_learner(world: GridWorld, config: SarsaConfig = SarsaConfig(), episodes: int = 5,
                       log_episodes: int = 10, track_visits: bool = True) -> CoreLearner:
    """Tabular SARSA behind the core's :class:`~maml2_jax.core.types.Learner` (one task).

    ``adapt`` runs ``episodes`` episodes of the tick machine for one lane; its stats
    are the finished :class:`SarsaAgent`; ``feature`` is ``flatten(Q ⊙ μ)``; ``score``
    the steps of the logged episodes. The engine runs each adaptation as a loop of
    its own; :mod:`maml2_jax.lane_maml2` is the fused fast path of the same schedule.
    """
    from maml2_jax import adaptation

    ticks = make_sarsa(world, config, log_episodes, track_visits)

    def adapt(params, task, key):
        agents = adaptation.adapt(ticks, params[None], jnp.asarray(task)[None], key[None], episodes)
        agent = jax.tree.map(lambda x: x[0], agents)
        return agent.q, agent

    return CoreLearner(init=lambda key: ticks.init_params(), adapt=adapt,
                       feature=lambda params, adapted, agent: ticks.feature(agent), score=ticks.performance)
