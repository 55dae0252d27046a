"""Task families by name: 2-D navigation (:mod:`.nav2d`) and brax locomotion (:mod:`.brax_tasks`).

Brax is imported only when a brax family is asked for, so the grid world and 2-D
navigation start without it.
"""

from __future__ import annotations

from maml2_jax.envs import nav2d
from maml2_jax.errors import ConfigError, check_positive_int


def family_names() -> tuple[str, ...]:
    """Every registered task family (imports the brax module)."""
    from maml2_jax.envs import brax_tasks

    return nav2d.TASK_FAMILIES + brax_tasks.TASK_FAMILIES


def make_task_family(name: str, horizon: int = 0, backend: str = "") -> nav2d.TaskFamily:
    """The family ``name`` with episodes of ``horizon`` steps (0: the family's default,
    100 for 2-D navigation and 200 for brax) on brax ``backend`` ("": the default)."""
    if horizon:
        check_positive_int("horizon", horizon)
    if name in nav2d.TASK_FAMILIES:
        if backend:
            raise ConfigError(f"a physics backend applies to brax families only, not {name!r}")
        config = nav2d.Nav2dConfig(horizon=horizon) if horizon else nav2d.Nav2dConfig()
        return nav2d.make_task_family(name, config)
    from maml2_jax.envs import brax_tasks

    if name not in brax_tasks.TASK_FAMILIES:
        raise ConfigError(f"unknown env {name!r}; choose from {', '.join(family_names())}")
    settings = {"horizon": horizon} if horizon else {}
    if backend:
        settings["backend"] = backend
    return brax_tasks.make_task_family(name, brax_tasks.BraxTaskConfig(**settings))
