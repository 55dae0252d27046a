"""Seconds of ``maml2 evaluate``'s adaptation curves, the test tasks on one device and split over all.

One curve call adapts every test task of one run for ``--steps`` steps, sampling
``--trajectories`` trajectories of ``--horizon`` steps per task and step (plus the
policy's return before any step): what ``evaluate`` runs four times per MAML² run (with
and without the reset, learning from scratch, and the tendency's own batch where it
has one). Timed from a freshly initialised policy (θ and each θ_c alike: the cost does
not depend on the values), for MAML's curve (no reset) and MAML²'s (reset), each on
one device (``--devices 1``, the single batch every evaluation used before the option)
and on all visible devices (the default; on a CPU the script, like the CLI, makes one
per core). Compiles first (reported apart), then reports the median of ``--repeats``
calls.

    python benchmarks/evaluation.py --out benchmarks/results/evaluation-cpu-2core.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import time

from maml2_jax import sharding

sharding.use_host_cores()  # before JAX starts: one CPU device per core, as the CLI does

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import common  # noqa: E402  (beside this file)
from maml2_jax import deep_evaluation, deep_training  # noqa: E402
from maml2_jax.io import machine  # noqa: E402


def _time(call, repeats):
    """``(compile_and_first_call_seconds, [seconds of each later call])``."""
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - t0
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        seconds.append(time.perf_counter() - t0)
    return first, seconds


def measure(env: str, tasks: int, steps: int, trajectories: int, horizon: int, categories: int, repeats: int) -> dict:
    config = deep_training.TrainConfig(env=env, algo="maml2", horizon=horizon)
    config = dataclasses.replace(config, inner=dataclasses.replace(config.inner, num_trajectories=trajectories))
    parts = deep_training.Parts(config)
    theta = parts.policy.init(jax.random.key(0))
    category_params = jax.tree.map(lambda x: jnp.stack([x] * categories), theta)
    task_batch, _ = parts.family.sample_tasks(jax.random.key(0), tasks)
    key = jax.random.key(1)
    figures = {}
    for devices in sorted({1, jax.device_count()}):  # one device alone on a one-device host
        used = sharding.first_devices(devices)
        mesh = sharding.task_mesh(used) if len(used) > 1 else None
        curves = deep_evaluation._curve_function(parts, steps, "category", mesh)
        for name, reset, own in (("maml", False, None), ("maml2", True, category_params)):
            first, seconds = _time(functools.partial(curves, theta, own, task_batch, key, reset=reset), repeats)
            figures[f"{name}_{devices}_devices"] = {"first_call_seconds": first, "median_seconds":
                                                    statistics.median(seconds), "all_seconds": seconds}
            print(f"  {env:<26} {name:<6} {devices} device{'s' if devices > 1 else ' '}  first call {first:6.1f} s  "
                  f"median {statistics.median(seconds):7.3f} s", flush=True)
    env_steps = tasks * (steps + 1) * trajectories * horizon
    return {"env": env, "tasks": tasks, "steps": steps, "trajectories": trajectories, "horizon": horizon,
            "env_steps_per_call": env_steps, **figures}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["nav2d-isolated", "halfcheetah-vel-isolated"])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--categories", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/evaluation.json")
    args = parser.parse_args()
    print(f"evaluate's adaptation curves on {jax.device_count()} x {jax.devices()[0].device_kind} "
          f"({os.cpu_count()} cores): {args.tasks} tasks, {args.steps} steps, {args.trajectories} trajectories "
          f"x {args.horizon} steps")
    result = {"benchmark": "evaluation", **machine.describe(),
              "figures": [measure(env, args.tasks, args.steps, args.trajectories, args.horizon, args.categories,
                                  args.repeats) for env in args.envs]}
    for figure in result["figures"] if jax.device_count() > 1 else []:
        for name in ("maml", "maml2"):
            one = figure[f"{name}_1_devices"]["median_seconds"]
            split = figure[f"{name}_{jax.device_count()}_devices"]["median_seconds"]
            figure[f"{name}_speedup"] = one / split
            print(f"  {figure['env']:<26} {name:<6} split over {jax.device_count()} devices: {one / split:.2f}x")
    common.save(result, args.out)


if __name__ == "__main__":
    main()
