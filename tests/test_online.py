"""The online grid-world setting: lanes are independent, arrivals are shared across
methods, a warm start (and a resumed run) continues exactly, bad settings are refused."""

import dataclasses

import numpy as np
import pytest

from maml2_jax import online, plotting
from maml2_jax.errors import ConfigError
from maml2_jax.io.checkpoint import Checkpoints

TINY = online.OnlineConfig(trials=2, arrivals=3, methods=("maml2-N2", "maml2-auto", "maml"), max_categories=3,
                           classify_episodes=300, arrival_episodes=60, recorded_episodes=5, outer_iterations=2,
                           inner_iterations=3, maml_iterations=6, references=4, stop_tolerance=0.0)


@pytest.fixture(scope="module")
def batch():
    return online.run(TINY)


def _same(a: online.OnlineResult, b: online.OnlineResult, trials_a=slice(None), trials_b=slice(None)):
    np.testing.assert_array_equal(a.steps[:, trials_a], b.steps[:, trials_b])
    np.testing.assert_array_equal(a.categories[:, trials_a], b.categories[:, trials_b])
    np.testing.assert_array_equal(a.chosen[:, trials_a], b.chosen[:, trials_b])
    np.testing.assert_array_equal(a.arriving[trials_a], b.arriving[trials_b])


def test_one_trial_alone_equals_the_same_trial_in_the_batch(batch):
    _same(online.run(TINY, trial_ids=[1]), batch, slice(0, 1), slice(1, 2))
    # The trials differ, so the comparison above could have failed.
    assert not np.array_equal(batch.steps[:, 0], batch.steps[:, 1])


def test_methods_share_each_trials_initial_pool_and_arrivals():
    ids = [0, 1]
    the_plan = online.plan(TINY, ids)
    state = online.initial_state(TINY, ids, the_plan)
    for _ in range(2):
        state = online.arrive(TINY, state, the_plan)
    methods = TINY.lanes()
    assert [(m.name, m.categories, m.initial) for m in methods] == [("maml2-N2", 2, 2), ("maml2-auto", "auto", 4),
                                                                     ("maml", 1, 4)]
    for m, method in enumerate(methods):
        lanes = slice(m * 2, (m + 1) * 2)
        np.testing.assert_array_equal(state.pool[lanes, :method.initial], the_plan.initial[:, :method.initial])
        np.testing.assert_array_equal(state.pool[lanes, method.initial:method.initial + 2], the_plan.arriving[:, :2])
        assert list(state.size[lanes]) == [method.initial + 2] * 2
    # The initial features are the same tasks learned with the same keys in every method.
    np.testing.assert_array_equal(state.features[0, :2], state.features[4, :2])


def test_warm_start_resumes_exactly_from_a_checkpoint(batch, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_first(done, total):
        if done == 1:
            raise Stop

    checkpoints = Checkpoints(str(tmp_path / "checkpoint"))
    with pytest.raises(Stop):
        online.run(TINY, stop_after_first, checkpoints)
    assert checkpoints.latest() == 1
    resumed = online.run(TINY, checkpoints=checkpoints)
    checkpoints.close()
    _same(resumed, batch)


def test_categories_in_use_and_resets(batch):
    n2, auto, maml = range(3)
    assert np.all(batch.categories[n2] == 2) and np.all(batch.categories[maml] == 1)
    assert np.all((1 <= batch.categories[auto]) & (batch.categories[auto] <= TINY.max_categories))
    assert np.all(batch.chosen[maml] == -1)
    # A lane resets (to one of its categories' slots) exactly when it has two or more.
    for m in (n2, auto):
        several = batch.categories[m] >= 2
        assert np.all(batch.chosen[m][~several] == -1)
        assert np.all((batch.chosen[m][several] >= 0) & (batch.chosen[m][several] < TINY.slots))


def test_maml2_whose_automatic_n_stays_1_is_maml_exactly(batch):
    # With one category, K_out x K_in MAML² iterations are MAML's K_out·K_in iterations
    # with the same keys (θ ← θ_c exactly), and the arrival continues without reset.
    auto, maml = 1, 2
    assert TINY.outer_iterations * TINY.inner_iterations == TINY.maml_iterations
    single = np.all(batch.categories[auto] == 1, axis=-1)  # [T]
    assert single.any(), "no trial kept N = 1 throughout; pick a config where one does"
    np.testing.assert_array_equal(batch.steps[auto][single], batch.steps[maml][single])


def test_the_carry_reset_rule_reaches_the_maml2_lanes_only(batch):
    carry = online.run(dataclasses.replace(TINY, reset_rule="carry"))
    n2, auto, maml = range(3)
    np.testing.assert_array_equal(carry.steps[maml], batch.steps[maml])
    np.testing.assert_array_equal(carry.arriving, batch.arriving)
    # The first arrival meets the same state under either rule: the same episodes before
    # the reset, the same category chosen. Its adaptation after the reset starts elsewhere
    # (and its feature, kept in the pool, with it), so the MAML² lanes part from there.
    after = TINY.reset_after
    for m in (n2, auto):
        np.testing.assert_array_equal(carry.steps[m, :, 0, :after], batch.steps[m, :, 0, :after])
        np.testing.assert_array_equal(carry.chosen[m, :, 0], batch.chosen[m, :, 0])
    assert not np.array_equal(carry.steps[n2, :, :, after:], batch.steps[n2, :, :, after:])
    assert "'carry' rule" in online.table(online.summarize(carry))


def test_summary_table_and_figure(batch, tmp_path):
    summary = online.summarize(batch)
    scores = batch.steps.mean(axis=-1)
    assert summary["mean_steps"]["maml"] == pytest.approx(scores[2].mean())
    assert summary["median_steps"]["maml2-N2"] == pytest.approx(np.median(scores[0]))
    assert len(summary["per_arrival"]["maml2-auto"]) == TINY.arrivals
    assert "maml2-N2" in online.table(summary) and "427.6" in online.table(summary)  # the published N = 2 mean
    plotting.online_figure(summary, str(tmp_path / "online.png"))
    assert (tmp_path / "online.png").stat().st_size > 10_000


@pytest.mark.parametrize("changes, message", [
    ({"methods": ("maml2-N0",)}, "unknown method"),
    ({"methods": ("maml2-N2", "maml2-N2")}, "repeat"),
    ({"methods": ("maml2-N11",)}, "more categories"),
    ({"methods": ("reptile",)}, "unknown method"),
    ({"methods": ()}, "non-empty"),
    ({"max_categories": 1}, "max categories"),
    ({"reset_after": 60}, "reset_after"),
    ({"recorded_episodes": 61}, "recorded"),
    ({"trials": 0}, "trials"),
    ({"references": 1}, "references"),
    ({"reset_rule": "nearest"}, "reset rule"),
])
def test_bad_settings_are_refused_in_one_line(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(TINY, **changes)
