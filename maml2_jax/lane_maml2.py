r"""The grid world's fast path: MAML² meta-training fused into one lane machine.

The engine (:mod:`maml2_jax.core.train`) runs one compiled step per outer iteration,
each adaptation a loop of its own. For a tick-machine learner (tabular SARSA, whose
adaptations are episodes of very different lengths) that makes every loop wait for
its slowest lane. This module runs the *same schedule* — the sequential and parallel
outer updates, CatMeta's Reptile steps with early stop, the same keys — as a single
``while_loop`` over all runs, where a run whose adaptation just finished takes its
meta-step in the same loop iteration: the whole meta-training of all runs is as long
as the slowest run, not a nest of loops each as long as its slowest lane.
``tests/test_fast_path.py`` checks that it gives the engine's parameters and steps.

The pieces of the method are the core's (:func:`~maml2_jax.core.outer_update.interpolate`,
:func:`~maml2_jax.core.outer_update.mean_over_categories`,
:func:`~maml2_jax.rules.reptile.reptile_step`, :func:`~maml2_jax.core.readaptation.reset`);
only the scheduling is this module's.

Keys: adaptation ``i`` of category ``c`` in outer iteration ``k`` uses
``fold_in(key, (k·N + c)·K_in + i)``, split into (task draw, agent) as in
:mod:`maml2_jax.core.category_meta`. MAML is one category holding every task
(:func:`maml`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from maml2_jax import adaptation, prng
from maml2_jax.core.outer_update import OUTER_UPDATES as OUTER_MODES
from maml2_jax.core.outer_update import interpolate, mean_over_categories
from maml2_jax.core import readaptation
from maml2_jax.core.types import take as _take
from maml2_jax.rules.reptile import reptile_step
from maml2_jax.errors import ConfigError, check_positive_int
from maml2_jax.tick_learner import Agent, Params, Task
from maml2_jax.tick_learner import TickLearner as Learner


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How a set of categories is meta-trained.

    Attributes:
      outer_iterations: K_out, passes over all categories.
      inner_iterations: K_in, CatMeta steps per category per pass.
      adapt_episodes: E, episodes of each Adapt inside CatMeta.
      beta: β of the category step β/|C|.
      stop_tolerance: CatMeta stops early once a step's norm is below this.
      outer_update: "sequential" (the published rule: each category starts from the
        θ moved by the previous ones) or "parallel" (all from the same θ, then the mean).
    """

    outer_iterations: int
    inner_iterations: int
    adapt_episodes: int = 5
    beta: float = 1.0
    stop_tolerance: float = 1e-5
    outer_update: str = "sequential"

    def __post_init__(self):
        for name in ("outer_iterations", "inner_iterations", "adapt_episodes"):
            check_positive_int(name.replace("_", " "), getattr(self, name))
        if self.beta <= 0:
            raise ConfigError(f"beta must be positive, got {self.beta}")
        if self.stop_tolerance < 0:
            raise ConfigError(f"stop tolerance must be non-negative, got {self.stop_tolerance}")
        if self.outer_update not in OUTER_MODES:
            raise ConfigError(f"outer update must be one of {', '.join(OUTER_MODES)}, got {self.outer_update!r}")


class MetaState(NamedTuple):
    """Meta-training of one run (one lane), mid-flight.

    Attributes:
      agent: the adaptation in progress.
      task: its task.
      theta: global meta-parameters θ.
      theta_c: the category parameters being meta-learned now.
      category_params: ``[N, ...]`` the latest θ_c of every category.
      outer, category, inner: the position (k, c, i) in the schedule.
      num_categories: this lane's N (its non-empty categories come first).
      outer_iterations, inner_iterations: this lane's K_out and K_in.
      key_offset: added to the adaptation counter (the parallel mode's lanes use it).
      done: the schedule is complete.
      ticks: learner ticks spent so far (work done, for throughput figures).
      key: the run's meta-training key.
    """

    agent: Agent
    task: Task
    theta: Params
    theta_c: Params
    category_params: Params
    outer: jax.Array
    category: jax.Array
    inner: jax.Array
    num_categories: jax.Array
    outer_iterations: jax.Array
    inner_iterations: jax.Array
    key_offset: jax.Array
    done: jax.Array
    ticks: jax.Array
    key: jax.Array


