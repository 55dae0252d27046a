"""Seconds per arrival of ``maml2 online`` on a deep family, the trials on one device and split over all.

One arrival is, for every method: ``--iterations-per-arrival`` outer iterations of
the warm start (MAML² also classifies the pool first), the arriving task's
``--steps`` adaptation steps, and its admission to the pool, for all ``--trials``
trials at once. The run is timed arrival by arrival (the progress callback of
:func:`maml2_jax.deep_online.run`), once on one device (``--devices 1``, how every
online run went before the option) and once on all visible devices (the default; on
a CPU the script, like the CLI, makes one per core). The first arrival includes the
compilation and is reported apart; the figure is the median of the others.

The defaults are the settings of the runs in ``docs/online.md`` (6 trials, a pool of
10, 3 iterations per arrival, 20-step episodes), with fewer arrivals.

    python benchmarks/online.py --out benchmarks/results/online-cpu-2core.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

from maml2_jax import sharding

sharding.use_host_cores()  # before JAX starts: one CPU device per core, as the CLI does

import jax  # noqa: E402

import common  # noqa: E402  (beside this file)
from maml2_jax import deep_online  # noqa: E402
from maml2_jax.io import machine  # noqa: E402


def measure(config: deep_online.OnlineDeepConfig) -> dict:
    figures = {}
    for devices in sorted({1, jax.device_count()}):  # one device alone on a one-device host
        seconds = []
        started = time.perf_counter()
        summary = deep_online.run(dataclasses.replace(config, devices=devices),
                                  progress=lambda row: seconds.append(row["seconds"]))
        total = time.perf_counter() - started
        after_one = {m: entry["by_arrival_mean"][-1][1] for m, entry in summary["methods"].items()}
        figures[f"{devices}_devices"] = {"first_arrival_seconds": seconds[0],
                                         "median_arrival_seconds": statistics.median(seconds[1:]),
                                         "arrival_seconds": seconds, "run_seconds": total,
                                         "last_arrival_return_after_1": after_one}
        print(f"  {config.train.env:<26} {devices} device{'s' if devices > 1 else ' '}  first arrival "
              f"{seconds[0]:6.1f} s  median of the rest {statistics.median(seconds[1:]):7.2f} s  "
              f"whole run {total:6.1f} s", flush=True)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="nav2d-isolated")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--arrivals", type=int, default=6)
    parser.add_argument("--initial-pool", type=int, default=10)
    parser.add_argument("--iterations-per-arrival", type=int, default=3)
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--methods", default="maml2-auto,maml")
    parser.add_argument("--out", default="benchmarks/results/online.json")
    args = parser.parse_args()
    if args.arrivals < 2:
        parser.error("--arrivals must be at least 2: the first one compiles")
    default = deep_online.OnlineDeepConfig()
    config = deep_online.OnlineDeepConfig(
        train=dataclasses.replace(default.train, env=args.env, horizon=args.horizon), trials=args.trials,
        arrivals=args.arrivals, initial_pool=args.initial_pool, iterations_per_arrival=args.iterations_per_arrival,
        methods=tuple(args.methods.split(",")), checkpoint_every=0)
    print(f"maml2 online on {jax.device_count()} x {jax.devices()[0].device_kind} ({os.cpu_count()} cores): "
          f"{args.env}, {args.trials} trials x {args.arrivals} arrivals, {args.methods}")
    figures = measure(config)
    result = {"benchmark": "online", **machine.describe(), "config": dataclasses.asdict(config), **figures}
    if jax.device_count() > 1:
        one = figures["1_devices"]["median_arrival_seconds"]
        split = figures[f"{jax.device_count()}_devices"]["median_arrival_seconds"]
        result["speedup"] = one / split
        print(f"  split over {jax.device_count()} devices: {one / split:.2f}x per arrival")
    common.save(result, args.out)


if __name__ == "__main__":
    main()
