r"""The online setting of the deep track: tasks arrive one at a time, each learned from what came before.

The protocol is the grid world's (:mod:`maml2_jax.online`) with policies, returns and
the deep engine (:mod:`maml2_jax.core.train`). A *trial* starts from θ = θ_init and a
pool of I tasks of the family; then for each arrival a = 0 … A−1:

1. **classify** the pool (its first I + a tasks): features from the current θ, k-means
   into N categories (``"maml2-N<k>"``) or N chosen from the features
   (``"maml2-auto"``, :func:`~maml2_jax.core.classification.choose_categories`,
   1 … ``meta.max_categories``), matched to the previous categories so that each
   keeps its slot and its θ_c;
2. **warm start**: J = ``iterations_per_arrival`` outer iterations of MAML² from the
   current state (θ, θ_c, the rule states and the pool carry on from the previous
   arrival: the engine's :class:`~maml2_jax.core.types.RunState` is never reset);
3. **arrival**: the next task T_a adapts with the update-tendency reset
   (:func:`~maml2_jax.core.readaptation.adaptation_curve`): one policy-gradient step
   θ → θ₁, :math:`c^* = \arg\min_c ‖θ_1 − θ_c‖ − ‖θ − θ_c‖` over the active slots,
   continue from θ_{c*} (``reset_rule`` "carry": θ_{c*} + (θ₁ − θ)); the return R_a(k)
   of the policy in use after k = 0 … K steps (``steps`` = K) is recorded. With
   ``train.classify_trajectories`` the tendency is read from a separate step with that
   many trajectories (step 1's features use them too), as in ``maml2 evaluate``;
4. T_a joins the pool (:func:`~maml2_jax.core.task_sources.growing`'s ``add``).

The MAML baseline (``"maml"``) is the same engine with one category holding the whole
pool (MAML-TRPO on pool tasks, ``train.meta_batch_size`` per step): J iterations per
arrival, warm-started the same way, and the arrival adapted K steps from θ, no reset.

Shapes (one method; T trials, P = I + A pool capacity, S slots, K steps):
states are RunStates with a leading trials axis ``[T, ...]``; one compiled program
(``jax.vmap`` over trials) runs each stage for all trials: the outer iteration
(:func:`maml2_jax.core.train.run` with ``seeds=True``), the features ``[T, P, F]``, the
arrival's curve ``[T, K + 1]`` and the admission. Only k-means and the choice of N run
on the host, between compiled calls, one trial after the other.

**Devices.** With ``devices`` D > 1 the trials are split over D devices
(``shard_map`` over a ``"runs"`` mesh: each device runs every stage for its own
trials, with no communication). :func:`advance` pads T to a multiple of D by
repeating the last trial and drops the copies from the records and from the states
it hands back, so checkpoints hold T trials whatever D. The draws do not depend on D;
the floats differ in rounding, as between batch sizes (below).

**Arrivals.** The growing pool draws all P tasks at once, ``sample_tasks(k, P)``, and
arrival a is pool entry I + a, admitted by ``add`` after its adaptation. One draw of P
keeps the family's proportions: ``nav2d-isolated`` puts exactly round(0.1 P) of the P
tasks in the isolated cluster, in random order (a draw of one task at a time would
never be isolated: one task rounds to none). Which of them are in the initial pool and
which arrive, and when, is random per trial.

**Features are recomputed** from the current θ at every classification (the engine's
``features``: each pool task adapted from θ, the update θ_T − θ), not stored when a task
joins as in the grid world. There the features come from learning from scratch, whose
start never moves, so a stored feature equals a recomputed one; here the start is the
warm-started θ, which moves at every arrival, and updates taken from different θ are
not comparable: k-means on a mix would separate tasks by when they joined rather than
by what they are. Recomputing costs one adaptation per pool task per arrival, small
next to J outer iterations.

**Keys** (common random numbers: a paired comparison). Trial t:
``k_t = fold_in(key(seed), t)``; θ_init from ``fold_in(k_t, 0)``, the run key (of the
engine: pool and arrivals, meta-training, features, k-means) ``fold_in(k_t, 1)``; the
adaptation of arrival a from ``fold_in(run key, ARRIVAL_COUNTER + I + a)``. Every method
of a trial shares all of them: the same θ_init, the same pool and arriving tasks, the
same rollout streams for the arrivals' adaptations. A trial's draws depend on t
only, not on the other trials in the batch; its floats agree with the same trial run
alone up to rounding (XLA compiles the vmapped program for each batch size: |Δθ| ~ 3e-8
after three arrivals at the tests' size; discrete outcomes, classifications included,
were identical).

Outputs of :func:`run` (``out``): ``config.json`` first, ``checkpoint/`` (every
method's stacked states and the results so far, every ``checkpoint_every`` arrivals:
a resumed run is the uninterrupted one), ``summary.json`` at the end
(:func:`summarize`). :func:`plot` draws the return after each step against arrivals.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import adjusted_rand_score

from maml2_jax import deep_training, sharding
from maml2_jax.core import task_sources
from maml2_jax.core import train as engine_lib
from maml2_jax.core.readaptation import RESET_RULES, adaptation_curve, rule_note
from maml2_jax.core.types import RunState, take
from maml2_jax.envs import nav2d
from maml2_jax.errors import ConfigError, check_choice, check_non_negative_int, check_positive_int, check_seed
from maml2_jax.io import config_files, files, machine
from maml2_jax.io.checkpoint import Checkpoints
from maml2_jax.online import MAML, MAML2_AUTO, method_categories

# Above the engine's step counters, below its own streams (0xB0000000 …).
ARRIVAL_COUNTER = 0xA0000000
CHECKPOINT_DIR = "checkpoint"
# What run writes into ``out`` (for files.claim_directory).
OUTPUTS = ("config.json", "summary.json", CHECKPOINT_DIR)


def isolated_categories(env: str) -> tuple[int, ...]:
    """The ground-truth categories of ``env`` that are isolated (empty if it has none)."""
    if env != "nav2d-isolated":
        return ()
    layout = nav2d.DEFAULT_ISOLATED_LAYOUT
    return tuple(range(len(layout.dense_centres), layout.num_categories))


def _default_train() -> deep_training.TrainConfig:
    # 20-step episodes: every nav2d goal is reached in ~6 moves, and rollouts cost 5x less than 100.
    return deep_training.TrainConfig(env="nav2d-isolated", horizon=20, algo="maml2")


@dataclasses.dataclass(frozen=True)
class OnlineDeepConfig:
    """The online experiment of the deep track (defaults: a small one, 4 trials × 12 arrivals).

    Attributes:
      train: the learner, rule and schedule settings, as for ``maml2 train``: env,
        horizon, backend, meta_batch_size (MAML's tasks per step), feature,
        classify_trajectories (MAML² methods: the pool's features and the arrival's
        update tendency), rule, meta_lr, curvature_fraction, policy, inner, trpo, and of ``meta``:
        max_categories, inner_iterations (K_in), tasks_per_category (B),
        outer_update, category_init, classify_from, stop_tolerance. The online run
        sets the rest itself: algo, seed, seeds, pool_size, devices (1: a
        meta-batch is never split; the trials are, by ``devices`` below),
        checkpoint_every, meta.categories (per method), meta.outer_iterations
        (A·J) and meta.classify_every (J: once per arrival).
      trials: T, independent trials, vmapped in one compiled program (split over ``devices``).
      arrivals: A, tasks arriving one at a time.
      initial_pool: I, tasks in the pool before the first arrival.
      iterations_per_arrival: J, outer iterations of the warm start before each arrival.
      steps: K, adaptation steps recorded per arrival (returns after 0 … K steps).
      reset_rule: where a MAML² method's arrival continues after the first step:
        "category" (the paper's, θ_{c*}) or "carry" (θ_{c*} + (θ₁ − θ);
        :func:`~maml2_jax.core.readaptation.reset`).
      methods: compared methods: ``maml2-auto`` (N chosen at each classification),
        ``maml2-N<k>`` (k categories), ``maml``.
      seed: trial t uses ``fold_in(key(seed), t)``.
      checkpoint_every: arrivals between checkpoints (0: only at the end).
      devices: D, devices to split the trials over (0: all visible; on a CPU the CLI
        makes one per core). Every run before this option ran on one device:
        ``devices=1`` repeats one, and is what a resume reads a ``config.json``
        without the field as.
    """

    train: deep_training.TrainConfig = dataclasses.field(default_factory=_default_train)
    trials: int = 4
    arrivals: int = 12
    initial_pool: int = 8
    iterations_per_arrival: int = 2
    steps: int = 3
    reset_rule: str = "category"
    methods: tuple[str, ...] = (MAML2_AUTO, MAML)
    seed: int = 0
    checkpoint_every: int = 1
    devices: int = 0

    def __post_init__(self):
        if not isinstance(self.train, deep_training.TrainConfig):
            raise ConfigError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        for name in ("trials", "arrivals", "initial_pool", "iterations_per_arrival", "steps"):
            check_positive_int(name.replace("_", " "), getattr(self, name))
        check_non_negative_int("checkpoint every", self.checkpoint_every)
        check_non_negative_int("devices", self.devices)
        check_seed("seed", self.seed)
        check_choice("reset rule", self.reset_rule, RESET_RULES)
        if isinstance(self.methods, str) or not isinstance(self.methods, (tuple, list)) or not self.methods:
            raise ConfigError(f"methods must be a non-empty list of method names, got {self.methods!r}")
        object.__setattr__(self, "methods", tuple(self.methods))
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods repeat a name: {', '.join(self.methods)}")
        for method in self.methods:
            n = method_categories(method)
            if isinstance(n, int) and n > self.initial_pool:
                raise ConfigError(f"{method}: cannot make {n} categories of an initial pool of "
                                  f"{self.initial_pool} tasks")
        if self.train.init_params:
            raise ConfigError("init params apply to maml2 train only: every online method starts from a fresh θ "
                              "per trial")
        if MAML2_AUTO in self.methods and self.train.meta.max_categories < 2:
            raise ConfigError(f"{MAML2_AUTO} needs max categories >= 2, got {self.train.meta.max_categories}")
        for method in self.methods:
            self.method_train(method)  # what TrainConfig refuses (more slots than pool tasks) is refused now

    @property
    def capacity(self) -> int:
        """P = I + A, the pool's room: the initial tasks and every arrival."""
        return self.initial_pool + self.arrivals

    def method_train(self, method: str) -> deep_training.TrainConfig:
        """The training config of one method (what :func:`maml2_jax.deep_training.shared_parts` builds from)."""
        n = method_categories(method)
        total = self.arrivals * self.iterations_per_arrival
        if n is None:  # MAML never classifies: its arrivals adapt with the inner loop's batch only
            meta = dataclasses.replace(self.train.meta, categories=1, outer_iterations=total, classify_every=0)
            return dataclasses.replace(self.train, algo=MAML, seed=0, seeds=1, pool_size=self.capacity, devices=1,
                                       checkpoint_every=0, classify_trajectories=0, meta=meta)
        meta = dataclasses.replace(self.train.meta, categories=n, outer_iterations=total,
                                   classify_every=self.iterations_per_arrival)
        return dataclasses.replace(self.train, algo="maml2", seed=0, seeds=1, pool_size=self.capacity, devices=1,
                                   checkpoint_every=0, meta=meta)


def check_memory(config: OnlineDeepConfig) -> None:
    """ConfigError when a method's compiled stage clearly cannot fit in the memory of the
    trials' devices (:func:`maml2_jax.deep_training.check_memory`): its outer iteration and
    the arrival's K adaptation steps, each for all T trials at once (padded to a
    multiple of the devices), or when ``config.devices`` asks for more devices than are
    visible. Call it before compiling."""
    devices = sharding.first_devices(config.devices)
    trials = _padded(config.trials, len(devices))
    # The trials stand where a training run's seeds do; the pool is the initial tasks and the arrivals.
    flags = {"--seeds": "--trials", "--pool-size": "--initial-pool + --arrivals", "--tasks": "arrival"}
    for method in config.methods:
        train = config.method_train(method)
        deep_training.check_memory(train, devices, f"{method}'s warm start", flags, seeds=trials)
        deep_training.check_memory(train, devices, f"{method}'s adaptation of the arrival", flags,
                                   tasks=("--tasks", 1), steps=("--steps", config.steps), seeds=trials)


def _device_count(config: OnlineDeepConfig) -> int:
    """D, the devices the trials are split over (ConfigError for more than are visible)."""
    return len(sharding.first_devices(config.devices))


def _padded(trials: int, devices: int) -> int:
    """T rounded up to a multiple of the device count: the rows :func:`advance` runs."""
    return -(-trials // devices) * devices


class Method(NamedTuple):
    """One method's compiled parts.

    Attributes:
      name: the method's name.
      engine: its engine, on a growing pool of P tasks.
      init: ``trial key [2] uint32 -> RunState`` of one trial, jitted (stacked by :func:`init_states`).
      curves: ``[T, ...] states -> (returns [T, K + 1], c* [T])``: the arrival (pool
        entry ``size``) adapted K steps; c* = −1 without reset. Jitted, vmapped.
      admit: ``[T, ...] states -> states``: the arrival joins the pool. Jitted, vmapped.
      mesh: the ``"runs"`` mesh the trials are split over (T a multiple of its
        devices), or None: one device, any T.
    """

    name: str
    engine: engine_lib.Engine
    init: Callable
    curves: Callable
    admit: Callable
    mesh: jax.sharding.Mesh | None


@functools.lru_cache(maxsize=8)
def method_parts(config: OnlineDeepConfig, method: str) -> Method:
    """The compiled parts of ``method`` (cached: trials, seed and checkpoints do not shape them)."""
    train_config = config.method_train(method)
    parts = deep_training.shared_parts(train_config)
    source = task_sources.growing(parts.family.sample_tasks, config.capacity, config.initial_pool)
    schedule = train_config.schedule()
    engine = engine_lib.make_engine(parts.learner, parts.rule, source, schedule, parts.classifier)
    one_step, tendency = parts.one_step_learners()
    reset = method != MAML

    def init(trial_key):
        key = jax.random.wrap_key_data(trial_key)
        theta = parts.policy.init(jax.random.fold_in(key, 0))
        return engine.init(jax.random.key_data(jax.random.fold_in(key, 1)), theta)

    def curve(state: RunState):
        index = state.source.size
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key),
                                 jnp.uint32(ARRIVAL_COUNTER) + index.astype(jnp.uint32))
        task = take(state.source.pool, index)
        if not reset:
            return adaptation_curve(one_step, config.steps, state.theta, task, key)
        return adaptation_curve(one_step, config.steps, state.theta, task, key, state.category_params, True,
                                engine_lib.active(state), tendency, config.reset_rule)

    def admit(state: RunState) -> RunState:
        index = state.source.size
        grown = source.add(state.source, take(state.source.pool, index), state.source.truth[index])
        if schedule.slots > 1:
            return state.replace(source=grown)  # the arrival joins a category at the next classification
        # One category holds every task in the pool, the arrival included.
        return state.replace(source=grown, members=(jnp.arange(config.capacity) < grown.size)[None])

    devices = sharding.first_devices(config.devices)
    mesh = sharding.run_mesh(devices) if len(devices) > 1 else None
    return Method(method, engine, jax.jit(init), sharding.shard_runs(jax.vmap(curve), mesh, 1),
                  sharding.shard_runs(jax.vmap(admit), mesh, 1), mesh)


