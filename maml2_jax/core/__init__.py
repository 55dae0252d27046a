"""The MAML² method, knowing only a learner, a meta-update rule and a task source.

``types`` (the interfaces and :class:`RunState`), ``classification``,
``category_meta``, ``outer_update``, ``readaptation`` and ``train`` (the engine).
Imports nothing from learners, rules, envs or experiments.
"""

from maml2_jax.core.config import MetaConfig
from maml2_jax.core.train import Engine, classify, make_engine, run
from maml2_jax.core.types import Learner, MetaRule, RunState, SourceState, TaskSource

__all__ = ["Engine", "Learner", "MetaConfig", "MetaRule", "RunState", "SourceState", "TaskSource", "classify",
           "make_engine", "run"]
