"""Compile time and throughput of each brax physics backend, on the brax task families.

For each robot (``halfcheetah-vel``, ``ant-vel``) and backend, one jitted function
resets ``--envs`` environments (one task each) and runs ``--steps`` steps of uniform
random actions in ``[-1, 1]`` through the family's vmapped ``step`` in a ``lax.scan``:
the shape of a rollout. Reported: seconds to lower and compile it, and environment
steps per second (``envs × steps / median seconds`` of ``--repeats`` calls after one
warm-up call). The default backend of ``BraxTaskConfig`` is chosen from this table.

    python benchmarks/brax_backends.py --out benchmarks/results/brax_backends-cpu-2core.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import common  # beside this file
from maml2_jax.envs import brax_tasks
from maml2_jax.io import machine


def _make_run(family, num_envs: int, num_steps: int):
    """``(tasks [N, 1], key) -> rewards [steps, N]``: reset, then random-action steps."""
    step = jax.vmap(family.step)

    def run(tasks, key):
        state, _ = jax.vmap(family.reset)(tasks)

        def one(state, key_t):
            action = jax.random.uniform(key_t, (num_envs, family.action_dim), minval=-1.0, maxval=1.0)
            state, _, reward = step(state, action, tasks)
            return state, reward

        _, rewards = jax.lax.scan(one, state, jax.random.split(key, num_steps))
        return rewards

    return jax.jit(run)


def measure(name: str, backend: str, num_envs: int, num_steps: int, repeats: int, seed: int) -> dict:
    """Compile seconds and steps/s of one family on one backend (impure: times and prints)."""
    family = brax_tasks.make_task_family(name, brax_tasks.BraxTaskConfig(backend=backend))
    key_tasks, key = jax.random.split(jax.random.key(seed))
    tasks, _ = family.sample_tasks(key_tasks, num_envs)
    run = _make_run(family, num_envs, num_steps)
    t0 = time.perf_counter()
    compiled = run.lower(tasks, key).compile()
    compile_seconds = time.perf_counter() - t0
    jax.block_until_ready(compiled(tasks, key))  # warm-up: first-call allocations
    seconds = []
    for i in range(repeats):
        t0 = time.perf_counter()
        rewards = jax.block_until_ready(compiled(tasks, jax.random.fold_in(key, i)))
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    return {
        "family": name,
        "backend": backend,
        "compile_seconds": compile_seconds,
        "median_seconds": median,
        "steps_per_second": num_envs * num_steps / median,
        "all_seconds": seconds,
        "finite": bool(jnp.all(jnp.isfinite(rewards))),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["halfcheetah-vel", "ant-vel"])
    parser.add_argument("--backends", nargs="+", default=list(brax_tasks.BACKENDS))
    parser.add_argument("--envs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/brax_backends.json")
    args = parser.parse_args()

    rows = []

    def write(finished):
        # After every row too: a run stopped part-way keeps what it measured.
        common.save({"benchmark": "brax_backends", **machine.describe(), "envs": args.envs, "steps": args.steps,
                     "repeats": args.repeats, "finished": finished, "results": rows}, args.out, quiet=not finished)

    print(f"{'family':<18}{'backend':<13}{'compile s':>10}{'steps/s':>10}")
    for name in args.families:
        for backend in args.backends:
            row = measure(name, backend, args.envs, args.steps, args.repeats, args.seed)
            rows.append(row)
            print(f"{name:<18}{backend:<13}{row['compile_seconds']:>10.1f}{row['steps_per_second']:>10.0f}", flush=True)
            write(finished=False)
    write(finished=True)


if __name__ == "__main__":
    main()
