"""MAML² in JAX: meta-RL via meta-learning for task categories.

The flat public surface; the modules named in README's layout hold the details.
"""

from maml2_jax.adaptation import adapt, run_episodes
from maml2_jax.clustering import kmeans_labels, membership
from maml2_jax.deep_maml2 import DeepMAML2Config, DeepMAML2State, adaptation_curve, make_maml2_iteration
from maml2_jax.deep_training import TrainConfig
from maml2_jax.deep_training import train as train_deep
from maml2_jax.envs import make_task_family
from maml2_jax.envs.gridworld import GridWorld
from maml2_jax.errors import ConfigError
from maml2_jax.gridworld_experiment import GridworldConfig, GridworldResult
from maml2_jax.gridworld_experiment import run as run_gridworld
from maml2_jax.learner import Learner
from maml2_jax.learners.sarsa import SarsaConfig, make_sarsa
from maml2_jax.maml2 import Schedule, maml, meta_train, readapt, run_schedules, update_tendency

__all__ = [
    "ConfigError", "DeepMAML2Config", "DeepMAML2State", "GridWorld", "GridworldConfig", "GridworldResult", "Learner",
    "SarsaConfig", "Schedule", "TrainConfig", "adapt", "adaptation_curve", "kmeans_labels", "maml", "make_maml2_iteration",
    "make_sarsa", "make_task_family", "membership", "meta_train", "readapt", "run_episodes", "run_gridworld",
    "run_schedules", "train_deep", "update_tendency",
]
