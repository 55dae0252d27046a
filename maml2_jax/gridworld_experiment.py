"""The published tabular experiment (DESIGN §1.1), every run at once.

Per run: classify the tasks (learn each from scratch, k-means on θ ⊙ μ), meta-train
MAML² on the categories, meta-train the MAML baseline, then adapt to every task with
MAML² (update-tendency reset), MAML² without reset, MAML and learning from scratch.
Runs and tasks are lanes of four compiled programs, so 50 runs cost one compile each:

1. ``classify``   — lanes R × T, ``Adapt(θ_init, T_i, 2000)``;
2. k-means        — host side, per run (with ``categories="auto"`` N is chosen per run too);
3. ``train``      — MAML² (lanes R) and MAML (lanes R) meta-training;
4. ``test``       — lanes 4 methods × R × T, 10 episodes each.

Each run's randomness comes from ``fold_in(PRNGKey(seed), run)``, so run r gives the
same result alone or inside a batch of any size. The four test methods of a
(run, task) share one key: common random numbers make their comparison paired, and
MAML² and its no-reset ablation share their first episode exactly.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from maml2_jax import adaptation, lane_maml2, prng, sharding
from maml2_jax.core import classification
from maml2_jax.core.config import AUTO, MetaConfig, check_categories
from maml2_jax.core.readaptation import RESET_RULES
from maml2_jax.envs.gridworld import NUM_ACTIONS, PUBLISHED_GOALS, PUBLISHED_GROUPS, GridWorld
from maml2_jax.errors import (INT32_MAX, ConfigError, NonFiniteError, check_choice, check_float, check_int,
                              check_positive_int, check_seed)
from maml2_jax.learners.sarsa import SarsaConfig, make_sarsa

METHODS = ("maml2", "maml2_no_reset", "maml", "lfs")


@dataclasses.dataclass(frozen=True)
class GridworldConfig:
    """Everything that defines one grid-world experiment.

    Attributes:
      runs: independent runs (each redoes classification, meta-training, testing).
      seed: master seed; run r uses ``fold_in(PRNGKey(seed), r)``.
      categories: N, number of task categories (k-means clusters), or ``"auto"``: N
        chosen per run from the features
        (:func:`~maml2_jax.core.classification.choose_categories`), 1 … ``max_categories``.
      max_categories: N_max, the category slots of an automatic N (ignored otherwise).
      outer_iterations: K_out of MAML².
      inner_iterations: K_in, CatMeta steps per category per outer iteration.
      maml_iterations: meta-iterations of the MAML baseline.
      outer_update: "sequential" (published) or "parallel".
      classify_episodes: episodes of learning from scratch per task for the features.
      adapt_episodes: episodes of each Adapt inside CatMeta.
      test_episodes: adaptation episodes on each task at test time.
      reset_after: episodes from θ before the update-tendency reset.
      reset_rule: where MAML² continues after it: "category" (the paper's, θ_{c*}) or
        "carry" (θ_{c*} + (θ₁ − θ), the first episodes' update kept;
        :func:`~maml2_jax.core.readaptation.reset`).
      beta: β of the CatMeta step β/|C|.
      stop_tolerance: CatMeta stops early when a step is smaller than this.
      world: the grid layout and its tasks (goal cells).
      sarsa: the learner's hyper-parameters.
      groups: reporting groups of task ids; ``None`` gives the published groups for
        the published goals and one group per task otherwise.
    """

    runs: int = 50
    seed: int = 0
    categories: int | str = 3
    max_categories: int = 4
    outer_iterations: int = 20
    inner_iterations: int = 10
    maml_iterations: int = 3000
    outer_update: str = "sequential"
    classify_episodes: int = 2000
    adapt_episodes: int = 5
    test_episodes: int = 10
    reset_after: int = 1
    reset_rule: str = "category"
    beta: float = 1.0
    stop_tolerance: float = 1e-5
    world: GridWorld = GridWorld()
    sarsa: SarsaConfig = SarsaConfig()
    groups: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "categories", check_categories(self.categories, self.max_categories))
        for name in ("runs", "classify_episodes", "maml_iterations", "test_episodes", "reset_after"):
            check_positive_int(name.replace("_", " "), getattr(self, name))
        check_seed("seed", self.seed)
        if not isinstance(self.world, GridWorld):
            raise ConfigError(f"world must be a GridWorld, got {type(self.world).__name__}")
        if not isinstance(self.sarsa, SarsaConfig):
            raise ConfigError(f"sarsa must be a SarsaConfig, got {type(self.sarsa).__name__}")
        num_tasks = self.world.num_tasks
        if self.automatic and self.max_categories > num_tasks:
            raise ConfigError(f"max categories must be at most the number of tasks ({num_tasks}), "
                              f"got {self.max_categories}")
        if not self.automatic and self.categories > num_tasks:
            raise ConfigError(f"categories must be between 1 and the number of tasks ({num_tasks}), got {self.categories}")
        if not 1 <= self.reset_after < self.test_episodes:
            raise ConfigError(
                f"need 1 <= reset_after < test_episodes, got reset_after={self.reset_after}, "
                f"test_episodes={self.test_episodes}"
            )
        check_choice("reset rule", self.reset_rule, RESET_RULES)
        # θ ← θ + β (mean of the category's adapted θ_i − θ): for β >= 2 a step never
        # brings θ closer to that mean, so the schedule cannot settle.
        object.__setattr__(self, "beta", check_float("beta", self.beta, 0, 2, low_open=True, high_open=True))
        object.__setattr__(self, "stop_tolerance", check_float("stop tolerance", self.stop_tolerance, low=0))
        check_positive_int("adapt episodes", self.adapt_episodes)
        # The action choices of one adaptation are counted in int32 (they key its draws).
        episodes = max(self.classify_episodes, self.adapt_episodes, self.test_episodes)
        if episodes * (self.world.max_steps + 1) > INT32_MAX:
            raise ConfigError(f"{episodes} episodes of up to {self.world.max_steps} max steps exceed the int32 "
                              f"count of action choices ({INT32_MAX}); lower the episodes or max steps")
        self.schedule()  # validates the meta-training settings
        if self.groups is not None:
            object.__setattr__(self, "groups", _check_groups(self.groups, num_tasks))

    @property
    def automatic(self) -> bool:
        """Whether each run chooses its N from the features."""
        return self.categories == AUTO

    @property
    def slots(self) -> int:
        """Category parameter sets per run: N, or N_max for an automatic N."""
        return self.max_categories if self.automatic else self.categories

    def schedule(self) -> lane_maml2.Schedule:
        return lane_maml2.Schedule(
            self.outer_iterations, self.inner_iterations, self.adapt_episodes, self.beta, self.stop_tolerance,
            self.outer_update,
        )

    def meta_config(self) -> MetaConfig:
        """The schedule in the vocabulary shared with the deep track."""
        return MetaConfig(categories=self.categories, max_categories=self.max_categories,
                          outer_iterations=self.outer_iterations,
                          inner_iterations=self.inner_iterations, outer_update=self.outer_update,
                          classify_from="init", stop_tolerance=self.stop_tolerance)

    def report_groups(self) -> tuple[tuple[int, ...], ...]:
        if self.groups is not None:
            return self.groups
        if self.world.goals == PUBLISHED_GOALS:
            return PUBLISHED_GROUPS
        return tuple((t,) for t in range(self.world.num_tasks))


def _check_groups(groups, num_tasks: int) -> tuple[tuple[int, ...], ...]:
    """The reporting groups as tuples; ConfigError for an empty group, a task id off
    ``0..num_tasks-1``, or a task named twice (in one group or in two)."""
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__iter__"):
        raise ConfigError(f"groups must be a sequence of task-id groups, got {groups!r}")
    checked, seen = [], set()
    for group in groups:
        if isinstance(group, (str, bytes)) or not hasattr(group, "__iter__"):
            raise ConfigError(f"each of the groups must be a sequence of task ids, got {group!r}")
        group = tuple(check_int("group task id", t) for t in group)
        if not group:
            raise ConfigError("a reporting group is empty; groups need at least one task id each")
        for t in group:
            if not 0 <= t < num_tasks:
                raise ConfigError(f"group names task {t}, but the tasks are 0..{num_tasks - 1}")
            if t in seen:
                raise ConfigError(f"groups name task {t} twice; a task belongs to one group")
            seen.add(t)
        checked.append(group)
    if not checked:
        raise ConfigError("groups is empty; give at least one group of task ids")
    return tuple(checked)


@dataclasses.dataclass
class GridworldResult:
    """Raw results (NumPy) of an experiment.

    Attributes:
      steps: ``[4 methods, R, T, E]`` steps of every test episode (order: METHODS).
      labels: ``[R, T]`` category of each task in each run (0..N−1 of that run, every
        one used).
      chosen: ``[R, T]`` category MAML²'s update tendency picked on each test task.
      phase_seconds: wall time of each phase (compile included).
      agent_steps: agent steps (action choices) of each compiled phase, all lanes.
      seconds: wall time of the whole experiment.
    """

    config: GridworldConfig
    steps: np.ndarray
    labels: np.ndarray
    chosen: np.ndarray
    phase_seconds: dict
    agent_steps: dict
    seconds: float

    @property
    def categories(self) -> np.ndarray:
        """``[R]`` N of each run (``config.categories`` unless automatic)."""
        return np.asarray(self.labels).max(axis=1) + 1


def run_keys(seed: int, runs: int) -> jax.Array:
    """``[R, 5]`` keys per run: classification, k-means, MAML², MAML, test.

    Run r's keys are ``split(fold_in(key(seed), r), 5)``, hashed on the host by
    :mod:`maml2_jax.prng`: as JAX programs these few draws cost a compilation (0.3 s)
    or, op by op, a second at the start of every experiment.
    """
    if not jax.config.jax_threefry_partitionable:
        master = jax.random.key(seed)
        return jax.vmap(lambda r: jax.random.split(jax.random.fold_in(master, r), 5))(jnp.arange(runs))
    zeros = np.zeros(runs, np.uint32)
    # key(seed) holds the words (0, seed) for the seeds check_seed allows (< 2^32).
    run0, run1 = prng.threefry2x32(np.uint32(0), np.uint32(seed), zeros, np.arange(runs, dtype=np.uint32))
    count = np.arange(5, dtype=np.uint32)
    words = prng.threefry2x32(run0[:, None], run1[:, None], np.zeros_like(count), count)
    return jax.random.wrap_key_data(np.stack(words, axis=-1))


@jax.jit
def _kmeans_seeds(keys):
    return jax.vmap(lambda k: jax.random.randint(k, (), 0, 2**31 - 1))(keys)


def _per_task_keys(keys, num_tasks):
    return jax.vmap(lambda k: jax.vmap(lambda t: jax.random.fold_in(k, t))(jnp.arange(num_tasks)))(keys)


def build(config: GridworldConfig, mesh: jax.sharding.Mesh | None = None):
    """The experiment's compiled stages, as pure functions of arrays.

    Every argument and output has the run axis first, and runs are independent, so
    with a ``mesh`` the stages are split over its devices along that axis (the run
    count must then be a multiple of the device count: see :func:`run`).

    Returns ``(classify, train, test)``:
      ``classify(keys [R]) -> (features [R, T, F], ticks)``;
      ``train(members [R, S, T], k_maml2 [R], k_maml [R]) -> (θ, θ_c, θ_maml, ticks)``;
      ``test(θ, θ_c, θ_maml, keys [R], active [R, S]) -> (steps [R, 4, T, E], chosen [R, T], ticks)``.
    S is ``config.slots``; a run's non-empty categories come first in ``members``,
    and ``active`` (its non-empty slots; None: all, which a fixed N has) keeps the
    update tendency off the others (with a mesh it must be given).
    ``ticks`` holds the agent steps (action choices) of each run's lanes (−1 where
    not counted: the parallel mode's training).
    """
    learner = make_sarsa(config.world, config.sarsa, log_episodes=config.test_episodes, track_visits=False)
    classifier = make_sarsa(config.world, config.sarsa, log_episodes=1, track_visits=True)
    goals = jnp.asarray(config.world.task_array())
    num_tasks = goals.shape[0]
    schedule = config.schedule()

    def lanes_of(x, runs):
        return jnp.broadcast_to(x, (runs,) + x.shape)

    def classify(keys):
        runs = keys.shape[0]
        lane_keys = _per_task_keys(keys, num_tasks).reshape(-1)
        theta = lanes_of(classifier.init_params(), runs * num_tasks)
        agents = adaptation.adapt(classifier, theta, jnp.tile(goals, runs), lane_keys, config.classify_episodes)
        features = jax.vmap(classifier.feature)(agents).reshape(runs, num_tasks, -1)
        return features, agents.choices.reshape(runs, num_tasks)

    def train(members, k_maml2, k_maml):
        runs = members.shape[0]
        theta0 = lanes_of(learner.init_params(), runs)
        tasks = lanes_of(goals, runs)
        common = dict(adapt_episodes=config.adapt_episodes, beta=config.beta, stop_tolerance=config.stop_tolerance)
        if config.outer_update == "parallel":
            theta, category_params = lane_maml2.meta_train(learner, schedule, theta0, members, tasks, k_maml2)
            theta_maml = lane_maml2.maml(learner, config.maml_iterations, theta0, tasks, k_maml, **common)
            return theta, category_params, theta_maml, jnp.full((runs, 2), -1, jnp.int32)
        # Sequential MAML² and MAML are both sequential schedules: one loop runs the
        # 2R lanes side by side, as long as the slower of the two instead of both.
        maml_members = jnp.zeros_like(members).at[:, 0].set(True)
        state = lane_maml2.run_schedules(
            learner,
            jnp.concatenate([theta0, theta0]),
            jnp.concatenate([members, maml_members]),
            jnp.concatenate([tasks, tasks]),
            jnp.concatenate([k_maml2, k_maml]),
            jnp.repeat(jnp.asarray([config.outer_iterations, 1]), runs),
            jnp.repeat(jnp.asarray([config.inner_iterations, config.maml_iterations]), runs),
            **common,
        )
        ticks = jnp.stack([state.ticks[:runs], state.ticks[runs:]], axis=1)
        return state.theta[:runs], state.category_params[:runs], state.theta[runs:], ticks

    def test(theta, category_params, theta_maml, keys, active=None):
        runs = keys.shape[0]
        num_methods = len(METHODS)
        starts = jnp.stack([theta, theta, theta_maml, lanes_of(learner.init_params(), runs)])  # [M, R, ...]

        def lanes(x):  # [M, R, ...] -> [M * R * T, ...]
            x = jnp.broadcast_to(x[:, :, None], x.shape[:2] + (num_tasks,) + x.shape[2:])
            return x.reshape((-1,) + x.shape[3:])

        lane_cats = lanes(jnp.broadcast_to(category_params, (num_methods,) + category_params.shape))
        lane_active = None if active is None else lanes(jnp.broadcast_to(active, (num_methods,) + active.shape))
        lane_keys = jnp.tile(_per_task_keys(keys, num_tasks).reshape(-1), num_methods)
        lane_goals = jnp.tile(goals, num_methods * runs)
        reset = jnp.repeat(jnp.arange(num_methods) == METHODS.index("maml2"), runs * num_tasks)
        agents, chosen = lane_maml2.readapt(
            learner, lanes(starts), lane_cats, lane_goals, lane_keys, config.test_episodes, reset, config.reset_after,
            lane_active, config.reset_rule,
        )
        steps = jax.vmap(learner.performance)(agents).reshape(num_methods, runs, num_tasks, -1)
        ticks = jnp.swapaxes(agents.choices.reshape(num_methods, runs, num_tasks), 0, 1)
        return jnp.swapaxes(steps, 0, 1), chosen.reshape(num_methods, runs, num_tasks)[0], ticks

    options = _compiler_options(mesh)
    return (
        sharding.shard_runs(classify, mesh, 1, options),
        sharding.shard_runs(train, mesh, 3, options),
        sharding.shard_runs(test, mesh, 5, options),
    )


def _compiler_options(mesh) -> dict | None:
    """XLA options of the stages: on CPUs, LLVM's optimisation level 1 instead of 2.

    The stages are loops of tiny, latency-bound operations: level 2 bought no
    measurable speed on a 2-core CPU and cost 1.3 s of the 4.3 s of compilation;
    the default experiment's results were the same bit for bit
    (``benchmarks/RESULTS.md``).
    """
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return {"xla_backend_optimization_level": 1} if platform == "cpu" else None


def categorize(features, keys, categories, slots: int | None = None) -> np.ndarray:
    """Host-side k-means of every run: ``[R, T, F]`` features -> ``[R, T]`` labels.

    Run r's k-means seed is drawn from ``keys[r]``. ``categories``: N, or ``"auto"``
    to choose each run's N in 1 … ``slots`` from its features; either way a run's
    labels are 0..N−1, every one used (the lane machine wants its non-empty
    categories first).
    """
    seeds = np.asarray(_kmeans_seeds(keys))
    if categories == AUTO:
        return np.stack([classification.classify_slots(f, AUTO, slots, int(s)).labels
                         for f, s in zip(np.asarray(features), seeds)])
    return np.stack([classification.kmeans_labels(f, categories, int(s)) for f, s in zip(np.asarray(features), seeds)])


STAGES = ("classify", "k-means", "train", "test")


def check_memory(config: GridworldConfig, devices=None) -> None:
    """ConfigError, before anything compiles, when the experiment's Q-tables alone exceed
    the memory of ``devices`` (default: every visible one).

    A lower bound: every run holds a Q-table and a visit table (float32, states ×
    actions) per task for each of the four tested methods at once.
    """
    tables = config.runs * config.world.num_tasks * len(METHODS)
    needed = 2 * 4 * tables * config.world.num_states * NUM_ACTIONS
    available, where = sharding.device_memory(devices)
    if needed > available:
        raise ConfigError(f"the experiment needs at least {needed / 2**30:.3g} GiB for its Q-tables, more than the "
                          f"{available / 2**30:.3g} GiB of {where} ({config.runs} runs x {tables // config.runs} "
                          f"tables x {config.world.num_states} cells); lower --runs or the grid size")


@functools.lru_cache(maxsize=4)
def _shared_build(config: GridworldConfig, mesh):
    """:func:`build` once per setting: the run count and seed only change the inputs, so a
    second experiment in a process (a notebook, the tests) reuses the compiled stages."""
    return build(config, mesh)


# Compiles the stages side by side, and beside the first stage's execution: XLA's
# compiler releases the GIL, and the stages are independent programs.
_COMPILER = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="maml2-compile")


@functools.lru_cache(maxsize=4)
def _compiled_stages(config: GridworldConfig, mesh, padded: int) -> dict[str, concurrent.futures.Future]:
    """Futures of the compiled ``classify``, ``train`` and ``test`` for ``padded`` runs,
    started at once (``config`` with runs and seed normalised, as :func:`_shared_build`)."""
    classify, train, test = _shared_build(config, mesh)
    key = jax.ShapeDtypeStruct((padded,), jax.random.key(0).dtype)
    slots, num_tasks = config.slots, config.world.num_tasks
    members = jax.ShapeDtypeStruct((padded, slots, num_tasks), bool)
    active = jax.ShapeDtypeStruct((padded, slots), bool)

    def compile_test():
        theta, category_params, theta_maml, _ = jax.eval_shape(train, members, key, key)
        return test.lower(theta, category_params, theta_maml, key, active).compile()

    stages = {
        "classify": _COMPILER.submit(lambda: classify.lower(key).compile()),
        "train": _COMPILER.submit(lambda: train.lower(members, key, key).compile()),
        "test": _COMPILER.submit(compile_test),
    }
    # The k-means seeds' small program too (a call on zero keys fills jit's cache).
    _COMPILER.submit(lambda: _kmeans_seeds(jax.random.wrap_key_data(np.zeros((padded, 2), np.uint32))))
    return stages


def _check_finite(stage: str, outputs) -> None:
    """Stops the experiment at the stage whose Q-tables or features went non-finite."""
    for path, value in jax.tree_util.tree_flatten_with_path(outputs)[0]:
        if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
            raise NonFiniteError(f"non-finite values (output {jax.tree_util.keystr(path)}) in the {stage} stage; "
                                 "stopped before saving it (check the learning rates and the initial Q value)")


def run(config: GridworldConfig, progress: Callable[[str], None] | None = None,
        mesh: jax.sharding.Mesh | None = None, checkpoints=None) -> GridworldResult:
    """Runs the whole experiment. Impure: host k-means, timing, ``progress`` calls, checkpoints.

    Args:
      config: the experiment.
      progress: called with a short message as each stage starts.
      mesh: devices to split the runs over (default: all devices). The runs are
        padded to a multiple of the device count; results do not depend on it.
      checkpoints: a :class:`maml2_jax.io.checkpoint.Checkpoints`, or None. The
        outputs of every completed stage are saved there (checkpoint k: the first k
        stages), and a run that finds one continues after it: the stages are
        deterministic, so the result is the uninterrupted run's. The caller must use
        the same ``config`` (the CLI checks it).
    """
    say = progress or (lambda message: None)
    started = time.perf_counter()
    mesh = sharding.run_mesh() if mesh is None else mesh
    keys = sharding.pad_runs(run_keys(config.seed, config.runs), mesh.size)
    padded = keys.shape[0]
    setting = (dataclasses.replace(config, runs=1, seed=0), mesh if mesh.size > 1 else None)
    compiled = _compiled_stages(*setting, padded)
    over_runs = functools.partial(sharding.over_runs, mesh=setting[1])  # inputs of other processes' devices too
    classify, train, _ = _shared_build(*setting)
    phases = {}
    outputs = {}  # stage outputs, as NumPy arrays: what a checkpoint holds

    def shapes(fn, *args):
        return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(fn, *args))

    templates = {"classify": lambda: shapes(classify, keys[:, 0]),
                 "k-means": lambda: np.zeros((padded, config.world.num_tasks), np.int32)}
    templates["train"] = lambda: shapes(train, jnp.zeros((padded, config.slots, config.world.num_tasks), bool),
                                        keys[:, 2], keys[:, 3])
    done = 0
    if checkpoints is not None and checkpoints.latest() is not None:
        done = checkpoints.latest()
        template = {name: templates[name]() for name in STAGES[:done]}
        outputs, record = checkpoints.restore(template, done)
        phases = dict(record.get("phase_seconds", {}))

    def stage(index, name, compute):
        if index < done:
            return outputs[name]
        say(name)
        t0 = time.perf_counter()
        outputs[name] = sharding.to_host(jax.block_until_ready(compute()))
        _check_finite(name, outputs[name])
        phases[name] = time.perf_counter() - t0
        if checkpoints is not None and index < len(STAGES) - 1:
            checkpoints.save(index + 1, outputs, {"phase_seconds": phases})
        return outputs[name]

    features, classify_steps = stage(0, "classify", lambda: compiled["classify"].result()(over_runs(keys[:, 0])))
    labels = stage(1, "k-means", lambda: sharding.from_process_zero(  # clustered once, the labels shared
        lambda: categorize(features, keys[:, 1], config.categories, config.slots).astype(np.int32),
        templates["k-means"]()))
    members = classification.membership(labels, config.slots)
    active = members.any(axis=-1)  # [R, S]
    theta, category_params, theta_maml, train_steps = stage(
        2, "train", lambda: compiled["train"].result()(*over_runs((members, keys[:, 2], keys[:, 3]))))
    steps, chosen, test_steps = stage(
        3, "test", lambda: compiled["test"].result()(*over_runs((theta, category_params, theta_maml, keys[:, 4],
                                                                 active))))
    runs = config.runs  # drop the padding runs

    def count(ticks):
        return int(np.asarray(ticks, np.int64)[:runs].sum())

    return GridworldResult(
        config=config,
        steps=np.swapaxes(np.asarray(steps)[:runs], 0, 1),
        labels=labels[:runs],
        chosen=np.asarray(chosen)[:runs],
        phase_seconds=phases,
        agent_steps={"classify": count(classify_steps), "train": count(train_steps), "test": count(test_steps)},
        seconds=time.perf_counter() - started,
    )
