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
def _no_compile_cache_in_home():
    """The CLI's persistent compilation cache stays off in the tests (no writes to ~/.cache)."""
    import os

    from maml2_jax.io import compile_cache

    previous = os.environ.get(compile_cache.ENV)
    os.environ[compile_cache.ENV] = "off"
    yield
    if previous is None:
        os.environ.pop(compile_cache.ENV, None)
    else:
        os.environ[compile_cache.ENV] = previous
