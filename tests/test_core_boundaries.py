"""The core knows only its interfaces: it imports no learner, rule, environment,
experiment or I/O module (a new learner or rule never needs a core edit)."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import maml2_jax.core
from maml2_jax.core import task_sources

FORBIDDEN = ("maml2_jax.learners", "maml2_jax.rules", "maml2_jax.envs", "maml2_jax.io", "maml2_jax.deep_",
             "maml2_jax.gridworld", "maml2_jax.lane_maml2", "maml2_jax.cli", "maml2_jax.rollout",
             "maml2_jax.networks", "maml2_jax.trpo")


def test_core_imports_nothing_outside_itself():
    core = pathlib.Path(maml2_jax.core.__file__).parent
    offenders = []
    for path in sorted(core.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(FORBIDDEN)]
    assert offenders == []


def test_growing_pool_adds_tasks_that_draws_then_reach():
    def sample(key, count):
        return jnp.arange(count, dtype=jnp.float32)[:, None] + 100.0, jnp.zeros((count,), jnp.int32)

    source = task_sources.growing(sample, capacity=4, initial=2)
    state = source.init(jax.random.key(0))
    assert int(state.size) == 2
    state = source.add(state, jnp.asarray([7.0]), jnp.int32(1))
    assert int(state.size) == 3 and float(state.pool[2, 0]) == 7.0 and int(state.truth[2]) == 1
    members = jnp.arange(4) < state.size
    drawn = np.asarray(source.draw(state, members, jax.random.key(1), 300))[:, 0]
    assert set(drawn) == {100.0, 101.0, 7.0}  # the placeholder beyond size is never drawn
