"""The published experiment at its defaults (50 runs): the acceptance of issue 2.

Slow (about half a minute of compute, longer beside other work): run with
``pytest -m slow``.
"""

import pytest

from maml2_jax import evaluation, gridworld_experiment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def summary():
    return evaluation.summarize(gridworld_experiment.run(gridworld_experiment.GridworldConfig()))


def test_isolated_task_maml2_solves_it_maml_fails_it_lfs_between(summary):
    mean = summary["mean_steps"]
    assert mean["maml2"]["2"] <= 40
    assert mean["maml"]["2"] >= 300
    assert mean["maml2"]["2"] < mean["lfs"]["2"] < mean["maml"]["2"]


def test_no_reset_is_worse_than_maml2_on_the_non_isolated_groups(summary):
    mean = summary["mean_steps"]
    for group in ("0", "1"):
        assert mean["maml2_no_reset"][group] > mean["maml2"][group]


@pytest.mark.xfail(strict=True, reason="known shortfall: after the reset MAML² is ~1.6-1.9x MAML on {0,1}; "
                                       "see README 'Choices the paper leaves open'")
def test_after_reset_maml2_is_within_1_5x_of_maml(summary):
    after = summary["mean_steps_after_reset"]
    for group in ("0", "1"):
        assert after["maml2"][group] <= 1.5 * after["maml"][group]


@pytest.mark.xfail(strict=True, reason="known shortfall: on task 9 the reset and no-reset curves coincide "
                                       "(the first episode from θ already finds the goal)")
def test_no_reset_is_worse_than_maml2_on_the_isolated_task(summary):
    mean = summary["mean_steps"]
    assert mean["maml2_no_reset"]["2"] > mean["maml2"]["2"]
