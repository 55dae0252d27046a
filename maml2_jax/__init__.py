"""MAML² in JAX: meta-RL via meta-learning for task categories.

The flat public surface. The method lives in :mod:`maml2_jax.core` (one engine for
every learner), meta-update rules in :mod:`maml2_jax.rules`, learners in
:mod:`maml2_jax.learners`, task families in :mod:`maml2_jax.envs`.
"""

from maml2_jax.core import Engine, Learner, MetaConfig, MetaRule, RunState, TaskSource, make_engine, run
from maml2_jax.core import task_sources
from maml2_jax.core.classification import classify, kmeans_labels, membership
from maml2_jax.core.readaptation import adaptation_curve, update_tendency
from maml2_jax.deep_training import TrainConfig
from maml2_jax.deep_training import train as train_deep
from maml2_jax.envs import make_task_family
from maml2_jax.envs.gridworld import GridWorld
from maml2_jax.errors import ConfigError
from maml2_jax.gridworld_experiment import GridworldConfig, GridworldResult
from maml2_jax.gridworld_experiment import run as run_gridworld
from maml2_jax.learners.sarsa import SarsaConfig, make_sarsa
from maml2_jax.rules import gradient, reptile

__all__ = [
    "ConfigError", "Engine", "GridWorld", "GridworldConfig", "GridworldResult", "Learner", "MetaConfig", "MetaRule",
    "RunState", "SarsaConfig", "TaskSource", "TrainConfig", "adaptation_curve", "classify", "gradient",
    "kmeans_labels", "make_engine", "make_sarsa", "make_task_family", "membership", "reptile", "run", "run_gridworld",
    "task_sources", "train_deep", "update_tendency",
]
