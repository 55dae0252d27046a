"""Shared fixtures for the maml2_jax tests: small, deterministic worlds."""

from __future__ import annotations

import pytest

from maml2_jax.envs.gridworld import GridWorld


@pytest.fixture(scope="session")
def published_world() -> GridWorld:
    """The 10x10 layout, walls and ten goals of the published experiments."""
    return GridWorld()


@pytest.fixture(scope="session")
def line_world() -> GridWorld:
    """A 1x3 corridor: start 0, goal 2, no walls — small enough to work by hand."""
    return GridWorld(rows=1, cols=3, walls=(), start=0, goals=(2,))


@pytest.fixture(autouse=True, scope="session")
def _compile_cache(tmp_path_factory):
    """Each distinct program compiles once per test worker, and nothing is cached in ~/.cache.

    The tests build their programs in fresh closures, which jit's in-memory cache (keyed
    on the function object) cannot reuse; JAX's persistent cache is keyed on the program
    itself (on a 2-core Intel Xeon VM the default run took 532 s with it, 604 s without).
    It lives in this worker's temporary folder, because the cache writes its files
    without an atomic rename and two processes must not share one. It is set in this
    process only: the subprocesses the tests start get ``MAML2_COMPILE_CACHE=off`` and
    compile for themselves (``test_interrupt`` interrupts a compilation).
    """
    import os

    import jax

    from maml2_jax.io import compile_cache

    previous = os.environ.get(compile_cache.ENV)
    os.environ[compile_cache.ENV] = "off"
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    if previous is None:
        os.environ.pop(compile_cache.ENV, None)
    else:
        os.environ[compile_cache.ENV] = previous
