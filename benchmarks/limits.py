"""How far the two headline benchmarks are from this machine's limits.

Measures the machine (in JAX, on the same XLA CPU devices the library uses):

* ``matmul`` — GFLOP/s of a float32 2048 x 2048 product on one device (XLA's
  Eigen kernel uses every core), and of the policy's hidden layer,
  ``[40000, 64] x [64, 64]``;
* ``elementwise`` — operations/s of a fused chain of 64 multiply-adds over 16M
  float32 on each device at once (one core each);
* ``loop`` — nanoseconds per iteration of an XLA ``while`` loop whose body is one
  small fused kernel: the floor of any sequential loop XLA runs.

and counts the work of each benchmark:

* **MAML-TRPO meta-iteration** (2-D navigation, customary config): FLOPs of one
  curvature product (XLA's cost analysis of the loop-free product), and of the rest
  of the iteration (the cost analysis of an iteration with one CG step, whose loops
  XLA counts once: the two rollouts' 100 time steps are added analytically, the
  policy's forward FLOPs × 2 × 40,000 steps). Achieved GFLOP/s against the
  matmul rate.
* **Grid world, training stage** (the default 50-run experiment's MAML² and MAML
  meta-training, 93% of the experiment's compute): agent steps (SARSA ticks) of every
  lane, and the ticks of the slowest lane (the loop is as long as it). A tick is
  ``E`` element-wise operations (the equations of one tick's jaxpr); the throughput
  floor is all lanes' ``ticks × E`` at the element-wise rate of both cores; the
  latency floor is the slowest lane's ticks × (one loop iteration + ``E``
  dependent operations at ~1 ns each).

Prints the table of ``benchmarks/RESULTS.md`` and writes JSON.

    python benchmarks/limits.py --out benchmarks/results/limits-cpu-2core.json
"""

from __future__ import annotations

import argparse
import statistics
import time

from maml2_jax import sharding

sharding.use_host_cores()  # before JAX starts: one CPU device per core, as the CLI does

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402  (beside this file)
from maml2_jax import gridworld_experiment, trpo  # noqa: E402
from maml2_jax.core import classification  # noqa: E402
from maml2_jax.deep_training import Parts, TrainConfig  # noqa: E402
from maml2_jax.io import machine  # noqa: E402
from maml2_jax.learners.sarsa import make_sarsa  # noqa: E402
from maml2_jax.returns import episode_weights  # noqa: E402
from maml2_jax.rules import maml_trpo  # noqa: E402

# Latency of one dependent scalar operation (add, compare, select, shift) on a
# current x86-64 core: 3-4 cycles at ~3 GHz. A model constant, not a measurement.
NS_PER_DEPENDENT_OP = 1.0


def _median_seconds(fn, *args, repeats=5):
    jax.block_until_ready(fn(*args))
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def _flops(fn, *args) -> float:
    return float(jax.jit(fn).lower(*args).compile().cost_analysis()["flops"])


def measure_rates() -> dict:
    """The machine's measured rates."""
    devices = jax.devices()
    square = jax.device_put(jnp.ones((2048, 2048), jnp.float32), devices[0])
    matmul = 2 * 2048**3 / _median_seconds(jax.jit(jnp.dot), square, square)
    hidden = jax.device_put(jnp.ones((40000, 64), jnp.float32), devices[0])
    weights = jax.device_put(jnp.ones((64, 64), jnp.float32), devices[0])
    skinny = 2 * 40000 * 64 * 64 / _median_seconds(jax.jit(jnp.dot), hidden, weights, repeats=50)

    def chain(x):
        for _ in range(64):
            x = x * 0.999 + 0.001
        return x

    chained = jax.jit(chain)
    vectors = [jax.device_put(jnp.ones((1 << 24,), jnp.float32), d) for d in devices]
    elementwise = 2 * 64 * (1 << 24) * len(devices) / _median_seconds(lambda: [chained(v) for v in vectors])

    steps = 1_000_000
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, steps, lambda i, c: c * 1.0000001 + 1e-7, x))
    loop_ns = _median_seconds(loop, jnp.ones((32,), jnp.float32), repeats=3) / steps * 1e9
    return {"matmul_gflops": matmul / 1e9, "hidden_layer_gflops": skinny / 1e9,
            "elementwise_gops_all_cores": elementwise / 1e9, "loop_ns_per_iteration": loop_ns}


def maml_trpo_work(iterations: int) -> dict:
    """FLOPs and seconds of the customary MAML-TRPO iteration (2-D navigation, 2 devices)."""
    mesh = sharding.task_mesh() if jax.device_count() > 1 else None
    out = {}
    for cg in (10, 1):
        config = TrainConfig(env="nav2d", meta_batch_size=20, trpo=trpo.TRPOConfig(cg_iterations=cg))
        parts = Parts(config, mesh)
        state = parts.init(1)
        step = parts.engine.step.lower(state).compile()
        out[f"seconds_cg{cg}"] = _median_seconds(lambda s, step=step: step(s)[0], state, repeats=iterations)
        if cg == 1:
            out["flops_cg1_as_counted"] = float(step.cost_analysis()["flops"])

    # One curvature product on a real iteration's batches: loop-free, so XLA counts it whole.
    parts = Parts(TrainConfig(env="nav2d", meta_batch_size=20))
    params = parts.policy.init(jax.random.key(1))
    tasks, _ = parts.family.sample_tasks(jax.random.key(2), 20)
    keys = jax.random.split(jax.random.key(3), 20)
    batches, adapted = jax.vmap(lambda t, k: maml_trpo.collect_inner(parts.adapter, 1, params, t, k))(tasks, keys)
    outer = jax.vmap(parts.adapter.sample)(adapted, tasks, jax.random.split(jax.random.key(4), 20))
    distribution = lambda p: maml_trpo.adapted_policies(parts.policy, parts.adapter, p, batches,  # noqa: E731
                                                        outer.trajectories.obs)
    product = trpo.gaussian_fisher_product(distribution, params, episode_weights(outer.trajectories.mask))
    flat = jax.flatten_util.ravel_pytree(params)[0]
    out["flops_per_product"] = _flops(product, flat)
    forward = _flops(parts.policy.mean_and_log_std, params, jnp.zeros((1, parts.family.obs_dim)))
    samples = 20 * 20 * 100  # tasks x trajectories x steps, per rollout
    # The rollouts' time loop is counted once by XLA: add the other 99 steps of both rollouts.
    out["flops_per_iteration"] = (out["flops_cg1_as_counted"] + 9 * out["flops_per_product"]
                                  + 2 * forward * samples * 99 / 100)
    out["seconds_per_product"] = (out["seconds_cg10"] - out["seconds_cg1"]) / 9
    return out


