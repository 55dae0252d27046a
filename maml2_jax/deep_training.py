"""Meta-training of the deep track: MAML (MAML-TRPO) or deep MAML² on a task family.

Both algorithms are the engine of :mod:`maml2_jax.core.train`:

* ``algo="maml"``: one category, fresh tasks from the family at every step
  (MAML's customary sampling);
* ``algo="maml2"``: N categories of a pool of tasks drawn once, re-classified every
  R outer iterations; with ``meta.categories="auto"`` N is chosen at every
  classification, in ``meta.max_categories`` slots (idle ones masked).

The meta-update rule is MAML-TRPO (``rule="trpo"``, the customary one) or a
meta-gradient through an optax optimiser (``"adam"``, ``"sgd"``).

``train`` is the host loop: one compiled call per outer iteration (all seeds,
categories, tasks and trajectories inside it), then logging, classification and
checkpoints. I/O happens only between compiled calls. The task axis is split over a
1-D device mesh when ``devices`` > 1 (on a CPU host the CLI asks XLA for one device
per core).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from maml2_jax import envs, sharding
from maml2_jax.core import train as engine_lib
from maml2_jax.core import task_sources
from maml2_jax.core.config import MetaConfig
from maml2_jax.core.types import RunState
from maml2_jax.errors import (ConfigError, check_choice, check_float, check_non_negative_int, check_positive_int,
                              check_seed, first_line)
from maml2_jax.io import files, machine
from maml2_jax.io.checkpoint import Checkpoints
from maml2_jax.io.tensorboard import ScalarWriter
from maml2_jax.learners.policy_gradient import (FEATURES, PolicyGradientConfig, make_policy_gradient_adapter,
                                                make_policy_gradient_learner)
from maml2_jax.networks import PolicyConfig, make_gaussian_policy
from maml2_jax.rules import gradient
from maml2_jax.rules.maml_trpo import maml_trpo
from maml2_jax.trpo import TRPOConfig

ALGORITHMS = ("maml", "maml2")
RULES = ("trpo", "adam", "sgd")
CHECKPOINT_DIR = "checkpoint"
# Seeds of a run (and their key offsets, + 1000003 and + 7919) stay below 2**31.
SEED_LIMIT = 2**31 - 2**20

# The deep track's schedule. It differs from the published tabular rule (sequential,
# θ_c ← θ) in two measured choices: categories vmapped in parallel, and θ_c kept
# between outer iterations (see docs/ on the nav2d-isolated experiment).
DEEP_SCHEDULE = MetaConfig(categories=3, outer_iterations=50, inner_iterations=1, tasks_per_category=10,
                           outer_update="parallel", category_init="persistent", classify_every=10)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A deep-track training run (defaults: the customary MAML-TRPO 2-D navigation config).

    Attributes:
      env: task family name (``nav2d``, ``nav2d-isolated``, or a brax family such as
        ``halfcheetah-vel``; see :func:`maml2_jax.envs.family_names`).
      horizon: steps per episode (0: the family's default, 100 for 2-D navigation,
        200 for brax).
      backend: brax physics pipeline ("": the default; brax families only).
      algo: ``maml`` (one category, fresh tasks) or ``maml2`` (categories of a pool).
      seed: seed of the first run; seed s of ``seeds`` uses ``seed + s``.
      seeds: S, seeds trained side by side in one compiled program.
      meta_batch_size: MAML's tasks per meta-update (MAML²: ``meta.tasks_per_category``).
      pool_size: MAML²'s training tasks, drawn once and classified.
      feature: MAML²'s classification feature: "update" (θ_T − θ) or "adapted" (θ_T).
      classify_trajectories: MAML²'s trajectories per task in the adaptations that
        classify: the pool's features in training and the update tendency at test
        time (0: ``inner.num_trajectories``). A one-step policy-gradient update from
        few trajectories is mostly sampling noise; more of them make the feature, not
        the meta-training, more accurate.
      rule: the meta-update: "trpo" (MAML-TRPO), "adam" or "sgd" (a meta-gradient
        through that optax optimiser, step size ``meta_lr``).
      meta_lr: step size of the optax rules.
      curvature_fraction: share of the tasks used for TRPO's curvature products.
      devices: devices to split the task axis over (0: all local devices).
      checkpoint_every: outer iterations between checkpoints (0: only at the end).
      init_params: a trained θ to start from instead of a fresh one: a finished run
        of one seed (its directory, or the ``params.msgpack`` in it) whose policy has
        this run's shapes ("": θ from the seed). Every seed starts from it and
        differs in its tasks and rollouts only; MAML²'s θ_c start from it as from any θ.
      policy, inner, trpo: the policy, inner loop and TRPO settings.
      meta: the schedule (N, K_out, K_in, B, outer update, classification period).
    """

    env: str = "nav2d"
    horizon: int = 0
    backend: str = ""
    algo: str = "maml"
    seed: int = 1
    seeds: int = 1
    meta_batch_size: int = 20
    pool_size: int = 40
    feature: str = "update"
    classify_trajectories: int = 0
    rule: str = "trpo"
    meta_lr: float = 1e-3
    curvature_fraction: float = 1.0
    devices: int = 0
    checkpoint_every: int = 10
    init_params: str = ""
    policy: PolicyConfig = PolicyConfig()
    inner: PolicyGradientConfig = PolicyGradientConfig()
    trpo: TRPOConfig = TRPOConfig()
    meta: MetaConfig = DEEP_SCHEDULE

    def __post_init__(self):
        if self.env not in envs.family_names():
            raise ConfigError(f"unknown env {self.env!r}; choose from {', '.join(envs.family_names())}")
        if not isinstance(self.backend, str):
            raise ConfigError(f"backend must be a string, got {self.backend!r}")
        if self.backend:
            from maml2_jax.envs import brax_tasks

            if self.env not in brax_tasks.TASK_FAMILIES:
                raise ConfigError(f"a physics backend applies to brax families only, not {self.env!r}")
            if self.backend not in brax_tasks.BACKENDS:
                raise ConfigError(f"unknown brax backend {self.backend!r}; valid: {', '.join(brax_tasks.BACKENDS)}")
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 0:
            raise ConfigError(f"horizon must be a positive integer (0: the family's default), got {self.horizon!r}")
        check_choice("algo", self.algo, ALGORITHMS)
        check_choice("rule", self.rule, RULES)
        check_positive_int("seeds", self.seeds)
        # Run s uses keys of seed + s and seed + s + 1000003 (evaluation: + 7919); all stay
        # below 2**31, distinct and in what jax.random.key takes.
        check_seed("seed", self.seed, count=self.seeds, limit=SEED_LIMIT)
        check_positive_int("meta-batch size", self.meta_batch_size)
        check_positive_int("pool size", self.pool_size)
        check_choice("feature", self.feature, FEATURES)
        check_non_negative_int("classify trajectories", self.classify_trajectories)
        if self.classify_trajectories and self.algo != "maml2":
            raise ConfigError("classify trajectories apply to --algo maml2 only: MAML does not classify")
        object.__setattr__(self, "meta_lr", check_float("meta learning rate", self.meta_lr, low=0, low_open=True))
        object.__setattr__(self, "curvature_fraction",
                           check_float("curvature fraction", self.curvature_fraction, 0, 1, low_open=True))
        check_non_negative_int("devices", self.devices)
        check_non_negative_int("checkpoint every", self.checkpoint_every)
        if not isinstance(self.init_params, str):
            raise ConfigError(f"init params must be a path (a string), got {self.init_params!r}")
        for name, kind in (("policy", PolicyConfig), ("inner", PolicyGradientConfig), ("trpo", TRPOConfig),
                           ("meta", MetaConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if self.algo == "maml" and self.meta.category_batch != "equal":
            raise ConfigError("a proportional category batch needs --algo maml2: MAML has one category "
                              "(its meta-batch is --meta-batch-size)")
        if self.algo == "maml" and self.meta.automatic:
            raise ConfigError("categories 'auto' needs --algo maml2: MAML has one category")
        if self.algo == "maml2" and self.meta.slots > self.pool_size:
            what = "up to " if self.meta.automatic else ""
            raise ConfigError(f"cannot make {what}{self.meta.slots} categories of a pool of {self.pool_size} tasks")

    @property
    def iterations(self) -> int:
        """Outer iterations, K_out."""
        return self.meta.outer_iterations

    @property
    def tasks_per_update(self) -> int:
        """Tasks of one meta-update: the meta-batch (MAML) or one category's draw (MAML²: B, or N·B proportional)."""
        return self.meta.tasks_per_step if self.algo == "maml2" else self.meta_batch_size

    @property
    def classifier_inner(self) -> PolicyGradientConfig:
        """The inner loop of the adaptations that classify (``classify_trajectories`` each)."""
        return dataclasses.replace(self.inner, num_trajectories=self.classify_trajectories or self.inner.num_trajectories)

    def schedule(self) -> MetaConfig:
        """The engine's schedule: MAML is one category, one step per outer iteration, θ_c ← θ."""
        if self.algo == "maml2":
            return self.meta
        return dataclasses.replace(self.meta, categories=1, inner_iterations=1, tasks_per_category=self.meta_batch_size,
                                   category_batch="equal", category_init="global", classify_every=0, stop_tolerance=0.0)

    @staticmethod
    def from_dict(data: dict) -> "TrainConfig":
        """Inverse of ``dataclasses.asdict`` (reads a run's ``config.json``)."""
        nested = {"policy": PolicyConfig, "inner": PolicyGradientConfig, "trpo": TRPOConfig, "meta": MetaConfig}
        if not isinstance(data, dict):
            raise ConfigError(f"not a training run's config (a JSON object), but {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise ConfigError(f"not a training run's config: unknown setting {unknown[0]!r}")
        fields = {}
        try:
            for k, v in data.items():
                if k in nested:
                    if not isinstance(v, dict):
                        raise ConfigError(f"{k} must be an object of settings, got {v!r}")
                    names = {f.name for f in dataclasses.fields(nested[k])}
                    if set(v) - names:
                        raise ConfigError(f"{k}: unknown setting {min(set(v) - names)!r}")
                    v = nested[k](**v)
                fields[k] = v
            return TrainConfig(**fields)
        except TypeError as error:  # a value of a type no check foresaw
            raise ConfigError(f"not a training run's config ({error})") from None


def memory_estimate(config: TrainConfig, tasks: tuple[str, int] | None = None,
                    steps: tuple[str, int] | None = None, seeds: int | None = None) -> tuple[int, dict]:
    """A lower bound on the bytes one compiled step of ``config`` holds at once.

    Counts only the rollouts: for every seed, every task in flight, every inner step
    and the outer batch (``K + 1``), every trajectory and every step of the horizon, the
    float32 activations the loss's gradient needs (two per hidden unit: before and after
    the nonlinearity) and a few scalars (observation, action, reward, advantage). The
    compiled program holds more (XLA's temporaries, TRPO's linearisation), so a config
    this refuses cannot fit; one it accepts may still run out.

    Args:
      config: the run.
      tasks: ``(flag, count)`` of tasks in flight, if not the run's own (evaluation).
      steps: ``(flag, K)`` of adaptation steps, if not ``config.inner.inner_steps``.
      seeds: seeds side by side, if not ``config.seeds``.

    Returns:
      ``(bytes, factors)``: the estimate and its factors ``{flag: size}``; K steps hold
      K + 1 batches, a factor keyed ``"<steps flag> + 1"``.
    """
    from maml2_jax.envs import brax_tasks, nav2d

    default_horizon = nav2d.Nav2dConfig().horizon if config.env in nav2d.TASK_FAMILIES \
        else brax_tasks.BraxTaskConfig().horizon
    trajectories = ("--num-trajectories", config.inner.num_trajectories)
    if tasks is None:
        if config.algo == "maml2":
            parallel = config.meta.slots if config.meta.outer_update == "parallel" else 1
            # The classification adapts the whole pool at once (with its own batch of
            # trajectories), a category step B tasks of every category (parallel) or of one.
            classifying = ("--classify-trajectories", config.classify_trajectories) if config.classify_trajectories \
                else trajectories
            pool = (("--pool-size", config.pool_size), classifying)
            step = (("--tasks-per-category", config.meta.tasks_per_step * parallel), trajectories)
            tasks, trajectories = max(pool, step, key=lambda f: f[0][1] * f[1][1])
        else:
            tasks = ("--meta-batch-size", config.meta_batch_size)
    flag, k = steps if steps is not None else ("--inner-steps", config.inner.inner_steps)
    factors = {"--seeds": config.seeds if seeds is None else seeds, tasks[0]: tasks[1], f"{flag} + 1": k + 1,
               trajectories[0]: trajectories[1], "--horizon": config.horizon or default_horizon}
    if steps is not None and config.classify_trajectories > (k + 1) * trajectories[1]:
        # An evaluation also adapts each test task once with the classifying batch, for
        # the update tendency; that one batch is the larger.
        del factors[f"{flag} + 1"], factors[trajectories[0]]
        factors["--classify-trajectories"] = config.classify_trajectories
    floats_per_step = 2 * sum(config.policy.hidden_sizes) + 8
    return 4 * floats_per_step * math.prod(factors.values()), factors


def check_memory(config: TrainConfig, devices=None, what: str = "the run", flags: dict[str, str] | None = None,
                 **sizes) -> None:
    """ConfigError when :func:`memory_estimate` (``sizes`` are its keyword arguments) is
    more than :func:`~maml2_jax.sharding.device_memory` of ``devices`` (default: the run's devices). Call it
    before compiling (and after ``jax.distributed.initialize``): it asks JAX for devices.
    ``flags``: what the message calls a factor, where the caller's command names it otherwise."""
    if devices is None:
        devices = sharding.first_devices(config.devices)
    needed, factors = memory_estimate(config, **sizes)
    factors = {(flags or {}).get(name, name): value for name, value in factors.items()}
    available, where = sharding.device_memory(devices)
    if needed > available:
        largest = max(factors, key=factors.get)
        product = " x ".join(f"{value} ({_words(name)})" for name, value in factors.items())
        flag, value = largest, factors[largest]
        if flag.endswith(" + 1"):  # the steps factor: advise on the flag's own value, K
            flag, value = flag.removesuffix(" + 1"), value - 1
        raise ConfigError(f"{what} needs at least {_gib(needed)} of memory, more than the {_gib(available)} of "
                          f"{where} ({product}); lower {flag} ({value})")


def _words(flags: str) -> str:
    """A factor's flags as words: ``"--meta-batch-size"`` -> ``"meta batch size"``,
    ``"--initial-pool + --arrivals"`` -> ``"initial pool + arrivals"``."""
    return " ".join(word.lstrip("-").replace("-", " ") for word in flags.split())


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"


def mesh_for(config: TrainConfig):
    """The task mesh of the run (None on one device).

    ConfigError if the tasks do not split over the devices, or if the run clearly
    cannot fit in their memory (:func:`check_memory`): both before anything compiles.
    """
    devices = sharding.first_devices(config.devices)
    check_memory(config, devices)
    if len(devices) == 1:
        return None
    mesh = sharding.task_mesh(devices)
    what = "tasks per category" if config.algo == "maml2" else "meta-batch size"
    sharding.check_divisible(config.tasks_per_update, mesh, what)
    return mesh


class Parts:
    """The pure pieces of a run, built once: family, policy, learner, rule, source, engine."""

    def __init__(self, config: TrainConfig, mesh=None):
        self.config = config
        self.family = envs.make_task_family(config.env, config.horizon, config.backend)
        self.policy = make_gaussian_policy(self.family.obs_dim, self.family.action_dim, config.policy)
        self.adapter = make_policy_gradient_adapter(self.family, self.policy, config.inner)
        self.learner = make_policy_gradient_learner(self.family, self.policy, config.inner, config.feature)
        if config.rule == "trpo":
            self.rule = maml_trpo(self.policy, self.adapter, config.inner.inner_steps, config.tasks_per_update,
                                  config.trpo, config.curvature_fraction, mesh)
        else:
            optimizer = optax.adam(config.meta_lr) if config.rule == "adam" else optax.sgd(config.meta_lr)
            self.rule = gradient(self.learner, optimizer)
        if config.algo == "maml2":
            self.source = task_sources.fixed_pool(self.family.sample_tasks, config.pool_size)
        else:
            self.source = task_sources.fresh(self.family.sample_tasks)
        # The learner of the adaptations that classify, when its batch is not the inner loop's.
        self.classifier = None
        if config.classifier_inner != config.inner:
            self.classifier = make_policy_gradient_learner(self.family, self.policy, config.classifier_inner,
                                                           config.feature)
        self.engine = engine_lib.make_engine(self.learner, self.rule, self.source, config.schedule(), self.classifier)

    def one_step_learners(self):
        """``(learner, tendency)``: one-step learners for test-time adaptation.

        ``learner`` is one step of the run's inner loop (a round of
        :func:`~maml2_jax.core.readaptation.adaptation_curve`); ``tendency`` is one step
        with the classifying batch (``classify_trajectories``), which reads the update
        tendency, or None when that batch is the inner loop's own.
        """
        learner = make_policy_gradient_learner(self.family, self.policy,
                                               dataclasses.replace(self.config.inner, inner_steps=1))
        tendency = None
        if self.classifier is not None:
            tendency = make_policy_gradient_learner(self.family, self.policy,
                                                    dataclasses.replace(self.config.classifier_inner, inner_steps=1))
        return learner, tendency

    def init(self, seed: int, theta=None) -> RunState:
        """The run state of ``seed``: θ from ``key(seed)`` (or ``theta``), the run key ``key(seed + 1000003)``."""
        if theta is None:
            theta = self.policy.init(jax.random.key(seed))
        return self.engine.init(jax.random.key(seed + 1_000_003), theta)

    def init_seeds(self, theta=None) -> RunState:
        """``[S, ...]`` states of seeds ``seed .. seed + S − 1`` (unbatched when S = 1), all from ``theta`` if given."""
        states = [self.init(self.config.seed + s, theta) for s in range(self.config.seeds)]
        if self.config.seeds == 1:
            return states[0]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def initial_params(config: TrainConfig, parts: Parts | None = None):
    """θ of ``config.init_params`` (None when unset), read and checked against the run's policy.

    ConfigError when the path holds no finished run of one seed, or parameters of
    other shapes (another policy or family), damaged or non-finite ones.
    """
    if not config.init_params:
        return None
    path = config.init_params
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "params.msgpack")):
            seeds = sorted(name for name in os.listdir(path) if name.startswith("seed_"))
            hint = f" (a run of several seeds: name one of {', '.join(seeds)})" if seeds else \
                " (a finished training run of one seed)"
            raise ConfigError(f"init params: {path} holds no params.msgpack{hint}")
        path = os.path.join(path, "params.msgpack")
    elif not os.path.isfile(path):
        raise ConfigError(f"init params: {path} does not exist (a run directory or its params.msgpack)")
    policy = (parts or shared_parts(config)).policy
    try:
        return _read_msgpack(path, policy.init(jax.random.key(0)))
    except ConfigError as error:
        raise ConfigError(f"init params: {error}") from None


@functools.lru_cache(maxsize=4)
def _parts_without_seed(config: TrainConfig, mesh) -> Parts:
    return Parts(config, mesh)


def shared_parts(config: TrainConfig, mesh=None) -> Parts:
    """:class:`Parts` of ``config``, built once per setting that shapes the compiled step.

    The seed, the checkpoint period and the initial θ do not, so runs differing only
    in those share one engine, and the second run in a process (a notebook, a test,
    ``evaluate``) reuses the first one's compiled step instead of compiling it again.
    """
    unshaped = dataclasses.replace(config, seed=0, checkpoint_every=0, init_params="")
    parts = copy.copy(_parts_without_seed(unshaped, mesh))
    parts.config = config  # init_seeds reads the run's own seeds
    return parts


def _row(i: int, metrics: dict, seconds: float, classified: bool, labels=None, active=None) -> dict:
    """The metrics line of one iteration: means over categories, and per category for N > 1.

    ``active`` (``[S]`` bool, an automatic N): the means cover the active slots only, an
    idle slot's per-category entry is null, and a classified row logs the chosen N as
    ``categories``.
    """
    row = {"iteration": i}
    for name, value in metrics.items():
        value = np.asarray(value, np.float64)
        on = np.ones(value.shape[:1], bool) if active is None else np.asarray(active)
        row[name] = files.finite(float((value if active is None else value[on]).mean()))
        if value.size > 1:
            row[f"category_{name}"] = [files.finite(float(v)) if o else None for v, o in zip(value, on)]
    row["classified"] = classified
    if labels is not None:
        row["labels"] = np.asarray(labels).tolist()
        if active is not None:
            row["categories"] = int(np.sum(active))
    row["seconds"] = seconds
    return row


def seed_dirs(out: str, config: TrainConfig) -> list[str]:
    """Each seed's output directory: ``out`` itself for one seed, ``out/seed_<s>`` for several."""
    if config.seeds == 1:
        return [out]
    return [os.path.join(out, f"seed_{config.seed + s}") for s in range(config.seeds)]


def _read_metrics(path: str, before: int) -> list[dict]:
    """The rows of an interrupted run's ``metrics.jsonl`` for iterations < ``before``."""
    rows = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by the kill; it and everything after are redone
                if row.get("iteration", before) >= before:
                    break
                rows.append(row)
    if len(rows) != before:
        raise ConfigError(f"{path} holds {len(rows)} complete iterations, the checkpoint {before}")
    return rows


def train(config: TrainConfig, out: str | None = None, progress: Callable[[dict], None] | None = None,
          resume: bool = False, stop_after: int | None = None, notify: Callable[[str], None] | None = None,
          tensorboard: bool = False, writer: bool = True, argv: list[str] | None = None):
    """Runs the meta-training. Impure: writes to ``out`` (nothing when None).

    Per seed directory (:func:`seed_dirs`): ``config.json`` (written first),
    ``metrics.jsonl`` (a strict-JSON line per outer iteration), and at the end
    ``params.msgpack`` (θ), for MAML² ``category_params.msgpack`` (θ_c stacked) and
    ``categories.json`` (the pool, its labels at every classification, the pool's
    ground-truth categories) and ``summary.json`` (the last row, wall time, the files).
    ``out/checkpoint/`` holds the whole run state every ``checkpoint_every``
    iterations and at the end; ``out/machines.jsonl`` a line per session
    (:func:`maml2_jax.io.machine.session`, which warns on a resume on another kind
    of machine). With ``tensorboard``, every scalar of every row also goes to
    TensorBoard event files in ``<seed dir>/tensorboard/``.

    A step that produces a NaN or an infinity (θ, θ_c, the rule state or any metric)
    raises :class:`~maml2_jax.errors.NonFiniteError` before anything of that step is
    logged, checkpointed or saved.

    Args:
      config: the run.
      out: output directory, or None for no files.
      progress: called with each iteration's row (seed 0's with several seeds).
      resume: continue from the newest checkpoint in ``out`` (its ``config.json``
        must equal ``config``; :func:`extend` rewrites it for a new number of outer
        iterations); a run stopped before its first checkpoint starts over.
      stop_after: stop after this many outer iterations in all (a pause; resume later).
      notify: called with a line about each phase ("compiling …", "compiled in …").
      tensorboard: also write TensorBoard event files.
      writer: False for every process but one of a multi-process run: it joins the
        checkpoints in ``out`` (orbax saves and restores with every process taking
        part) but writes no other file.
      argv: the command line kept in ``machines.jsonl`` (default ``sys.argv[1:]``).

    Returns:
      ``(state, history)``: the final :class:`~maml2_jax.core.types.RunState`
      (``[S, ...]`` with several seeds) and, per seed, the list of metric rows.
    """
    mesh = mesh_for(config)
    parts = shared_parts(config, mesh)
    dirs = seed_dirs(out, config) if out is not None else []
    histories = [[] for _ in range(config.seeds)]
    if resume and out is None:
        raise ConfigError("resume needs an output directory")
    if resume and not os.path.isfile(os.path.join(dirs[0], "config.json")):  # every started run has one
        raise ConfigError(f"nothing to resume in {out}: no complete checkpoint and no started run")
    checkpoints = Checkpoints(os.path.join(out, CHECKPOINT_DIR)) if out is not None else None
    try:
        restoring = resume and checkpoints.latest() is not None
        # A restore reads only the fresh state's structure; a new run starts from
        # ``init_params`` when set, read before anything is written.
        state = parts.init_seeds(None if restoring else initial_params(config, parts))
        if restoring:
            state, record = checkpoints.restore(state)
            done = int(record.get("iteration", -1))
            if done != int(np.asarray(state.iteration).reshape(-1)[0]):
                raise ConfigError(f"checkpoint in {out} is inconsistent (record says iteration {done})")
            histories = [_read_metrics(os.path.join(d, "metrics.jsonl"), done) for d in dirs]
        elif out is not None and writer:
            _write_configs(out, config)
    except BaseException:
        if checkpoints is not None:
            checkpoints.close()  # orbax's manager holds threads; a refused resume must not leak them
        raise
    if out is not None and writer:
        machine.session(out, resume, argv, devices_used=1 if mesh is None else mesh.devices.size)
    logs = [files.MetricsLog(os.path.join(d, "metrics.jsonl"), histories[s]) for s, d in enumerate(dirs)] \
        if writer else []
    boards = [ScalarWriter(os.path.join(d, "tensorboard")) for d in dirs] if tensorboard and writer else []
    stop = config.iterations if stop_after is None else min(stop_after, config.iterations)
    started = time.perf_counter()
    # The step returns its state replicated over the mesh; starting there compiles it once.
    placement = sharding.replicated(mesh)
    if placement is not None:
        state = jax.device_put(state, placement)
    if notify is not None and int(np.asarray(state.iteration).reshape(-1)[0]) < stop:
        notify("compiling the outer iteration (once per run) …")
        notify(f"compiled in {engine_lib.compile_steps(parts.engine, state, config.seeds > 1):.1f} s")
    last = [time.perf_counter()]

    def callback(state, metrics, classified):
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        i = int(np.asarray(state.iteration).reshape(-1)[0]) - 1
        for s in range(config.seeds):
            per_seed = metrics if config.seeds == 1 else jax.tree.map(lambda x: x[s], metrics)
            labels = None
            if classified:
                labels = state.labels if config.seeds == 1 else state.labels[s]
            active = None
            if config.meta.automatic:
                active = np.asarray(engine_lib.active(state)).reshape(config.seeds, -1)[s]
            row = _row(i, per_seed, now - last[0], classified, labels, active)
            histories[s].append(row)
            if logs:
                logs[s].append(row)
            if boards:
                boards[s].write(i, row)
        last[0] = now
        if progress is not None:
            progress(histories[0][-1])
        done = i + 1
        if checkpoints is not None and (done == config.iterations or
                                        (config.checkpoint_every and done % config.checkpoint_every == 0)):
            checkpoints.save(done, state, {"iteration": done})

    try:
        state = engine_lib.run(parts.engine, state, stop, callback, seeds=config.seeds > 1, placement=placement)
    finally:
        for closing in logs + boards:
            closing.close()
        if checkpoints is not None:
            checkpoints.close()
    if out is not None and writer and int(np.asarray(state.iteration).reshape(-1)[0]) == config.iterations:
        for s, d in enumerate(dirs):
            one = state if config.seeds == 1 else jax.tree.map(lambda x: x[s], state)
            _save(d, config, one, histories[s], time.perf_counter() - started)
    return state, histories


# What :func:`_save` writes at the end of a run, each seed's: stale once the run goes on.
FINAL_OUTPUTS = ("params.msgpack", "category_params.msgpack", "categories.json", "summary.json")


def _write_configs(out: str, config: TrainConfig) -> None:
    """Writes the run's config files (``run_config.json`` and each seed's ``config.json``)
    and removes each seed's final outputs of an earlier run (or of the same run before
    :func:`extend` lengthened it)."""
    os.makedirs(out, exist_ok=True)
    if config.seeds > 1:
        files.write_json(os.path.join(out, "run_config.json"), dataclasses.asdict(config))
    for s, d in enumerate(seed_dirs(out, config)):
        os.makedirs(d, exist_ok=True)
        for stale in FINAL_OUTPUTS:
            if os.path.exists(os.path.join(d, stale)):
                os.remove(os.path.join(d, stale))
        seed_config = dataclasses.replace(config, seed=config.seed + s, seeds=1) if config.seeds > 1 else config
        files.write_json(os.path.join(d, "config.json"), dataclasses.asdict(seed_config))


def extend(out: str, iterations: int, writer: bool = True) -> TrainConfig:
    """Sets the run in ``out`` to ``iterations`` outer iterations in all; returns its new config.

    K_out is the one setting a run may change midway. No part of an outer iteration
    reads it: each iteration's keys are folded from the seed and the iteration index,
    and no step size or classification schedule depends on how many iterations follow.
    So a run of K iterations, extended to K' > K and resumed (:func:`train` with
    ``resume=True``), ends bit for bit as a run started with K' would. A still
    unfinished run may be shortened too, down to its newest checkpoint.

    Rewrites the config files (``run_config.json`` and each seed's ``config.json``) and
    removes each seed's final outputs (:data:`FINAL_OUTPUTS`): until the run reaches its
    new end it is an unfinished run, which ``maml2 evaluate`` refuses.

    Args:
      out: a ``train`` output directory.
      iterations: K', the run's new number of outer iterations.
      writer: False for every process of a multi-process run but process 0 (it only
        computes the new config).

    Raises:
      ConfigError: ``out`` is not a run, or ``iterations`` is not a positive integer
        or lies below the newest checkpoint's iteration.
    """
    check_positive_int("--outer-iterations", iterations)
    config = load_config(out)
    directory = os.path.join(out, CHECKPOINT_DIR)
    done = 0
    if os.path.isdir(directory):
        checkpoints = Checkpoints(directory)
        try:
            done = checkpoints.latest() or 0
        finally:
            checkpoints.close()
    if iterations < done:
        raise ConfigError(f"--outer-iterations {iterations}: the run in {out} has a checkpoint after {done} outer "
                          f"iterations; give at least {done}")
    if iterations == config.iterations:
        return config
    config = dataclasses.replace(config, meta=dataclasses.replace(config.meta, outer_iterations=iterations))
    if writer:
        _write_configs(out, config)
    return config


def _save(out: str, config: TrainConfig, state: RunState, history: list[dict], seconds: float) -> None:
    """The final outputs of one seed (atomic writes; ``summary.json`` last, so it marks a finished run)."""
    if config.algo == "maml2":
        files.write_bytes(os.path.join(out, "category_params.msgpack"), serialization.to_bytes(state.category_params))
        categories = {"pool": np.asarray(state.source.pool).tolist(),
                      "pool_categories": np.asarray(state.source.truth).tolist(),
                      "classifications": [{"iteration": row["iteration"], "labels": row["labels"],
                                           "categories": len(set(row["labels"]))}
                                          for row in history if row.get("classified")]}
        files.write_json(os.path.join(out, "categories.json"), categories)
    files.write_bytes(os.path.join(out, "params.msgpack"), serialization.to_bytes(state.theta))
    written = sorted(name for name in os.listdir(out) if not name.startswith("."))
    summary = {"algo": config.algo, "env": config.env, "seed": config.seed, "iterations": config.iterations,
               "final": history[-1] if history else None, "seconds_this_session": seconds,
               "files": written + ["summary.json"]}
    files.write_json(os.path.join(out, "summary.json"), summary)


def load_config(out: str) -> TrainConfig:
    """The whole run's config saved in ``out`` (``run_config.json`` with several seeds).

    ConfigError, naming the file, when it is missing, unreadable or not a valid config.
    """
    for name in ("run_config.json", "config.json"):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            return _read_config(path)
    raise ConfigError(f"{out} is not a training run (no config.json)")


def _read_config(path: str) -> TrainConfig:
    data = read_json(path)
    if isinstance(data, dict) and not {"env", "algo"} <= set(data):
        raise ConfigError(f"{path} is not a training run's config (it has no env or algo)")
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def read_json(path: str):
    """The strict-JSON content of ``path``; ConfigError naming the file if it is not that."""

    def refuse(token):
        raise ValueError(f"{token} is not strict JSON")

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, parse_constant=refuse)
    except OSError as error:
        raise ConfigError(f"{path} cannot be read ({error.strerror})") from None
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"{path} is damaged: not valid JSON ({first_line(error)})") from None


