"""Task classification: k-means labels and the published isolated task."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml2_jax.core import classification as clustering
from maml2_jax.errors import ConfigError
from maml2_jax.learners.sarsa import make_sarsa

from helpers import adapt_jit, lanes


def _is_canonical(labels) -> bool:
    """Categories numbered 0, 1, 2, … in order of their first task."""
    seen = []
    for label in labels:
        if label not in seen:
            if label != len(seen):
                return False
            seen.append(label)
    return True


def test_well_separated_clusters_are_found():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0] * 6, [10.0] * 6, [0.0, 10.0] * 3])
    truth = rng.permutation(np.repeat([2, 0, 1], 5))  # 15 tasks, 3 clusters, shuffled
    features = centres[truth] + rng.normal(0.0, 0.3, (15, 6))
    for seed in (0, 1, 2):
        labels = clustering.kmeans_labels(features, 3, seed)
        assert labels.shape == (15,)
        # Same partition as the truth, and canonically numbered.
        np.testing.assert_array_equal(labels, clustering.canonical_labels(truth))


def test_canonical_numbering():
    np.testing.assert_array_equal(clustering.canonical_labels(np.array([2, 2, 0, 1, 0, 2])), [0, 0, 1, 2, 1, 0])
    rng = np.random.default_rng(1)
    features = rng.normal(size=(12, 4))
    for seed in range(4):
        labels = clustering.kmeans_labels(features, 4, seed)
        assert labels[0] == 0 and _is_canonical(labels)


@pytest.mark.parametrize("num_tasks,num_categories", [(6, 3), (10, 3), (4, 4), (5, 1)])
def test_identical_features_still_fill_every_category(num_tasks, num_categories):
    features = np.ones((num_tasks, 8))
    labels = clustering.kmeans_labels(features, num_categories, seed=0)
    assert labels.shape == (num_tasks,)
    assert set(labels.tolist()) == set(range(num_categories))
    assert _is_canonical(labels)


def test_too_few_distinct_features_fill_every_category():
    # Two distinct points, three categories: k-means alone would leave one empty.
    features = np.array([[0.0, 0.0]] * 4 + [[5.0, 5.0]] * 3)
    labels = clustering.kmeans_labels(features, 3, seed=0)
    assert set(labels.tolist()) == {0, 1, 2}
    # The two real groups are not mixed: the category that holds tasks of both
    # groups cannot exist.
    for c in range(3):
        group_ids = {0 if t < 4 else 1 for t in np.flatnonzero(labels == c)}
        assert len(group_ids) == 1


def test_membership():
    members = clustering.membership(np.array([0, 1, 0, 2]), 3)
    np.testing.assert_array_equal(members, [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    assert members.dtype == bool
    runs = clustering.membership(np.array([[0, 1, 0, 2], [2, 2, 1, 0]]), 3)
    assert runs.shape == (2, 3, 4)
    np.testing.assert_array_equal(runs[0], members)
    np.testing.assert_array_equal(runs[1], clustering.membership(np.array([2, 2, 1, 0]), 3))


@pytest.mark.parametrize("num_categories", [0, 5, 11])
def test_bad_number_of_categories(num_categories):
    features = np.zeros((4, 3)) if num_categories != 11 else np.zeros((10, 3))
    with pytest.raises(ConfigError, match=str(num_categories)):
        clustering.kmeans_labels(features, num_categories, seed=0)


def test_task_9_is_isolated_on_learned_features(published_world):
    """DESIGN §1.1: learning every published task from scratch (2000 episodes) and
    clustering flatten(θ ⊙ μ) into 3 categories puts task 9 (goal 90) alone.

    Three independent learnings (3 × 10 lanes in one adaptation), each clustered with
    its own k-means seed.
    """
    learner = make_sarsa(published_world, log_episodes=1, track_visits=True)
    runs, tasks = 3, published_world.num_tasks
    goals = jnp.tile(jnp.asarray(published_world.task_array()), runs)
    keys = jax.random.split(jax.random.key(2023), runs * tasks)
    agents = adapt_jit(learner, lanes(learner.init_params(), runs * tasks), goals, keys, 2000)
    features = np.asarray(jax.vmap(learner.feature)(agents)).reshape(runs, tasks, -1)
    assert features.shape == (3, 10, 400)
    assert np.all(np.isfinite(features)) and np.all(np.abs(features).sum(-1) > 0)
    for run, seed in zip(range(runs), (0, 17, 123)):
        labels = clustering.kmeans_labels(features[run], 3, seed)
        assert set(labels.tolist()) == {0, 1, 2}
        assert labels[9] not in labels[:9], (run, labels)
