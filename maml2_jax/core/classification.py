"""Classification: features → k-means (host side) → matching to the old categories → membership.

The one impure stage of MAML²: NumPy features in, integer labels out, scikit-learn
and scipy in between. It runs between compiled segments, never inside one.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from maml2_jax.errors import ConfigError, check_int, check_positive_int, check_seed


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
    # scikit-learn and SciPy are imported on first use: together they are a third of
    # the package's import time, which every command would pay.
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

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


def match_to_previous(centroids: np.ndarray, previous: np.ndarray, previous_active: np.ndarray | None = None,
                      slots: int | None = None) -> np.ndarray:
    """``perm [n]``: new cluster k becomes category slot ``perm[k]``.

    The new clusters are matched to the previously active slots by the assignment
    that minimises the summed distance between matched centroids (Hungarian method,
    rectangular when the number of categories changed). With more new clusters than
    old categories, the unmatched clusters take the lowest free slots in order; with
    fewer, the unmatched old slots fall idle.

    Args:
      centroids: ``[n, F]`` the new clusters' centroids.
      previous: ``[S, F]`` the previous centroid of every slot.
      previous_active: ``[S]`` bool, the slots that held a category (default: all).
      slots: S, the number of category slots (default ``len(previous)``).
    """
    previous = np.asarray(previous, np.float64)
    slots = len(previous) if slots is None else slots
    old = np.arange(len(previous)) if previous_active is None else np.flatnonzero(previous_active)
    if len(centroids) > slots:
        raise ValueError(f"{len(centroids)} clusters do not fit in {slots} category slots")
    from scipy.optimize import linear_sum_assignment

    cost = np.linalg.norm(centroids[:, None, :] - previous[old][None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.full(len(centroids), -1, np.int64)
    perm[rows] = old[cols]
    free = [s for s in range(slots) if s not in set(perm[rows].tolist())]
    unmatched = np.flatnonzero(perm < 0)
    perm[unmatched] = free[:len(unmatched)]
    return perm


class Classification(NamedTuple):
    """A classification of a pool into category slots.

    Attributes:
      labels: ``[T]`` int32 slot of each task.
      centroids: ``[S, F]`` float64 centroid of each slot (zeros for an idle slot).
      active: ``[S]`` bool, the slots holding a category (the first N without matching).
      scores: what :func:`choose_categories` measured, or None for a fixed N.
    """

    labels: np.ndarray
    centroids: np.ndarray
    active: np.ndarray
    scores: "CategoryScores | None"

    @property
    def num_categories(self) -> int:
        return int(np.sum(self.active))


AUTO = "auto"


def classify_slots(features: np.ndarray, categories, slots: int, seed: int,
                   previous_centroids: np.ndarray | None = None, previous_active: np.ndarray | None = None,
                   references: int = 20) -> Classification:
    """k-means of the tasks' features into ``slots`` category slots, matched to the previous ones.

    Args:
      features: ``[T, F]`` one row per task.
      categories: N, or ``"auto"``: N chosen from the features by
        :func:`choose_categories` with N_max = ``min(slots, T)``.
      slots: S >= N, the number of category parameter sets the run holds.
      seed: the k-means (and reference-pool) seed.
      previous_centroids, previous_active: the previous classification's centroids
        ``[S, F]`` and active slots ``[S]``: with them the new categories are matched to
        the old ones (:func:`match_to_previous`), so a category keeps its slot, and its
        θ_c, when the pool grows or N changes.
      references: B of :func:`choose_categories`.

    Returns:
      A :class:`Classification`. Without previous centroids the categories take slots
      0..N−1, numbered as :func:`kmeans_labels` numbers them.
    """
    features = np.asarray(features, np.float64)
    check_positive_int("category slots", slots)
    scores = None
    if categories == AUTO:
        n, scores = choose_categories(features, min(slots, features.shape[0]), seed, references)
    else:
        n = check_positive_int("categories", categories)
        if n > slots:
            raise ConfigError(f"{n} categories do not fit in {slots} category slots")
    labels = kmeans_labels(features, n, seed).astype(np.int64)
    centroids = np.stack([features[labels == c].mean(axis=0) for c in range(n)])
    perm = np.arange(n)
    if previous_centroids is not None:
        perm = match_to_previous(centroids, previous_centroids, previous_active, slots)
    slot_centroids = np.zeros((slots, features.shape[1]))
    slot_centroids[perm] = centroids
    active = np.zeros(slots, bool)
    active[perm] = True
    return Classification(perm[labels].astype(np.int32), slot_centroids, active, scores)


def classify(features: np.ndarray, num_categories: int, seed: int,
             previous_centroids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``[T]`` and centroids ``[N, F]`` of the tasks' features (N fixed).

    With ``previous_centroids`` the new clusters are renumbered to match them, so
    category c keeps "its" tasks, and its meta-learned θ_c, across re-classification.
    :func:`classify_slots` is the general form (an automatic N, idle slots).
    """
    result = classify_slots(features, num_categories, num_categories, seed, previous_centroids)
    return result.labels, result.centroids


