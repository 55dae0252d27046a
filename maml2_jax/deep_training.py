"""Meta-training of the deep track: MAML-TRPO or deep MAML² on a task family.

``train`` runs ``iterations`` calls of one compiled meta-iteration, writes one JSON
line of metrics per iteration and saves the parameters at the end. I/O, and MAML²'s
classification (k-means on the host), happen only between compiled calls.

* ``algo="maml"``: :func:`maml2_jax.maml_trpo.make_maml_trpo_iteration`, fresh tasks
  from the family every iteration.
* ``algo="maml2"``: :mod:`maml2_jax.deep_maml2` on a pool of tasks drawn once,
  re-classified every R iterations.

The task axis is split over a 1-D device mesh when ``devices`` > 1 (on a CPU host the
CLI asks XLA for one device per core).
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
from flax import serialization

from maml2_jax import clustering, deep_maml2, sharding
from maml2_jax import envs
from maml2_jax.errors import ConfigError, check_positive_int
from maml2_jax.learners.policy_gradient import PolicyGradientConfig, make_policy_gradient_adapter
from maml2_jax.maml_trpo import make_maml_trpo_iteration, make_maml_trpo_update
from maml2_jax.networks import PolicyConfig, make_gaussian_policy
from maml2_jax.trpo import TRPOConfig

ALGORITHMS = ("maml", "maml2")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A deep-track training run (defaults: the customary MAML-TRPO 2-D navigation config).

    Attributes:
      env: task family name (``nav2d``, ``nav2d-isolated``, or a brax family such as
        ``halfcheetah-vel``; see :func:`maml2_jax.envs.family_names`).
      horizon: steps per episode (0: the family's default, 100 for 2-D navigation,
        200 for brax).
      backend: brax physics pipeline ("": the default; brax families only).
      algo: ``maml`` (MAML-TRPO) or ``maml2`` (deep MAML², see ``maml2``).
      iterations: meta-iterations (MAML²: outer iterations).
      seed: seed of the initial parameters and of every iteration's randomness.
      meta_batch_size: MAML's tasks per meta-iteration.
      curvature_fraction: share of the tasks used for TRPO's curvature products.
      devices: devices to split the task axis over (0: all local devices).
      policy, inner, trpo: the policy, inner loop and meta-update settings.
      maml2: categories, pool and schedule of ``algo="maml2"``.
    """

    env: str = "nav2d"
    horizon: int = 0
    backend: str = ""
    algo: str = "maml"
    iterations: int = 50
    seed: int = 1
    meta_batch_size: int = 20
    curvature_fraction: float = 1.0
    devices: int = 0
    policy: PolicyConfig = PolicyConfig()
    inner: PolicyGradientConfig = PolicyGradientConfig()
    trpo: TRPOConfig = TRPOConfig()
    maml2: deep_maml2.DeepMAML2Config = deep_maml2.DeepMAML2Config()

    def __post_init__(self):
        if self.env not in envs.family_names():
            raise ConfigError(f"unknown env {self.env!r}; choose from {', '.join(envs.family_names())}")
        if self.backend:
            from maml2_jax.envs import brax_tasks

            if self.env not in brax_tasks.TASK_FAMILIES:
                raise ConfigError(f"a physics backend applies to brax families only, not {self.env!r}")
            if self.backend not in brax_tasks.BACKENDS:
                raise ConfigError(f"unknown brax backend {self.backend!r}; valid: {', '.join(brax_tasks.BACKENDS)}")
        if self.horizon < 0:
            raise ConfigError(f"horizon must be a positive integer (0: the family's default), got {self.horizon}")
        if self.algo not in ALGORITHMS:
            raise ConfigError(f"algo must be one of {', '.join(ALGORITHMS)}, got {self.algo!r}")
        check_positive_int("iterations", self.iterations)
        check_positive_int("meta-batch size", self.meta_batch_size)
        if not 0.0 < self.curvature_fraction <= 1.0:
            raise ConfigError(f"curvature fraction must be in (0, 1], got {self.curvature_fraction}")
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 0:
            raise ConfigError(f"devices must be a non-negative integer, got {self.devices!r}")

    @property
    def tasks_per_update(self) -> int:
        """Tasks of one meta-update: the meta-batch (MAML) or one category's (MAML²)."""
        return self.maml2.tasks_per_category if self.algo == "maml2" else self.meta_batch_size

    @staticmethod
    def from_dict(data: dict) -> "TrainConfig":
        """Inverse of ``dataclasses.asdict`` (reads a run's ``config.json``)."""
        nested = {"policy": PolicyConfig, "inner": PolicyGradientConfig, "trpo": TRPOConfig,
                  "maml2": deep_maml2.DeepMAML2Config}
        fields = {k: (nested[k](**v) if k in nested else v) for k, v in data.items()}
        return TrainConfig(**fields)


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
    """The pure pieces of a run, built once: family, policy, adapter and meta-update."""

    def __init__(self, config: TrainConfig, mesh=None):
        self.family = envs.make_task_family(config.env, config.horizon, config.backend)
        self.policy = make_gaussian_policy(self.family.obs_dim, self.family.action_dim, config.policy)
        self.adapter = make_policy_gradient_adapter(self.family, self.policy, config.inner)
        self.update = make_maml_trpo_update(self.policy, self.adapter, config.inner.inner_steps,
                                            config.tasks_per_update, config.trpo, config.curvature_fraction, mesh)


