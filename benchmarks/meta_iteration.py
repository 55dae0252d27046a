"""Seconds per MAML-TRPO meta-iteration at the customary 2-D navigation config.

20 tasks × 20 trajectories × 100 steps, 64×64 tanh Gaussian policy, 1 inner step,
inner lr 0.1, γ 0.99, GAE λ 1, max KL 0.01, CG 10 iterations, damping 1e-5, line
search 15 × 0.8. As ``maml2 train`` runs it: the tasks split over one XLA device per
core. Compiles first (reported apart), then times ``--iterations`` iterations of the
training loop (each one jitted call) and reports the median, with:

* the same on a single device (no task split);
* a breakdown: the iteration with CG reduced to 1 iteration, hence one curvature
  product's cost;
* curvature products on a quarter of the tasks (``curvature_fraction=0.25``, an
  option that is off by default);
* one deep MAML² outer iteration on ``nav2d-isolated`` (3 categories × 10 tasks).

    python benchmarks/meta_iteration.py --out benchmarks/results/meta_iteration-cpu-2core.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from maml2_jax import sharding

sharding.use_host_cores()  # before JAX starts: one CPU device per core, as the CLI does

import jax  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402  (beside this file)
from maml2_jax import trpo  # noqa: E402
from maml2_jax.core import train as engine_lib  # noqa: E402
from maml2_jax.deep_training import Parts, TrainConfig  # noqa: E402
from maml2_jax.io import machine  # noqa: E402


def _time(step, carry, count):
    """Median seconds of ``count`` calls ``carry = step(carry, i)``; each call waited for."""
    seconds = []
    for i in range(count):
        t0 = time.perf_counter()
        carry = jax.block_until_ready(step(carry, i))
        seconds.append(time.perf_counter() - t0)
    return seconds


def _compiled_step(parts, state):
    """``parts.engine.step`` compiled ahead of time on ``state``, and the seconds it took."""
    t0 = time.perf_counter()
    compiled = parts.engine.step.lower(state).compile()
    return compiled, time.perf_counter() - t0


def _maml(seed, count, cg, fraction, mesh):
    # MAML is the engine with one category and fresh tasks (the meta-batch of 20).
    config = TrainConfig(env="nav2d", meta_batch_size=20, trpo=trpo.TRPOConfig(cg_iterations=cg),
                         curvature_fraction=fraction)
    parts = Parts(config, mesh)
    state = parts.init(seed)
    compiled, compile_seconds = _compiled_step(parts, state)
    seconds = _time(lambda s, i: compiled(s)[0], state, count)
    return {"compile_seconds": compile_seconds, "median_seconds": statistics.median(seconds), "all_seconds": seconds}


def _maml2(seed, count, mesh):
    # The deep schedule: 3 categories x 10 tasks of a pool of 40, parallel, 1 step per category.
    config = TrainConfig(env="nav2d-isolated", algo="maml2")
    parts = Parts(config, mesh)
    state = parts.init(seed)
    state = engine_lib.classify(state, parts.engine.features(state))  # once, before the first step (untimed)
    compiled, compile_seconds = _compiled_step(parts, state)
    seconds = _time(lambda s, i: compiled(s)[0], state, count)
    return {"compile_seconds": compile_seconds, "median_seconds": statistics.median(seconds), "all_seconds": seconds,
            "tasks": config.meta.categories * config.meta.tasks_per_category}


FIGURES = ("maml_trpo", "maml_trpo_one_device", "maml_trpo_cg1", "maml_trpo_curvature_quarter",
           "maml2_outer_iteration")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/meta_iteration.json")
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES),
                        help="time only these figures (default: all)")
    args = parser.parse_args()

    mesh = sharding.task_mesh() if jax.device_count() > 1 else None

    figures = {}
    settings = {"maml_trpo": (10, 1.0, mesh), "maml_trpo_one_device": (10, 1.0, None),
                "maml_trpo_cg1": (1, 1.0, mesh), "maml_trpo_curvature_quarter": (10, 0.25, mesh)}
    for name in args.only:
        if name in settings:
            figures[name] = _maml(args.seed, args.iterations, *settings[name])
    if "maml2_outer_iteration" in args.only:
        figures["maml2_outer_iteration"] = _maml2(args.seed, args.iterations, mesh)
    median = {name: f["median_seconds"] for name, f in figures.items()}
    env_steps = 2 * 20 * 20 * 100  # inner and outer batches
    result = {
        "benchmark": "meta_iteration",
        **machine.describe(),
        "config": "nav2d, 20 tasks x 20 trajectories x 100 steps, 64x64 tanh, 1 inner step, TRPO CG 10",
        **figures,
        "env_steps_per_iteration": env_steps,
    }
    print(f"MAML-TRPO meta-iteration, 2-D navigation, on {jax.device_count()} x {result['device']} "
          f"({os.cpu_count()} cores)")
    if "maml_trpo" in median:
        result["env_steps_per_second"] = env_steps / median["maml_trpo"]
        print(f"  compile                         {figures['maml_trpo']['compile_seconds']:6.2f} s")
        print(f"  median iteration                {median['maml_trpo']:6.3f} s  "
              f"({args.iterations} iterations: {np.round(figures['maml_trpo']['all_seconds'], 3).tolist()})")
    if "maml_trpo_one_device" in median:
        print(f"  the same on one device          {median['maml_trpo_one_device']:6.3f} s")
    if "maml_trpo_cg1" in median:
        print(f"  with 1 CG iteration             {median['maml_trpo_cg1']:6.3f} s")
    if {"maml_trpo", "maml_trpo_cg1"} <= set(median):
        result["seconds_per_cg_iteration"] = (median["maml_trpo"] - median["maml_trpo_cg1"]) / 9
        print(f"    -> {result['seconds_per_cg_iteration']:.3f} s per curvature product (CG iteration)")
    if "maml_trpo_curvature_quarter" in median:
        print(f"  curvature on 1/4 of the tasks   {median['maml_trpo_curvature_quarter']:6.3f} s")
    if "maml2_outer_iteration" in median:
        print(f"  MAML² outer iteration (3 x 10 tasks, nav2d-isolated)  {median['maml2_outer_iteration']:6.3f} s")
    if "env_steps_per_second" in result:
        print(f"  env steps/s                     {result['env_steps_per_second']:,.0f}")
    common.save(result, args.out)


if __name__ == "__main__":
    main()
