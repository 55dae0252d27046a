"""Evaluation of deep-track runs: return per adaptation step, per category, per method.

``evaluate(run_dirs)`` loads ``maml2 train`` outputs of one task family and adapts
every method on the same fresh test tasks:

* ``maml``: θ of each MAML run, K policy-gradient steps;
* ``maml2``: θ of each MAML² run, one step, reset to θ_{c*} by update tendency, then
  K − 1 more (:func:`maml2_jax.core.readaptation.adaptation_curve`); a run trained
  with ``classify_trajectories`` reads the tendency from a separate step with that
  many trajectories; ``reset_rule="carry"`` resets to θ_{c*} + (θ₁ − θ) instead
  (:func:`maml2_jax.core.readaptation.reset`);
* ``maml2_no_reset``: the same θ without the reset (the ablation);
* ``lfs``: learning from scratch, a freshly initialised policy per run seed.

Each run is a seed; per category (the family's ground truth) the summary holds the
mean over seeds of the per-seed mean return, its 95% band and the seed-to-seed
standard deviation. ``pool(summaries)`` joins evaluations of other runs on the same
tasks into the summary of one evaluation of them all.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Callable

import jax
import numpy as np
from jax.sharding import PartitionSpec

from maml2_jax import deep_training, sharding
from maml2_jax.core.readaptation import RESET_RULES, adaptation_curve, rule_note
from maml2_jax.errors import (
    ConfigError,
    check_choice,
    check_non_negative_int,
    check_path,
    check_positive_int,
    check_seed,
)
from maml2_jax.evaluation import band

METHODS = ("maml2", "maml2_no_reset", "maml", "lfs")
LFS_SEED_OFFSET = 7_919  # LFS initialisations differ from every run's own θ_init


# Files only a training run writes: a directory holding one but no config.json is a
# damaged run, not something to pass over.
RUN_FILES = ("params.msgpack", "category_params.msgpack", "metrics.jsonl", "categories.json")


def find_runs(path: str, out: str | None = None) -> list[str]:
    """``path`` itself if it is a run directory, else every run directory below it (sorted;
    ``train --seeds S`` puts one per seed in ``OUT/seed_<s>``), through symbolic links.

    ConfigError for a path that is empty or not a directory, a directory below it that
    cannot be read, one holding a run's files without its ``config.json``, no run at
    all, or an output directory ``out`` (when given) equal to or inside a run: an
    evaluation never writes into what it reads.
    """
    check_path("run directory", path)
    if not os.path.isdir(path):
        raise ConfigError(f"run directory {path} is not a directory")

    def unreadable(error: OSError):
        raise ConfigError(f"run directory {error.filename} cannot be read ({error.strerror})")

    runs, seen = [], set()
    # Symbolic links are followed (a run linked in beside another); each real directory once, so a loop ends.
    for root, dirs, names in os.walk(path, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if "config.json" in names:
            if not _is_evaluation(root, names):
                runs.append(root)
                dirs[:] = []  # a run's own subdirectories (its checkpoints) hold no runs
        elif "run_config.json" not in names:
            found = [name for name in RUN_FILES if name in names]
            if found:
                raise ConfigError(f"{os.path.join(root, 'config.json')} is missing beside {found[0]}: a damaged run "
                                  "(restore its config.json or remove the directory)")
        dirs.sort()
    if not runs:
        raise ConfigError(f"no training runs (directories with config.json) in {path}")
    if out is not None:
        check_out(out, sorted(runs))
    return sorted(runs)


def _is_evaluation(root: str, names) -> bool:
    """Whether ``root`` is an earlier ``maml2 evaluate`` output (its config.json lists runs)."""
    if "summary.json" not in names:
        return False
    try:
        with open(os.path.join(root, "config.json"), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False  # a damaged config.json: load_run names it
    return isinstance(data, dict) and "runs" in data and "env" not in data


def check_out(out: str, run_dirs: list[str]) -> None:
    """ConfigError when ``out`` is empty, or is (or lies inside) one of ``run_dirs``."""
    check_path("--out", out)
    target = os.path.realpath(out)
    for run in run_dirs:
        real = os.path.realpath(run)
        if target == real or target.startswith(real.rstrip(os.sep) + os.sep):
            raise ConfigError(f"--out: {out} is inside the run directory {run}; write the evaluation elsewhere")


def _curve_function(parts, steps: int, reset_rule: str = "category", mesh=None):
    """``(theta, category_params | None, tasks, key, reset, active=None) -> (returns [T, steps+1], c* [T])``,
    compiled once per ``reset``; ``active`` ``[S]`` bool: the category slots the reset may pick (default all).

    Test task t adapts with key ``split(key, T)[t]`` whatever the devices. With a
    ``mesh`` the T tasks are split over its devices (``shard_map``: each device adapts
    its own, no communication), padded to a multiple of the device count by repeating
    the last task, whose rows are dropped. Without one, all T run as one batch on the
    default device. The per-task results of the two differ in float32 rounding only
    (XLA compiles a batch of T/D tasks differently from one of T), which brax's
    contact dynamics then amplify over an episode.
    """
    learner, tendency = parts.one_step_learners()

    def curves(theta, category_params, tasks, keys, active, reset):
        def one(task, k):
            return adaptation_curve(learner, steps, theta, task, k, category_params, reset, active, tendency,
                                    reset_rule)

        return jax.vmap(one)(tasks, keys)

    if mesh is None:
        compiled = jax.jit(curves, static_argnames="reset")
    else:
        split, whole = PartitionSpec(sharding.TASK_AXIS), PartitionSpec()

        def spread(theta, category_params, tasks, keys, active, reset):
            per_device = functools.partial(curves, reset=reset)
            return jax.shard_map(per_device, mesh=mesh, in_specs=(whole, whole, split, split, whole),
                                 out_specs=split, check_vma=False)(theta, category_params, tasks, keys, active)

        compiled = jax.jit(spread, static_argnames="reset")

    def run(theta, category_params, tasks, key, reset, active=None):
        count = tasks.shape[0]
        keys = jax.random.split(key, count)
        if mesh is not None:
            tasks, keys = sharding.pad_runs((tasks, keys), mesh.devices.size)
        returns, chosen = compiled(theta, category_params, tasks, keys, active, reset=reset)
        return returns[:count], chosen[:count]

    return run


def _category_meaning(path: str, slots: int) -> tuple[list[int], np.ndarray]:
    """From the last classification: per category slot, the ground-truth category most of its
    pool tasks have (−1 for an idle slot), and ``[S]`` bool, the slots holding a category."""
    with open(os.path.join(path, "categories.json")) as f:
        record = json.load(f)
    labels = np.asarray(record["classifications"][-1]["labels"])
    truth = np.asarray(record["pool_categories"])
    active = np.asarray([np.any(labels == c) for c in range(slots)])
    return [int(np.bincount(truth[labels == c]).argmax()) if on else -1 for c, on in enumerate(active)], active


def load_runs(run_dirs: list[str], num_tasks: int = 40, steps: int = 3, seed: int = 0,
              reset_rule: str = "category", num_trajectories: int | None = None, devices: int = 0) -> list[tuple]:
    """Checks an evaluation's settings and loads its runs, before anything is compiled.

    ``num_trajectories``: trajectories per test task in each adaptation step, for every
    method and run (None: each run's own ``num_trajectories``). The classifying batch a
    run was trained with (``classify_trajectories``) still reads the update tendency.
    ``devices``: the devices :func:`evaluate` will split the test tasks over (0: all
    visible), whose memory the evaluation must fit in.

    ConfigError for a bad count, seed, reset rule or device count, a damaged run
    (:func:`maml2_jax.deep_training.load_run` names the file), runs that cannot be
    compared (other task family, horizon or backend) or an evaluation that cannot fit
    in memory. Returns, per run,
    ``(config, parts, theta, category_params | None)``.
    """
    check_positive_int("number of test tasks", num_tasks)
    check_positive_int("adaptation steps", steps)
    check_seed("seed", seed, count=2)  # the tasks' key is key(seed), the rollouts' key(seed + 1)
    check_choice("reset rule", reset_rule, RESET_RULES)
    if num_trajectories is not None:
        check_positive_int("trajectories per adaptation step", num_trajectories)
    check_non_negative_int("devices", devices)
    if not run_dirs:
        raise ConfigError("no runs to evaluate")
    loaded = [deep_training.load_run(path, num_trajectories) for path in run_dirs]
    envs = {config.env for config, *_ in loaded}
    if len(envs) != 1:
        raise ConfigError(f"runs of different task families cannot be compared: {sorted(envs)}")
    for name in ("horizon", "backend"):  # the same family with other episodes is another benchmark
        first = getattr(loaded[0][0], name)
        for path, (config, *_) in zip(run_dirs, loaded):
            if getattr(config, name) != first:
                raise ConfigError(f"runs with different {name}s cannot be compared: {first!r} in {run_dirs[0]}, "
                                  f"{getattr(config, name)!r} in {path}")
    chosen = sharding.first_devices(devices)
    for path, (config, *_) in zip(run_dirs, loaded):
        deep_training.check_memory(config, chosen, what=f"evaluating {path}", tasks=("--tasks", num_tasks),
                                   steps=("--steps", steps), seeds=1)
    return loaded


def evaluate(run_dirs: list[str], num_tasks: int = 40, steps: int = 3, seed: int = 0,
             progress: Callable[[str], None] | None = None, loaded: list[tuple] | None = None,
             reset_rule: str = "category", num_trajectories: int | None = None, devices: int = 0) -> dict:
    """Adapts every method of every run on ``num_tasks`` test tasks for ``steps`` steps.

    ``reset_rule``: MAML²'s reset, "category" (the paper's) or "carry" (see
    :mod:`maml2_jax.core.readaptation`); the other methods do not reset.
    ``num_trajectories``: the test-time batch per adaptation step (see :func:`load_runs`).
    ``devices``: the test tasks are split over the first ``devices`` devices (0: all
    visible; each adapts its own tasks). The device count is part of the computation:
    with 1 the tasks run as one batch, as every evaluation before this option did, and
    another count gives the same draws with other float32 rounding (see
    :func:`_curve_function`).

    Returns the JSON-ready summary: ``env``; ``steps``; ``reset_rule``; ``devices``, the count used;
    ``num_trajectories`` {run dir: trajectories per adaptation step}; ``categories`` {category:
    number of test tasks}; ``runs`` {method: [run dirs]}; ``mean_return``,
    ``ci95`` and ``seed_std`` {method: {category: [steps + 1]}} (entry k: the return
    of the policy in use after k adaptation steps); ``per_seed`` {method: {category:
    [[steps + 1] per seed]}}; ``chosen`` {category: {category: count}}, how often
    MAML²'s update tendency reset a test task of the first category to a learned
    category whose pool tasks are mostly of the second (summed over runs; the
    diagonal is a right pick); ``chosen_per_run`` {MAML² run dir: the same counts for
    that run alone}; ``tendency_accuracy`` {category: share of right picks}.
    ``progress`` is called with each run's directory once its curves are computed.
    ``loaded``: what :func:`load_runs` returned for the same arguments (a caller that
    shows progress loads first, so a bad run is refused before any output); loaded
    here when None.
    """
    if loaded is None:
        loaded = load_runs(run_dirs, num_tasks, steps, seed, reset_rule, num_trajectories, devices)
    used = sharding.first_devices(devices)
    mesh = sharding.task_mesh(used) if len(used) > 1 else None
    envs = {config.env for config, *_ in loaded}
    parts = loaded[0][1]
    tasks, truth = parts.family.sample_tasks(jax.random.key(seed), num_tasks)
    truth = np.asarray(truth)
    key = jax.random.key(seed + 1)
    per_task = {m: [] for m in METHODS}
    runs = {m: [] for m in METHODS}
    chosen, chosen_per_run = {}, {}
    lfs_seeds = set()
    compiled = {}  # one jitted function per learner setting, shared by the runs that use it
    for path, (config, run_parts, theta, category_params) in zip(run_dirs, loaded):
        setting = (config.policy, config.inner, config.classifier_inner)
        if setting not in compiled:
            compiled[setting] = _curve_function(run_parts, steps, reset_rule, mesh)
        curves = compiled[setting]
        if config.algo == "maml2":
            # An automatic N may leave slots idle: the reset never picks one.
            meaning, active = _category_meaning(path, config.meta.slots)
            curve, picked = jax.device_get(curves(theta, category_params, tasks, key, reset=True, active=active))
            per_task["maml2"].append(curve)
            runs["maml2"].append(path)
            own = chosen_per_run[path] = {}
            for t, c in zip(truth, picked):
                _count(own, str(t), str(meaning[int(c)]))
            _add_counts(chosen, own)
            per_task["maml2_no_reset"].append(jax.device_get(curves(theta, None, tasks, key, reset=False))[0])
            runs["maml2_no_reset"].append(path)
        else:
            per_task["maml"].append(jax.device_get(curves(theta, None, tasks, key, reset=False))[0])
            runs["maml"].append(path)
        if config.seed not in lfs_seeds:
            lfs_seeds.add(config.seed)
            fresh = run_parts.policy.init(jax.random.key(config.seed + LFS_SEED_OFFSET))
            per_task["lfs"].append(jax.device_get(curves(fresh, None, tasks, key, reset=False))[0])
            runs["lfs"].append(f"seed {config.seed}")
        if progress is not None:
            progress(path)
    categories = sorted({int(c) for c in truth})
    summary = {"env": envs.pop(), "steps": steps, "seed": seed, "reset_rule": reset_rule, "devices": len(used),
               "num_trajectories": {path: config.inner.num_trajectories
                                    for path, (config, *_) in zip(run_dirs, loaded)},
               "categories": {str(c): int(np.sum(truth == c)) for c in categories},
               "runs": {m: r for m, r in runs.items() if r},
               "per_seed": {}, "chosen": chosen, "chosen_per_run": chosen_per_run}
    for method, curves in per_task.items():
        if curves:
            curves = np.asarray(curves, np.float64)  # [seeds, T, steps + 1]
            summary["per_seed"][method] = {str(c): curves[:, truth == c].mean(axis=1).tolist() for c in categories}
    return _statistics(summary)


def _count(counts: dict, truth: str, picked: str, n: int = 1) -> None:
    """Adds ``n`` picks of ``picked`` for test tasks of category ``truth`` to ``counts``."""
    into = counts.setdefault(truth, {})
    into[picked] = into.get(picked, 0) + n


def _add_counts(total: dict, counts: dict) -> None:
    """Adds one ``chosen`` table into another."""
    for truth, by_pick in counts.items():
        for picked, n in by_pick.items():
            _count(total, truth, picked, n)


def _statistics(summary: dict) -> dict:
    """Fills ``summary``'s ``mean_return``, ``ci95``, ``seed_std`` and ``tendency_accuracy``
    from its ``per_seed`` and ``chosen``: what :func:`evaluate` and :func:`pool` share,
    so a pooled summary is computed exactly as one evaluation of all its runs."""
    summary["tendency_accuracy"] = {t: counts.get(t, 0) / sum(counts.values())
                                    for t, counts in summary["chosen"].items()}
    for name in ("mean_return", "ci95", "seed_std"):
        summary[name] = {method: {} for method in summary["per_seed"]}
    for method, by_category in summary["per_seed"].items():
        for c, rows in by_category.items():
            per_seed = np.asarray(rows, np.float64)  # [seeds, steps + 1]
            mean, half = band(per_seed)
            std = per_seed.std(axis=0, ddof=1) if per_seed.shape[0] > 1 else np.zeros_like(mean)
            summary["mean_return"][method][c] = mean.tolist()
            summary["ci95"][method][c] = half.tolist()
            summary["seed_std"][method][c] = std.tolist()
    return summary


# What two evaluations must share to be pooled (the same family, test tasks, rollout keys
# and protocol), with the words a refusal uses for each.
POOL_KEYS = {"env": "task families", "steps": "adaptation steps", "seed": "seeds", "reset_rule": "reset rules",
             "categories": "test tasks per category"}


def pool(summaries: list[dict]) -> dict:
    """One summary from evaluations of disjoint runs on the same test tasks, equal to
    :func:`evaluate` of all their runs in the same order.

    An evaluation's test tasks are drawn from ``key(seed)`` and its rollouts from
    ``key(seed + 1)`` alone, and each run is adapted on its own, so the per-seed curves of
    runs evaluated apart are those of one joint evaluation on as many devices. Seeds
    trained later can be added to an earlier evaluation without adapting its runs again.

    Args:
      summaries: :func:`evaluate` outputs (``summary.json``), at least one.

    Returns:
      the summary of all runs: per-seed rows concatenated in the given order, ``chosen``
      counts added, means, 95% bands and seed-to-seed spreads recomputed. Learning from
      scratch is one fresh policy per seed: a seed in several summaries counts once
      (its first row). ``chosen_per_run`` holds the runs whose evaluation recorded it
      (an older ``maml2 evaluate`` did not).

    Raises:
      ConfigError: summaries that differ in task family, adaptation steps, seed, reset
        rule, test tasks per category, trajectories per step or devices (1 where an
        evaluation does not record them: it predates the option), or a run in more
        than one of them.
    """
    if not summaries:
        raise ConfigError("no evaluations to pool")
    for summary in summaries:
        missing = [k for k in (*POOL_KEYS, "num_trajectories", "runs", "per_seed", "chosen")
                   if not isinstance(summary, dict) or k not in summary]
        if missing:
            raise ConfigError(f"an evaluation without {missing[0]!r} cannot be pooled (an older maml2 evaluate "
                              "wrote it?); evaluate its runs again")
    first = summaries[0]
    for other in summaries[1:]:
        for name, words in POOL_KEYS.items():
            if other.get(name) != first.get(name):
                raise ConfigError(f"evaluations with different {words} cannot be pooled: {first.get(name)!r} "
                                  f"and {other.get(name)!r}")
        batches = [sorted(set(s["num_trajectories"].values())) for s in (first, other)]
        if batches[0] != batches[1]:
            raise ConfigError(f"evaluations with different trajectories per adaptation step cannot be pooled: "
                              f"{batches[0]} and {batches[1]}")
        if _devices(other) != _devices(first):
            raise ConfigError(f"evaluations on different numbers of devices cannot be pooled: {_devices(first)} and "
                              f"{_devices(other)} (other float32 rounding); evaluate one of them again with "
                              f"--devices {_devices(other)} or {_devices(first)}")
    pooled = {name: first[name] for name in POOL_KEYS}
    pooled["devices"] = _devices(first)
    pooled.update(num_trajectories={}, runs={}, per_seed={}, chosen={}, chosen_per_run={})
    seen = set()  # every run's real path
    for summary in summaries:
        for path in summary["num_trajectories"]:
            if os.path.realpath(path) in seen:
                raise ConfigError(f"the run {path} is in more than one evaluation; pool each run once")
            seen.add(os.path.realpath(path))
        pooled["num_trajectories"].update(summary["num_trajectories"])
        for method, names in summary["runs"].items():
            rows = summary["per_seed"][method]
            for i, name in enumerate(names):
                if method == "lfs" and name in pooled["runs"].get("lfs", []):
                    continue  # the same seed's fresh policy on the same tasks: counted once, as evaluate does
                pooled["runs"].setdefault(method, []).append(name)
                by_category = pooled["per_seed"].setdefault(method, {})
                for c in rows:
                    by_category.setdefault(c, []).append(rows[c][i])
        _add_counts(pooled["chosen"], summary["chosen"])
        pooled["chosen_per_run"].update(summary.get("chosen_per_run", {}))
    return _statistics(pooled)


def _devices(summary: dict) -> int:
    """The devices an evaluation split its test tasks over (1 before ``devices`` was recorded)."""
    return summary.get("devices", 1)


def table(summary: dict) -> str:
    """Plain text: mean return per method and category, after each adaptation step."""
    lines = [f"mean return per episode on {summary['env']} (higher is better), after 0..{summary['steps']} "
             "adaptation steps; ± seed-to-seed std"]
    note = rule_note(summary.get("reset_rule"))
    if note:
        lines.append(note)
    batches = sorted(set(summary.get("num_trajectories", {}).values()))
    if batches:
        lines.append(f"each adaptation step samples {' or '.join(map(str, batches))} trajectories per test task")
    for c, count in summary["categories"].items():
        lines.append(f"category {c} ({count} test tasks)")
        for method, by_category in summary["mean_return"].items():
            std = summary["seed_std"][method][c]
            cells = "".join(f"{m:9.1f} ±{s:5.1f}" for m, s in zip(by_category[c], std))
            lines.append(f"  {method:<16}{cells}")
    if summary.get("chosen_per_run"):
        lines.append("MAML²'s update tendency, right picks per run (per category)")
        for path, counts in summary["chosen_per_run"].items():
            right = {t: by_pick.get(t, 0) for t, by_pick in counts.items()}
            total = {t: sum(by_pick.values()) for t, by_pick in counts.items()}
            per_category = ", ".join(f"{t}: {right[t]}/{total[t]}" for t in sorted(counts, key=int))
            lines.append(f"  {path}: {sum(right.values())} of {sum(total.values())} ({per_category})")
    return "\n".join(lines)
