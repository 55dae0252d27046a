"""Task classification: k-means on the learner's features, host side.

The one impure stage of MAML²: NumPy features in, integer labels out, scikit-learn in
between. It runs between compiled segments, never inside one.
"""

from __future__ import annotations

import warnings

import numpy as np
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
