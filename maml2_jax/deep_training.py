"""Meta-training of the deep track: MAML-TRPO on a task family, one jitted call per iteration.

``train`` runs ``iterations`` calls of the compiled meta-iteration
(:func:`maml2_jax.maml_trpo.make_maml_trpo_iteration`), writes one JSON line of
metrics per iteration and saves the parameters at the end. I/O happens only between
compiled calls.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

import jax
from flax import serialization

from maml2_jax.envs import nav2d
from maml2_jax.errors import ConfigError, check_positive_int
from maml2_jax.learners.policy_gradient import PolicyGradientConfig, make_policy_gradient_adapter
from maml2_jax.maml_trpo import make_maml_trpo_iteration
from maml2_jax.networks import PolicyConfig, make_gaussian_policy
from maml2_jax.trpo import TRPOConfig

ALGORITHMS = ("maml",)  # MAML² on neural policies is the next step of the deep track


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A deep-track training run (defaults: the customary MAML-TRPO 2-D navigation config).

    Attributes:
      env: task family name (``nav2d``, ``nav2d-isolated``).
      algo: meta-learning algorithm (``maml``).
      iterations: meta-iterations.
      seed: seed of the initial parameters and of every iteration's randomness.
      meta_batch_size: tasks per meta-iteration.
      curvature_fraction: share of the tasks used for TRPO's curvature products.
      policy, inner, trpo: the policy, inner loop and meta-update settings.
    """

    env: str = "nav2d"
    algo: str = "maml"
    iterations: int = 50
    seed: int = 1
    meta_batch_size: int = 20
    curvature_fraction: float = 1.0
    policy: PolicyConfig = PolicyConfig()
    inner: PolicyGradientConfig = PolicyGradientConfig()
    trpo: TRPOConfig = TRPOConfig()

    def __post_init__(self):
        if self.env not in nav2d.TASK_FAMILIES:
            raise ConfigError(f"unknown env {self.env!r}; choose from {', '.join(nav2d.TASK_FAMILIES)}")
        if self.algo not in ALGORITHMS:
            raise ConfigError(f"algo must be one of {', '.join(ALGORITHMS)}, got {self.algo!r}")
        check_positive_int("iterations", self.iterations)
        check_positive_int("meta-batch size", self.meta_batch_size)
        if not 0.0 < self.curvature_fraction <= 1.0:
            raise ConfigError(f"curvature fraction must be in (0, 1], got {self.curvature_fraction}")


def build(config: TrainConfig):
    """``(init_params, iteration)``: initial parameters and the jitted meta-iteration."""
    family = nav2d.make_task_family(config.env)
    policy = make_gaussian_policy(family.obs_dim, family.action_dim, config.policy)
    adapter = make_policy_gradient_adapter(family, policy, config.inner)
    iteration = make_maml_trpo_iteration(
        family, policy, adapter, config.inner.inner_steps, config.meta_batch_size, config.trpo,
        config.curvature_fraction,
    )
    return policy.init(jax.random.key(config.seed)), jax.jit(iteration)


def train(config: TrainConfig, out: str | None = None, progress: Callable[[dict], None] | None = None):
    """Runs the meta-training. Impure: writes ``out/metrics.jsonl`` and ``out/params.msgpack``.

    Args:
      config: the run.
      out: output directory (nothing is written when None).
      progress: called with each iteration's metrics dict.

    Returns:
      ``(params, metrics)``: final parameters and the list of per-iteration dicts with
      ``iteration``, ``pre_return``, ``post_return`` (mean per-episode return before and
      after adaptation), ``kl``, ``step_fraction`` and ``seconds`` (wall time of the
      iteration; iteration 0's includes compilation).
    """
    params, iteration = build(config)
    key = jax.random.key(config.seed + 1_000_003)
    history = []
    log = None
    if out is not None:
        os.makedirs(out, exist_ok=True)
        log = open(os.path.join(out, "metrics.jsonl"), "w")
    try:
        for i in range(config.iterations):
            t0 = time.perf_counter()
            params, metrics = iteration(params, jax.random.fold_in(key, i))
            metrics = jax.device_get(metrics)
            row = {
                "iteration": i,
                "pre_return": float(metrics.pre_return),
                "post_return": float(metrics.post_return),
                "kl": float(metrics.trpo.kl),
                "step_fraction": float(metrics.trpo.step_fraction),
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            if log is not None:
                log.write(json.dumps(row) + "\n")
                log.flush()
            if progress is not None:
                progress(row)
    finally:
        if log is not None:
            log.close()
    if out is not None:
        with open(os.path.join(out, "params.msgpack"), "wb") as f:
            f.write(serialization.to_bytes(params))
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(config), f, indent=1)
    return params, history
