"""Figures of adaptation curves, in the manner of the published MAML² figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display is ever needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LABELS = {"maml2": "MAML²", "maml2_no_reset": "MAML² (no reset)", "maml": "MAML", "lfs": "learning from scratch"}


def adaptation_figure(summary: dict, path: str, ylabel: str = "steps per episode") -> None:
    """Writes a panel per reporting group: a line per method, shaded 95% band.

    Args:
      summary: as made by :func:`maml2_jax.evaluation.summarize`.
      path: output image path (PNG).
    """
    groups = summary["groups"]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, (g, tasks) in zip(axes[0], groups.items()):
        for method, curves in summary["curves"].items():
            mean = np.asarray(curves[g])
            half = np.asarray(summary["curves_ci95"][method][g])
            episodes = np.arange(1, mean.size + 1)
            (line,) = ax.plot(episodes, mean, marker="o", markersize=3, label=LABELS.get(method, method))
            ax.fill_between(episodes, mean - half, mean + half, color=line.get_color(), alpha=0.2)
        ax.set_title("tasks " + ", ".join(str(t) for t in tasks))
        ax.set_xlabel("adaptation episode")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
