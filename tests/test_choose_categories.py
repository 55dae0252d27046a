"""The automatic number of categories: synthetic pools with a known answer.

No JAX here: every pool is a small NumPy array drawn with a fixed seed, and each call
runs a few hundred k-means fits on a dozen points.
"""

from __future__ import annotations

import numpy as np
import pytest

from maml2_jax.core import classification as clustering
from maml2_jax.errors import ConfigError


def _blobs(centres, per_blob: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled pool of ``per_blob`` tasks around each centre, and its true labels."""
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, np.float64)
    truth = rng.permutation(np.repeat(np.arange(len(centres)), per_blob))
    return centres[truth] + rng.normal(0.0, spread, (len(truth), centres.shape[1])), truth


def _isolated(num_tasks: int, dims: int, distance: float, seed: int) -> np.ndarray:
    """A standard-normal blob of ``num_tasks − 1`` tasks and task 3 ``distance`` away from it."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_tasks, dims))
    features[3] = distance * np.ones(dims) / np.sqrt(dims)
    return features


# Centres 10 apart; the blobs' own spread is 0.5 per coordinate.
TWO = [[0.0] * 6, [10.0] + [0.0] * 5]
THREE = TWO + [[5.0, 8.66] + [0.0] * 4]


@pytest.mark.parametrize("centres", [TWO, THREE], ids=["two", "three"])
@pytest.mark.parametrize("seed", [0, 1])
def test_well_separated_blobs_give_their_number(centres, seed):
    features, truth = _blobs(centres, 5, 0.5, seed)
    n, scores = clustering.choose_categories(features, 5, seed)
    assert n == len(centres)
    # The scores say why: N is the best silhouette, clear of the reference pools.
    assert np.nanargmax(scores.silhouette) + 1 == n
    assert scores.silhouette[n - 1] > scores.silhouette_threshold
    np.testing.assert_array_equal(clustering.kmeans_labels(features, n, seed), clustering.canonical_labels(truth))


@pytest.mark.parametrize("shape", [(20, 2), (12, 3), (20, 5)])
def test_one_gaussian_blob_gives_one(shape):
    """Its best split still has a positive silhouette (in 2-D about 0.4), so a rule
    without the reference pools would return 2 or more."""
    features = np.random.default_rng(7).normal(size=shape)
    n, scores = clustering.choose_categories(features, 5, 0)
    assert n == 1
    assert np.nanmax(scores.silhouette) > 0.2
    assert np.nanmax(scores.silhouette) < scores.silhouette_threshold


@pytest.mark.parametrize("num_tasks,dims,distance", [(20, 5, 10.0), (6, 4, 40.0), (8, 4, 40.0)],
                         ids=["large-pool", "six-tasks", "eight-tasks"])
def test_one_isolated_task_gets_a_category_of_its_own(num_tasks, dims, distance):
    """The MAML² case. In the small pools the silhouette alone misses it (a one-task
    category's silhouette is 0), and the gap statistic has to find it."""
    features = _isolated(num_tasks, dims, distance, seed=3)
    n, scores = clustering.choose_categories(features, 4, 0)
    assert n == 2
    labels = clustering.kmeans_labels(features, 2, 0)
    assert np.sum(labels == labels[3]) == 1
    if num_tasks < 10:
        assert scores.silhouette[1] < scores.silhouette_threshold
        assert scores.gap[1] - scores.gap[0] > clustering.MARGIN * scores.gap_spread[1]


def test_one_elongated_correlated_blob_gives_one():
    """A Gaussian with a decaying spectrum in rotated coordinates. Reference pools drawn
    from the box of the raw coordinates (not the principal axes) would be far more
    spread than the pool, and the rule would answer 2 or 3."""
    rng = np.random.default_rng(1)
    rotation, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    features = (rng.normal(size=(12, 20)) * 0.8 ** np.arange(20)) @ rotation
    assert clustering.choose_categories(features, 4, 0)[0] == 1


@pytest.mark.parametrize("num_tasks", [1, 2, 7])
def test_identical_features_give_one(num_tasks):
    features = np.tile([[0.3, -1.0, 2.0]], (num_tasks, 1))
    n, scores = clustering.choose_categories(features, 4, 0)
    assert n == 1
    assert np.all(np.isnan(scores.silhouette))


def test_one_task_and_two_tasks_give_one():
    assert clustering.choose_categories(np.array([[1.0, 2.0]]), 3, 0)[0] == 1
    # Two distinct tasks: only the partition into singletons, which has no silhouette.
    assert clustering.choose_categories(np.array([[0.0, 0.0], [100.0, 0.0]]), 3, 0)[0] == 1


def test_few_distinct_features_cap_the_number():
    """Three distinct rows, each repeated: N_max is 3 whatever max_categories says, and
    the exact groups (zero dispersion) are found."""
    rows = np.random.default_rng(2).normal(size=(3, 4))
    features = rows[np.tile(np.arange(3), 4)]
    n, scores = clustering.choose_categories(features, 8, 0)
    assert n == 3
    assert scores.silhouette.shape == scores.gap.shape == (3,)
    assert scores.silhouette[2] == pytest.approx(1.0)


def test_max_categories_caps_the_number():
    features, _ = _blobs(THREE, 5, 0.5, 0)
    n, scores = clustering.choose_categories(features, 2, 0)
    assert n == 2
    assert scores.silhouette.shape == (2,)
    assert clustering.choose_categories(features, 1, 0)[0] == 1


@pytest.mark.parametrize("pool", ["three-blobs", "isolated"])
def test_invariant_to_task_order_and_scale(pool):
    features = _blobs(THREE, 4, 0.5, 4)[0] if pool == "three-blobs" else _isolated(12, 5, 9.0, 4)
    n, scores = clustering.choose_categories(features, 4, 11)
    assert n == (3 if pool == "three-blobs" else 2)
    order = np.random.default_rng(0).permutation(len(features))
    for other in (features[order], features * 1e-3, features[order[::-1]] * 250.0):
        other_n, other_scores = clustering.choose_categories(other, 4, 11)
        assert other_n == n
        for got, want in zip(other_scores, scores):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_same_seed_same_answer_and_the_seed_is_used():
    features = _isolated(12, 5, 6.0, 8)
    first = clustering.choose_categories(features, 4, 5)
    second = clustering.choose_categories(features.copy(), 4, 5)
    assert first[0] == second[0]
    for a, b in zip(first[1], second[1]):
        np.testing.assert_array_equal(a, b)
    other = clustering.choose_categories(features, 4, 6)[1]
    assert other.silhouette_threshold != first[1].silhouette_threshold  # new reference pools


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused(bad):
    features = np.zeros((5, 3))
    features[2, 1] = bad
    with pytest.raises(ValueError, match="1 of 5 tasks are not finite"):
        clustering.choose_categories(features, 3, 0)


def test_bad_arguments_are_refused():
    features = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(ConfigError, match="max categories"):
        clustering.choose_categories(features, 0, 0)
    with pytest.raises(ConfigError, match="seed"):
        clustering.choose_categories(features, 3, -1)
    with pytest.raises(ConfigError, match="references"):
        clustering.choose_categories(features, 3, 0, references=1)
    with pytest.raises(ValueError, match="non-empty"):
        clustering.choose_categories(np.zeros((0, 3)), 3, 0)
    with pytest.raises(ValueError, match="matrix"):
        clustering.choose_categories(np.zeros(4), 3, 0)
