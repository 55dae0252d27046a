"""The sine-regression example (examples/sine_regression.py): MAML² against MAML on an isolated task.

One training of both methods at the example's defaults (seed 0) is shared by the
tests. Measured on seeds 0, 1, 2 (see the example's report): MAML²'s isolated-task
query MSE after one step is 4–7% of MAML's, its bulk MSE within 0.02 of MAML's,
and every classification puts exactly the isolated pool tasks in a category of
their own. The thresholds below leave several times that headroom, so they hold
across CPUs, yet an engine that did not classify, did not meta-learn the categories
or reset to the wrong one lands far outside them.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

from maml2_jax.core.train import classify

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "sine_regression.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("sine_regression", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sine = _load_example()
BULK, ISOLATED = sine.BULK, sine.ISOLATED
SEED = 0
ITERATIONS = 100


@pytest.fixture(scope="module")
def result():
    return sine.compare(sine.SineConfig(), SEED, ITERATIONS)


def _isolated_apart(labels: np.ndarray, truth: np.ndarray) -> tuple[bool, float]:
    """Whether the isolated tasks share one label, and the fraction of bulk tasks with it."""
    isolated = labels[truth == ISOLATED]
    if len(isolated) == 0 or np.any(isolated != isolated[0]):
        return False, 1.0
    return True, float(np.mean(labels[truth == BULK] == isolated[0]))


def test_maml2_beats_maml_on_isolated_tasks(result):
    # Measured 0.027 against 0.395 (seed 0); MAML's 0.15 floor says the example still poses the problem.
    assert result["maml"][ISOLATED] > 0.15
    assert result["maml2"][ISOLATED] < 0.25 * result["maml"][ISOLATED]
    # MAML given the two steps MAML² spends (identification + adaptation) does not close the gap either.
    assert result["maml2"][ISOLATED] < 0.4 * result["maml_2_steps"][ISOLATED]
    assert result["reset_to_own"][ISOLATED] > 0.8


def test_maml2_is_not_much_worse_on_the_bulk(result):
    # Measured 0.032 against 0.017 (seed 0); predicting 0 scores about 0.5.
    assert result["maml2"][BULK] < result["maml"][BULK] + 0.08
    assert result["reset_to_own"][BULK] > 0.8


def test_trained_classification_keeps_the_isolated_tasks_apart(result):
    state = result["maml2_state"]
    apart, bulk_share = _isolated_apart(np.asarray(state.labels), np.asarray(state.source.truth))
    assert apart and bulk_share <= 0.1


@pytest.fixture(scope="module")
def maml2_engine():
    return sine.make_engines(sine.SineConfig(), ITERATIONS)[0]


@pytest.mark.parametrize("seed", range(4))
def test_one_classification_separates_the_isolated_pool_tasks(maml2_engine, seed):
    state = maml2_engine.init(jax.random.key(seed))
    truth = np.asarray(state.source.truth)
    assert 0 < truth.sum() < len(truth) // 2
    state = classify(state, maml2_engine.features(state))
    apart, bulk_share = _isolated_apart(np.asarray(state.labels), truth)
    assert apart and bulk_share <= 0.1