def load_run(path: str, num_trajectories: int | None = None):
    """Reads a ``train`` output directory: ``(config, parts, theta, category_params | None)``.

    ``num_trajectories``: trajectories per task in each adaptation step of the returned
    config and parts, in place of the run's own (the test-time batch; None keeps it).

    Every file is checked before anything is compiled: ``config.json`` (a valid config
    of one seed), ``metrics.jsonl`` (strict JSON, one row per outer iteration, all of
    them: a finished run), ``params.msgpack`` (θ of the config's shapes, finite) and
    for MAML² ``category_params.msgpack`` and ``categories.json``. A missing or damaged
    one is a ConfigError naming it.
    """
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{path} is not a training run (no config.json)")
    config = _read_config(config_path)
    if num_trajectories is not None:
        config = dataclasses.replace(config, inner=dataclasses.replace(config.inner, num_trajectories=num_trajectories))
    if config.seeds != 1:
        raise ConfigError(f"{config_path} describes {config.seeds} seeds, but a run directory holds one "
                          "(evaluate the seed_<s> directories below the run)")
    _check_metrics(os.path.join(path, "metrics.jsonl"), config.iterations)
    parts = shared_parts(config)
    template = parts.policy.init(jax.random.key(0))
    theta = _read_msgpack(os.path.join(path, "params.msgpack"), template)
    category_params = None
    if config.algo == "maml2":
        stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (config.meta.slots,) + x.shape), template)
        category_params = _read_msgpack(os.path.join(path, "category_params.msgpack"), stacked)
        _check_categories(os.path.join(path, "categories.json"), config, parts.family.num_categories)
    return config, parts, theta, category_params