# An answer N >= 2 must beat the reference pools by this many standard errors.
MARGIN = 2.0


class CategoryScores(NamedTuple):
    """What :func:`choose_categories` measured, indexed by N − 1 (N = 1 … N_max).

    Attributes:
      silhouette: ``[N_max]`` mean silhouette of the pool's k-means partition into N
        categories; NaN at N = 1, where a silhouette is undefined.
      silhouette_threshold: what the best silhouette must exceed for N >= 2: the mean
        of the reference pools' best silhouettes plus ``MARGIN`` standard errors.
      gap: ``[N_max]`` the gap statistic, ``mean_b log W*_b(N) − log W(N)``, W the
        within-category sum of squares of the pool, W*_b that of reference pool b.
      gap_spread: ``[N_max]`` its standard error, ``sd_b log W*_b(N) · sqrt(1 + 1/B)``.

    Every entry is NaN when N_max = 1 (nothing was measured).
    """

    silhouette: np.ndarray
    silhouette_threshold: float
    gap: np.ndarray
    gap_spread: np.ndarray


def choose_categories(features: np.ndarray, max_categories: int, seed: int,
                      references: int = 20) -> tuple[int, CategoryScores]:
    """The number of categories N in ``1 … N_max`` that the tasks' features support.

    The pool is compared with B *reference pools*: as many tasks drawn uniformly from
    the box the pool spans along its principal axes, the cluster-free reference of the
    gap statistic (Tibshirani, Walther & Hastie 2001). The pool and every reference
    pool are clustered by :func:`kmeans_labels` for N = 2 … N_max; then

    1. the candidate N* is the N with the best mean silhouette s(N) (Rousseeuw 1987),
       the smallest on ties;
    2. the answer is N* if the pool beats the references by more than ``MARGIN``
       standard errors on either score, and 1 otherwise:

       - silhouette: ``s(N*) > mean_b r_b + MARGIN · sd_b r_b · sqrt(1 + 1/B)``, r_b
         reference b's best silhouette over N = 2 … N_max;
       - gap: ``gap(N*) − gap(1) > MARGIN · gap_spread(N*)`` (see
         :class:`CategoryScores`): splitting into N* categories shrinks the
         within-category dispersion by more than it shrinks a reference pool's.

    The silhouette sees a task isolated among near-equidistant high-dimensional
    features (the grid world's task 9); the gap sees a far outlier in a small pool,
    where the silhouette of a one-task category (0 by convention) hides it.

    N_max = ``min(max_categories, distinct feature rows, tasks − 1)``: a partition
    into singletons has no silhouette, so two distinct tasks get N = 1. One task, or
    identical features, give N = 1 without any clustering.

    Deterministic for a given seed, and invariant to the order of the tasks (they are
    sorted first) and to a uniform scaling of the features (they are normalised).
    Cost: ``(B + 1)(N_max − 1)`` k-means runs, about half a second for 10 tasks,
    N_max = 4 and B = 20.

    Args:
      features: ``[T, F]`` one feature row per task; every value finite.
      max_categories: the largest N considered, >= 1.
      seed: seeds k-means and the reference pools, in ``[0, 2**32)``.
      references: B, the number of reference pools, >= 2.

    Returns:
      ``(N, scores)``: the chosen number of categories and a :class:`CategoryScores`.

    Raises:
      ValueError: ``features`` is not a non-empty matrix or holds NaN or infinity.
      ConfigError: ``max_categories``, ``seed`` or ``references`` is out of range.
    """
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    check_positive_int("max categories", max_categories)
    check_seed("k-means seed", seed)
    check_int("references", references, low=2)
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [tasks, features] matrix, got shape {features.shape}")
    num_tasks = features.shape[0]
    finite = np.all(np.isfinite(features), axis=1)
    if not np.all(finite):
        raise ValueError(f"features of {int(np.sum(~finite))} of {num_tasks} tasks are not finite (NaN or inf): "
                         "cannot choose the number of categories")
    most = min(max_categories, np.unique(features, axis=0).shape[0], num_tasks - 1)
    if most < 2:
        return 1, CategoryScores(np.full(1, np.nan), float("nan"), np.full(1, np.nan), np.full(1, np.nan))

    # Sorted rows make the k-means starts independent of the task order.
    features = features[np.lexsort(features.T[::-1])]
    centred = features - features.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    rank = int(np.sum(singular > singular[0] * max(centred.shape) * np.finfo(np.float64).eps))
    axes = axes[:rank]
    # Each axis points towards its largest loading: a reflected box would draw other pools.
    axes = axes * np.sign(axes[np.arange(rank), np.argmax(np.abs(axes), axis=1)])[:, None]
    pool = centred @ axes.T
    pool /= np.sqrt(np.mean(np.sum(pool**2, axis=1)))
    low, high = pool.min(axis=0), pool.max(axis=0)
    reference_pools = low + np.random.default_rng(seed).random((references,) + pool.shape) * (high - low)

    def scores(x):
        """Silhouettes [N_max] (NaN at N = 1) and log within-category sums of squares [N_max]."""
        silhouette, log_dispersion = [np.nan], [_log_dispersion(x, np.zeros(len(x), np.int32))]
        for n in range(2, most + 1):
            labels = kmeans_labels(x, n, seed)
            silhouette.append(silhouette_score(x, labels))
            log_dispersion.append(_log_dispersion(x, labels))
        return np.array(silhouette), np.array(log_dispersion)

    # k-means on a few dozen points is all thread start-up: one thread is ~20x faster.
    with threadpool_limits(limits=1):
        silhouette, log_dispersion = scores(pool)
        reference_silhouette, reference_log_dispersion = map(np.stack, zip(*map(scores, reference_pools)))
    inflation = np.sqrt(1 + 1 / references)
    best_reference = np.nanmax(reference_silhouette, axis=1)
    threshold = float(best_reference.mean() + MARGIN * best_reference.std() * inflation)
    gap = reference_log_dispersion.mean(axis=0) - log_dispersion
    spread = reference_log_dispersion.std(axis=0) * inflation
    candidate = int(np.nanargmax(silhouette))  # N* − 1
    accepted = silhouette[candidate] > threshold or gap[candidate] - gap[0] > MARGIN * spread[candidate]
    return (candidate + 1 if accepted else 1), CategoryScores(silhouette, threshold, gap, spread)


def _log_dispersion(x: np.ndarray, labels: np.ndarray) -> float:
    """log W: log of the summed squared distances of the points to their category means
    (−inf for a partition into identical points, whose gap is then +inf)."""
    dispersion = sum(np.sum((x[labels == c] - x[labels == c].mean(axis=0)) ** 2) for c in np.unique(labels))
    with np.errstate(divide="ignore"):
        return float(np.log(dispersion))