def _static(config: OnlineDeepConfig) -> OnlineDeepConfig:
    """The config with what does not shape the compiled parts set to fixed values (the
    cache key); ``devices`` as the count it selects, so that 0 and that count share one entry."""
    return dataclasses.replace(config, trials=1, seed=0, checkpoint_every=0, methods=(MAML,),
                               devices=_device_count(config))


def trial_keys(config: OnlineDeepConfig, trial_ids: Sequence[int]) -> jax.Array:
    """``[T, 2]`` uint32 key data of the trials: ``fold_in(key(seed), t)``."""
    root = jax.random.key(config.seed)
    return jnp.stack([jax.random.key_data(jax.random.fold_in(root, t)) for t in trial_ids])


def init_states(config: OnlineDeepConfig, trial_ids: Sequence[int]) -> dict[str, RunState]:
    """Every method's ``[T, ...]`` states at the start of the trials ``trial_ids``."""
    keys = trial_keys(config, trial_ids)
    states = {}
    for m in config.methods:
        init = method_parts(_static(config), m).init
        # One trial at a time: a trial's start is the same whatever else is in the batch.
        states[m] = jax.tree.map(lambda *xs: jnp.stack(xs), *[init(k) for k in keys])
    return states


def empty_records(config: OnlineDeepConfig) -> dict:
    """The per-arrival results, filled by :func:`advance` (JSON-ready lists, one entry per arrival).

    ``arrival_category`` ``[a][T]``: each arrival's ground-truth category; per method
    ``returns`` ``[a][T][K + 1]``; for MAML² methods also ``categories`` ``[a][T]`` (N
    of the classification before arrival a), ``ari`` ``[a][T]`` (adjusted Rand index of
    that classification against the ground truth), ``picked`` ``[a][T]`` (the
    ground-truth category most of the reset category's pool tasks have, −1 if none).
    """
    records = {"arrival_category": [], "returns": {m: [] for m in config.methods}}
    for name in ("categories", "ari", "picked"):
        records[name] = {m: [] for m in config.methods if m != MAML}
    return records


