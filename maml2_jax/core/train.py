r"""The MAML² engine: ``init(key) -> RunState`` and ``step(RunState) -> (RunState, metrics)``.

One outer iteration of double meta-learning (Fu et al. 2023, Alg. 1) is one pure,
compiled ``step``:

.. code-block:: text

   for every category c (sequential or parallel, see core.outer_update):
     θ_c ← CatMeta(c, θ or θ_c)          (core.category_meta: K_in rule steps)
   θ ← the outer move of θ towards the θ_c

Classification (:mod:`maml2_jax.core.classification`) runs on the host between
steps: ``features(state)`` is compiled (every pool task adapted from θ, or from a
fresh θ_init, and the learner's feature taken), k-means and the matching to the
previous centroids are NumPy, and :func:`classify` writes labels, membership and
centroids back into the state. :func:`run` is the host loop that does both and calls
back between steps (logging, checkpoints).

MAML is this engine with one category holding every task (or drawing fresh tasks):
the same ``step``, no classification.

Keys (all from the run key, ``state.key``): category steps use ``fold_in(key, n)``
with the counter n of :mod:`maml2_jax.core.category_meta`; the source's initial draw,
the features and the k-means seed of classification at iteration i use counters from
``0xB0000000``, ``0xD0000000 + i`` and ``0xC0000000 + i`` (far above any step counter).

A leading seeds axis: ``jax.vmap(step)`` over stacked states trains several seeds in
one compiled program; :func:`run` does that when given ``seeds=True``, and with a
``mesh`` splits the seeds over its devices (``shard_map``: each device steps its own
seeds, no communication).
"""

from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from maml2_jax import sharding
from maml2_jax.core import category_meta, classification, outer_update
from maml2_jax.core.config import MetaConfig
from maml2_jax.core.types import Learner, MetaRule, RunState, TaskSource, stack_copies
from maml2_jax.errors import NonFiniteError

SOURCE_COUNTER = 0xB0000000
KMEANS_COUNTER = 0xC0000000
FEATURE_COUNTER = 0xD0000000
INIT_COUNTER = 0xE0000000


class Engine(NamedTuple):
    """A MAML² run's pure parts, built once by :func:`make_engine`.

    Attributes:
      config: the schedule.
      learner, rule, source: the three interfaces.
      init: ``(key, theta=None) -> RunState``; θ defaults to ``learner.init``.
      step: ``RunState -> (RunState, metrics [N, ...])``, one outer iteration, jitted.
      features: ``RunState -> [P, F]``, the pool's classification features, jitted.
    """

    config: MetaConfig
    learner: Learner
    rule: MetaRule
    source: TaskSource
    init: Callable
    step: Callable
    features: Callable


def _counter(base: int, offset=0) -> jax.Array:
    """``base + offset`` as uint32 (fold_in's data), for the streams above the step counters."""
    return jnp.uint32(base) + jnp.asarray(offset).astype(jnp.uint32)


def _key(state: RunState) -> jax.Array:
    return jax.random.wrap_key_data(state.key)


