"""Helpers shared by the test modules (imported as ``helpers``; tests/ is on sys.path)."""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

from maml2_jax import adaptation
from maml2_jax.envs.gridworld import GridWorld

# ``adapt(learner, params, tasks, keys, episodes)`` compiled once per (learner, E).
# A Learner is a NamedTuple of functions, hence hashable and usable as a static arg.
adapt_jit = jax.jit(adaptation.adapt, static_argnums=(0, 4))


def lanes(x, n):
    """Broadcasts one lane's array to ``n`` lanes."""
    x = jnp.asarray(x)
    return jnp.broadcast_to(x, (n,) + x.shape)


def bfs_distances(world: GridWorld, goal: int) -> np.ndarray:
    """Moves needed to reach ``goal`` from every cell (``-1`` where unreachable).

    Computed from the published move rules (not from ``next_cell_table``), so it can
    be used to build independent expectations.
    """
    walls = set(world.walls)
    dist = -np.ones(world.num_states, np.int64)
    dist[goal] = 0
    queue = collections.deque([goal])
    while queue:
        s = queue.popleft()
        row, col = divmod(s, world.cols)
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            r2, c2 = row + dr, col + dc
            if 0 <= r2 < world.rows and 0 <= c2 < world.cols:
                s2 = r2 * world.cols + c2
                if s2 not in walls and dist[s2] < 0:
                    dist[s2] = dist[s] + 1
                    queue.append(s2)
    return dist


def greedy_path_table(world: GridWorld, goal: int, low: float = 0.5, high: float = 1.0) -> np.ndarray:
    """A Q-table whose greedy policy walks a shortest path to ``goal`` from every cell."""
    dist = bfs_distances(world, goal)
    q = np.full((world.num_states, 4), low, np.float32)
    for s in range(world.num_states):
        if s in world.walls or s == goal or dist[s] < 0:
            continue
        row, col = divmod(s, world.cols)
        for a, (dr, dc) in enumerate(((-1, 0), (1, 0), (0, -1), (0, 1))):
            r2, c2 = row + dr, col + dc
            if 0 <= r2 < world.rows and 0 <= c2 < world.cols:
                s2 = r2 * world.cols + c2
                if s2 not in world.walls and dist[s2] == dist[s] - 1:
                    q[s, a] = high
                    break
    return q


@functools.lru_cache(maxsize=None)
def _draw_chunk_fn():
    from maml2_jax.learners import sarsa

    return jax.jit(jax.vmap(sarsa.draw, in_axes=(None, 0)))


class Draws:
    """The random stream ``sarsa.draw(key, t)`` for t = 0, 1, …, as host arrays.

    Computed in chunks with ``jax.vmap`` over ``t`` and extended on demand.
    """

    CHUNK = 8192

    def __init__(self, key):
        self.key = key
        self.u = np.zeros((0,), np.float32)
        self.action = np.zeros((0,), np.int64)

    def __getitem__(self, t: int):
        while t >= self.u.shape[0]:
            start = self.u.shape[0]
            ts = jnp.arange(start, start + self.CHUNK, dtype=jnp.int32)
            u, a = _draw_chunk_fn()(self.key, ts)
            self.u = np.concatenate([self.u, np.asarray(u, np.float32)])
            self.action = np.concatenate([self.action, np.asarray(a, np.int64)])
        return self.u[t], int(self.action[t])


def maml_trpo_iteration(family, policy, adapter, inner_steps, num_tasks, config=None, curvature_fraction=1.0,
                        mesh=None):
    """``iteration(params, key) -> (params, metrics)``: fresh tasks, then the MAML-TRPO rule
    (what the engine's MAML step does, without the run state)."""
    from maml2_jax.rules.maml_trpo import maml_trpo
    from maml2_jax.trpo import TRPOConfig

    rule = maml_trpo(policy, adapter, inner_steps, num_tasks, config or TRPOConfig(), curvature_fraction, mesh)

    def iteration(params, key):
        k_tasks, k_update = jax.random.split(key)
        tasks, _ = family.sample_tasks(k_tasks, num_tasks)
        params, _, metrics = rule.update(params, (), tasks, k_update, 1.0)
        return params, metrics

    return jax.jit(iteration)
