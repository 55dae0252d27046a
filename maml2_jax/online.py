r"""The online setting on the grid world: tasks arrive one at a time (Fu et al. 2023, Sec. 4.1).

A *trial* starts from θ = θ_init and a pool of I distinct tasks drawn at random from
the world's tasks, each with its feature (θ_i ⊙ μ_i after learning it from scratch
for ``classify_episodes`` episodes). Then for each of A arrivals:

1. classify the pool: k-means with N categories on the stored features (N fixed, or
   chosen by :func:`~maml2_jax.core.classification.choose_categories`), matched to the
   previous categories so that a category keeps its slot;
2. MAML² warm-started from the current θ: K_out outer × K_in inner iterations
   (:func:`~maml2_jax.lane_maml2.run_schedules`, the published sequential rule);
3. draw the arriving task uniformly from the world's tasks (repeats allowed) and
   adapt to it: ``reset_after`` episodes from θ, reset to the category its update
   moves towards, continue to ``arrival_episodes`` episodes in all (a pool in one
   category has nothing to choose, so it continues without reset, as MAML does);
4. record the steps of its first ``recorded_episodes`` episodes, and add it to the
   pool with its feature (the final Q-table ⊙ the last episode's visit frequencies).

The MAML baseline is warm-started the same way: ``maml_iterations`` Reptile
iterations over the whole pool, then the arrival adapted from θ without reset.

Every method of every trial is a *lane*, and each arrival is one compiled call for
all lanes (:func:`build`); only the classification (scikit-learn) runs on the host,
between calls. The lanes of one trial share its initial pool, its arriving tasks and
the random streams of their adaptations (common random numbers), so the methods'
comparison is paired; a trial's lanes give the same numbers alone or among others.

Keys, for trial t: ``k_t = fold_in(key(seed), t)``; the initial pool is a permutation
drawn from ``fold_in(k_t, INIT_COUNTER)``, learned from scratch with
``fold_in(fold_in(k_t, FEATURE_COUNTER), i)``; arrival a splits ``fold_in(k_t, a)``
into (arriving task, meta-training, adaptation, k-means seed).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import multiprocessing
import re
import signal
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from maml2_jax import adaptation, lane_maml2
from maml2_jax.core import classification
from maml2_jax.core.config import AUTO
from maml2_jax.core.readaptation import RESET_RULES, rule_note
from maml2_jax.envs.gridworld import GridWorld
from maml2_jax.errors import (ConfigError, NonFiniteError, check_choice, check_float, check_int, check_positive_int,
                              check_seed)
from maml2_jax.learners.sarsa import SarsaConfig, make_sarsa

INIT_COUNTER = 0xA0000000
FEATURE_COUNTER = 0xA0000001
MAML = "maml"
MAML2_AUTO = "maml2-auto"
_FIXED = re.compile(r"maml2-N([1-9][0-9]*)")
# The published means (and medians) over 10 trials x 50 arrivals of the mean steps of
# each arrival's first 10 episodes (Fu et al. 2023, the sequential experiment).
PUBLISHED = {"maml": (129.3, 36.7), "maml2-N2": (427.6, 369.8), "maml2-N3": (183.9, 137.4),
             "maml2-N4": (120.9, 53.5)}


def method_categories(method: str) -> int | str | None:
    """N of a method name: k (``maml2-N<k>``), ``"auto"`` (``maml2-auto``) or None (``maml``)."""
    if method == MAML:
        return None
    if method == MAML2_AUTO:
        return AUTO
    match = _FIXED.fullmatch(method) if isinstance(method, str) else None
    if match is None:
        raise ConfigError(f"unknown method {method!r}; use maml2-N<k> (k >= 1), {MAML2_AUTO} or {MAML}")
    return int(match.group(1))


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """The online grid-world experiment (defaults: the published protocol).

    Attributes:
      trials: independent trials (each its own initial pool and arrivals).
      seed: master seed; trial t uses ``fold_in(key(seed), t)``.
      arrivals: A, tasks that arrive one at a time.
      methods: the compared methods: ``maml2-N<k>`` (MAML² with k categories, starting
        from a pool of k tasks, as published), ``maml2-auto`` (N chosen at every
        classification, 1 … ``max_categories``) and ``maml`` (the baseline).
      max_categories: N_max of the automatic N.
      initial_tasks: I, the initial pool of the automatic-N and MAML methods.
      outer_iterations, inner_iterations: MAML²'s K_out × K_in per arrival.
      maml_iterations: the MAML baseline's iterations per arrival.
      adapt_episodes: episodes of each adaptation inside meta-training.
      classify_episodes: episodes of learning an initial task from scratch (its feature).
      arrival_episodes: episodes of adaptation to an arriving task, in all.
      recorded_episodes: the leading episodes of an arrival whose steps are its score.
      reset_after: episodes from θ before the update-tendency reset.
      reset_rule: where MAML² continues after it: "category" (the paper's, θ_{c*}) or
        "carry" (θ_{c*} + (θ₁ − θ); :func:`~maml2_jax.core.readaptation.reset`).
      beta: β of the category step β/|C|.
      stop_tolerance: a category's meta-learning stops once a step is shorter than this.
      references: B, the reference pools of the automatic N's test.
      world: the grid layout and its tasks.
      sarsa: the learner's hyper-parameters.
    """

    trials: int = 10
    seed: int = 0
    arrivals: int = 50
    methods: tuple[str, ...] = ("maml2-N2", "maml2-N3", "maml2-N4", MAML2_AUTO, MAML)
    max_categories: int = 4
    initial_tasks: int = 4
    outer_iterations: int = 10
    inner_iterations: int = 10
    maml_iterations: int = 100
    adapt_episodes: int = 5
    classify_episodes: int = 2000
    arrival_episodes: int = 2000
    recorded_episodes: int = 10
    reset_after: int = 1
    reset_rule: str = "category"
    beta: float = 1.0
    stop_tolerance: float = 1e-5
    references: int = 20
    world: GridWorld = GridWorld()
    sarsa: SarsaConfig = SarsaConfig()

    def __post_init__(self):
        for name in ("trials", "arrivals", "initial_tasks", "outer_iterations", "inner_iterations", "maml_iterations",
                     "adapt_episodes", "classify_episodes", "arrival_episodes", "recorded_episodes", "reset_after"):
            check_positive_int(name.replace("_", " "), getattr(self, name))
        check_seed("seed", self.seed)
        if not isinstance(self.world, GridWorld) or not isinstance(self.sarsa, SarsaConfig):
            raise ConfigError("world must be a GridWorld and sarsa a SarsaConfig")
        num_tasks = self.world.num_tasks
        if isinstance(self.methods, (str, bytes)) or not isinstance(self.methods, (tuple, list)) or not self.methods:
            raise ConfigError(f"methods must be a non-empty list of method names, got {self.methods!r}")
        object.__setattr__(self, "methods", tuple(self.methods))
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods repeat a name: {', '.join(self.methods)}")
        for method in self.methods:
            n = method_categories(method)
            if isinstance(n, int) and n > num_tasks:
                raise ConfigError(f"{method}: more categories than the world's {num_tasks} tasks")
        check_int("max categories", self.max_categories, 2 if MAML2_AUTO in self.methods else 1)
        check_int("initial tasks", self.initial_tasks, 1, num_tasks)
        check_int("references", self.references, 2)
        if self.reset_after >= self.arrival_episodes:
            raise ConfigError(f"need reset_after < arrival_episodes, got {self.reset_after} >= {self.arrival_episodes}")
        check_choice("reset rule", self.reset_rule, RESET_RULES)
        if self.recorded_episodes > self.arrival_episodes:
            raise ConfigError(f"recorded episodes ({self.recorded_episodes}) exceed the arrival's episodes "
                              f"({self.arrival_episodes})")
        object.__setattr__(self, "beta", check_float("beta", self.beta, 0, 2, low_open=True, high_open=True))
        object.__setattr__(self, "stop_tolerance", check_float("stop tolerance", self.stop_tolerance, low=0))

    def lanes(self) -> tuple["Method", ...]:
        """The compared methods' settings, in lane order."""
        lanes = []
        for name in self.methods:
            n = method_categories(name)
            if n is None:
                lanes.append(Method(name, 1, self.initial_tasks, 1, self.maml_iterations, False))
            else:
                initial = self.initial_tasks if n == AUTO else n
                lanes.append(Method(name, n, initial, self.outer_iterations, self.inner_iterations, True))
        return tuple(lanes)

    @property
    def slots(self) -> int:
        """Category slots every lane holds: the largest N any method may use."""
        return max(self.max_categories if m.categories == AUTO else m.categories for m in self.lanes())

    @property
    def capacity(self) -> int:
        """Pool room: the largest initial pool plus every arrival."""
        return max(m.initial for m in self.lanes()) + self.arrivals


class Method(NamedTuple):
    """One compared method: its name, N (an int or ``"auto"``), initial pool size,
    meta-training schedule per arrival, and whether the arrival resets by update tendency."""

    name: str
    categories: int | str
    initial: int
    outer_iterations: int
    inner_iterations: int
    reset: bool


class OnlineState(NamedTuple):
    """Everything an online experiment needs to continue (lanes L = methods × trials).

    Attributes:
      theta: ``[L, S, 4]`` float32, each lane's θ.
      pool: ``[L, P]`` int32, the pool's task ids (entries past ``size`` unused).
      features: ``[L, P, F]`` float32, each pool task's feature, stored when it joined.
      size: ``[L]`` int32, the pool tasks in use.
      centroids: ``[L, K, F]`` float32, the categories' centroids (for the matching).
      active: ``[L, K]`` bool, the slots holding a category at the last classification.
      steps: ``[L, A, E]`` int32, the first E episodes' steps of each arrival.
      chosen: ``[L, A]`` int32, the slot the arrival reset to (−1: no reset).
      categories: ``[L, A]`` int32, the N in use when each task arrived.
      arrival: arrivals done.
    """

    theta: np.ndarray
    pool: np.ndarray
    features: np.ndarray
    size: np.ndarray
    centroids: np.ndarray
    active: np.ndarray
    steps: np.ndarray
    chosen: np.ndarray
    categories: np.ndarray
    arrival: np.ndarray


class Plan(NamedTuple):
    """The random choices of every trial, drawn up front (``[T, ...]``).

    Attributes:
      initial: ``[T, num_tasks]`` a permutation of the task ids; a pool of I starts with the first I.
      feature_keys: ``[T, num_tasks]`` keys of learning those tasks from scratch.
      arriving: ``[T, A]`` the arriving task ids.
      meta_keys, adapt_keys: ``[T, A]`` keys of each arrival's meta-training and adaptation.
      kmeans_seeds: ``[T, A]`` int, the seed of the classification before each arrival.
    """

    initial: np.ndarray
    feature_keys: jax.Array
    arriving: np.ndarray
    meta_keys: jax.Array
    adapt_keys: jax.Array
    kmeans_seeds: np.ndarray


def plan(config: OnlineConfig, trial_ids) -> Plan:
    """The trials' random choices (see the module's keys)."""
    num_tasks, arrivals = config.world.num_tasks, config.arrivals

    @jax.jit
    def one(trial):
        key = jax.random.fold_in(jax.random.key(config.seed), trial)
        initial = jax.random.permutation(jax.random.fold_in(key, INIT_COUNTER), num_tasks)
        feature_base = jax.random.fold_in(key, FEATURE_COUNTER)
        feature_keys = jax.vmap(lambda i: jax.random.fold_in(feature_base, i))(jnp.arange(num_tasks))
        parts = jax.vmap(lambda a: jax.random.split(jax.random.fold_in(key, a), 4))(jnp.arange(arrivals))
        arriving = jax.vmap(lambda k: jax.random.randint(k, (), 0, num_tasks))(parts[:, 0])
        seeds = jax.vmap(lambda k: jax.random.randint(k, (), 0, 2**31 - 1))(parts[:, 3])
        return initial, feature_keys, arriving, parts[:, 1], parts[:, 2], seeds

    initial, feature_keys, arriving, meta_keys, adapt_keys, seeds = jax.vmap(one)(jnp.asarray(trial_ids, jnp.int32))
    return Plan(np.asarray(initial), feature_keys, np.asarray(arriving), meta_keys, adapt_keys, np.asarray(seeds))


class Stages(NamedTuple):
    """The experiment's compiled calls.

    Attributes:
      learn: ``(goals [T, I], keys [T, I]) -> features [T, I, F]``: tasks learned from scratch.
      arrive: ``(theta [L], pool_goals [L, P], members [L, K, P], outer [L], inner [L], reset [L],
        active [L, K], goal [L], meta_keys [L], adapt_keys [L]) -> (theta [L], steps [L, E],
        chosen [L], feature [L, F])``: one arrival of every lane (steps 2–4).
    """

    learn: Callable
    arrive: Callable


@functools.lru_cache(maxsize=4)
def build(config: OnlineConfig) -> Stages:
    """The compiled stages; they depend on the config only through static settings, so
    one build serves any trial count and seed (``config`` with ``trials=1, seed=0``)."""
    learner = make_sarsa(config.world, config.sarsa, log_episodes=1, track_visits=False)
    tracker = make_sarsa(config.world, config.sarsa, log_episodes=config.recorded_episodes, track_visits=True)

    @jax.jit
    def learn(goals, keys):
        shape = goals.shape
        theta = jnp.broadcast_to(tracker.init_params(), (goals.size,) + tracker.init_params().shape)
        agents = adaptation.adapt(tracker, theta, goals.reshape(-1), keys.reshape(-1), config.classify_episodes)
        return jax.vmap(tracker.feature)(agents).reshape(shape + (-1,))

    @jax.jit
    def arrive(theta, pool_goals, members, outer, inner, reset, active, goal, meta_keys, adapt_keys):
        state = lane_maml2.run_schedules(learner, theta, members, pool_goals, meta_keys, outer, inner,
                                         config.adapt_episodes, config.beta, config.stop_tolerance)
        agents, chosen = lane_maml2.readapt(tracker, state.theta, state.category_params, goal, adapt_keys,
                                            config.arrival_episodes, reset, config.reset_after, active,
                                            config.reset_rule)
        return state.theta, jax.vmap(tracker.performance)(agents), chosen, jax.vmap(tracker.feature)(agents)

    return Stages(learn, arrive)


def _static(config: OnlineConfig) -> OnlineConfig:
    return dataclasses.replace(config, trials=1, seed=0)


def initial_state(config: OnlineConfig, trial_ids, the_plan: Plan) -> OnlineState:
    """Lanes before the first arrival: θ_init, the initial pools and their features."""
    methods = config.lanes()
    trials = len(trial_ids)
    lanes = len(methods) * trials
    goals = np.asarray(config.world.task_array())
    first = max(m.initial for m in methods)
    features = np.asarray(build(_static(config)).learn(jnp.asarray(goals[the_plan.initial[:, :first]]),
                                                       the_plan.feature_keys[:, :first]))
    _check_finite("learning the initial tasks", features)
    capacity, width = config.capacity, features.shape[-1]
    pool = np.zeros((lanes, capacity), np.int32)
    stored = np.zeros((lanes, capacity, width), np.float32)
    size = np.zeros(lanes, np.int32)
    for m, method in enumerate(methods):
        lane = slice(m * trials, (m + 1) * trials)
        pool[lane, :method.initial] = the_plan.initial[:, :method.initial]
        stored[lane, :method.initial] = features[:, :method.initial]
        size[lane] = method.initial
    theta = np.broadcast_to(np.asarray(make_sarsa(config.world, config.sarsa).init_params()),
                            (lanes, config.world.num_states, 4)).copy()
    return OnlineState(theta=theta, pool=pool, features=stored, size=size,
                       centroids=np.zeros((lanes, config.slots, width), np.float32),
                       active=np.zeros((lanes, config.slots), bool),
                       steps=np.zeros((lanes, config.arrivals, config.recorded_episodes), np.int32),
                       chosen=np.full((lanes, config.arrivals), -1, np.int32),
                       categories=np.zeros((lanes, config.arrivals), np.int32),
                       arrival=np.asarray(0, np.int32))


def _check_finite(stage: str, values) -> None:
    if not np.all(np.isfinite(values)):
        raise NonFiniteError(f"non-finite Q-values while {stage}; stopped before saving it (check the learning rate "
                             "and the initial Q value)")


def classify_lanes(config: OnlineConfig, state: OnlineState, seeds: np.ndarray,
                   map_fn: Callable = map) -> tuple[OnlineState, np.ndarray]:
    """Host side: every MAML² lane's pool classified (step 1), matched to its previous categories.

    Args:
      seeds: ``[T]`` the trials' k-means seeds for this classification.
      map_fn: how the lanes' classifications are mapped (``map``, or a process pool's
        ``map``: each is a pure function of its inputs, so the result is the same).

    Returns:
      The state with new centroids and active slots, and the lanes' membership
      ``[L, K, P]`` in *compact* order (the active slots first, in slot order), which is
      what :func:`~maml2_jax.lane_maml2.run_schedules` needs. MAML lanes hold the whole
      pool in one category.
    """
    methods, slots = config.lanes(), config.slots
    trials = len(seeds)
    first = int(state.arrival) == 0
    centroids, active = state.centroids.copy(), state.active.copy()
    members = np.zeros((len(state.size), slots, state.pool.shape[1]), bool)
    jobs = []
    for m, method in enumerate(methods):
        for t in range(trials):
            lane, size = m * trials + t, int(state.size[m * trials + t])
            if method.categories == 1:
                members[lane, 0, :size] = True
                active[lane] = np.arange(slots) == 0
                continue
            width = config.max_categories if method.categories == AUTO else slots
            jobs.append((lane, (state.features[lane, :size], method.categories, width, int(seeds[t]),
                                None if first else centroids[lane, :width], None if first else active[lane, :width],
                                config.references)))
    for (lane, arguments), result in zip(jobs, map_fn(_classify, [arguments for _, arguments in jobs])):
        width = len(result.active)
        centroids[lane] = 0.0
        centroids[lane, :width] = result.centroids
        active[lane] = False
        active[lane, :width] = result.active
        compact = np.cumsum(active[lane]) - 1  # slot -> its place among the active slots
        members[lane, compact[result.labels], np.arange(len(result.labels))] = True
    return state._replace(centroids=centroids, active=active), members


def _classify(arguments) -> classification.Classification:
    return classification.classify_slots(*arguments)


def _ignore_interrupts() -> None:
    """A classification worker leaves Ctrl-C to the main process (which exits at once):
    the worker then ends with its parent, without a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def arrive(config: OnlineConfig, state: OnlineState, the_plan: Plan, map_fn: Callable = map) -> OnlineState:
    """One arrival of every lane: classify, meta-train warm-started, adapt to the arrival, add it."""
    methods = config.lanes()
    trials = the_plan.arriving.shape[0]
    a = int(state.arrival)
    state, members = classify_lanes(config, state, the_plan.kmeans_seeds[:, a], map_fn)
    goals = np.asarray(config.world.task_array())

    def per_lane(values):  # one value per method -> [L]
        return np.repeat(np.asarray(values), trials)

    def tiled(x):  # each trial's value -> [L], the same for every method (common random numbers)
        return jnp.tile(x, len(methods))

    count = state.active.sum(axis=1)
    # With one category there is nothing to choose: MAML² with N = 1 adapts as MAML does.
    resets = per_lane([m.reset for m in methods]) & (count >= 2)
    compact_active = np.arange(config.slots)[None, :] < count[:, None]
    theta, steps, chosen, feature = build(_static(config)).arrive(
        jnp.asarray(state.theta), jnp.asarray(goals[state.pool]), jnp.asarray(members),
        jnp.asarray(per_lane([m.outer_iterations for m in methods]), jnp.int32),
        jnp.asarray(per_lane([m.inner_iterations for m in methods]), jnp.int32),
        jnp.asarray(resets), jnp.asarray(compact_active),
        tiled(goals[the_plan.arriving[:, a]]),
        tiled(the_plan.meta_keys[:, a]), tiled(the_plan.adapt_keys[:, a]))
    theta, feature = np.asarray(theta), np.asarray(feature)
    _check_finite(f"handling arrival {a}", np.concatenate([theta.reshape(len(theta), -1), feature], axis=1))
    lanes = np.arange(len(state.size))
    pool, features = state.pool.copy(), state.features.copy()
    pool[lanes, state.size] = np.tile(the_plan.arriving[:, a], len(methods))
    features[lanes, state.size] = feature
    # The slot reset to, from its place among the active slots.
    slot_of = np.argsort(~state.active, axis=1, kind="stable")
    chosen = np.where(resets, slot_of[lanes, np.asarray(chosen)], -1)

    def record(old, new):  # ``new`` [L] as arrival a's entry of ``old`` [L, A, ...]
        old = old.copy()
        old[:, a] = new
        return old

    return state._replace(theta=theta, pool=pool, features=features, size=state.size + 1,
                          steps=record(state.steps, np.asarray(steps)), chosen=record(state.chosen, chosen),
                          categories=record(state.categories, count.astype(np.int32)),
                          arrival=np.asarray(a + 1, np.int32))


@dataclasses.dataclass
class OnlineResult:
    """Raw results (NumPy), lanes split into ``[M methods, T trials, ...]``.

    Attributes:
      steps: ``[M, T, A, E]`` steps of the first E episodes of every arrival.
      arriving: ``[T, A]`` the arriving task ids.
      categories: ``[M, T, A]`` N in use when each task arrived.
      chosen: ``[M, T, A]`` the category slot each arrival reset to (−1: none).
      seconds: wall time of this call (without earlier, resumed parts).
    """

    config: OnlineConfig
    methods: tuple[str, ...]
    steps: np.ndarray
    arriving: np.ndarray
    categories: np.ndarray
    chosen: np.ndarray
    seconds: float


def run(config: OnlineConfig, progress: Callable[[int, int], None] | None = None, checkpoints=None,
        trial_ids=None, workers: int = 1) -> OnlineResult:
    """The whole experiment. Impure: host k-means, timing, ``progress`` calls, checkpoints.

    Args:
      config: the experiment.
      progress: called with ``(arrivals done, arrivals)`` after the initial pools and
        after every arrival.
      checkpoints: a :class:`maml2_jax.io.checkpoint.Checkpoints` or None; the state is
        saved after every arrival and a run that finds one continues from it (the
        caller checks that the config is the same).
      trial_ids: the trials to run (default ``range(config.trials)``); trial t gives the
        same numbers in any company.
      workers: processes classifying the lanes' pools between arrivals (1: in this
        process). The automatic N clusters every pool (B + 1)(N_max − 1) times, most of
        the host's work; results do not depend on it. More than 1 spawns processes, so a
        script calling this needs the ``if __name__ == "__main__":`` guard.
    """
    started = time.perf_counter()
    trial_ids = list(range(config.trials)) if trial_ids is None else [int(t) for t in trial_ids]
    the_plan = plan(config, trial_ids)
    say = progress or (lambda done, total: None)
    state = None
    if checkpoints is not None and checkpoints.latest() is not None:
        state, _ = checkpoints.restore(_template(config, len(trial_ids)))
        state = OnlineState(*state)
    if state is None:
        state = initial_state(config, trial_ids, the_plan)
    say(int(state.arrival), config.arrivals)
    workers = check_positive_int("workers", workers)
    with contextlib.ExitStack() as stack:
        map_fn = map
        if workers > 1 and int(state.arrival) < config.arrivals:
            # Spawned, not forked: a fork of a process running XLA's threads can deadlock.
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_interrupts))
            map_fn = pool.map
        while int(state.arrival) < config.arrivals:
            state = arrive(config, state, the_plan, map_fn)
            if checkpoints is not None:
                checkpoints.save(int(state.arrival), tuple(state))
            say(int(state.arrival), config.arrivals)
    methods = config.lanes()

    def split(x):  # [L, ...] -> [M, T, ...]
        return x.reshape((len(methods), len(trial_ids)) + x.shape[1:])

    return OnlineResult(config, tuple(m.name for m in methods), split(state.steps), the_plan.arriving,
                        split(state.categories), split(state.chosen), time.perf_counter() - started)


def _template(config: OnlineConfig, trials: int) -> tuple:
    """An :class:`OnlineState` of the right shapes (what a checkpoint is restored into)."""
    lanes = len(config.lanes()) * trials
    width = config.world.num_states * 4
    return tuple(OnlineState(
        theta=np.zeros((lanes, config.world.num_states, 4), np.float32),
        pool=np.zeros((lanes, config.capacity), np.int32),
        features=np.zeros((lanes, config.capacity, width), np.float32),
        size=np.zeros(lanes, np.int32),
        centroids=np.zeros((lanes, config.slots, width), np.float32),
        active=np.zeros((lanes, config.slots), bool),
        steps=np.zeros((lanes, config.arrivals, config.recorded_episodes), np.int32),
        chosen=np.zeros((lanes, config.arrivals), np.int32),
        categories=np.zeros((lanes, config.arrivals), np.int32),
        arrival=np.asarray(0, np.int32)))


def summarize(result: OnlineResult) -> dict:
    """The JSON-ready summary. An arrival's score is the mean steps of its first E episodes.

    Keys: ``methods``; ``mean_steps``, ``median_steps`` {method: over trials × arrivals};
    ``per_trial`` {method: [T] means}; ``per_arrival``, ``per_arrival_median`` and
    ``per_arrival_ci95`` {method: [A] over trials}; ``per_arrival_quartiles`` {method:
    [2][A], the 25th and 75th percentiles over trials}; ``scores`` {method: [T][A]};
    ``by_task`` {method: {task: mean over its arrivals}}; ``categories`` {method:
    [T][A] N in use}; ``chosen`` {method: [T][A] the slot reset to}; ``arriving`` [T][A];
    ``published`` {method: {"mean", "median"}} where the paper gives them; ``config``;
    ``seconds``.
    """
    scores = result.steps.astype(np.float64).mean(axis=-1)  # [M, T, A]
    trials = scores.shape[1]
    summary = {"methods": list(result.methods), "mean_steps": {}, "median_steps": {}, "per_trial": {},
               "per_arrival": {}, "per_arrival_median": {}, "per_arrival_ci95": {}, "per_arrival_quartiles": {},
               "scores": {}, "by_task": {},
               "categories": {}, "chosen": {}}
    for m, method in enumerate(result.methods):
        x = scores[m]
        summary["mean_steps"][method] = float(x.mean())
        summary["median_steps"][method] = float(np.median(x))
        summary["per_trial"][method] = x.mean(axis=1).tolist()
        summary["per_arrival"][method] = x.mean(axis=0).tolist()
        summary["per_arrival_median"][method] = np.median(x, axis=0).tolist()
        spread = x.std(axis=0, ddof=1) if trials > 1 else np.zeros(x.shape[1])
        summary["per_arrival_ci95"][method] = (1.96 * spread / np.sqrt(trials)).tolist()
        summary["per_arrival_quartiles"][method] = np.percentile(x, [25, 75], axis=0).tolist()
        summary["scores"][method] = x.tolist()
        summary["by_task"][method] = {str(t): float(x[result.arriving == t].mean())
                                      for t in np.unique(result.arriving)}
        summary["categories"][method] = result.categories[m].tolist()
        summary["chosen"][method] = result.chosen[m].tolist()
    summary["arriving"] = result.arriving.tolist()
    if result.config.world == GridWorld():
        summary["published"] = {k: {"mean": v[0], "median": v[1]} for k, v in PUBLISHED.items()}
    summary["config"] = dataclasses.asdict(result.config)
    summary["seconds"] = result.seconds
    return summary


def table(summary: dict) -> str:
    """A plain-text table: mean and median steps per method, beside the published ones."""
    published = summary.get("published", {})
    lines = ["steps of each arrival's first episodes, over trials x arrivals (lower is better)",
             f"{'method':<12}{'mean':>9}{'median':>9}{'published mean':>16}{'median':>9}{'N in use':>16}"]
    for method in summary["methods"]:
        paper = published.get(method)
        paper_text = f"{paper['mean']:>16.1f}{paper['median']:>9.1f}" if paper else f"{'':>16}{'':>9}"
        counts = np.bincount(np.asarray(summary["categories"][method]).ravel())
        used = ", ".join(f"{n}: {c}" for n, c in enumerate(counts) if c)
        lines.append(f"{method:<12}{summary['mean_steps'][method]:>9.1f}{summary['median_steps'][method]:>9.1f}"
                     f"{paper_text}{used:>16}")
    note = rule_note(summary["config"].get("reset_rule"))
    if note:
        lines.append(f"{note} (the published figures used the paper's, 'category')")
    return "\n".join(lines)
