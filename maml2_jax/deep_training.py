"""Meta-training of the deep track: MAML (MAML-TRPO) or deep MAML² on a task family.

Both algorithms are the engine of :mod:`maml2_jax.core.train`:

* ``algo="maml"``: one category, fresh tasks from the family at every step
  (MAML's customary sampling);
* ``algo="maml2"``: N categories of a pool of tasks drawn once, re-classified every
  R outer iterations.

The meta-update rule is MAML-TRPO (``rule="trpo"``, the customary one) or a
meta-gradient through an optax optimiser (``"adam"``, ``"sgd"``).

``train`` is the host loop: one compiled call per outer iteration (all seeds,
categories, tasks and trajectories inside it), then logging, classification and
checkpoints. I/O happens only between compiled calls. The task axis is split over a
1-D device mesh when ``devices`` > 1 (on a CPU host the CLI asks XLA for one device
per core).
"""

from __future__ import annotations

import dataclasses
import json
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
from maml2_jax.errors import ConfigError, check_positive_int
from maml2_jax.io import files
from maml2_jax.io.checkpoint import Checkpoints
from maml2_jax.learners.policy_gradient import (FEATURES, PolicyGradientConfig, make_policy_gradient_adapter,
                                                make_policy_gradient_learner)
from maml2_jax.networks import PolicyConfig, make_gaussian_policy
from maml2_jax.rules import gradient
from maml2_jax.rules.maml_trpo import maml_trpo
from maml2_jax.trpo import TRPOConfig

ALGORITHMS = ("maml", "maml2")
RULES = ("trpo", "adam", "sgd")
CHECKPOINT_DIR = "checkpoint"

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
      rule: the meta-update: "trpo" (MAML-TRPO), "adam" or "sgd" (a meta-gradient
        through that optax optimiser, step size ``meta_lr``).
      meta_lr: step size of the optax rules.
      curvature_fraction: share of the tasks used for TRPO's curvature products.
      devices: devices to split the task axis over (0: all local devices).
      checkpoint_every: outer iterations between checkpoints (0: only at the end).
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
    rule: str = "trpo"
    meta_lr: float = 1e-3
    curvature_fraction: float = 1.0
    devices: int = 0
    checkpoint_every: int = 10
    policy: PolicyConfig = PolicyConfig()
    inner: PolicyGradientConfig = PolicyGradientConfig()
    trpo: TRPOConfig = TRPOConfig()
    meta: MetaConfig = DEEP_SCHEDULE

    def __post_init__(self):
        if self.env not in envs.family_names():
            raise ConfigError(f"unknown env {self.env!r}; choose from {', '.join(envs.family_names())}")
        if self.backend:
            from maml2_jax.envs import brax_tasks

            if self.env not in brax_tasks.TASK_FAMILIES:
                raise ConfigError(f"a physics backend applies to brax families only, not {self.env!r}")
            if self.backend not in brax_tasks.BACKENDS:
                raise ConfigError(f"unknown brax backend {self.backend!r}; valid: {', '.join(brax_tasks.BACKENDS)}")
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 0:
            raise ConfigError(f"horizon must be a positive integer (0: the family's default), got {self.horizon}")
        if self.algo not in ALGORITHMS:
            raise ConfigError(f"algo must be one of {', '.join(ALGORITHMS)}, got {self.algo!r}")
        if self.rule not in RULES:
            raise ConfigError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**31 - 2**20:
            raise ConfigError(f"seed must be an integer in [0, 2**31 - 2**20), got {self.seed!r}")
        check_positive_int("seeds", self.seeds)
        check_positive_int("meta-batch size", self.meta_batch_size)
        check_positive_int("pool size", self.pool_size)
        if self.feature not in FEATURES:
            raise ConfigError(f"feature must be one of {', '.join(FEATURES)}, got {self.feature!r}")
        if not 0.0 < self.meta_lr < float("inf"):
            raise ConfigError(f"meta learning rate must be positive and finite, got {self.meta_lr}")
        if not 0.0 < self.curvature_fraction <= 1.0:
            raise ConfigError(f"curvature fraction must be in (0, 1], got {self.curvature_fraction}")
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 0:
            raise ConfigError(f"devices must be a non-negative integer, got {self.devices!r}")
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) \
                or self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint every must be a non-negative integer, got {self.checkpoint_every!r}")
        if self.algo == "maml2" and self.meta.categories > self.pool_size:
            raise ConfigError(f"cannot make {self.meta.categories} categories of a pool of {self.pool_size} tasks")

    @property
    def iterations(self) -> int:
        """Outer iterations, K_out."""
        return self.meta.outer_iterations

    @property
    def tasks_per_update(self) -> int:
        """Tasks of one meta-update: the meta-batch (MAML) or one category's (MAML²)."""
        return self.meta.tasks_per_category if self.algo == "maml2" else self.meta_batch_size

    def schedule(self) -> MetaConfig:
        """The engine's schedule: MAML is one category, one step per outer iteration, θ_c ← θ."""
        if self.algo == "maml2":
            return self.meta
        return dataclasses.replace(self.meta, categories=1, inner_iterations=1, tasks_per_category=self.meta_batch_size,
                                   category_init="global", classify_every=0, stop_tolerance=0.0)

    @staticmethod
    def from_dict(data: dict) -> "TrainConfig":
        """Inverse of ``dataclasses.asdict`` (reads a run's ``config.json``)."""
        nested = {"policy": PolicyConfig, "inner": PolicyGradientConfig, "trpo": TRPOConfig, "meta": MetaConfig}
        try:
            fields = {k: (nested[k](**v) if k in nested else v) for k, v in data.items()}
            if "policy" in fields and isinstance(fields["policy"].hidden_sizes, list):
                fields["policy"] = dataclasses.replace(fields["policy"],
                                                       hidden_sizes=tuple(fields["policy"].hidden_sizes))
            return TrainConfig(**fields)
        except TypeError as error:
            raise ConfigError(f"config.json does not describe a training run ({error})") from None


