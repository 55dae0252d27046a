"""An automatic number of categories (``categories="auto"``): slots, masks and matching.

The classification tests are NumPy on planted pools; the engine runs one tiny step
on a pool whose features are planted; the grid world and ``train`` run the smallest
experiments that still classify.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from maml2_jax import cli, deep_evaluation, deep_training
from maml2_jax.core import classification, readaptation, task_sources
from maml2_jax.core import train as engine_lib
from maml2_jax.core.config import MetaConfig
from maml2_jax.envs import nav2d
from maml2_jax.learners.policy_gradient import PolicyGradientConfig, make_policy_gradient_learner
from maml2_jax.networks import PolicyConfig, make_gaussian_policy
from maml2_jax.rules import gradient


def _blobs(centres, per_blob: int, seed: int, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """``per_blob`` tasks around each centre (in order), and their true blob."""
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, np.float64)
    truth = np.repeat(np.arange(len(centres)), per_blob)
    return centres[truth] + rng.normal(0.0, spread, (len(truth), centres.shape[1])), truth


A, B, C = [0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [5.0, 9.0, 0.0]


def _same_partition(labels, truth):
    np.testing.assert_array_equal(classification.canonical_labels(labels), classification.canonical_labels(truth))


# --- classify_slots: N chosen, slots kept ----------------------------------------------


@pytest.mark.parametrize("centres", [[A, B], [A, B, C]], ids=["two", "three"])
def test_planted_clusters_give_their_number_in_the_first_slots(centres):
    features, truth = _blobs(centres, 5, seed=1)
    result = classification.classify_slots(features, "auto", 4, seed=0)
    assert result.num_categories == len(centres)
    np.testing.assert_array_equal(result.active, np.arange(4) < len(centres))
    _same_partition(result.labels, truth)
    np.testing.assert_array_equal(result.centroids[len(centres):], 0.0)


def test_identical_features_give_one_category():
    result = classification.classify_slots(np.ones((6, 3)), "auto", 4, seed=0)
    assert result.num_categories == 1
    np.testing.assert_array_equal(result.active, [True, False, False, False])
    np.testing.assert_array_equal(result.labels, 0)


def test_a_growing_pool_keeps_its_categories_slots():
    """The previous categories sit in slots 1 and 3 (as a run's history may leave them);
    more tasks of the same two clusters keep them there."""
    features, truth = _blobs([A, B], 8, seed=2)
    first = np.r_[0:3, 8:11]  # three tasks of each cluster
    previous = np.zeros((4, 3))
    previous[1], previous[3] = features[first][truth[first] == 0].mean(0), features[first][truth[first] == 1].mean(0)
    active = np.array([False, True, False, True])
    result = classification.classify_slots(features, "auto", 4, seed=0, previous_centroids=previous,
                                           previous_active=active)
    np.testing.assert_array_equal(result.active, active)
    np.testing.assert_array_equal(result.labels, np.where(truth == 0, 1, 3))


def test_a_new_cluster_takes_a_free_slot_and_the_old_ones_stay():
    two, _ = _blobs([A, B], 5, seed=3)
    old = classification.classify_slots(two, "auto", 4, seed=0)
    assert old.num_categories == 2
    slot_of_a, slot_of_b = old.labels[0], old.labels[5]
    three, truth = _blobs([A, B, C], 5, seed=4)
    new = classification.classify_slots(three, "auto", 4, seed=0, previous_centroids=old.centroids,
                                        previous_active=old.active)
    assert new.num_categories == 3
    assert new.labels[0] == slot_of_a and new.labels[5] == slot_of_b
    third = new.labels[10]
    assert third not in (slot_of_a, slot_of_b) and third == min({0, 1, 2, 3} - {slot_of_a, slot_of_b})
    _same_partition(new.labels, truth)
    # And back to two: C's slot falls idle, A and B stay.
    back = classification.classify_slots(two, "auto", 4, seed=0, previous_centroids=new.centroids,
                                         previous_active=new.active)
    np.testing.assert_array_equal(np.flatnonzero(back.active), sorted([slot_of_a, slot_of_b]))
    np.testing.assert_array_equal(back.labels, old.labels)


# --- the update tendency ---------------------------------------------------------------


def test_update_tendency_never_picks_an_idle_slot():
    """Slot 2 is idle (it holds θ_init) and is the one θ₁ moved towards the most."""
    theta = {"w": jnp.zeros(3)}
    theta_1 = {"w": jnp.array([1.0, 0.0, 0.0])}
    category_params = {"w": jnp.array([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0], [-3.0, 0.0, 0.0]])}
    assert int(readaptation.update_tendency(theta, theta_1, category_params)) == 2
    active = jnp.array([True, True, False, True])
    assert int(readaptation.update_tendency(theta, theta_1, category_params, active)) in (0, 1)
    params, chosen = readaptation.reset(theta, theta_1, category_params, True, active)
    assert int(chosen) != 2
    np.testing.assert_array_equal(params["w"], category_params["w"][int(chosen)])


# --- the engine ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_engine():
    family = nav2d.make_task_family("nav2d-isolated", nav2d.Nav2dConfig(horizon=5))
    policy = make_gaussian_policy(2, 2, PolicyConfig(hidden_sizes=(4,)))
    learner = make_policy_gradient_learner(family, policy, PolicyGradientConfig(num_trajectories=2))
    source = task_sources.fixed_pool(family.sample_tasks, 8)

    def make(outer_update):
        config = MetaConfig(categories="auto", max_categories=3, outer_iterations=1, inner_iterations=1,
                            tasks_per_category=2, outer_update=outer_update, category_init="persistent")
        engine = engine_lib.make_engine(learner, gradient(learner, optax.sgd(0.1)), source, config)
        state = engine.init(jax.random.key(0), policy.init(jax.random.key(1)))
        # θ_c differ from θ, so "kept" and "moved to θ" cannot be confused.
        state = state.replace(category_params=jax.tree.map(
            lambda x: x + 0.01 * jnp.arange(1, 4, dtype=x.dtype).reshape((3,) + (1,) * (x.ndim - 1)),
            state.category_params))
        return engine, state

    return make


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def _slot(tree, c):
    return jax.tree.map(lambda x: x[c], tree)


@pytest.mark.parametrize("outer_update", ["parallel", "sequential"])
def test_engine_chooses_n_and_idle_slots_keep_their_parameters(tiny_engine, outer_update):
    engine, state = tiny_engine(outer_update)
    features, truth = _blobs([[0.0] * state.centroids.shape[1], [10.0] + [0.0] * (state.centroids.shape[1] - 1)],
                             4, seed=5)
    state = engine_lib.classify(state, features, "auto")
    active = np.asarray(engine_lib.active(state))
    np.testing.assert_array_equal(active, [True, True, False])  # N = 2 of 3 slots, the first two
    _same_partition(np.asarray(state.labels), truth)

    after, metrics = engine.step(state)
    np.testing.assert_array_equal(_flat(_slot(after.category_params, 2)), _flat(_slot(state.category_params, 2)))
    for new, old in zip(jax.tree.leaves(_slot(after.rule_state, 2)), jax.tree.leaves(_slot(state.rule_state, 2))):
        np.testing.assert_array_equal(new, old)
    for c in (0, 1):  # the active ones took a step
        moved = _flat(_slot(after.category_params, c)) - _flat(_slot(state.category_params, c))
        assert np.linalg.norm(moved) > 1e-6
    theta_c = [_flat(_slot(after.category_params, c)) for c in range(3)]
    if outer_update == "parallel":  # θ is the mean of the two active θ_c, the idle one left out
        np.testing.assert_allclose(_flat(after.theta), (theta_c[0] + theta_c[1]) / 2, rtol=1e-5, atol=1e-6)
    else:  # θ ← θ + (θ_c − θ)/2 for c = 0, 1 in turn, each θ_c from its own (persistent) start
        theta = _flat(state.theta)
        for c in (0, 1):
            theta = theta + (theta_c[c] - theta) / 2
        np.testing.assert_allclose(_flat(after.theta), theta, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))

    # The pool now shows a third cluster: the two old categories keep their slots and
    # θ_c, and the new one takes the idle slot.
    width = state.centroids.shape[1]
    centres = np.zeros((3, width))
    centres[1, 0], centres[2, 1] = 10.0, 10.0
    three, truth = _blobs(centres, 3, seed=6)
    order = np.r_[0, 3, 6, 1, 4, 7, 2, 5]  # tasks 0..7 from blobs 0, 1, 2, 0, 1, 2, 0, 1
    reclassified = engine_lib.classify(after, three[order], "auto")
    np.testing.assert_array_equal(np.asarray(engine_lib.active(reclassified)), [True, True, True])
    labels = np.asarray(reclassified.labels)
    old_labels = np.asarray(state.labels)
    assert labels[0] == old_labels[0] and labels[1] == old_labels[4] and labels[2] == 2
    _same_partition(labels, truth[order])
    for c in (0, 1):
        np.testing.assert_array_equal(_flat(_slot(reclassified.category_params, c)), theta_c[c])


# --- the grid world and train ---------------------------------------------------------


SMALL = ["--outer-iterations", "2", "--inner-iterations", "3", "--maml-iterations", "30",
         "--classify-episodes", "300", "--quiet"]


def test_gridworld_auto_records_n_per_run_and_isolates_task_9(tmp_path, capsys):
    out = tmp_path / "grid"
    assert cli.main(["gridworld", "--out", str(out), "--runs", "4", "--categories", "auto", *SMALL]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    n = np.asarray(summary["num_categories"])
    labels, chosen = np.asarray(summary["categories"]), np.asarray(summary["readapt_category"])
    assert "N chosen in 4 runs: " in printed
    assert n.shape == (4,) and np.all((1 <= n) & (n <= 4))
    np.testing.assert_array_equal(n, labels.max(axis=1) + 1)
    assert np.all(chosen < n[:, None])  # the reset only ever picked a category the run has
    assert np.any(n == 2)  # the published goals: task 9 stands out even after 300 episodes
    for r in np.flatnonzero(n == 2):  # ... and it is the one alone
        np.testing.assert_array_equal(labels[r], [0] * 9 + [1])


@pytest.mark.slow  # a deep train and evaluate: ~35 s
def test_train_auto_logs_n_and_evaluates_with_idle_slots(tmp_path):
    config = deep_training.TrainConfig(
        env="nav2d-isolated", algo="maml2", horizon=5, rule="sgd", pool_size=6, checkpoint_every=0,
        policy=PolicyConfig(hidden_sizes=(4,)), inner=PolicyGradientConfig(num_trajectories=2, first_order=True),
        meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, categories="auto", max_categories=4,
                                 outer_iterations=2, tasks_per_category=2, classify_every=1))
    out = tmp_path / "run"
    _, (history,) = deep_training.train(config, out=str(out))
    record = json.loads((out / "categories.json").read_text())
    for row, entry in zip(history, record["classifications"]):
        assert row["classified"] and 1 <= row["categories"] <= 4
        used = sorted(set(row["labels"]))
        assert entry["categories"] == row["categories"] == len(used) and max(used) < 4
        # per-category numbers only for the slots holding a category
        assert [v is not None for v in row["category_loss"]] == [c in used for c in range(4)]
    summary = deep_evaluation.evaluate([str(out)], num_tasks=4, steps=1)
    last = set(record["classifications"][-1]["labels"])
    picked = {int(c) for counts in summary["chosen"].values() for c in counts}
    meaning = deep_evaluation._category_meaning(str(out), 4)[0]
    assert picked <= {meaning[c] for c in last}  # never an idle slot's −1