def make_engine(learner: Learner, rule: MetaRule, source: TaskSource, config: MetaConfig,
                classifier: Learner | None = None, jit: bool = True) -> Engine:
    """Builds the engine.

    Args:
      learner: adapts tasks inside the rule (when the rule needs it) and for features.
      rule: the meta-update of one parameter set.
      source: where tasks come from; with N > 1 it must hold a pool to classify.
      config: N, K_out, K_in, B, modes.
      classifier: the learner whose adaptations give the features (default
        ``learner``; the published grid experiment learns from scratch for longer).
      jit: compile ``step`` and ``features`` (off: to debug them eagerly, or to call
        them inside a larger compiled function).
    """
    classifier = learner if classifier is None else classifier
    n = config.slots  # with an automatic N: N_max slots, the active ones masked
    if n > 1 and source.name == "fresh":
        raise ValueError("classification needs a task pool: fresh draws serve one category (MAML) only")

    def init(key, theta=None) -> RunState:
        key = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        wrapped = jax.random.wrap_key_data(key)
        if theta is None:
            theta = learner.init(jax.random.fold_in(wrapped, _counter(INIT_COUNTER)))
        source_state = source.init(jax.random.fold_in(wrapped, _counter(SOURCE_COUNTER)))
        pool_size = source_state.truth.shape[0]
        in_use = jnp.arange(pool_size) < source_state.size
        feature_shape = jax.eval_shape(features, _skeleton(theta, source_state, key))
        rule_state = rule.init(theta)
        return RunState(
            theta=theta,
            category_params=stack_copies(theta, n),
            rule_state=stack_copies(rule_state, n),
            source=source_state,
            labels=jnp.zeros((pool_size,), jnp.int32),
            # One category holds the whole pool from the start; N > 1 waits for classification.
            members=jnp.broadcast_to(in_use, (n, pool_size)) if n == 1 else jnp.zeros((n, pool_size), bool),
            centroids=jnp.zeros((n, feature_shape.shape[-1]), jnp.float32),
            classified=jnp.bool_(n == 1),
            iteration=jnp.int32(0),
            key=key,
        )

    def _skeleton(theta, source_state, key):
        # Just what ``features`` reads, to learn the feature size without computing it.
        return RunState(theta, None, None, source_state, None, None, None, None, jnp.int32(0), key)

    def category_fn(state, c, start, rule_state_c):
        keys = category_meta.step_keys(_key(state), state.iteration, c, n, config.inner_iterations)
        weights = None
        if config.category_batch == "proportional":
            counts = category_meta.batch_counts(jnp.sum(state.members, axis=-1), config.tasks_per_step)
            weights = category_meta.share_weights(counts[c], config.tasks_per_step)
        return category_meta.category_meta(rule, source, state.source, state.members[c], start, rule_state_c, keys,
                                           config.tasks_per_step, config.stop_tolerance, weights)

    def step(state: RunState):
        theta, category_params, rule_state, metrics = outer_update.outer_update(
            functools.partial(category_fn, state), state.theta, state.category_params, state.rule_state, n,
            config.outer_update, config.category_init, active(state) if config.automatic else None)
        state = state.replace(theta=theta, category_params=category_params, rule_state=rule_state,
                              iteration=state.iteration + 1)
        return state, metrics

    def features(state: RunState):
        key = jax.random.fold_in(_key(state), _counter(FEATURE_COUNTER, state.iteration))
        if config.classify_from == "init":
            start = classifier.init(jax.random.fold_in(_key(state), _counter(INIT_COUNTER)))
        else:
            start = state.theta
        pool = state.source.pool
        keys = jax.random.split(key, jax.tree.leaves(pool)[0].shape[0])

        def one(task, k):
            adapted, stats = classifier.adapt(start, task, k)
            return ravel_pytree(classifier.feature(start, adapted, stats))[0]

        return jax.vmap(one)(pool, keys)

    wrap = jax.jit if jit else (lambda f: f)
    return Engine(config, learner, rule, source, init, wrap(step), wrap(features))


def active(state: RunState) -> jax.Array:
    """``[..., N]`` bool: the category slots that hold at least one pool task."""
    return jnp.any(state.members, axis=-1)


def kmeans_seed(state: RunState) -> int:
    """The k-means seed of the classification at the state's iteration (host side)."""
    key = jax.random.fold_in(_key(state), _counter(KMEANS_COUNTER, state.iteration))
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def classify(state: RunState, features, categories=None) -> RunState:
    """Host side: k-means on the pool's features, matched to the previous centroids.

    Impure (scikit-learn on NumPy). Only the first ``source.size`` pool tasks take part.
    ``categories``: N, or ``"auto"`` to choose N (at most the state's slots) from the
    features; default: one category per slot.
    """
    size = int(state.source.size)
    n = state.num_categories
    features = np.asarray(features, np.float64)[:size]
    if not np.all(np.isfinite(features)):
        bad = int(np.sum(~np.all(np.isfinite(features), axis=1)))
        raise NonFiniteError(f"non-finite classification features of {bad} of {size} pool tasks before outer "
                             f"iteration {_iteration(state)} (the adaptation diverged): lower the inner step size")
    previous, previous_active = None, None
    if bool(state.classified):
        previous, previous_active = np.asarray(state.centroids), np.asarray(active(state))
    result = classification.classify_slots(features, n if categories is None else categories, n,
                                           kmeans_seed(state), previous, previous_active)
    pool_size = state.labels.shape[0]
    padded = np.zeros((pool_size,), np.int32)
    padded[:size] = result.labels
    members = classification.membership(padded, n)
    members[:, size:] = False
    return state.replace(labels=jnp.asarray(padded), members=jnp.asarray(members),
                         centroids=jnp.asarray(result.centroids, jnp.float32), classified=jnp.bool_(True))


def needs_classification(config: MetaConfig, iteration: int, classified: bool) -> bool:
    """Whether the host classifies before outer iteration ``iteration``."""
    if config.slots == 1:
        return False
    if not classified:
        return True
    return config.classify_every > 0 and iteration % config.classify_every == 0


def _iteration(state: RunState) -> int:
    return int(np.asarray(state.iteration).reshape(-1)[0])


