"""The meta-batch split over several (simulated) devices gives the one-device result."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from maml2_jax import sharding
from maml2_jax.errors import ConfigError

# The same tiny MAML-TRPO iteration, built from a mesh of all visible devices.
_SCRIPT = """
import json, sys
import jax
from jax.flatten_util import ravel_pytree
from maml2_jax import sharding
from maml2_jax.envs import nav2d
from maml2_jax.learners.policy_gradient import PolicyGradientConfig, make_policy_gradient_adapter
from maml2_jax.maml_trpo import make_maml_trpo_iteration
from maml2_jax.networks import PolicyConfig, make_gaussian_policy
from maml2_jax.trpo import TRPOConfig

family = nav2d.make_task_family("nav2d", nav2d.Nav2dConfig(horizon=10))
policy = make_gaussian_policy(2, 2, PolicyConfig(hidden_sizes=(8,)))
adapter = make_policy_gradient_adapter(family, policy, PolicyGradientConfig(num_trajectories=4))
mesh = sharding.task_mesh() if len(jax.devices()) > 1 else None
iteration = jax.jit(make_maml_trpo_iteration(family, policy, adapter, 1, 8, TRPOConfig(cg_damping=0.1), mesh=mesh))
params = policy.init(jax.random.key(1))
for i in range(2):
    params, metrics = iteration(params, jax.random.key(20 + i))
print(json.dumps({"devices": len(jax.devices()), "params": ravel_pytree(params)[0].tolist(),
                  "post_return": float(metrics.post_return)}))
"""


def _run(devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eight_simulated_devices_give_the_one_device_meta_iteration():
    one, eight = _run(1), _run(8)
    assert (one["devices"], eight["devices"]) == (1, 8)
    # Only the order of the reductions over tasks differs.
    np.testing.assert_allclose(eight["params"], one["params"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eight["post_return"], one["post_return"], rtol=1e-5)


def test_meta_batch_not_divisible_by_the_devices_is_refused():
    mesh = Mesh(np.asarray(jax.devices()[:1] * 1), (sharding.TASK_AXIS,))
    sharding.check_divisible(5, mesh)  # one device takes anything

    class _Three:  # the check reads only the mesh's device count
        devices = np.empty(3)

    with pytest.raises(ConfigError, match="meta-batch size 8 does not divide evenly over 3 devices"):
        sharding.check_divisible(8, _Three())
    sharding.check_divisible(9, _Three())