def _row(i: int, pre, post, kl, step_fraction, seconds: float) -> dict:
    return {"iteration": i, "pre_return": float(np.mean(pre)), "post_return": float(np.mean(post)),
            "kl": float(np.mean(kl)), "step_fraction": float(np.mean(step_fraction)), "seconds": seconds}


def train(config: TrainConfig, out: str | None = None, progress: Callable[[dict], None] | None = None):
    """Runs the meta-training. Impure: writes to ``out`` (nothing when None).

    Writes ``metrics.jsonl`` (a line per iteration), ``params.msgpack`` (θ),
    ``config.json``, and for MAML² ``category_params.msgpack`` (θ_c stacked) and
    ``categories.json`` (the pool, its labels at every classification, the
    ground-truth categories of the pool).

    Returns:
      ``(params, history)``: θ (MAML²: the :class:`~maml2_jax.deep_maml2.DeepMAML2State`)
      and the per-iteration dicts with ``iteration``, ``pre_return``, ``post_return``
      (mean per-episode return before and after adaptation; MAML²: mean over
      categories), ``kl``, ``step_fraction``, ``seconds`` (wall time of the iteration,
      classification included; iteration 0's includes compilation) and, for MAML²,
      ``category_pre_return``, ``category_post_return`` and ``classified``.
    """
    mesh = mesh_for(config)
    parts = Parts(config, mesh)
    params = parts.policy.init(jax.random.key(config.seed))
    key = jax.random.key(config.seed + 1_000_003)
    history, extra = [], {}
    log = None
    if out is not None:
        os.makedirs(out, exist_ok=True)
        log = open(os.path.join(out, "metrics.jsonl"), "w")
    try:
        if config.algo == "maml":
            iteration = jax.jit(make_maml_trpo_iteration(
                parts.family, parts.policy, parts.adapter, config.inner.inner_steps, config.meta_batch_size,
                config.trpo, config.curvature_fraction, mesh))
            for i in range(config.iterations):
                t0 = time.perf_counter()
                params, m = jax.device_get(iteration(params, jax.random.fold_in(key, i)))
                row = _row(i, m.pre_return, m.post_return, m.trpo.kl, m.trpo.step_fraction, time.perf_counter() - t0)
                _emit(row, history, log, progress)
        else:
            params, extra = _train_maml2(config, parts, params, key, history, log, progress)
    finally:
        if log is not None:
            log.close()
    if out is not None:
        _save(out, config, params, extra)
    return params, history


def _train_maml2(config, parts, theta, key, history, log, progress):
    settings = config.maml2
    pool_key, feature_key, iteration_key = jax.random.split(jax.random.fold_in(key, 7), 3)
    pool, pool_categories = parts.family.sample_tasks(pool_key, settings.pool_size)
    features = jax.jit(deep_maml2.make_features(parts.adapter, settings.feature))
    iteration = jax.jit(deep_maml2.make_maml2_iteration(parts.update, settings))
    state = deep_maml2.init_state(theta, settings.num_categories)
    centroids, members, classifications = None, None, []
    for i in range(config.iterations):
        t0 = time.perf_counter()
        classified = i % settings.recluster_every == 0
        if classified:
            f = np.asarray(features(state.theta, pool, jax.random.fold_in(feature_key, i)))
            labels, centroids = deep_maml2.classify(f, settings.num_categories, config.seed + i, centroids)
            members = jnp.asarray(clustering.membership(labels, settings.num_categories))
            classifications.append({"iteration": i, "labels": labels.tolist()})
        state, m = jax.device_get(iteration(state, pool, members, jax.random.fold_in(iteration_key, i)))
        row = _row(i, m.pre_return, m.post_return, m.kl, m.step_fraction, time.perf_counter() - t0)
        row.update(category_pre_return=np.asarray(m.pre_return).tolist(),
                   category_post_return=np.asarray(m.post_return).tolist(), classified=classified)
        _emit(row, history, log, progress)
    categories = {"pool": np.asarray(pool).tolist(), "pool_categories": np.asarray(pool_categories).tolist(),
                  "classifications": classifications}
    return state, {"categories": categories}


def _emit(row, history, log, progress):
    history.append(row)
    if log is not None:
        log.write(json.dumps(row) + "\n")
        log.flush()
    if progress is not None:
        progress(row)


def _save(out: str, config: TrainConfig, params, extra: dict) -> None:
    if isinstance(params, deep_maml2.DeepMAML2State):
        with open(os.path.join(out, "category_params.msgpack"), "wb") as f:
            f.write(serialization.to_bytes(params.category_params))
        with open(os.path.join(out, "categories.json"), "w") as f:
            json.dump(extra["categories"], f)
        params = params.theta
    with open(os.path.join(out, "params.msgpack"), "wb") as f:
        f.write(serialization.to_bytes(params))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=1)


def load_run(path: str):
    """Reads a ``train`` output directory: ``(config, parts, theta, category_params | None)``."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{path} is not a training run (no config.json)")
    with open(config_path) as f:
        config = TrainConfig.from_dict(json.load(f))
    parts = Parts(config)
    template = parts.policy.init(jax.random.key(0))
    with open(os.path.join(path, "params.msgpack"), "rb") as f:
        theta = jax.tree.map(jnp.asarray, serialization.from_bytes(template, f.read()))
    category_params = None
    if config.algo == "maml2":
        stacked = deep_maml2.init_state(template, config.maml2.num_categories).category_params
        with open(os.path.join(path, "category_params.msgpack"), "rb") as f:
            category_params = jax.tree.map(jnp.asarray, serialization.from_bytes(stacked, f.read()))
    return config, parts, theta, category_params
