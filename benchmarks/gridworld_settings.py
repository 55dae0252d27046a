"""Which MAML² settings reproduce the published grid-world claims? A sweep.

For every seed, classifies the tasks and meta-trains the MAML baseline once, then
meta-trains MAML² under each setting ``MODE:KOUTxKIN`` (sequential or parallel outer
update, K_out outer and K_in inner iterations) from the same categories, tests all
four methods, and checks the published claims (``evaluation.published_checks``).
Everything else is the default experiment, so a setting's row for seed s is exactly
what ``maml2 gridworld --seed s --outer-update MODE --outer-iterations KOUT
--inner-iterations KIN`` reports. Prints a table and writes JSON.

    python benchmarks/gridworld_settings.py --seeds 0,1,2 \\
        --settings sequential:20x10,sequential:50x20,parallel:60x20 \\
        --out benchmarks/results/gridworld_settings.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from maml2_jax import sharding

sharding.use_host_cores()  # before JAX starts, as the CLI does

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402  (beside this file)
from maml2_jax import evaluation, gridworld_experiment, lane_maml2  # noqa: E402
from maml2_jax.core import classification  # noqa: E402
from maml2_jax.errors import ConfigError  # noqa: E402
from maml2_jax.gridworld_experiment import GridworldConfig, GridworldResult  # noqa: E402
from maml2_jax.io import machine  # noqa: E402
from maml2_jax.learners.sarsa import make_sarsa  # noqa: E402

DEFAULT_SETTINGS = ",".join([
    "sequential:200x1", "sequential:40x5", "sequential:20x10",  # the published sweep (K_out = 200 / K_in)
    "sequential:50x20", "sequential:20x50", "sequential:100x20",
    "parallel:100x10", "parallel:200x10", "parallel:60x20", "parallel:30x50", "parallel:100x30", "parallel:50x50",
])


def parse_setting(text: str) -> tuple[str, int, int]:
    """``"sequential:20x10"`` -> ``("sequential", 20, 10)``."""
    try:
        mode, sizes = text.split(":")
        outer, inner = (int(x) for x in sizes.lower().split("x"))
    except ValueError:
        raise SystemExit(f"bad setting {text!r}: expected MODE:KOUTxKIN, e.g. sequential:20x10") from None
    try:
        GridworldConfig(outer_update=mode, outer_iterations=outer, inner_iterations=inner)
    except ConfigError as error:
        raise SystemExit(f"bad setting {text!r}: {error}") from None
    return mode, outer, inner


def sweep_seed(seed: int, settings, runs: int) -> list[dict]:
    """One row per setting for ``seed``: the checks and the numbers behind them."""
    base = GridworldConfig(runs=runs, seed=seed)
    classify, _, test = gridworld_experiment.build(base)
    keys = gridworld_experiment.run_keys(seed, runs)
    features, _ = classify(keys[:, 0])
    labels = gridworld_experiment.categorize(np.asarray(features), keys[:, 1], base.categories)
    members = jnp.asarray(classification.membership(labels, base.categories))

    learner = make_sarsa(base.world, base.sarsa, log_episodes=base.test_episodes, track_visits=False)
    theta0 = jnp.broadcast_to(learner.init_params(), (runs,) + learner.init_params().shape)
    tasks = jnp.broadcast_to(jnp.asarray(base.world.task_array()), (runs, base.world.num_tasks))
    theta_maml = jax.jit(lambda t, g, k: lane_maml2.maml(learner, base.maml_iterations, t, g, k))(
        theta0, tasks, keys[:, 3]
    )

    rows = []
    for mode, outer, inner in settings:
        config = dataclasses.replace(base, outer_update=mode, outer_iterations=outer, inner_iterations=inner)
        t0 = time.perf_counter()
        train = jax.jit(lambda t, m, g, k: lane_maml2.meta_train(learner, config.schedule(), t, m, g, k))
        theta, category_params = train(theta0, members, tasks, keys[:, 2])
        steps, chosen, _ = jax.block_until_ready(test(theta, category_params, theta_maml, keys[:, 4]))
        result = GridworldResult(config, np.swapaxes(np.asarray(steps), 0, 1), labels, np.asarray(chosen),
                                 {}, {}, time.perf_counter() - t0)
        summary = evaluation.summarize(result)
        checks = evaluation.published_checks(summary)
        isolated = list(config.report_groups()[2])
        with_reset, without = result.steps[0][:, isolated], result.steps[1][:, isolated]  # [R, |{9}|, E]
        rows.append({
            "seed": seed,
            "setting": f"{mode}:{outer}x{inner}",
            "checks": checks,
            "all_hold": all(c["holds"] for c in checks.values()),
            "mean_steps": summary["mean_steps"],
            "mean_steps_after_reset": summary["mean_steps_after_reset"],
            "own_category_rate": float(np.mean(result.chosen == result.labels)),
            # Why the reset rarely matters on {9}: θ's first episode there is already short,
            # and the reset and no-reset runs then take the very same steps.
            "isolated_first_episode": float(with_reset[..., 0].mean()),
            "isolated_runs_reset_changes_nothing": float(np.all(with_reset == without, axis=(1, 2)).mean()),
            "seconds": result.seconds,
        })
        print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: dict) -> str:
    c = row["checks"]
    mark = lambda name, fmt: f"{c[name]['value']:{fmt}}{'' if c[name]['holds'] else '!'}"  # noqa: E731
    return (f"{row['setting']:>18} seed {row['seed']}  {{9}} MAML² {mark('isolated_maml2', '5.1f'):7}"
            f" MAML {mark('isolated_maml', '5.1f'):7}  after-reset ratio {mark('after_reset_ratio_0', '.2f'):5}"
            f" {mark('after_reset_ratio_1', '.2f'):5}  no-reset gap {mark('no_reset_worse_0', '+6.1f'):7}"
            f" {mark('no_reset_worse_1', '+6.1f'):7} {mark('no_reset_worse_2', '+5.1f'):6}"
            f"  own {row['own_category_rate']:.2f}  {{9}} 1st ep {row['isolated_first_episode']:5.1f}"
            f" unchanged {row['isolated_runs_reset_changes_nothing']:.2f}  {'ALL HOLD' if row['all_hold'] else ''}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated master seeds")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated MODE:KOUTxKIN")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", default="benchmarks/results/gridworld_settings.json")
    args = parser.parse_args()
    settings = [parse_setting(s) for s in args.settings.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    print("'!' marks a claim that does not hold; gaps are no-reset minus MAML² (positive: the reset helps)")
    rows = [row for seed in seeds for row in sweep_seed(seed, settings, args.runs)]
    per_setting = {}
    for row in rows:
        per_setting.setdefault(row["setting"], []).append(row["all_hold"])
    print("\nsettings where every claim holds, per seed:")
    for setting, holds in per_setting.items():
        print(f"  {setting:>18}: {sum(holds)}/{len(holds)}")
    common.save({"benchmark": "gridworld_settings", **machine.describe(), "runs": args.runs, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