def _classification_record(state: RunState) -> tuple[list[int], list[float]]:
    """N and the adjusted Rand index against the ground truth, per trial, of the current labels."""
    labels, truth = np.asarray(state.labels), np.asarray(state.source.truth)
    sizes, active = np.asarray(state.source.size), np.asarray(engine_lib.active(state))
    n = [int(a.sum()) for a in active]
    ari = [float(adjusted_rand_score(t[:s], lab[:s])) for t, lab, s in zip(truth, labels, sizes)]
    return n, ari


def _picked_truth(state: RunState, chosen: np.ndarray) -> list[int]:
    """Per trial, the ground-truth category most members of slot c* have (−1: an empty slot)."""
    members, truth = np.asarray(state.members), np.asarray(state.source.truth)
    picked = []
    for m, t, c in zip(members, truth, chosen):
        inside = t[m[c]]
        picked.append(int(np.bincount(inside).argmax()) if inside.size else -1)
    return picked


def _note_classification(classified: list, state: RunState, metrics, was_classified: bool) -> None:
    """The engine's callback: after a step that followed a classification, keep its N and ARI."""
    del metrics
    if was_classified:
        classified.append(_classification_record(state))


def advance(config: OnlineDeepConfig, states: dict[str, RunState], records: dict, start: int, stop: int,
            after: Callable[[int, dict, dict], None] | None = None) -> dict[str, RunState]:
    """Arrivals ``start … stop − 1`` of every method (host loop; impure only through ``after``).

    ``states``: every method's ``[T, ...]`` states after ``start`` arrivals (fresh from
    :func:`init_states` for 0); ``records`` (:func:`empty_records`) is extended in place.
    ``after(a, states, records)`` is called once arrival a is done for every method.
    Returns the states after ``stop`` arrivals. The trials are split over the devices
    of ``config.devices`` (padded to a multiple of them inside; ``after`` and the
    caller see the T trials only).

    Raises:
      NonFiniteError: a step diverged (:func:`maml2_jax.core.train.run`).
    """
    trials = len(next(iter(states.values())).iteration)

    def real(tree):  # the T trials, without the copies that pad them
        return jax.tree.map(lambda x: x[:trials], tree)

    states = {m: sharding.pad_runs(states[m], _device_count(config)) for m in states}
    for a in range(start, stop):
        truth = None
        for m in config.methods:
            method = method_parts(_static(config), m)
            classified = []
            state = engine_lib.run(method.engine, states[m], (a + 1) * config.iterations_per_arrival,
                                   functools.partial(_note_classification, classified), seeds=True,
                                   mesh=method.mesh)
            curve, chosen = real(jax.device_get(method.curves(state)))
            records["returns"][m].append(np.asarray(curve, np.float64).tolist())
            if m != MAML:
                n, ari = classified[0] if classified else _classification_record(state)
                records["categories"][m].append(n[:trials])
                records["ari"][m].append(ari[:trials])
                records["picked"][m].append(_picked_truth(state, np.asarray(chosen)))
            index = np.asarray(state.source.size)
            truth = np.take_along_axis(np.asarray(state.source.truth), index[:, None], axis=1)[:trials, 0].tolist()
            states[m] = method.admit(state)
        records["arrival_category"].append(truth)
        if after is not None:
            after(a, real(states), records)
    return real(states)