def adaptation_key(key: jax.Array, counter: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(task-draw key, agent key)`` of the adaptation numbered ``counter``."""
    # prng computes jax.random's bits without its rolled hash loops (see prng).
    return prng.split(prng.fold_in(key, counter))


def _start_adaptation(learner: Learner, state: MetaState, members, tasks) -> MetaState:
    """Draws a task of the current category and starts ``Adapt(θ_c, T, ·)`` (one lane)."""
    counter = state.key_offset + (state.outer * state.num_categories + state.category) * state.inner_iterations
    k_task, k_agent = adaptation_key(state.key, counter + state.inner)
    logits = jnp.where(members[state.category], 0.0, -jnp.inf)
    task = _take(tasks, prng.categorical(k_task, logits))
    return state._replace(agent=learner.start(state.theta_c, task, k_agent), task=task)


def _on_adapted(learner: Learner, beta: float, stop_tolerance: float, state: MetaState, members, tasks) -> MetaState:
    """The meta-step after an adaptation finished, then the next adaptation (one lane)."""
    size = jnp.sum(members[state.category]).astype(jnp.float32)
    theta_c, step_norm = reptile_step(state.theta_c, learner.params(state.agent), beta / size)
    inner = state.inner + 1
    category_done = (inner >= state.inner_iterations) | (step_norm < stop_tolerance)

    def if_done(new, old):
        return jax.tree.map(lambda a, b: jnp.where(category_done, a, b), new, old)

    theta = if_done(interpolate(state.theta, theta_c, 1.0 / state.num_categories), state.theta)
    category_params = jax.tree.map(
        lambda stack, new: stack.at[state.category].set(jnp.where(category_done, new, stack[state.category])),
        state.category_params,
        theta_c,
    )
    next_category = jnp.where(category_done, state.category + 1, state.category)
    wraps = next_category >= state.num_categories
    outer = state.outer + wraps.astype(jnp.int32)
    state = state._replace(
        theta=theta,
        theta_c=if_done(theta, theta_c),
        category_params=category_params,
        outer=outer,
        category=jnp.where(wraps, 0, next_category),
        inner=jnp.where(category_done, 0, inner),
        done=outer >= state.outer_iterations,
    )
    return _start_adaptation(learner, state, members, tasks)


def run_schedules(learner: Learner, theta, members, tasks, keys, outer_iterations, inner_iterations,
                  adapt_episodes: int = 5, beta: float = 1.0, stop_tolerance: float = 1e-5,
                  key_offset=None) -> MetaState:
    """Sequential meta-training of every lane, each with its own schedule, in one loop.

    Lanes may mix schedules (MAML², MAML): a lane's N is its number of non-empty
    categories, which must come first in ``members``.

    Args:
      theta: ``[L, ...]`` start θ of each lane.
      members: ``[L, N_max, T]`` bool category membership.
      tasks: ``[L, T, ...]`` each lane's task set.
      keys: ``[L]`` meta-training keys.
      outer_iterations, inner_iterations: ``[L]`` or scalar K_out and K_in.
      adapt_episodes, beta, stop_tolerance: E, β and the early-stop tolerance.
      key_offset: ``[L]`` offsets of the adaptation counter (default 0).

    Returns:
      The final ``[L]`` :class:`MetaState` (``theta``, ``category_params``).
    """
    lanes, max_categories = members.shape[:2]

    def per_lane(x):
        return jnp.broadcast_to(jnp.asarray(x, jnp.int32), (lanes,))

    state = MetaState(
        agent=None,
        task=None,
        theta=theta,
        theta_c=theta,
        category_params=jax.tree.map(lambda x: jnp.repeat(x[:, None], max_categories, axis=1), theta),
        outer=per_lane(0),
        category=per_lane(0),
        inner=per_lane(0),
        num_categories=jnp.sum(jnp.any(members, axis=-1), axis=-1).astype(jnp.int32),
        outer_iterations=per_lane(outer_iterations),
        inner_iterations=per_lane(inner_iterations),
        key_offset=per_lane(0 if key_offset is None else key_offset),
        done=jnp.zeros((lanes,), bool),
        ticks=per_lane(0),
        key=keys,
    )
    state = jax.vmap(functools.partial(_start_adaptation, learner))(state, members, tasks)
    on_adapted = functools.partial(_on_adapted, learner, beta, stop_tolerance)
    tick = jax.vmap(learner.tick)
    episodes = jax.vmap(learner.episodes)

    def meta_step_one(carry):
        # The meta-step touches whole parameter tables, so it runs on the one lane
        # that needs it (rarely more than one per tick), not masked over all lanes.
        state, pending = carry
        lane = jnp.argmax(pending)
        # The lane is read out through a cond (its predicate is always true) that XLA
        # does not fuse across. Fused into the in-place updates below, the reads made
        # each update read the other tables whole, and XLA then copied every table at
        # every meta-step (~15% of the grid world's training time).
        old = jax.lax.cond(lane >= 0, lambda: _take(state, lane), lambda: _take(state, 0))
        new = on_adapted(old, members[lane], _take(tasks, lane))
        state = jax.tree.map(lambda x, y: x.at[lane].set(y), state, new)
        return state, pending.at[lane].set(False)

    def body(state: MetaState) -> MetaState:
        # One tick per loop iteration: two (the loop's fixed cost amortised) ran no
        # faster once the tick's random draw was unrolled (prng), and took longer to compile.
        active = ~state.done
        agent = tick(state.agent, state.task, active)
        state = state._replace(agent=agent, ticks=state.ticks + active)
        adapted = active & (episodes(agent) >= adapt_episodes)  # adaptations that have just completed
        state, _ = jax.lax.while_loop(lambda c: jnp.any(c[1]), meta_step_one, (state, adapted))
        return state

    return jax.lax.while_loop(lambda s: jnp.any(~s.done), body, state)


def meta_train(learner: Learner, schedule: Schedule, theta, members, tasks, keys) -> tuple[Params, Params]:
    """MAML² meta-training of every run (lane-batched, jit-able with ``schedule`` static).

    Args:
      learner: the learner.
      schedule: K_out, K_in, E, β, tolerance and the outer-update mode.
      theta: ``[R, ...]`` initial θ per run.
      members: ``[R, N, T]`` bool; ``members[r, c, t]`` says task t is in category c.
        A run's non-empty categories come first; the empty ones (idle slots of an
        automatic N) keep θ_c = θ_init and do not move θ.
      tasks: ``[R, T, ...]`` the training tasks of every run.
      keys: ``[R]`` meta-training keys.

    Returns:
      ``(θ [R, ...], θ_c [R, N, ...])``: the meta-parameters and the latest category
      parameters.
    """
    runs, num_categories, num_tasks = members.shape
    common = dict(adapt_episodes=schedule.adapt_episodes, beta=schedule.beta, stop_tolerance=schedule.stop_tolerance)
    if schedule.outer_update == "sequential":
        state = run_schedules(
            learner, theta, members, tasks, keys, schedule.outer_iterations, schedule.inner_iterations, **common
        )
        return state.theta, state.category_params

    # Parallel: each outer iteration runs all R·N categories as lanes from the same θ.
    def repeat(x):
        return jnp.repeat(x, num_categories, axis=0)

    active = jnp.any(members, axis=-1)  # [R, N]
    # An idle slot's lane adapts on every task (a well-defined stand-in for an empty
    # category) and its result is discarded: lane shapes stay static.
    lane_members = jnp.where(active[..., None], members, True).reshape(runs * num_categories, 1, num_tasks)
    lane_tasks = jax.tree.map(repeat, tasks)
    lane_keys = repeat(keys)
    lane_category = jnp.tile(jnp.arange(num_categories, dtype=jnp.int32), runs)

    def outer_step(k, carry):
        theta, previous = carry
        offset = (k * num_categories + lane_category) * schedule.inner_iterations
        state = run_schedules(
            learner, jax.tree.map(repeat, theta), lane_members, lane_tasks, lane_keys, 1,
            schedule.inner_iterations, key_offset=offset, **common,
        )
        category_params = jax.tree.map(lambda x: x.reshape((runs, num_categories) + x.shape[1:]), state.theta)
        category_params = jax.tree.map(
            lambda new, old: jnp.where(active.reshape(active.shape + (1,) * (new.ndim - 2)), new, old),
            category_params, previous)
        return jax.vmap(_mean_over_active)(category_params, active), category_params

    stack = jax.tree.map(lambda x: jnp.repeat(x[:, None], num_categories, axis=1), theta)
    return jax.lax.fori_loop(0, schedule.outer_iterations, outer_step, (theta, stack))


def _mean_over_active(category_params, active):
    """θ of the parallel mode: the mean of the active ``[N, ...]`` θ_c (one run).

    With every slot active it is :func:`mean_over_categories` itself, bit for bit.
    """
    count = jnp.maximum(jnp.sum(active), 1)

    def masked(x):
        weights = active.reshape((-1,) + (1,) * (x.ndim - 1))
        return (jnp.sum(jnp.where(weights, x, 0), axis=0) / count).astype(x.dtype)

    everywhere = mean_over_categories(category_params)
    return jax.tree.map(lambda a, b: jnp.where(jnp.all(active), a, b), everywhere,
                        jax.tree.map(masked, category_params))


def maml(learner: Learner, iterations: int, theta, tasks, keys, adapt_episodes: int = 5, beta: float = 1.0,
         stop_tolerance: float = 1e-5) -> Params:
    """The MAML baseline: CatMeta over all tasks, i.e. MAML² with one category.

    Args:
      iterations: meta-iterations (3000 in the published baseline).
      theta: ``[R, ...]`` initial parameters; tasks ``[R, T, ...]``; keys ``[R]``.

    Returns:
      ``[R, ...]`` meta-parameters.
    """
    members = jnp.ones((keys.shape[0], 1, jax.tree.leaves(tasks)[0].shape[1]), bool)
    state = run_schedules(learner, theta, members, tasks, keys, 1, iterations, adapt_episodes, beta, stop_tolerance)
    return state.theta


def readapt(learner: Learner, theta, category_params, tasks, keys, episodes: int, reset, reset_after: int = 1,
            active=None, rule: str = "category"):
    """Adapts every lane for ``episodes`` episodes, resetting by update tendency.

    After ``reset_after`` episodes from θ to θ₁, lanes with ``reset`` True jump to
    θ_{c*} (``rule`` "carry": θ_{c*} + (θ₁ − θ), :func:`~maml2_jax.core.readaptation.reset`)
    and continue; the others (no-reset ablation, baselines) just continue. A lane's
    first ``reset_after`` episodes are the same with or without reset.

    Args:
      theta: ``[L, ...]`` start parameters.
      category_params: ``[L, N, ...]``.
      tasks: ``[L, ...]``; keys ``[L]``; reset ``[L]`` bool.
      active: ``[L, N]`` bool, the category slots each lane may reset to (default all).

    Returns:
      ``(agents [L], chosen [L] int32)``: the finished agents and c* of each lane.
    """
    agents = adaptation.adapt(learner, theta, tasks, keys, reset_after)
    active = jnp.ones(jax.tree.leaves(category_params)[0].shape[:2], bool) if active is None else active
    reset_one = functools.partial(readaptation.reset, rule=rule)
    params, chosen = jax.vmap(reset_one)(theta, jax.vmap(learner.params)(agents), category_params, reset, active)
    agents = jax.vmap(learner.with_params)(agents, params)
    return adaptation.run_episodes(learner, agents, tasks, episodes), chosen
