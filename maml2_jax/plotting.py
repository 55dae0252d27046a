"""Figures of adaptation curves, in the manner of the published MAML² figure.

Both figures have one panel per group of tasks, one line per method with its 95%
band, and one legend for the whole figure. Each method keeps one style everywhere:
its own colour, marker and dash pattern, drawn so that two methods whose curves
coincide both stay visible (MAML² is a wide solid line with large markers, the
others narrower lines drawn over it). Panels of isolated tasks are shaded and say
so in their title. Impure only in that they write an image file.

Figures are made without pyplot (a bare :class:`~matplotlib.figure.Figure`), so
they need no display, and importing this module leaves the caller's matplotlib
backend alone (a notebook keeps its inline figures).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

LABELS = {"maml2": "MAML²", "maml2_no_reset": "MAML² (no reset)", "maml": "MAML", "lfs": "learning from scratch",
          "maml2-N2": "MAML² (N = 2)", "maml2-N3": "MAML² (N = 3)", "maml2-N4": "MAML² (N = 4)",
          "maml2-auto": "MAML² (automatic N)"}

# Widest first, lowest in the stack: a narrower line drawn over a wider one leaves
# the wider one showing on both sides where the two coincide.
STYLES = {
    "maml2": {"color": "#1f77b4", "marker": "o", "linestyle": "-", "linewidth": 3.2, "markersize": 8, "zorder": 3},
    "maml2_no_reset": {"color": "#ff7f0e", "marker": "s", "linestyle": (0, (5, 2)), "linewidth": 1.5,
                       "markersize": 4.5, "zorder": 4},
    "maml": {"color": "#2ca02c", "marker": "^", "linestyle": (0, (6, 2, 1, 2)), "linewidth": 1.8, "markersize": 6,
             "zorder": 5},
    "lfs": {"color": "#d62728", "marker": "D", "linestyle": (0, (1, 1.5)), "linewidth": 1.8, "markersize": 4.5,
            "zorder": 2},
}
ISOLATED_SHADE = "#fff8db"


def _style(method: str, index: int) -> dict:
    """The drawing style of ``method`` (a method without one gets the next free colour)."""
    return STYLES.get(method, {"color": f"C{(index + 4) % 10}", "marker": "v", "linestyle": "-", "linewidth": 1.5,
                               "markersize": 5, "zorder": 6})


def _panels(titles: dict, curves: dict, bands: dict, path: str, xlabel: str, ylabel: str, first_x: int,
            log_scale: bool, isolated: set = frozenset(), reset_x: float | None = None,
            ylim_from: tuple | None = None) -> None:
    """A panel per group ``g`` (titled ``titles[g]``, shaded if ``g`` is in ``isolated``):
    a line per method with its band, one legend below the panels.

    ``reset_x``: where a dotted vertical line marks MAML²'s reset (None: no line).
    ``ylim_from``: the methods whose curves and bands set the (shared) y-limits; the
    others are drawn without their band and clipped to them, and a note in each
    panel gives the range of a method that leaves the axis.
    """
    fig = Figure(figsize=(4.3 * len(titles), 3.9), layout="constrained")
    axes = fig.subplots(1, len(titles), squeeze=False, sharey=ylim_from is not None)
    handles = {}
    if "maml2" not in curves:
        reset_x = None  # no method resets
    for ax, (g, title) in zip(axes[0], titles.items()):
        for index, (method, by_group) in enumerate(curves.items()):
            style = _style(method, index)
            mean = np.asarray(by_group[g], np.float64)
            half = np.asarray(bands[method][g], np.float64)
            x = np.arange(first_x, first_x + mean.size)
            low = mean - half
            if log_scale:
                low = np.maximum(low, 1.0)  # an episode takes at least one step
            if ylim_from is None or method in ylim_from:
                ax.fill_between(x, low, mean + half, color=style["color"], alpha=0.15, linewidth=0,
                                zorder=style["zorder"] - 0.5)
            (line,) = ax.plot(x, mean, label=LABELS.get(method, method), **style)
            handles.setdefault(method, line)
        if g in isolated:
            ax.set_facecolor(ISOLATED_SHADE)
            ax.set_title(title, fontweight="bold")
        else:
            ax.set_title(title)
        if reset_x is not None:
            ax.axvline(reset_x, color="0.45", linestyle=":", linewidth=1, zorder=1)
            ax.annotate("MAML² resets", (reset_x, 1), xycoords=("data", "axes fraction"), xytext=(3, -3),
                        textcoords="offset points", ha="left", va="top", fontsize=7, color="0.35")
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # episodes and steps are counts
        if ax is axes[0][0]:
            ax.set_ylabel(ylabel)
        if log_scale:
            ax.set_yscale("log")
            # Limits from the curves: a band reaching far below the lowest curve (a
            # skewed spread over runs) runs off the axis instead of stretching it.
            means = [np.asarray(by_group[g], np.float64) for by_group in curves.values()]
            tops = [m + np.asarray(bands[method][g], np.float64) for method, m in zip(curves, means)]
            ax.set_ylim(max(1.0, min(m.min() for m in means) / 2), max(t.max() for t in tops) * 1.3)
        ax.grid(alpha=0.3)
    if ylim_from is not None:
        _clip_to(axes[0], titles, curves, bands, ylim_from)
    fig.legend(list(handles.values()), [h.get_label() for h in handles.values()], loc="outside lower center",
               ncols=len(handles), frameon=False, handlelength=3.5)
    fig.savefig(path, dpi=120)


def _clip_to(axes, titles: dict, curves: dict, bands: dict, methods: tuple) -> None:
    """Sets the shared y-limits from ``methods``' curves and bands; notes each other
    method whose curve leaves them, with its range, in the panel."""
    values = [np.asarray(curves[m][g], np.float64) + sign * np.asarray(bands[m][g], np.float64)
              for m in methods if m in curves for g in titles for sign in (-1, 1)]
    if not values:
        return
    low, high = float(np.min(values)), float(np.max(values))
    pad = 0.08 * (high - low or 1.0)
    low, high = low - pad, high + pad
    axes[0].set_ylim(low, high)
    for ax, g in zip(axes, titles):
        notes = []
        for m in curves:
            if m in methods:
                continue
            mean = np.asarray(curves[m][g], np.float64)
            if mean.min() < low or mean.max() > high:
                where = "below" if mean.max() < low else "above" if mean.min() > high else "partly off"
                notes.append(f"{LABELS.get(m, m)}, {where} the axis:\n"
                             f"{_number(mean[0])} at step 0 → {_number(mean[-1])} at step {mean.size - 1}")
        if notes:
            ax.text(0.98, 0.04, "\n".join(notes), transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                    color=STYLES["lfs"]["color"], bbox={"boxstyle": "round", "facecolor": "white",
                                                           "alpha": 0.85, "edgecolor": "0.8"})


def _number(value: float) -> str:
    return f"{value:.0f}".replace("-", "\u2212")  # a typographic minus, as on the axis


def _tasks_text(tasks) -> str:
    """``[9]`` → "task 9"; ``[2, ..., 8]`` → "tasks 2–8"; ``[0, 1]`` → "tasks 0, 1"."""
    tasks = [int(t) for t in tasks]
    if len(tasks) == 1:
        return f"task {tasks[0]}"
    if len(tasks) > 2 and tasks == list(range(tasks[0], tasks[-1] + 1)):
        return f"tasks {tasks[0]}–{tasks[-1]}"
    return "tasks " + ", ".join(str(t) for t in tasks)


def isolated_groups(summary: dict) -> set:
    """Grid world: the reporting groups that are *isolated*, a k-means category of
    their own (no task outside the group shares its tasks' category) in at least half
    of the runs. Empty when the summary holds no categories."""
    labels = np.asarray(summary.get("categories", []))
    if labels.ndim != 2 or labels.shape[0] == 0:
        return set()
    found = set()
    for g, tasks in summary["groups"].items():
        tasks = np.asarray(tasks)
        alone = [len(set(row[tasks])) == 1 and np.sum(row == row[tasks[0]]) == tasks.size for row in labels]
        if np.mean(alone) >= 0.5:
            found.add(g)
    return found


def _rule_note(rule: str | None) -> str:
    """A panel title's note of MAML²'s reset rule; the paper's ("category") goes unsaid."""
    return "" if rule in (None, "category") else f"; MAML² reset: {rule}"


def adaptation_figure(summary: dict, path: str, ylabel: str = "steps per episode") -> None:
    """Grid world: a panel per reporting group, steps per episode (log scale), 95% band.

    The isolated groups (:func:`isolated_groups`) are shaded and titled so; a dotted
    line marks MAML²'s reset.

    Args:
      summary: as made by :func:`maml2_jax.evaluation.summarize`.
      path: output image path (PNG).
    """
    isolated = isolated_groups(summary)
    rule = _rule_note(summary.get("config", {}).get("reset_rule"))
    titles = {g: _tasks_text(tasks) + (" (isolated)" if g in isolated else "") + rule
              for g, tasks in summary["groups"].items()}
    reset_after = summary.get("config", {}).get("reset_after")
    reset_x = reset_after + 0.5 if reset_after else None
    _panels(titles, summary["curves"], summary["curves_ci95"], path, "adaptation episode", ylabel, 1, True,
            isolated, reset_x)


def isolated_categories(summary: dict) -> set:
    """Deep track: the ground-truth categories of an ``-isolated`` family that are
    isolated. Such families deal about 10% of the tasks to isolated categories and the
    rest to dense ones (:func:`maml2_jax.envs.nav2d.sample_isolated_tasks`), so a
    category with at most half the test tasks of the largest is taken as isolated."""
    if not str(summary.get("env", "")).endswith("-isolated"):
        return set()
    counts = {c: int(n) for c, n in summary["categories"].items()}
    largest = max(counts.values())
    return {c for c, n in counts.items() if 2 * n <= largest}


def return_figure(summary: dict, path: str) -> None:
    """Deep track: a panel per category, return after each adaptation step, 95% band over seeds.

    The y-axis is set by the meta-learned methods (MAML², its ablation, MAML), which
    share it across panels; learning from scratch, usually far below, is clipped and
    its range written in the panel. Isolated categories (:func:`isolated_categories`)
    are shaded.

    Args:
      summary: as made by :func:`maml2_jax.deep_evaluation.evaluate`.
      path: output image path (PNG).
    """
    isolated = isolated_categories(summary)
    rule = _rule_note(summary.get("reset_rule"))
    titles = {c: f"category {c} ({'isolated, ' if c in isolated else ''}{n} tasks){rule}"
              for c, n in summary["categories"].items()}
    meta_learned = tuple(m for m in summary["mean_return"] if m != "lfs")
    _panels(titles, summary["mean_return"], summary["ci95"], path, "adaptation steps",
            "mean return per episode", 0, False, isolated, reset_x=0.5,
            ylim_from=meta_learned or None)


def online_figure(summary: dict, path: str, ylabel: str = "steps of the first episodes") -> None:
    """Online setting: the score of each arrival, median over trials (log scale), a line per
    method with the band between the trials' quartiles (a mean's normal band would reach
    below zero where one trial's episodes are cut at the step limit).

    Args:
      summary: as made by :func:`maml2_jax.online.summarize`.
      path: output image path (PNG).
    """
    fig = Figure(figsize=(8.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for index, method in enumerate(summary["methods"]):
        median = np.asarray(summary["per_arrival_median"][method])
        low, high = np.asarray(summary["per_arrival_quartiles"][method])
        x = np.arange(1, len(median) + 1)
        style = _style(method, index)
        ax.plot(x, median, label=LABELS.get(method, method), color=style["color"], linestyle=style["linestyle"],
                linewidth=style["linewidth"], marker=style["marker"], markersize=3)
        ax.fill_between(x, low, high, color=style["color"], alpha=0.1)
    ax.set_yscale("log")
    ax.set_xlabel("arriving task")
    ax.set_ylabel(ylabel + " (median over trials)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right", fontsize="small")
    fig.savefig(path, dpi=120)
