"""The task-family registry: names, horizons and backends."""

import pytest

from maml2_jax import envs
from maml2_jax.errors import ConfigError


def test_every_family_is_registered():
    names = envs.family_names()
    assert {"nav2d", "nav2d-isolated", "halfcheetah-vel", "halfcheetah-vel-isolated", "ant-goal"} <= set(names)
    assert len(names) == len(set(names)) == 12


def test_horizon_defaults_and_overrides():
    assert envs.make_task_family("nav2d").config.horizon == 100
    assert envs.make_task_family("nav2d-isolated", horizon=30).config.horizon == 30


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(name="nav3d"), "unknown env 'nav3d'"), (dict(name="nav2d", backend="spring"), "brax families only"),
     (dict(name="nav2d", horizon=-1), "horizon")],
)
def test_bad_requests_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        envs.make_task_family(**kwargs)