def _config_json(config: OnlineDeepConfig) -> dict:
    """The config as strict JSON reads it back (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _check_resumed_config(saved, config: OnlineDeepConfig, path: str) -> None:
    """ConfigError unless ``saved`` (the run's ``config.json``) holds ``config``'s settings.

    A run started before ``devices`` existed ran its trials on one device, so a saved
    config without the field counts as ``devices=1``, not the default (all). A resume
    that differs only in ``devices`` is told which count repeats the run's rounding.
    """
    if isinstance(saved, dict):
        saved = {"devices": 1, **saved}
        if config_files.same_settings(saved, config):
            return
        other = saved["devices"]
        try:
            only_devices = config_files.same_settings(saved, dataclasses.replace(config, devices=other))
        except ConfigError:  # not a device count at all
            only_devices = False
        if only_devices:
            raise ConfigError(f"the run in {os.path.dirname(path)} was started with --devices {other}: resume it "
                              f"with --devices {other} (another count rounds differently)")
    raise ConfigError(f"{path} is another experiment's config: resume with the same settings")


def run(config: OnlineDeepConfig, out: str | None = None, progress: Callable[[dict], None] | None = None,
        resume: bool = False, stop_after: int | None = None, argv: list[str] | None = None) -> dict:
    """The online experiment: every method, every trial, every arrival. Impure: writes to ``out``.

    Args:
      config: the experiment.
      out: output directory (``config.json``, ``checkpoint/``, ``summary.json``,
        ``machines.jsonl``: :func:`maml2_jax.io.machine.session`), or None for no
        files. The caller claims it (``files.claim_directory(out, OUTPUTS, …)``).
      progress: called after each arrival with ``{"arrival", "seconds", "return_after_1"
        {method: mean over trials}, "categories" {method: mean N}, "ari" {method: mean}}``.
      resume: continue from the newest checkpoint in ``out``, whose ``config.json`` must
        equal ``config``; a run stopped before its first checkpoint starts over.
      stop_after: stop after this many arrivals in all (a pause; resume later).
      argv: the command line kept in ``machines.jsonl`` (default ``sys.argv[1:]``).

    Returns:
      The summary (:func:`summarize`) with ``seconds_this_session`` and ``devices``
      (the count this session split the trials over), also written to
      ``out/summary.json`` once all arrivals are done; a paused run returns the
      summary so far and writes none.
    """
    if resume and out is None:
        raise ConfigError("resume needs an output directory")
    stop = config.arrivals if stop_after is None else min(check_non_negative_int("stop after", stop_after),
                                                          config.arrivals)
    check_memory(config)
    devices = _device_count(config)  # this session's split: machines.jsonl and the summary record it
    trial_ids = range(config.trials)
    states, records, start = init_states(config, trial_ids), empty_records(config), 0
    checkpoints = None
    if out is not None:
        config_path = os.path.join(out, "config.json")
        if resume:
            if not os.path.isfile(config_path):
                raise ConfigError(f"nothing to resume in {out}: no config.json")
            with open(config_path, encoding="utf-8") as f:
                _check_resumed_config(json.load(f), config, config_path)
        else:
            os.makedirs(out, exist_ok=True)
            files.write_json(config_path, _config_json(config))
        checkpoints = Checkpoints(os.path.join(out, CHECKPOINT_DIR))
    started = time.perf_counter()
    last = [started]

    def after(a, states, records):
        done = a + 1
        if checkpoints is not None and (done == config.arrivals or done == stop or
                                        (config.checkpoint_every and done % config.checkpoint_every == 0)):
            checkpoints.save(done, states, {"arrivals": done, "records": records})
        if progress is not None:
            now = time.perf_counter()
            row = {"arrival": a, "seconds": now - last[0],
                   "return_after_1": {m: float(np.mean(np.asarray(records["returns"][m][a])[:, 1]))
                                      for m in config.methods},
                   "categories": {m: float(np.mean(v[a])) for m, v in records["categories"].items()},
                   "ari": {m: float(np.mean(v[a])) for m, v in records["ari"].items()}}
            last[0] = now
            progress(row)

    try:
        if resume and checkpoints.latest() is not None:
            states, record = checkpoints.restore(states)
            start, records = int(record["arrivals"]), record["records"]
        if out is not None:  # a start, or a resume accepted and restored: this session computes
            machine.session(out, resume, argv, devices_used=devices)
        states = advance(config, states, records, start, stop, after)
    finally:
        if checkpoints is not None:
            checkpoints.close()
    summary = summarize(config, records)
    summary["seconds_this_session"] = time.perf_counter() - started
    summary["devices"] = devices
    if out is not None and len(records["arrival_category"]) == config.arrivals:
        files.write_json(os.path.join(out, "summary.json"), summary)
    return summary


def _finite_list(values):
    """``values`` as nested lists, None for NaN and infinities (strict JSON)."""
    values = np.asarray(values, np.float64)
    if values.ndim == 0:
        return files.finite(float(values))
    return [_finite_list(v) for v in values]


def _group_stats(returns: np.ndarray, mask: np.ndarray) -> dict:
    """Statistics of the arrivals in ``mask`` ``[T, A]`` of ``returns`` ``[T, A, K + 1]``.

    ``mean``: mean over trials of the per-trial mean (trials with no such arrival left
    out); ``trial_std``: the trial-to-trial spread, the standard deviation (ddof 1) of
    the per-trial means; ``trial_median``: their median; ``arrival_median``: the
    median over every (trial, arrival) in the group; ``per_trial_mean`` ``[T][K + 1]``.
    """
    counts = mask.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_trial = (returns * mask[..., None]).sum(axis=1) / counts[:, None]
    present = per_trial[counts > 0]
    stats = {"arrivals": int(mask.sum()), "trials_with_arrivals": int(present.shape[0]),
             "per_trial_mean": _finite_list(per_trial)}
    steps = returns.shape[-1]
    if present.shape[0] == 0:
        nothing = [None] * steps
        return {**stats, "mean": nothing, "trial_std": nothing, "trial_median": nothing, "arrival_median": nothing}
    spread = present.std(axis=0, ddof=1) if present.shape[0] > 1 else np.zeros(steps)
    return {**stats, "mean": _finite_list(present.mean(axis=0)), "trial_std": _finite_list(spread),
            "trial_median": _finite_list(np.median(present, axis=0)),
            "arrival_median": _finite_list(np.median(returns[mask], axis=0))}


def summarize(config: OnlineDeepConfig, records: dict) -> dict:
    """The JSON-ready summary of the records of :func:`advance` (any number of arrivals done).

    Keys: ``env``, ``config``, ``arrivals_done``, ``isolated_categories``,
    ``arrival_category`` ``[T][A]``; per method (``methods``): ``returns``
    ``[T][A][K + 1]``, ``by_arrival_mean`` ``[A][K + 1]`` (mean over trials), ``groups``
    {``all``, and for a family with isolated categories ``isolated`` and ``other``:
    :func:`_group_stats`}; MAML² methods also ``categories`` and ``ari`` ``[T][A]``,
    ``mean_categories`` and ``mean_ari`` ``[A]`` (over trials), ``tendency_accuracy``
    {group: share of arrivals reset to a category whose pool tasks are mostly of the
    arrival's own}; and, when MAML is compared, ``vs_maml`` {group: :func:`_group_stats`
    of the paired difference method − MAML, per trial over the same arrivals}.
    """
    done = len(records["arrival_category"])
    truth = np.asarray(records["arrival_category"], np.int64).reshape(done, config.trials).T  # [T, A]
    isolated = isolated_categories(config.train.env)
    groups = {"all": np.ones_like(truth, bool)}
    if isolated:
        groups["isolated"] = np.isin(truth, isolated)
        groups["other"] = ~groups["isolated"]
    summary = {"env": config.train.env, "config": _config_json(config), "arrivals_done": done,
               "isolated_categories": list(isolated), "arrival_category": truth.tolist(), "methods": {}}
    steps = config.steps + 1

    def returns_of(m):
        return np.asarray(records["returns"][m], np.float64).reshape(done, config.trials, steps).transpose(1, 0, 2)

    for m in config.methods:
        returns = returns_of(m)
        entry = {"returns": _finite_list(returns), "by_arrival_mean": _finite_list(returns.mean(axis=0)),
                 "groups": {g: _group_stats(returns, mask) for g, mask in groups.items()}}
        if m != MAML:
            n = np.asarray(records["categories"][m], np.float64).reshape(done, config.trials).T
            ari = np.asarray(records["ari"][m], np.float64).reshape(done, config.trials).T
            picked = np.asarray(records["picked"][m], np.int64).reshape(done, config.trials).T
            entry.update(categories=n.astype(int).tolist(), ari=_finite_list(ari),
                         mean_categories=_finite_list(n.mean(axis=0)), mean_ari=_finite_list(ari.mean(axis=0)),
                         tendency_accuracy={g: files.finite(float(np.mean((picked == truth)[mask])))
                                            if mask.any() else None for g, mask in groups.items()})
            if MAML in config.methods:
                difference = returns - returns_of(MAML)
                entry["vs_maml"] = {g: _group_stats(difference, mask) for g, mask in groups.items()}
        summary["methods"][m] = entry
    return summary


def table(summary: dict) -> str:
    """Plain text: per group and method, the mean return after 0 … K steps ± the trial-to-trial spread."""
    lines = [(f"online {summary['env']}: mean return of the arrivals after 0..K adaptation steps "
              f"(± std of per-trial means), {summary['arrivals_done']} arrivals")]
    note = rule_note(summary["config"].get("reset_rule"))
    if note:
        lines.append(note)
    for group in next(iter(summary["methods"].values()))["groups"]:
        lines.append(f"{group} arrivals")
        for method, entry in summary["methods"].items():
            stats = entry["groups"][group]
            cells = "".join("       n/a" if v is None else f"{v:8.1f} ±{s:5.1f}"
                            for v, s in zip(stats["mean"], stats["trial_std"]))
            lines.append(f"  {method:<12} ({stats['arrivals']:3d}){cells}")
    for method, entry in summary["methods"].items():
        if "mean_categories" in entry:
            lines.append(f"{method}: N chosen, mean over arrivals {np.mean(entry['mean_categories']):.2f}; "
                         f"ARI {np.mean(entry['mean_ari']):.2f}")
    return "\n".join(lines)


def plot(summary: dict, path: str, step: int = 1) -> None:
    """Return after ``step`` adaptation steps against the arrival index: a line per method
    (mean over trials) with a band of ± one trial-to-trial standard deviation; a panel for
    all arrivals and, for a family with isolated categories, one of the isolated arrivals
    (their mean per arrival index over the trials where that arrival is isolated)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    truth = np.asarray(summary["arrival_category"])
    panels = {"all arrivals": np.ones_like(truth, bool)}
    if summary["isolated_categories"]:
        panels["isolated arrivals"] = np.isin(truth, summary["isolated_categories"])
    fig = Figure(figsize=(5.0 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, mask) in zip(axes, panels.items()):
        for index, (method, entry) in enumerate(summary["methods"].items()):
            values = np.asarray(entry["returns"], np.float64)[..., step]  # [T, A]
            values = np.where(mask, values, np.nan)
            arrivals = np.flatnonzero(np.any(mask, axis=0))
            mean = np.nanmean(values[:, arrivals], axis=0)
            std = np.nan_to_num(np.nanstd(values[:, arrivals], axis=0))
            ax.plot(arrivals, mean, marker="o", markersize=3, color=f"C{index}", label=method)
            ax.fill_between(arrivals, mean - std, mean + std, color=f"C{index}", alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("arrival")
        ax.set_ylabel(f"return after {step} adaptation step{'s' if step != 1 else ''}")
    axes[0].legend(loc="lower right")
    fig.savefig(path, dpi=120)
