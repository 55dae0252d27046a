"""The published experiment at its defaults (50 runs): the acceptance of issue 2.

Each claim of ``evaluation.published_checks`` is one test. Slow (about half a
minute of compute, longer beside other work): run with ``pytest -m slow``.
"""

import pytest

from maml2_jax import evaluation, gridworld_experiment

pytestmark = pytest.mark.slow

AFTER_RESET = ("known shortfall: after the reset MAML² is 1.6-1.9x MAML at the defaults; "
               "see README 'Choices the paper leaves open'")
ISOLATED_TIE = ("known shortfall: on task 9 the reset changes nothing (θ's first episode is already the shortest "
                "path, and the reset and no-reset runs take the same steps)")


@pytest.fixture(scope="module")
def checks():
    summary = evaluation.summarize(gridworld_experiment.run(gridworld_experiment.GridworldConfig()))
    return evaluation.published_checks(summary)


@pytest.mark.parametrize("claim", [
    "isolated_maml2",
    "isolated_maml",
    "isolated_lfs_between",
    "no_reset_worse_0",
    "no_reset_worse_1",
    pytest.param("after_reset_ratio_0", marks=pytest.mark.xfail(strict=True, reason=AFTER_RESET)),
    pytest.param("after_reset_ratio_1", marks=pytest.mark.xfail(strict=True, reason=AFTER_RESET)),
    pytest.param("no_reset_worse_2", marks=pytest.mark.xfail(strict=True, reason=ISOLATED_TIE)),
])
def test_published_claim(checks, claim):
    assert checks[claim]["holds"], f"{claim}: {checks[claim]['value']:.3f}"
