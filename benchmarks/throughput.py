"""Env-steps per second of meta-training on a task family, against a random-action ceiling.

For a family, backend, number of tasks, trajectories and horizon, it compiles one
MAML-TRPO meta-iteration (tasks split over devices as ``maml2 train --devices N``
splits them, N from ``--devices``), then times ``--iterations`` iterations (median)
and reports

* seconds per meta-iteration and env-steps/s of meta-training — every rollout, the
  inner update, the meta-gradient, CG and the line search inside the timed call; the
  steps counted are the sampled ones, (K + 1) · tasks · trajectories · horizon;
* the ceiling: a plain batched rollout of the same env with uniform random actions,
  the same number of env steps on the same devices, and our ratio to it.

``--sweep 8,16,32`` repeats this over task counts and prints a scaling table.

    python benchmarks/throughput.py --env halfcheetah-vel --tasks 8 --trajectories 4 --horizon 50
    python benchmarks/throughput.py --env halfcheetah-vel --sweep 8,16,32 --out benchmarks/results/throughput-cpu-2core.json
"""

from __future__ import annotations

import argparse
import statistics
import time

from maml2_jax import sharding

sharding.use_host_cores()  # before JAX starts: one CPU device per core, as the CLI does

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import common  # noqa: E402  (beside this file)
from maml2_jax import deep_training, envs  # noqa: E402
from maml2_jax.learners.policy_gradient import PolicyGradientConfig  # noqa: E402


def _median_seconds(call, count):
    seconds = []
    for i in range(count):
        t0 = time.perf_counter()
        jax.block_until_ready(call(i))
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), seconds


def random_rollout_ceiling(family, tasks, trajectories, mesh, key, count):
    """Env-steps/s of uniform random actions in [−1, 1], tasks × trajectories × horizon."""
    horizon = family.config.horizon

    def episode(task, k):
        state, _ = family.reset(task)

        def body(state, t):
            action = jax.random.uniform(jax.random.fold_in(k, t), (family.action_dim,), minval=-1.0, maxval=1.0)
            state, _, reward = family.step(state, action, task)
            return state, reward

        return jnp.sum(jax.lax.scan(body, state, jnp.arange(horizon))[1])

    def batch(tasks, key):
        tasks = sharding.constrain_tasks(tasks, mesh)
        keys = jax.random.split(key, (tasks.shape[0], trajectories))
        return jax.vmap(lambda t, ks: jax.vmap(lambda k: episode(t, k))(ks))(tasks, keys)

    run = jax.jit(batch)
    t0 = time.perf_counter()
    compiled = run.lower(tasks, key).compile()
    compile_seconds = time.perf_counter() - t0
    median, _ = _median_seconds(lambda i: compiled(tasks, jax.random.fold_in(key, i)), count)
    steps = tasks.shape[0] * trajectories * horizon
    return {"compile_seconds": compile_seconds, "median_seconds": median, "env_steps_per_second": steps / median}


def measure(family, num_tasks, trajectories, inner_steps, count, seed, devices=0):
    # MAML is the engine with one category and fresh tasks, as maml2 train --algo maml runs it.
    config = deep_training.TrainConfig(env=family.name, horizon=family.config.horizon,
                                       backend=getattr(family.config, "backend", ""), meta_batch_size=num_tasks,
                                       devices=devices, inner=PolicyGradientConfig(num_trajectories=trajectories,
                                                                                   inner_steps=inner_steps))
    # The device split maml2 train --devices would use (0: its default).
    mesh = deep_training.mesh_for(config)
    parts = deep_training.Parts(config, mesh)
    key = jax.random.key(seed + 1)
    state = {"run": parts.init(seed)}
    t0 = time.perf_counter()
    compiled = parts.engine.step.lower(state["run"]).compile()
    compile_seconds = time.perf_counter() - t0

    def call(i):
        state["run"], metrics = compiled(state["run"])
        return metrics

    median, seconds = _median_seconds(call, count)
    steps = (inner_steps + 1) * num_tasks * trajectories * family.config.horizon
    tasks, _ = family.sample_tasks(key, num_tasks)
    ceiling = random_rollout_ceiling(family, tasks, trajectories * (inner_steps + 1), mesh, key, count)
    row = {"tasks": num_tasks, "trajectories": trajectories, "horizon": family.config.horizon,
           "inner_steps": inner_steps, "devices_used": 1 if mesh is None else mesh.devices.size,
           "compile_seconds": compile_seconds, "seconds_per_iteration": median, "all_seconds": seconds,
           "env_steps_per_iteration": steps, "env_steps_per_second": steps / median,
           "ceiling": ceiling, "ratio_to_ceiling": (steps / median) / ceiling["env_steps_per_second"]}
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="halfcheetah-vel", help="task family")
    parser.add_argument("--backend", default="", help="brax backend (default: the family's)")
    parser.add_argument("--tasks", type=int, default=8, help="tasks per meta-iteration")
    parser.add_argument("--trajectories", type=int, default=4, help="trajectories per task per batch")
    parser.add_argument("--horizon", type=int, default=50, help="steps per episode")
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations (median)")
    parser.add_argument("--sweep", default="", help="comma-separated task counts, e.g. 8,16,32,...,1024")
    parser.add_argument("--devices", type=int, default=0,
                        help="devices to split the tasks over, as maml2 train --devices (default 0: its default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    args = parser.parse_args()

    family = envs.make_task_family(args.env, args.horizon, args.backend)
    counts = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.tasks]
    rows = []
    print(f"{args.env} ({family.config.backend if hasattr(family.config, 'backend') else 'jax'}), "
          f"{args.trajectories} trajectories x {args.horizon} steps, on {jax.device_count()} x "
          f"{jax.devices()[0].device_kind}")
    print(f"{'tasks':>6} {'devices':>7} {'compile s':>10} {'s/iter':>8} {'meta-train steps/s':>19} {'ceiling steps/s':>16} {'ratio':>6}")
    for count in counts:
        row = measure(family, count, args.trajectories, args.inner_steps, args.iterations, args.seed, args.devices)
        rows.append(row)
        print(f"{count:>6} {row['devices_used']:>7} {row['compile_seconds']:>10.1f} {row['seconds_per_iteration']:>8.3f} "
              f"{row['env_steps_per_second']:>19,.0f} {row['ceiling']['env_steps_per_second']:>16,.0f} "
              f"{row['ratio_to_ceiling']:>6.2f}", flush=True)
    common.save({"benchmark": "throughput", **common.machine(), "env": args.env,
                 "backend": getattr(family.config, "backend", None), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
