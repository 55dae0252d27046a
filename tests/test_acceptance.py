"""The published grid-world experiment at its defaults (50 runs, seed 0).

Slow (the whole 50-run experiment: about a minute of compute on a quiet 2-core AMD
EPYC CPU, longer beside other work): run with ``pytest -m slow``.

What is tested is what the method's own code gives. The paper's figure was made at
a configuration the paper does not record; the authors' code (PythaWang/MAML2), run
side by side with this library at the defaults here (20×10, sequential outer update,
N = 3, MAML 3000 iterations), gave in 22 runs:

* after the reset (episodes 2–10) MAML² 72.9 steps on tasks {0,1} and 66.8 on
  {2..8}, against MAML's 35.2 and 38.5: ratios 2.07 and 1.74, not the figure's
  parity;
* on task 9 identical steps for MAML² and its no-reset ablation in 22 of 22 paired
  runs, not the figure's gap (its no-reset curve came from a separate, unpaired
  experiment).

So the published claims that code also gives are checked through
``evaluation.published_checks``; its after-reset and task-9 claims are replaced by the
two tests below. See docs/results.md.
"""

import numpy as np
import pytest

from maml2_jax import evaluation, gridworld_experiment

pytestmark = pytest.mark.slow

MAML2, NO_RESET = (gridworld_experiment.METHODS.index(m) for m in ("maml2", "maml2_no_reset"))
ISOLATED_TASK = 9

# Bounds on MAML²'s after-reset mean steps over MAML's, per reporting group. The
# reference code's 22-run ratios are 2.07 ({0,1}) and 1.74 ({2..8}). Resampling this
# library's runs puts the standard error of a 22-run ratio near 0.4 and 0.17, of a
# 50-run ratio near 0.25 and 0.11. Seeds 0–4 of this library give 1.87, 1.49, 1.94,
# 1.58, 1.83 on {0,1} (mean 1.74, spread 0.19) and 1.57, 1.41, 1.64, 1.46, 1.36 on
# {2..8} (mean 1.49, spread 0.11): the lower bound is three spreads below the mean,
# so another seed's draws or another CPU's rounding stay inside. The bands hold the
# reference's ratios and exclude both a MAML² that matches MAML (1.0) and one whose
# reset does nothing (no reset, after the reset, is 4.8× and 5.4× MAML at seed 0).
AFTER_RESET_RATIO = {"0": (1.15, 2.8), "1": (1.15, 2.2)}


@pytest.fixture(scope="module")
def result():
    return gridworld_experiment.run(gridworld_experiment.GridworldConfig())


@pytest.fixture(scope="module")
def summary(result):
    return evaluation.summarize(result)


@pytest.mark.parametrize("claim", [
    "isolated_maml2",  # MAML² ≤ 40 steps on task 9
    "isolated_maml",  # MAML ≥ 300 there: negative adaptation
    "isolated_lfs_between",  # MAML² < learning from scratch < MAML on task 9
    "no_reset_worse_0",  # the reset pays on {0,1}
    "no_reset_worse_1",  # and on {2..8}
])
def test_published_claim(summary, claim):
    """A claim of the paper that its own code also gives at this configuration."""
    checks = evaluation.published_checks(summary)
    assert checks[claim]["holds"], f"{claim}: {checks[claim]['value']:.3f}"


@pytest.mark.parametrize("group", ["0", "1"])
def test_after_reset_maml2_is_slower_than_maml_as_in_the_reference_code(summary, group):
    """After the reset MAML² takes 1.15–2.8× ({0,1}) and 1.15–2.2× ({2..8}) MAML's steps.

    The reference code gives 2.07× and 1.74× at this configuration (22 runs); the
    bounds are explained at ``AFTER_RESET_RATIO``.
    """
    after = summary["mean_steps_after_reset"]
    ratio = after["maml2"][group] / after["maml"][group]
    low, high = AFTER_RESET_RATIO[group]
    assert low <= ratio <= high, f"group {group}: MAML² after the reset is {ratio:.3f}× MAML, not in [{low}, {high}]"


def test_isolated_task_reset_changes_nothing_in_paired_runs(result):
    """On task 9 MAML² and no reset take identical steps in (nearly) every paired run.

    θ's first episode there already runs down column 0 to the goal, and θ₁ and the
    category's parameters then choose the same action in every cell the agent visits;
    the two methods share their random draws, so their episodes coincide. The
    reference code: 22 of 22 runs. This library: 249 of 250 runs over seeds 0–4 (all
    50 at seed 0; one run of seed 3 differs); two differing runs of 50 are allowed
    for another CPU's rounding. A reset to a wrong category would break most runs.
    """
    steps = result.steps[:, :, ISOLATED_TASK]  # [methods, R, E]
    identical = np.all(steps[MAML2] == steps[NO_RESET], axis=-1)
    assert identical.sum() >= identical.size - 2, f"identical on task 9 in {identical.sum()} of {identical.size} runs"
