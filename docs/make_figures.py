"""Regenerates every figure in docs/.

    .venv/bin/python docs/make_figures.py              # both figures
    .venv/bin/python docs/make_figures.py nav2d        # only the one that needs no run

- ``docs/adaptation.png``: the default grid-world experiment (50 runs, the published
  configuration), run here: ``gridworld_experiment.run(GridworldConfig())``, then
  ``evaluation.summarize``. About 50 s on a 2-core AMD EPYC CPU.
- ``docs/nav2d_isolated.png``: from the stored evaluation summary
  ``benchmarks/results/nav2d_isolated-equal-eval.json`` (what ``maml2 evaluate``
  wrote for 5 seeds of MAML² and MAML on nav2d-isolated; see docs/results.md), so no
  training is needed.
- ``docs/halfcheetah_dir.png``: the MAML-TRPO learning curves on halfcheetah-dir, from
  the stored metrics ``benchmarks/results/halfcheetah_dir-*curve.json`` (the
  ``metrics.jsonl`` rows of the ``maml2 train --env halfcheetah-dir`` runs in
  docs/results.md: horizon 50, and horizon 100 with inner step sizes 0.1 and 0.5).

Impure: runs the experiment, writes the PNGs (atomically) and prints what it did.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NAV2D_SUMMARY = ROOT / "benchmarks" / "results" / "nav2d_isolated-equal-eval.json"
# The ``metrics.jsonl`` rows of ``maml2 train --env halfcheetah-dir`` runs, with what differs between them.
CHEETAH_CURVES = [
    (ROOT / "benchmarks" / "results" / "halfcheetah_dir-curve.json", "horizon 50, α = 0.1"),
    (ROOT / "benchmarks" / "results" / "halfcheetah_dir-h100-curve.json", "horizon 100, α = 0.1"),
    (ROOT / "benchmarks" / "results" / "halfcheetah_dir-h100-lr05-curve.json", "horizon 100, α = 0.5"),
]


def gridworld() -> pathlib.Path:
    """``docs/adaptation.png`` from a fresh run of the default grid-world experiment."""
    from maml2_jax import evaluation, gridworld_experiment, plotting
    from maml2_jax.io import files

    started = time.perf_counter()
    result = gridworld_experiment.run(gridworld_experiment.GridworldConfig(),
                                      progress=lambda stage: print(f"  grid world: {stage} …", file=sys.stderr))
    summary = evaluation.summarize(result)
    print(evaluation.table(summary))
    path = DOCS / "adaptation.png"
    files.write_atomically(str(path), lambda tmp: plotting.adaptation_figure(summary, tmp))
    print(f"wrote {path.relative_to(ROOT)} ({time.perf_counter() - started:.0f} s)")
    return path


def nav2d() -> pathlib.Path:
    """``docs/nav2d_isolated.png`` from the stored ``maml2 evaluate`` summary."""
    from maml2_jax import deep_evaluation, plotting
    from maml2_jax.io import files

    summary = json.loads(NAV2D_SUMMARY.read_text())
    print(deep_evaluation.table(summary))
    path = DOCS / "nav2d_isolated.png"
    files.write_atomically(str(path), lambda tmp: plotting.return_figure(summary, tmp))
    print(f"wrote {path.relative_to(ROOT)} (from {NAV2D_SUMMARY.relative_to(ROOT)})")
    return path


def halfcheetah_dir() -> pathlib.Path:
    """``docs/halfcheetah_dir.png``: return before and after adaptation, and their gap, per meta-iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from maml2_jax.io import files

    window = 50  # a trailing mean: one meta-iteration's 20 tasks are a noisy sample

    def smooth(values):
        return np.convolve(values, np.ones(window) / window, mode="valid")

    def draw(tmp: str) -> None:
        fig, (returns, gains) = plt.subplots(1, 2, figsize=(10, 3.8))
        for path, label in CHEETAH_CURVES:
            rows = json.loads(path.read_text())["rows"]
            iterations = np.asarray([r["iteration"] for r in rows])[window - 1:]
            pre = np.asarray([r["pre_return"] for r in rows])
            post = np.asarray([r["post_return"] for r in rows])
            line, = returns.plot(iterations, smooth(post), label=f"{label}: after one step")
            returns.plot(iterations, smooth(pre), color=line.get_color(), linestyle=":", label=f"{label}: before (θ)")
            gains.plot(iterations, smooth(post - pre), color=line.get_color(), label=label)
        gains.axhline(0.0, color="grey", linewidth=0.8)
        returns.set_ylabel("mean return per episode")
        gains.set_ylabel("after − before")
        for axis in (returns, gains):
            axis.set_xlabel("meta-iteration")
        returns.legend(fontsize=7)
        gains.legend(fontsize=7)
        fig.suptitle(f"MAML-TRPO on halfcheetah-dir (brax spring, CPU; trailing means of {window} iterations)")
        fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)

    path = DOCS / "halfcheetah_dir.png"
    files.write_atomically(str(path), draw)
    names = ", ".join(str(p.relative_to(ROOT)) for p, _ in CHEETAH_CURVES)
    print(f"wrote {path.relative_to(ROOT)} (from {names})")
    return path


FIGURES = {"gridworld": gridworld, "nav2d": nav2d, "halfcheetah": halfcheetah_dir}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Regenerates the figures in docs/.")
    parser.add_argument("figures", nargs="*", metavar="FIGURE",
                        help=f"which to make ({', '.join(FIGURES)}; default: all)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.figures if name not in FIGURES]
    if unknown:
        parser.error(f"unknown figure {unknown[0]!r}; choose from {', '.join(FIGURES)}")
    for name in args.figures or FIGURES:
        FIGURES[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