def mesh_for(config: TrainConfig):
    """The task mesh of the run (None on one device); ConfigError if the tasks do not split."""
    devices = jax.devices()
    count = len(devices) if config.devices == 0 else config.devices
    if count > len(devices):
        raise ConfigError(f"asked for {count} devices but only {len(devices)} are visible")
    if count == 1:
        return None
    mesh = sharding.task_mesh(devices[:count])
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
        self.engine = engine_lib.make_engine(self.learner, self.rule, self.source, config.schedule())

    def init(self, seed: int) -> RunState:
        """The run state of ``seed``: θ from ``key(seed)``, the run key ``key(seed + 1000003)``."""
        theta = self.policy.init(jax.random.key(seed))
        return self.engine.init(jax.random.key(seed + 1_000_003), theta)

    def init_seeds(self) -> RunState:
        """``[S, ...]`` states of seeds ``seed .. seed + S − 1`` (unbatched when S = 1)."""
        states = [self.init(self.config.seed + s) for s in range(self.config.seeds)]
        if self.config.seeds == 1:
            return states[0]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def _row(i: int, metrics: dict, seconds: float, classified: bool, labels=None) -> dict:
    """The metrics line of one iteration: means over categories, and per category for N > 1."""
    row = {"iteration": i}
    for name, value in metrics.items():
        value = np.asarray(value, np.float64)
        row[name] = files.finite(float(value.mean()))
        if value.size > 1:
            row[f"category_{name}"] = [files.finite(float(v)) for v in value]
    row["classified"] = classified
    if labels is not None:
        row["labels"] = np.asarray(labels).tolist()
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
          resume: bool = False, stop_after: int | None = None):
    """Runs the meta-training. Impure: writes to ``out`` (nothing when None).

    Per seed directory (:func:`seed_dirs`): ``config.json`` (written first),
    ``metrics.jsonl`` (a strict-JSON line per outer iteration), and at the end
    ``params.msgpack`` (θ), for MAML² ``category_params.msgpack`` (θ_c stacked) and
    ``categories.json`` (the pool, its labels at every classification, the pool's
    ground-truth categories). ``out/checkpoint/`` holds the whole run state every
    ``checkpoint_every`` iterations and at the end.

    Args:
      config: the run.
      out: output directory, or None for no files.
      progress: called with each iteration's row (seed 0's with several seeds).
      resume: continue from the newest checkpoint in ``out`` (its ``config.json``
        must equal ``config``).
      stop_after: stop after this many outer iterations in all (a pause; resume later).

    Returns:
      ``(state, history)``: the final :class:`~maml2_jax.core.types.RunState`
      (``[S, ...]`` with several seeds) and, per seed, the list of metric rows.
    """
    mesh = mesh_for(config)
    parts = Parts(config, mesh)
    state = parts.init_seeds()
    dirs = seed_dirs(out, config) if out is not None else []
    histories = [[] for _ in range(config.seeds)]
    checkpoints = Checkpoints(os.path.join(out, CHECKPOINT_DIR)) if out is not None else None
    if resume:
        if checkpoints is None:
            raise ConfigError("resume needs an output directory")
        state, record = checkpoints.restore(state)
        done = int(record.get("iteration", -1))
        if done != int(np.asarray(state.iteration).reshape(-1)[0]):
            raise ConfigError(f"checkpoint in {out} is inconsistent (record says iteration {done})")
        histories = [_read_metrics(os.path.join(d, "metrics.jsonl"), done) for d in dirs]
    elif out is not None:
        os.makedirs(out, exist_ok=True)
        if config.seeds > 1:
            files.write_json(os.path.join(out, "run_config.json"), dataclasses.asdict(config))
        for d in dirs:
            os.makedirs(d, exist_ok=True)
            for stale in ("params.msgpack", "category_params.msgpack", "categories.json"):
                if os.path.exists(os.path.join(d, stale)):
                    os.remove(os.path.join(d, stale))
            seed_config = dataclasses.replace(config, seed=config.seed + dirs.index(d), seeds=1) \
                if config.seeds > 1 else config
            files.write_json(os.path.join(d, "config.json"), dataclasses.asdict(seed_config))
    logs = [files.MetricsLog(os.path.join(d, "metrics.jsonl"), histories[s]) for s, d in enumerate(dirs)]
    stop = config.iterations if stop_after is None else min(stop_after, config.iterations)
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
            row = _row(i, per_seed, now - last[0], classified, labels)
            histories[s].append(row)
            if logs:
                logs[s].append(row)
        last[0] = now
        if progress is not None:
            progress(histories[0][-1])
        done = i + 1
        if checkpoints is not None and (done == config.iterations or
                                        (config.checkpoint_every and done % config.checkpoint_every == 0)):
            checkpoints.save(done, state, {"iteration": done})

    try:
        state = engine_lib.run(parts.engine, state, stop, callback, seeds=config.seeds > 1)
    finally:
        for log in logs:
            log.close()
        if checkpoints is not None:
            checkpoints.close()
    if out is not None and int(np.asarray(state.iteration).reshape(-1)[0]) == config.iterations:
        for s, d in enumerate(dirs):
            one = state if config.seeds == 1 else jax.tree.map(lambda x: x[s], state)
            _save(d, config, one, histories[s])
    return state, histories


