"""Figures of adaptation curves, in the manner of the published MAML² figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display is ever needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

LABELS = {"maml2": "MAML²", "maml2_no_reset": "MAML² (no reset)", "maml": "MAML", "lfs": "learning from scratch"}


def _panels(titles: dict, curves: dict, bands: dict, path: str, xlabel: str, ylabel: str, first_x: int,
            log_scale: bool) -> None:
    """A panel per group ``g`` (titled ``titles[g]``): a line per method, shaded band."""
    fig, axes = plt.subplots(1, len(titles), figsize=(4.2 * len(titles), 3.6), squeeze=False)
    for ax, (g, title) in zip(axes[0], titles.items()):
        for method, by_group in curves.items():
            mean = np.asarray(by_group[g])
            half = np.asarray(bands[method][g])
            x = np.arange(first_x, first_x + mean.size)
            (line,) = ax.plot(x, mean, marker="o", markersize=3, label=LABELS.get(method, method))
            ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # episodes and steps are counts
        ax.set_ylabel(ylabel)
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def adaptation_figure(summary: dict, path: str, ylabel: str = "steps per episode") -> None:
    """Grid world: a panel per reporting group, steps per episode (log scale), 95% band.

    Args:
      summary: as made by :func:`maml2_jax.evaluation.summarize`.
      path: output image path (PNG).
    """
    titles = {g: "tasks " + ", ".join(str(t) for t in tasks) for g, tasks in summary["groups"].items()}
    _panels(titles, summary["curves"], summary["curves_ci95"], path, "adaptation episode", ylabel, 1, True)


def return_figure(summary: dict, path: str) -> None:
    """Deep track: a panel per category, return after each adaptation step, 95% band over seeds.

    Args:
      summary: as made by :func:`maml2_jax.deep_evaluation.evaluate`.
      path: output image path (PNG).
    """
    titles = {c: f"category {c} ({n} tasks)" for c, n in summary["categories"].items()}
    _panels(titles, summary["mean_return"], summary["ci95"], path, "adaptation steps",
            "mean return per episode", 0, False)
