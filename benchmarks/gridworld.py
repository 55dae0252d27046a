"""Times the full default grid-world experiment (DESIGN §1.1), compile time apart.

Compiles each stage once (ahead of time), then runs the whole experiment
``--repeats`` times and reports medians: seconds in total and per run, and agent
steps per second (action choices of all lanes: classification, MAML² and MAML
meta-training, tests). Prints a table and writes JSON.

    python benchmarks/gridworld.py                # the published 50-run default
    python benchmarks/gridworld.py --runs 10 --out bench.json

``--numpy-runs K`` (default 2) also times K runs of the plain NumPy/Python
implementation in ``benchmarks/numpy_reference.py`` on the same machine, in the
same invocation, and reports the speed-up for the whole experiment
(NumPy seconds per run × runs, against ours with and without compilation).
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
from maml2_jax import gridworld_experiment  # noqa: E402
from maml2_jax.core import classification  # noqa: E402
from maml2_jax.gridworld_experiment import GridworldConfig  # noqa: E402
from maml2_jax.io import machine  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--maml-iterations", type=int, default=GridworldConfig.maml_iterations)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions after compiling (median)")
    parser.add_argument("--numpy-runs", type=int, default=2, help="runs of the NumPy reference to time (0: skip)")
    parser.add_argument("--out", default="benchmarks/gridworld.json")
    args = parser.parse_args()

    config = GridworldConfig(runs=args.runs, maml_iterations=args.maml_iterations)
    wall_start = time.perf_counter()
    mesh = sharding.run_mesh()
    classify, train, test = gridworld_experiment.build(config, mesh if mesh.size > 1 else None)
    keys = sharding.pad_runs(gridworld_experiment.run_keys(config.seed, config.runs), mesh.size)

    def kmeans(features):
        labels = gridworld_experiment.categorize(features, keys[:, 1], config.categories)
        return jnp.asarray(classification.membership(labels, config.categories))

    # Compile every stage ahead of time, on the real shapes.
    compile_seconds = {}
    t0 = time.perf_counter()
    classify_c = classify.lower(keys[:, 0]).compile()
    compile_seconds["classify"] = time.perf_counter() - t0
    features, _ = jax.block_until_ready(classify_c(keys[:, 0]))
    members = kmeans(features)
    t0 = time.perf_counter()
    train_c = train.lower(members, keys[:, 2], keys[:, 3]).compile()
    compile_seconds["train"] = time.perf_counter() - t0
    trained = jax.block_until_ready(train_c(members, keys[:, 2], keys[:, 3]))
    t0 = time.perf_counter()
    active = members.any(axis=-1)
    test_c = test.lower(*trained[:3], keys[:, 4], active).compile()
    compile_seconds["test"] = time.perf_counter() - t0
    jax.block_until_ready(test_c(*trained[:3], keys[:, 4], active))
    first_call_seconds = time.perf_counter() - wall_start

    samples = []
    for _ in range(args.repeats):
        phase, steps = {}, {}
        t0 = time.perf_counter()
        features, ticks = jax.block_until_ready(classify_c(keys[:, 0]))
        phase["classify"], steps["classify"] = time.perf_counter() - t0, ticks
        t0 = time.perf_counter()
        members = kmeans(features)
        phase["k-means"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        *trained, ticks = jax.block_until_ready(train_c(members, keys[:, 2], keys[:, 3]))
        phase["train"], steps["train"] = time.perf_counter() - t0, ticks
        t0 = time.perf_counter()
        *_, ticks = jax.block_until_ready(test_c(*trained, keys[:, 4], members.any(axis=-1)))
        phase["test"], steps["test"] = time.perf_counter() - t0, ticks
        samples.append((phase, {k: int(np.asarray(v, np.int64)[: config.runs].sum()) for k, v in steps.items()}))

    seconds = [sum(p.values()) for p, _ in samples]
    total_steps = sum(samples[0][1].values())  # the same every repeat: same seed
    median = statistics.median(seconds)
    result = {
        "benchmark": "gridworld",
        **machine.describe(),
        "runs": config.runs,
        "maml_iterations": config.maml_iterations,
        "outer_iterations": config.outer_iterations,
        "inner_iterations": config.inner_iterations,
        "repeats": args.repeats,
        "compile_seconds": compile_seconds,
        "first_call_seconds": first_call_seconds,
        "median_seconds": median,
        "median_seconds_per_run": median / config.runs,
        "median_phase_seconds": {k: statistics.median(p[k] for p, _ in samples) for k in samples[0][0]},
        "agent_steps": samples[0][1],
        "agent_steps_per_second": total_steps / median,
        "all_seconds": seconds,
    }
    print(f"grid world, {config.runs} runs, MAML {config.maml_iterations} it., "
          f"on {mesh.size} {result['device']} device(s)")
    print(f"  compile            {sum(compile_seconds.values()):8.2f} s  {compile_seconds}")
    print(f"  first call (all)   {first_call_seconds:8.2f} s  (compile + one full experiment)")
    print(f"  median experiment  {median:8.2f} s  ({median / config.runs:.3f} s per run)")
    for k, v in result["median_phase_seconds"].items():
        print(f"    {k:<10} {v:8.2f} s")
    print(f"  agent steps        {total_steps:,}  ->  {result['agent_steps_per_second']:,.0f} steps/s")
    if args.numpy_runs > 0:
        import numpy_reference  # beside this file, on the path of a script

        reference = [numpy_reference.one_run(config, seed) for seed in range(args.numpy_runs)]
        per_run = statistics.median(r["total"] for r in reference)
        whole = per_run * config.runs
        result["numpy_reference"] = {
            "runs_timed": args.numpy_runs,
            "median_seconds_per_run": per_run,
            "median_stage_seconds": {k: statistics.median(r[k] for r in reference) for k in reference[0]},
            "extrapolated_experiment_seconds": whole,
            "speedup_with_compile": whole / first_call_seconds,
            "speedup_without_compile": whole / median,
        }
        print(f"  NumPy reference    {per_run:8.2f} s per run  ->  {whole:,.0f} s for {config.runs} runs")
        print(f"    stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in result['numpy_reference']['median_stage_seconds'].items()))
        print(f"  speed-up           {whole / first_call_seconds:6.1f}x with compilation, "
              f"{whole / median:6.1f}x without")
    common.save(result, args.out)


if __name__ == "__main__":
    main()