def gridworld_work() -> dict:
    """Agent steps of the default experiment's training stage, its slowest lane, and its seconds."""
    config = gridworld_experiment.GridworldConfig()
    mesh = sharding.run_mesh()
    classify, train, _ = gridworld_experiment.build(config, mesh if mesh.size > 1 else None)
    keys = sharding.pad_runs(gridworld_experiment.run_keys(config.seed, config.runs), mesh.size)
    features, _ = classify(keys[:, 0])
    labels = gridworld_experiment.categorize(features, keys[:, 1], config.categories)
    members = jnp.asarray(classification.membership(labels, config.categories))
    compiled = train.lower(members, keys[:, 2], keys[:, 3]).compile()
    seconds = _median_seconds(compiled, members, keys[:, 2], keys[:, 3], repeats=3)
    ticks = np.asarray(compiled(members, keys[:, 2], keys[:, 3])[3], np.int64)[: config.runs]
    learner = make_sarsa(config.world, config.sarsa, log_episodes=config.test_episodes, track_visits=False)
    agent = learner.start(learner.init_params(), jnp.int32(config.world.goals[0]), jax.random.key(0))
    ops = len(jax.make_jaxpr(learner.tick)(agent, jnp.int32(config.world.goals[0]), True).eqns)
    return {"seconds": seconds, "lane_ticks": int(ticks.sum()), "slowest_lane_ticks": int(ticks.max()),
            "ops_per_tick": ops, "lanes_per_device": 2 * config.runs // mesh.size}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5, help="timed MAML-TRPO iterations (median)")
    parser.add_argument("--out", default="benchmarks/results/limits.json")
    args = parser.parse_args()

    rates = measure_rates()
    maml = maml_trpo_work(args.iterations)
    grid = gridworld_work()

    product_rate = maml["flops_per_product"] / maml["seconds_per_product"]
    iteration_rate = maml["flops_per_iteration"] / maml["seconds_cg10"]
    matmul = rates["matmul_gflops"] * 1e9
    throughput_floor = grid["lane_ticks"] * grid["ops_per_tick"] / (rates["elementwise_gops_all_cores"] * 1e9)
    per_tick_floor = (rates["loop_ns_per_iteration"] + grid["ops_per_tick"] * NS_PER_DEPENDENT_OP) * 1e-9
    latency_floor = grid["slowest_lane_ticks"] * per_tick_floor
    result = {"benchmark": "limits", **machine.describe(), "machine_rates": rates, "maml_trpo": maml,
              "gridworld_train": grid,
              "fractions": {"maml_trpo_product": product_rate / matmul, "maml_trpo_iteration": iteration_rate / matmul,
                            "gridworld_train_throughput": throughput_floor / grid["seconds"],
                            "gridworld_train_latency": latency_floor / grid["seconds"]}}
    f = result["fractions"]
    print(f"machine: {jax.device_count()} x {result['device']} devices on {result['cpu_count']} cores")
    print(f"  matmul 2048^2            {rates['matmul_gflops']:8.1f} GFLOP/s  (one device, all cores)")
    print(f"  hidden layer 40000x64x64 {rates['hidden_layer_gflops']:8.1f} GFLOP/s")
    print(f"  element-wise chain       {rates['elementwise_gops_all_cores']:8.1f} Gop/s   (both devices)")
    print(f"  one-kernel loop          {rates['loop_ns_per_iteration']:8.1f} ns per iteration")
    print("MAML-TRPO meta-iteration (nav2d, 20 x 20 x 100, CG 10, two devices)")
    print(f"  curvature product  {maml['flops_per_product'] / 1e9:6.2f} GFLOP in {maml['seconds_per_product']:.3f} s"
          f" = {product_rate / 1e9:6.1f} GFLOP/s = {f['maml_trpo_product']:.0%} of the matmul rate")
    print(f"  whole iteration    {maml['flops_per_iteration'] / 1e9:6.2f} GFLOP in {maml['seconds_cg10']:.3f} s"
          f" = {iteration_rate / 1e9:6.1f} GFLOP/s = {f['maml_trpo_iteration']:.0%} of the matmul rate")
    print("grid world, training stage (50 runs: MAML² and MAML lanes)")
    print(f"  {grid['lane_ticks']:,} agent steps x {grid['ops_per_tick']} ops; slowest lane "
          f"{grid['slowest_lane_ticks']:,} steps; measured {grid['seconds']:.2f} s")
    print(f"  throughput floor {throughput_floor:6.3f} s ({f['gridworld_train_throughput']:.1%} of the time); "
          f"latency floor {latency_floor:6.3f} s ({f['gridworld_train_latency']:.1%})")
    common.save(result, args.out)


if __name__ == "__main__":
    main()
