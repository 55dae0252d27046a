"""Summaries of adaptation results: means, per-episode curves and 95% bands."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from maml2_jax.core.readaptation import rule_note
from maml2_jax.gridworld_experiment import METHODS, GridworldResult


def band(per_run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over runs and the half-width of its normal 95% interval.

    Args:
      per_run: ``[R, ...]`` one value per run.

    Returns:
      ``(mean [...], half_width [...])``; the half-width is 0 for a single run.
    """
    mean = per_run.mean(axis=0)
    runs = per_run.shape[0]
    if runs < 2:
        return mean, np.zeros_like(mean)
    return mean, 1.96 * per_run.std(axis=0, ddof=1) / np.sqrt(runs)


def summarize(result: GridworldResult) -> dict:
    """The JSON-ready summary of a grid-world experiment.

    Keys: ``groups`` {group: [task ids]}; ``mean_steps`` {method: {group: mean over
    the test episodes and all runs}}; ``mean_steps_after_reset`` (the same over the
    episodes after ``reset_after``); ``curves`` and ``curves_ci95`` {method: {group:
    [E]}}; ``per_task`` {method: {task: [E]}}; ``categories`` [R][T] k-means labels;
    ``num_categories`` [R] each run's N (chosen per run with ``categories="auto"``);
    ``readapt_category`` [R][T] the category MAML² reset to; ``config``;
    ``phase_seconds``; ``seconds``.
    """
    config = result.config
    groups = {str(g): list(tasks) for g, tasks in enumerate(config.report_groups())}
    summary = {
        "groups": groups,
        "mean_steps": {},
        "mean_steps_after_reset": {},
        "curves": {},
        "curves_ci95": {},
        "per_task": {},
    }
    for m, method in enumerate(METHODS):
        steps = result.steps[m].astype(np.float64)  # [R, T, E]
        for key in ("mean_steps", "mean_steps_after_reset", "curves", "curves_ci95", "per_task"):
            summary[key][method] = {}
        for g, tasks in groups.items():
            per_run = steps[:, tasks].mean(axis=1)  # [R, E]
            mean, half = band(per_run)
            summary["mean_steps"][method][g] = float(per_run.mean())
            summary["mean_steps_after_reset"][method][g] = float(per_run[:, config.reset_after:].mean())
            summary["curves"][method][g] = mean.tolist()
            summary["curves_ci95"][method][g] = half.tolist()
        for t in range(steps.shape[1]):
            summary["per_task"][method][str(t)] = steps[:, t].mean(axis=0).tolist()
    summary["categories"] = result.labels.tolist()
    summary["num_categories"] = result.categories.tolist()
    summary["readapt_category"] = result.chosen.tolist()
    summary["config"] = dataclasses.asdict(config)  # tuples serialise as JSON lists
    summary["phase_seconds"] = dict(result.phase_seconds)
    summary["seconds"] = result.seconds
    return summary


def table(summary: dict) -> str:
    """A plain-text table: mean steps per method and group (lower is better)."""
    groups = summary["groups"]
    names = ["{" + ",".join(str(t) for t in tasks) + "}" if len(tasks) < 4 else f"{{{tasks[0]}..{tasks[-1]}}}"
             for tasks in groups.values()]
    width = max(12, *(len(n) + 2 for n in names))
    lines = ["mean steps over the test episodes (lower is better)",
             f"{'method':<16}" + "".join(f"{n:>{width}}" for n in names)]
    for method, by_group in summary["mean_steps"].items():
        lines.append(f"{method:<16}" + "".join(f"{by_group[g]:>{width}.1f}" for g in groups))
    note = rule_note(summary.get("config", {}).get("reset_rule"))
    if note:
        lines.append(note)
    return "\n".join(lines)


def chosen_categories(summary: dict) -> str:
    """One line: how often each N was chosen, e.g. ``N chosen in 50 runs: 2 in 46, 1 in 4``."""
    counts = collections.Counter(summary["num_categories"])
    parts = ", ".join(f"{n} in {count}" for n, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return f"N chosen in {sum(counts.values())} runs: {parts}"


def published_checks(summary: dict) -> dict:
    """The published experiment's claims (issue 2's "Faithful"), checked on a summary.

    For the published reporting groups ``"0"`` = {0,1}, ``"1"`` = {2..8} and
    ``"2"`` = {9} (the isolated task). Returns ``{claim: {"value": ..., "holds": bool}}``:

    - ``isolated_maml2``: MAML²'s mean steps on {9} ≤ 40;
    - ``isolated_maml``: MAML's on {9} ≥ 300 (negative adaptation);
    - ``isolated_lfs_between``: MAML² < LFS < MAML on {9};
    - ``after_reset_ratio_<g>``: MAML²'s mean over the episodes after the reset
      ≤ 1.5 × MAML's, for the groups ``"0"`` and ``"1"``;
    - ``no_reset_worse_<g>``: no-reset's mean steps > MAML²'s, for every group.
    """
    if sorted(summary["groups"]) != ["0", "1", "2"]:
        raise ValueError(f"the published checks need the three published groups, got {sorted(summary['groups'])}")
    mean, after = summary["mean_steps"], summary["mean_steps_after_reset"]
    checks = {
        "isolated_maml2": {"value": mean["maml2"]["2"], "holds": mean["maml2"]["2"] <= 40},
        "isolated_maml": {"value": mean["maml"]["2"], "holds": mean["maml"]["2"] >= 300},
        "isolated_lfs_between": {
            "value": mean["lfs"]["2"],
            "holds": mean["maml2"]["2"] < mean["lfs"]["2"] < mean["maml"]["2"],
        },
    }
    for g in ("0", "1"):
        ratio = after["maml2"][g] / after["maml"][g]
        checks[f"after_reset_ratio_{g}"] = {"value": ratio, "holds": ratio <= 1.5}
    for g in ("0", "1", "2"):
        gap = mean["maml2_no_reset"][g] - mean["maml2"][g]
        checks[f"no_reset_worse_{g}"] = {"value": gap, "holds": gap > 0}
    return checks