def _check_metrics(path: str, iterations: int) -> None:
    """ConfigError unless ``path`` holds one strict-JSON row per outer iteration, in order."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path} is missing: not a complete training run")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as error:
        raise ConfigError(f"{path} cannot be read ({error.strerror})") from None
    except ValueError:
        raise ConfigError(f"{path} is damaged: not text") from None
    if lines[-1]:
        raise ConfigError(f"{path} is damaged: its last line is cut short")
    rows = lines[:-1]

    def refuse(token):
        raise ValueError(f"{token} is not strict JSON")

    for i, line in enumerate(rows):
        try:
            row = json.loads(line, parse_constant=refuse)
        except (ValueError, RecursionError) as error:
            raise ConfigError(f"{path} is damaged: line {i + 1} is not strict JSON ({first_line(error)})") from None
        if not isinstance(row, dict) or row.get("iteration") != i or isinstance(row.get("iteration"), bool):
            raise ConfigError(f"{path} is damaged: line {i + 1} is not the row of outer iteration {i}")
    if len(rows) != iterations:
        raise ConfigError(f"{path} holds {len(rows)} of the run's {iterations} outer iterations: not a finished run")


def _check_categories(path: str, config: TrainConfig, num_truth: int) -> None:
    """ConfigError unless ``path`` is a MAML² run's ``categories.json`` matching ``config``."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path} is missing: not a complete MAML² run")
    record = read_json(path)

    def labels(value, bound) -> bool:
        return isinstance(value, list) and len(value) == config.pool_size and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < bound for v in value)

    if not isinstance(record, dict) or not isinstance(record.get("pool"), list) \
            or len(record["pool"]) != config.pool_size:
        raise ConfigError(f"{path} is damaged: no pool of {config.pool_size} tasks")
    if not labels(record.get("pool_categories"), num_truth):
        raise ConfigError(f"{path} is damaged: pool_categories is not one category in 0..{num_truth - 1} per task")
    classifications = record.get("classifications")
    if not isinstance(classifications, list) or not classifications or not all(
            isinstance(c, dict) and labels(c.get("labels"), config.meta.slots) for c in classifications):
        raise ConfigError(f"{path} is damaged: classifications do not label the pool with "
                          f"categories 0..{config.meta.slots - 1}")


def _read_msgpack(path: str, template):
    if not os.path.isfile(path):
        raise ConfigError(f"{path} is missing: the run did not finish (resume it with maml2 train --resume)")
    try:
        with open(path, "rb") as f:
            restored = serialization.from_bytes(template, f.read())
        got, want = jax.tree.leaves(restored), jax.tree.leaves(template)
        if len(got) != len(want) or any(np.shape(a) != np.shape(b) for a, b in zip(got, want)):
            raise ConfigError(f"{path} does not match the run's config (other parameter shapes)")
        arrays = [np.asarray(a, np.float32) for a in got]
    except ConfigError:
        raise
    except Exception as error:  # msgpack and flax raise several types for damaged bytes
        raise ConfigError(f"{path} is damaged: it cannot be read as parameters ({type(error).__name__})") from None
    if not all(np.isfinite(a).all() for a in arrays):
        raise ConfigError(f"{path} holds non-finite parameters (NaN or infinity): the run diverged")
    return jax.tree.map(jnp.asarray, restored)
