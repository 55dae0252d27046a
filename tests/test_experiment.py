"""The published tabular experiment end to end (small configurations)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml2_jax import evaluation, gridworld_experiment
from maml2_jax import lane_maml2 as maml2
from maml2_jax.core import classification as clustering
from maml2_jax.envs.gridworld import GridWorld
from maml2_jax.errors import ConfigError
from maml2_jax.gridworld_experiment import METHODS, GridworldConfig
from maml2_jax.learners.sarsa import make_sarsa

SMALL = dict(outer_iterations=2, inner_iterations=3, maml_iterations=30, classify_episodes=300)


@pytest.fixture(scope="module")
def small_batch():
    """The same small experiment with 1 run and with 50 runs (the default batch)."""
    one = gridworld_experiment.run(GridworldConfig(runs=1, seed=3, **SMALL))
    batch = gridworld_experiment.run(GridworldConfig(runs=50, seed=3, **SMALL))
    return one, batch


def test_result_shapes_and_ranges(small_batch):
    _, result = small_batch
    assert result.steps.shape == (len(METHODS), 50, 10, 10)
    assert result.labels.shape == (50, 10) and result.chosen.shape == (50, 10)
    assert result.steps.min() >= 1 and result.steps.max() <= 1000
    for labels in result.labels:
        assert set(labels.tolist()) == {0, 1, 2} and labels[0] == 0
    assert result.chosen.min() >= 0 and result.chosen.max() < 3
    # MAML² and its no-reset ablation share their first test episode exactly.
    np.testing.assert_array_equal(result.steps[0, ..., 0], result.steps[1, ..., 0])
    # …and then part ways somewhere.
    assert not np.array_equal(result.steps[0], result.steps[1])


def test_run_alone_equals_run_in_batch(small_batch):
    one, batch = small_batch
    np.testing.assert_array_equal(one.steps[:, 0], batch.steps[:, 0])
    np.testing.assert_array_equal(one.labels[0], batch.labels[0])
    np.testing.assert_array_equal(one.chosen[0], batch.chosen[0])
    # The runs of the batch are independent draws, not copies of run 0.
    assert not np.array_equal(batch.steps[:, 0], batch.steps[:, 1])


def test_parallel_mode_run_alone_equals_run_in_batch():
    config = dict(SMALL, outer_update="parallel", seed=4)
    one = gridworld_experiment.run(GridworldConfig(runs=1, **config))
    three = gridworld_experiment.run(GridworldConfig(runs=3, **config))
    np.testing.assert_array_equal(one.steps[:, 0], three.steps[:, 0])
    np.testing.assert_array_equal(one.chosen[0], three.chosen[0])


def test_shared_training_loop_equals_separate_training():
    """``train`` runs MAML² and MAML lanes side by side in one loop; each must equal
    its own stand-alone meta-training."""
    config = GridworldConfig(runs=2, seed=1, **SMALL)
    _, train, _ = gridworld_experiment.build(config)
    labels = np.array([[0, 0, 1, 1, 1, 0, 1, 1, 1, 2], [0, 1, 0, 1, 1, 1, 1, 1, 1, 2]])
    members = jnp.asarray(clustering.membership(labels, 3))
    k_maml2 = jax.random.split(jax.random.key(10), 2)
    k_maml = jax.random.split(jax.random.key(11), 2)
    theta, category_params, theta_maml = train(members, k_maml2, k_maml)[:3]

    learner = make_sarsa(config.world, config.sarsa, log_episodes=config.test_episodes, track_visits=False)
    theta0 = jnp.broadcast_to(learner.init_params(), (2, 100, 4))
    tasks = jnp.broadcast_to(jnp.asarray(config.world.task_array()), (2, 10))
    alone_theta, alone_cats = maml2.meta_train(learner, config.schedule(), theta0, members, tasks, k_maml2)
    alone_maml = maml2.maml(learner, config.maml_iterations, theta0, tasks, k_maml)
    np.testing.assert_array_equal(theta, alone_theta)
    np.testing.assert_array_equal(category_params, alone_cats)
    np.testing.assert_array_equal(theta_maml, alone_maml)


# --------------------------------------------------------------------------------------
# Learning sanity: the published qualitative picture at a small, fixed configuration.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def learned():
    config = GridworldConfig(
        runs=4, seed=0, outer_iterations=10, inner_iterations=10, maml_iterations=300, classify_episodes=2000
    )
    result = gridworld_experiment.run(config)
    means = result.steps.mean(axis=-1)  # [method, run, task]: mean over the 10 episodes
    return result, {
        method: {"bulk": means[i, :, :9].mean(), "isolated": means[i, :, 9].mean()}
        for i, method in enumerate(METHODS)
    }


def test_task_9_gets_its_own_category_in_the_experiment(learned):
    result, _ = learned
    for labels, chosen in zip(result.labels, result.chosen):
        assert labels[9] not in labels[:9]
        # The update tendency sends task 9 to its own category.
        assert chosen[9] == labels[9]


def test_maml_beats_learning_from_scratch_on_the_bulk(learned):
    _, m = learned
    # Measured at this config: LFS ≈ 690 steps, MAML ≈ 40–60 on tasks 0..8.
    assert m["lfs"]["bulk"] > 400
    assert m["maml"]["bulk"] < 150
    assert m["lfs"]["bulk"] > 4 * m["maml"]["bulk"]


def test_maml_adapts_negatively_on_the_isolated_task(learned):
    _, m = learned
    # Task 9 from the MAML init is worse than from scratch (measured ≈ 760 vs ≈ 260).
    assert m["maml"]["isolated"] > 1.5 * m["lfs"]["isolated"]


def test_maml2_beats_maml_on_the_isolated_task(learned):
    _, m = learned
    # Measured ≈ 35 (MAML² with reset) vs ≈ 760 (MAML).
    assert m["maml2"]["isolated"] < 150
    assert m["maml2"]["isolated"] * 4 < m["maml"]["isolated"]


def test_reset_helps_on_the_bulk(learned):
    _, m = learned
    # Measured ≈ 125 (reset) vs ≈ 330 (no reset); both far better than LFS.
    assert m["maml2"]["bulk"] < 0.75 * m["maml2_no_reset"]["bulk"]
    assert m["maml2"]["bulk"] < 0.5 * m["lfs"]["bulk"]


def test_the_carry_reset_rule_changes_only_maml2_after_the_reset(small_batch):
    one, _ = small_batch
    carry = gridworld_experiment.run(GridworldConfig(runs=1, seed=3, reset_rule="carry", **SMALL))
    maml2_index, after = METHODS.index("maml2"), carry.config.reset_after
    # Classification, meta-training and the other methods' tests do not see the rule.
    np.testing.assert_array_equal(carry.labels, one.labels)
    np.testing.assert_array_equal(carry.chosen, one.chosen)
    others = [i for i in range(len(METHODS)) if i != maml2_index]
    np.testing.assert_array_equal(carry.steps[others], one.steps[others])
    # MAML²'s episodes before the reset are the same; after it the start differs by the
    # first episode's update, and with it the episodes of some task.
    np.testing.assert_array_equal(carry.steps[maml2_index, ..., :after], one.steps[maml2_index, ..., :after])
    assert not np.array_equal(carry.steps[maml2_index, ..., after:], one.steps[maml2_index, ..., after:])
    assert "'carry' rule" in evaluation.table(evaluation.summarize(carry))
    assert "rule" not in evaluation.table(evaluation.summarize(one))


# --------------------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(categories=11), "categories"),
        (dict(categories=0), "categories"),
        (dict(outer_iterations=0), "outer iterations"),
        (dict(inner_iterations=-1), "inner iterations"),
        (dict(maml_iterations=0), "maml iterations"),
        (dict(classify_episodes=-5), "classify episodes"),
        (dict(runs=0), "runs"),
        (dict(adapt_episodes=0), "adapt episodes"),
        (dict(reset_after=10), "reset_after"),
        (dict(reset_after=12, test_episodes=10), "reset_after"),
        (dict(reset_after=0), "reset.after"),
        (dict(test_episodes=10.5), "test episodes"),
        (dict(categories=2.0), "categories"),
        (dict(runs=True), "runs"),
        (dict(test_episodes=1), "test_episodes"),
        (dict(outer_update="both"), "outer update"),
        (dict(reset_rule="nearest"), "reset rule"),
        (dict(groups=((0, 1), ())), "empty"),
        (dict(groups=((0, 10),)), "10"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GridworldConfig(**kwargs)


def test_categories_more_than_tasks_of_a_custom_world():
    world = GridWorld(goals=(39, 90))
    GridworldConfig(world=world, categories=2)
    with pytest.raises(ConfigError, match="categories"):
        GridworldConfig(world=world, categories=3)


def test_report_groups():
    assert GridworldConfig().report_groups() == ((0, 1), (2, 3, 4, 5, 6, 7, 8), (9,))
    custom = GridworldConfig(world=GridWorld(goals=(39, 90)), categories=2)
    assert custom.report_groups() == ((0,), (1,))


def _result_with_steps(per_method_group):
    """A 2-run result whose every episode of method m on group g takes the given steps.

    ``per_method_group``: ``{method: (first episode, later episodes) per group}``.
    """
    config = GridworldConfig(runs=2)
    steps = np.zeros((len(METHODS), 2, 10, 10))
    for m, method in enumerate(METHODS):
        for (first, later), tasks in zip(per_method_group[method], config.report_groups()):
            steps[m, :, list(tasks), 0] = first
            steps[m, :, list(tasks), 1:] = later
    return gridworld_experiment.GridworldResult(config, steps, np.zeros((2, 10), int), np.zeros((2, 10), int),
                                               {}, {}, 0.0)


def test_published_checks_pass_and_fail_on_constructed_results():
    published = {  # (first, later) per group {0,1}, {2..8}, {9}: the published picture
        "maml2": ((500, 40), (500, 50), (50, 10)),
        "maml2_no_reset": ((500, 90), (500, 110), (50, 16)),
        "maml": ((80, 40), (80, 35), (700, 600)),
        "lfs": ((1000, 550), (1000, 700), (600, 220)),
    }
    checks = evaluation.published_checks(evaluation.summarize(_result_with_steps(published)))
    assert all(c["holds"] for c in checks.values()), checks
    assert checks["after_reset_ratio_1"]["value"] == pytest.approx(50 / 35)
    assert checks["no_reset_worse_2"]["value"] == pytest.approx(9 * 6 / 10)

    broken = dict(published, maml2_no_reset=published["maml2"], maml2=((500, 70), (500, 50), (50, 10)))
    checks = evaluation.published_checks(evaluation.summarize(_result_with_steps(broken)))
    failing = {name for name, c in checks.items() if not c["holds"]}
    assert failing == {"after_reset_ratio_0", "no_reset_worse_0", "no_reset_worse_1", "no_reset_worse_2"}


def test_published_checks_need_the_published_groups():
    summary = {"groups": {"0": [0], "1": [1]}}
    with pytest.raises(ValueError, match="published groups"):
        evaluation.published_checks(summary)


# --------------------------------------------------------------------------------------
# The published configuration (slow: run with -m slow)
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_published_experiment_50_runs():
    """The full published protocol (50 runs, default config) against DESIGN §1.1's table.

    The configuration behind the published figure is not recorded, so only LFS (which
    does not depend on it) is held close to the published numbers; the meta-learners
    are held to the published *picture* with wide margins.
    """
    result = gridworld_experiment.run(GridworldConfig(runs=50, seed=0))
    groups = ((0, 1), (2, 3, 4, 5, 6, 7, 8), (9,))
    mean = {m: [result.steps[i][:, list(g)].mean() for g in groups] for i, m in enumerate(METHODS)}
    first = {m: [result.steps[i][:, list(g), 0].mean() for g in groups] for i, m in enumerate(METHODS)}

    # LFS: published 598.6 / 721.2 / 259.3.
    np.testing.assert_allclose(mean["lfs"], [598.6, 721.2, 259.3], rtol=0.15)
    # MAML: published 73.5 / 37.0 / 621.4 — good on the bulk, negative adaptation on task 9.
    assert mean["maml"][0] < 200 and mean["maml"][1] < 100
    assert mean["maml"][2] > 300 and mean["maml"][2] > 1.3 * mean["lfs"][2]
    # MAML²: published 85.1 / 96.8 / 14.1; its first episode (from θ) ≈ 480–560 on the bulk.
    assert max(mean["maml2"][:2]) < 250
    assert mean["maml2"][2] < 60
    for g in (0, 1):
        assert 350 < first["maml2"][g] < 700
    # Without reset: published 107.5 / 134.9 / 19.1, worse than with reset on the bulk.
    assert mean["maml2_no_reset"][0] > mean["maml2"][0] and mean["maml2_no_reset"][1] > mean["maml2"][1]
    # Task 9 is isolated by k-means and the update tendency sends it to its category.
    alone = np.array([labels[9] not in labels[:9] for labels in result.labels])
    assert alone.mean() >= 0.9
    assert (result.chosen[:, 9] == result.labels[:, 9]).mean() >= 0.9