def run(engine: Engine, state: RunState, iterations: int | None = None, callback: Callable | None = None,
        seeds: bool = False, placement=None, mesh=None) -> RunState:
    """The host loop: classify when due, step, call back; until ``iterations`` are done.

    Impure: host k-means and whatever ``callback`` does.

    Args:
      engine: the engine.
      state: a fresh or restored state (``seeds``: stacked ``[S, ...]`` states).
      iterations: the outer iteration to stop at (default K_out, the whole run). A
        restored state continues from its own iteration, so a resumed run repeats nothing.
      callback: ``(state, metrics, classified: bool) -> None`` after every step.
      seeds: the states carry a leading seeds axis; one compiled step trains all.
      placement: a sharding for every leaf of the state (the step's own output
        sharding, e.g. replicated over the task mesh), applied to ``state`` and to
        each classified state. jit compiles once per input sharding: without it, the
        host-built first and classified states would each compile the step again.
      mesh: with ``seeds``, a ``"runs"`` mesh (:func:`maml2_jax.sharding.run_mesh`)
        to split the seeds over, a multiple of its device count; ``placement``
        defaults to that split.

    Returns:
      The final state (the same type for every learner, rule and N).

    Raises:
      NonFiniteError: a step left a NaN or infinity in θ, θ_c, the rule state or a
        metric (one line naming them and the iteration); ``callback`` never sees it.
    """
    iterations = engine.config.outer_iterations if iterations is None else iterations
    step, features = engine.step, engine.features
    if seeds:
        step, features = over_seeds(engine, mesh)
        placement = sharding.split_runs(mesh) if placement is None else placement
    elif mesh is not None:
        raise ValueError("a mesh splits a seeds axis: pass seeds=True")
    place = (lambda tree: tree) if placement is None else (lambda tree: jax.device_put(tree, placement))
    state = place(state)
    while (i := _iteration(state)) < iterations:
        classified = needs_classification(engine.config, i, bool(np.asarray(state.classified).reshape(-1)[0]))
        if classified:
            f = np.asarray(features(state))  # every pool task's, gathered from all devices

            def classified_state(state=state, f=f):
                if seeds:
                    parts = [classify(jax.tree.map(lambda x: x[s], state), f[s], engine.config.categories)
                             for s in range(f.shape[0])]
                    return jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
                return classify(state, f, engine.config.categories)

            state = place(_classified_once(state, classified_state))
        state, metrics = step(state)
        bad = [name for name, ok in jax.device_get(_finite(state, metrics)).items() if not ok]
        if bad:
            raise NonFiniteError(f"non-finite {', '.join(bad)} in outer iteration {i}; stopped before saving "
                                 "it (lower the step sizes)")
        if callback is not None:
            callback(state, metrics, classified)
    return state


_CLASSIFICATION = ("labels", "members", "centroids", "classified")


def _classified_once(state: RunState, classified_state: Callable[[], RunState]) -> RunState:
    """``classified_state()``, computed by process 0 alone in a multi-process run and its
    classification shared with the others, which would otherwise each run k-means."""
    if jax.process_count() == 1:
        return classified_state()
    template = {name: np.zeros(np.shape(getattr(state, name)), getattr(state, name).dtype)
                for name in _CLASSIFICATION}

    def classification_fields():
        new = classified_state()
        return {name: np.asarray(getattr(new, name)) for name in _CLASSIFICATION}

    shared = sharding.from_process_zero(classification_fields, template)
    return state.replace(**{name: jnp.asarray(value) for name, value in shared.items()})


def compile_steps(engine: Engine, state: RunState, seeds: bool = False) -> float:
    """Compiles the step (and, with N > 1, the features) for ``state``; returns the seconds.

    Optional: :func:`run` would compile on its first step anyway. Calling this first
    lets a host show compilation as its own phase; the executables land in JAX's
    cache, so the loop then reuses them.
    """
    started = time.perf_counter()
    step, features = over_seeds(engine) if seeds else (engine.step, engine.features)
    if not hasattr(step, "lower"):  # an engine built with jit=False has nothing to compile
        return 0.0
    step.lower(state).compile()
    if engine.config.slots > 1:
        features.lower(state).compile()
    return time.perf_counter() - started


@jax.jit
def _finite(state: RunState, metrics) -> dict:
    """Whether θ, θ_c, the rule state and each metric hold only finite numbers (all seeds).

    The guard of :func:`run`: one small reduction per step, so a diverged run stops at
    the step that diverged, before anything of it is logged or checkpointed.
    """

    def ok(tree):
        floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in floats])) if floats else jnp.bool_(True)

    flags = {"θ": ok(state.theta), "θ_c": ok(state.category_params), "rule state": ok(state.rule_state)}
    for path, value in jax.tree_util.tree_flatten_with_path(metrics)[0]:
        flags[jax.tree_util.keystr(path, simple=True, separator="/")] = ok(value)
    return flags


@functools.lru_cache(maxsize=None)
def _vmapped_pair(step, features, mesh):
    return sharding.shard_runs(jax.vmap(step), mesh, 1), sharding.shard_runs(jax.vmap(features), mesh, 1)


def over_seeds(engine: Engine, mesh=None):
    """``(step, features)`` of the engine over a leading seeds axis, compiled once per
    engine and mesh; with a ``"runs"`` mesh the seeds are split over its devices."""
    return _vmapped_pair(engine.step, engine.features, mesh)
