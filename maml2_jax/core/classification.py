"""Classification: features → k-means (host side) → matching to the old categories → membership.

The one impure stage of MAML²: NumPy features in, integer labels out, scikit-learn
and scipy in between. It runs between compiled segments, never inside one.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from maml2_jax.errors import ConfigError


def kmeans_labels(features: np.ndarray, num_categories: int, seed: int) -> np.ndarray:
    """Clusters tasks into ``num_categories`` non-empty categories.

    Args:
      features: ``[T, F]`` one feature row per task.
      num_categories: N, at most T.
      seed: k-means seed (fixed seed, ``n_init=10``).

    Returns:
      ``[T]`` int labels in ``0..N-1``, every label used, numbered in order of each
      category's first task (category 0 holds task 0), so the same partition always
      reads the same.

    Degenerate cases: identical or too few distinct features make k-means leave
    clusters empty; each empty one then takes the task farthest from its own centroid
    out of a category with more than one task, so all N categories are non-empty.
    """
    features = np.asarray(features, np.float64)
    num_tasks = features.shape[0]
    if not 1 <= num_categories <= num_tasks:
        raise ConfigError(f"cannot make {num_categories} categories of {num_tasks} tasks")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = KMeans(n_clusters=num_categories, n_init=10, random_state=seed).fit(features)
    labels = model.labels_.astype(np.int64).copy()
    distance = np.linalg.norm(features - model.cluster_centers_[labels], axis=1)
    for empty in range(num_categories):
        if np.any(labels == empty):
            continue
        counts = np.bincount(labels, minlength=num_categories)
        movable = np.flatnonzero(counts[labels] > 1)
        task = movable[np.argmax(distance[movable])]
        labels[task] = empty
        distance[task] = -1.0
    return canonical_labels(labels)


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumbers categories in order of their first task."""
    order = {}
    for label in labels:
        order.setdefault(int(label), len(order))
    return np.asarray([order[int(label)] for label in labels], np.int32)


def membership(labels: np.ndarray, num_categories: int) -> np.ndarray:
    """``[..., N, T]`` bool from ``[..., T]`` labels: ``members[..., c, t]`` says task t is in c.

    Leading axes (runs) pass through, so a batch of runs needs no loop.
    """
    return np.arange(num_categories)[:, None] == np.asarray(labels)[..., None, :]


def match_to_previous(centroids: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """``perm [N]``: new cluster k becomes category ``perm[k]``, the assignment that
    minimises the summed distance between matched centroids (Hungarian method)."""
    cost = np.linalg.norm(centroids[:, None, :] - previous[None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(rows), np.int64)
    perm[rows] = cols
    return perm


def classify(features: np.ndarray, num_categories: int, seed: int,
             previous_centroids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``[T]`` and centroids ``[N, F]`` of the tasks' features.

    With ``previous_centroids`` the new clusters are renumbered to match them, so
    category c keeps "its" tasks, and its meta-learned θ_c, across re-classification.
    """
    features = np.asarray(features, np.float64)
    labels = kmeans_labels(features, num_categories, seed)
    centroids = np.stack([features[labels == c].mean(axis=0) for c in range(num_categories)])
    if previous_centroids is not None:
        perm = match_to_previous(centroids, np.asarray(previous_centroids, np.float64))
        labels = perm[labels].astype(np.int32)
        centroids = centroids[np.argsort(perm)]
    return labels, centroids
