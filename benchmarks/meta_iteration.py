"""Seconds per MAML-TRPO meta-iteration at the customary 2-D navigation config.

20 tasks × 20 trajectories × 100 steps, 64×64 tanh Gaussian policy, 1 inner step,
inner lr 0.1, γ 0.99, GAE λ 1, max KL 0.01, CG 10 iterations, damping 1e-5, line
search 15 × 0.8. Compiles first (reported apart), then times ``--iterations``
iterations of the training loop (each one jitted call) and reports the median, with
a breakdown (the iteration with CG reduced to 1 iteration), and the iteration with
curvature products on a quarter of the tasks (``curvature_fraction=0.25``, an
option that is off by default).

    python benchmarks/meta_iteration.py --out benchmarks/meta_iteration.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import common  # beside this file
import jax
import numpy as np

from maml2_jax import trpo
from maml2_jax.envs import nav2d
from maml2_jax.learners.policy_gradient import PolicyGradientConfig, make_policy_gradient_adapter
from maml2_jax.maml_trpo import make_maml_trpo_iteration
from maml2_jax.networks import make_gaussian_policy


def _time_loop(iteration, params, key, count):
    seconds = []
    for i in range(count):
        t0 = time.perf_counter()
        params, metrics = iteration(params, jax.random.fold_in(key, i))
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - t0)
    return seconds, params


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/meta_iteration.json")
    args = parser.parse_args()

    family = nav2d.make_task_family("nav2d")
    policy = make_gaussian_policy(family.obs_dim, family.action_dim)
    adapter = make_policy_gradient_adapter(family, policy, PolicyGradientConfig())
    params = policy.init(jax.random.key(args.seed))
    key = jax.random.key(args.seed + 1000)

    figures = {}
    settings = (("maml_trpo", 10, 1.0), ("maml_trpo_cg1", 1, 1.0), ("maml_trpo_curvature_quarter", 10, 0.25))
    for name, cg, fraction in settings:
        iteration = jax.jit(make_maml_trpo_iteration(family, policy, adapter, 1, 20, trpo.TRPOConfig(cg_iterations=cg),
                                                     curvature_fraction=fraction))
        t0 = time.perf_counter()
        compiled = iteration.lower(params, key).compile()
        compile_seconds = time.perf_counter() - t0
        seconds, _ = _time_loop(compiled, params, key, args.iterations)
        figures[name] = {"compile_seconds": compile_seconds, "median_seconds": statistics.median(seconds),
                         "all_seconds": seconds}
    per_cg = (figures["maml_trpo"]["median_seconds"] - figures["maml_trpo_cg1"]["median_seconds"]) / 9
    env_steps = 2 * 20 * 20 * 100  # inner and outer batches
    result = {
        "benchmark": "meta_iteration",
        **common.machine(),
        "config": "nav2d, 20 tasks x 20 trajectories x 100 steps, 64x64 tanh, 1 inner step, TRPO CG 10",
        **figures,
        "seconds_per_cg_iteration": per_cg,
        "env_steps_per_iteration": env_steps,
        "env_steps_per_second": env_steps / figures["maml_trpo"]["median_seconds"],
    }
    print(f"MAML-TRPO meta-iteration, 2-D navigation, on {result['device']} ({os.cpu_count()} cores)")
    print(f"  compile            {figures['maml_trpo']['compile_seconds']:6.2f} s")
    print(f"  median iteration   {figures['maml_trpo']['median_seconds']:6.3f} s  "
          f"({args.iterations} iterations: {np.round(figures['maml_trpo']['all_seconds'], 3).tolist()})")
    print(f"  with 1 CG iter.    {figures['maml_trpo_cg1']['median_seconds']:6.3f} s  "
          f"-> {per_cg:.3f} s per curvature product (CG iteration)")
    print(f"  curvature on 1/4 of the tasks  {figures['maml_trpo_curvature_quarter']['median_seconds']:6.3f} s")
    print(f"  env steps/s        {result['env_steps_per_second']:,.0f}")
    common.save(result, args.out)


if __name__ == "__main__":
    main()