def _save(out: str, config: TrainConfig, state: RunState, history: list[dict]) -> None:
    """The final outputs of one seed (atomic writes)."""
    if config.algo == "maml2":
        files.write_bytes(os.path.join(out, "category_params.msgpack"), serialization.to_bytes(state.category_params))
        categories = {"pool": np.asarray(state.source.pool).tolist(),
                      "pool_categories": np.asarray(state.source.truth).tolist(),
                      "classifications": [{"iteration": row["iteration"], "labels": row["labels"]}
                                          for row in history if row.get("classified")]}
        files.write_json(os.path.join(out, "categories.json"), categories)
    files.write_bytes(os.path.join(out, "params.msgpack"), serialization.to_bytes(state.theta))


def load_config(out: str) -> TrainConfig:
    """The whole run's config saved in ``out`` (``run_config.json`` with several seeds)."""
    for name in ("run_config.json", "config.json"):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, json.JSONDecodeError) as error:
                raise ConfigError(f"{path} cannot be read ({error})") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{path} does not describe a training run")
            return TrainConfig.from_dict(data)
    raise ConfigError(f"{out} is not a training run (no config.json)")


def load_run(path: str):
    """Reads a ``train`` output directory: ``(config, parts, theta, category_params | None)``."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"{path} is not a training run (no config.json)")
    config = load_config(path)
    parts = Parts(config)
    template = parts.policy.init(jax.random.key(0))
    theta = _read_msgpack(os.path.join(path, "params.msgpack"), template)
    category_params = None
    if config.algo == "maml2":
        stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (config.meta.categories,) + x.shape), template)
        category_params = _read_msgpack(os.path.join(path, "category_params.msgpack"), stacked)
    return config, parts, theta, category_params


def _read_msgpack(path: str, template):
    if not os.path.isfile(path):
        raise ConfigError(f"{path} is missing: the run did not finish (resume it with maml2 train --resume)")
    try:
        with open(path, "rb") as f:
            restored = serialization.from_bytes(template, f.read())
    except Exception as error:  # msgpack and flax raise several types for damaged bytes
        raise ConfigError(f"{path} cannot be read ({type(error).__name__})") from None
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(template)):
        if np.shape(got) != np.shape(want):
            raise ConfigError(f"{path} does not match the run's config")
    return jax.tree.map(jnp.asarray, restored)
