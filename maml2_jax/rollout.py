r"""Fixed-horizon rollouts of a stochastic policy, as one ``lax.scan`` over time.

Generic: the environment and the policy come in as pure single-lane functions

- ``env_reset(task) -> (state, o_0)``,
- ``env_step(state, a_t, task) -> (state, o_{t+1}, r_{t+1})``,
- ``policy_sample(params, o_t, key) -> (a_t, log π(a_t | o_t))``,

and optionally ``env_terminated(state, task) -> bool``, so this module knows nothing of
any particular task family (bind an environment's config with ``functools.partial``,
as :func:`maml2_jax.envs.nav2d.make_task_family` does).

Every trajectory has exactly ``horizon`` rows, so batches keep one shape. An episode
that terminates early (``env_terminated`` true after step ``t``) keeps being stepped,
but its later rows are padding: their ``mask`` is 0 and their reward is zeroed. This
is how pytorch-maml-rl pads the finished episodes of a batch; every loss and
statistic downstream weighs steps by ``mask``.

Randomness: the action at step ``t`` is drawn with ``fold_in(key, t)``. Keying draws by
``t`` makes a rollout of horizon ``H`` the first ``H`` steps of a longer one with the
same key, and lets a plain Python loop reproduce the scan draw for draw.

The environment receives the policy's *raw* sample, and the trajectory stores that
raw action: an environment that clips (2-D navigation) clips internally, while the
policy gradient needs ``log π`` of the action the policy actually drew.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from maml2_jax.errors import check_positive_int

Params = Any
Task = Any


class Trajectory(NamedTuple):
    r"""One trajectory, time-major; index ``t`` runs over ``0 .. H−1``.

    In rlax naming, row ``t`` holds ``o_t``, ``a_t``, ``r_{t+1}`` and
    ``log π(a_t | o_t)``: the observation at which the action was taken, the action,
    the reward that followed it, and the action's log-probability under the policy
    that sampled it (the behaviour policy); ``mask`` says whether the row belongs to
    the episode (1) or is padding after it terminated (0). Batched trajectories put
    their batch axes in front: ``[..., H, ...]``.

    Attributes:
      obs: ``[H, obs_dim]``, ``o_t``.
      actions: ``[H, act_dim]``, ``a_t`` as sampled (before any clipping by the env).
      rewards: ``[H]``, ``r_{t+1}`` (0 on padding rows).
      log_probs: ``[H]``, ``log π(a_t | o_t)``.
      mask: ``[H]`` float32, 1 up to and including the step that ended the episode.
    """

    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    log_probs: jax.Array
    mask: jax.Array


def rollout(
    env_reset: Callable,
    env_step: Callable,
    policy_sample: Callable,
    params: Params,
    task: Task,
    key: jax.Array,
    horizon: int,
    env_terminated: Callable | None = None,
) -> Trajectory:
    """One trajectory of ``horizon`` steps of ``policy_sample(params, ·)`` on ``task``.

    Args:
      env_reset: ``task -> (state, obs)``.
      env_step: ``(state, action, task) -> (state, obs, reward)``.
      policy_sample: ``(params, obs, key) -> (action, log_prob)``.
      params: policy parameters, any pytree.
      task: the task, any pytree of arrays (passed to the env as is).
      key: PRNG key of the trajectory; step ``t`` uses ``fold_in(key, t)``.
      horizon: ``H``, a Python int (the scan length; static under ``jit``).
      env_terminated: ``(state, task) -> bool``, whether the episode ends on reaching
        ``state``; None (the default) for episodes that always last ``H`` steps.

    Returns:
      A :class:`Trajectory` with fields ``[H, ...]``.
    """
    check_positive_int("horizon", horizon)
    state, obs = env_reset(task)

    def one_step(carry, t):
        state, obs_t, alive = carry
        action_t, log_prob_t = policy_sample(params, obs_t, jax.random.fold_in(key, t))
        state, obs_tp1, reward_tp1 = env_step(state, action_t, task)
        row = Trajectory(obs_t, action_t, alive * reward_tp1, log_prob_t, alive)
        if env_terminated is not None:
            alive = jnp.where(env_terminated(state, task), 0.0, alive)
        return (state, obs_tp1, alive), row

    carry = (state, obs, jnp.ones((), jnp.float32))
    _, trajectory = jax.lax.scan(one_step, carry, jnp.arange(horizon, dtype=jnp.int32))
    return trajectory


def rollout_batch(
    env_reset: Callable,
    env_step: Callable,
    policy_sample: Callable,
    params: Params,
    task: Task,
    key: jax.Array,
    horizon: int,
    num_trajectories: int,
    env_terminated: Callable | None = None,
) -> Trajectory:
    """``N`` independent trajectories on one task with one set of parameters.

    Trajectory ``n`` uses key ``split(key, N)[n]``; the other arguments are those of
    :func:`rollout`.

    Returns:
      A :class:`Trajectory` with fields ``[N, H, ...]``.
    """
    check_positive_int("number of trajectories", num_trajectories)
    keys = jax.random.split(key, num_trajectories)
    one = lambda k: rollout(env_reset, env_step, policy_sample, params, task, k, horizon, env_terminated)
    return jax.vmap(one)(keys)


def rollout_tasks(
    env_reset: Callable,
    env_step: Callable,
    policy_sample: Callable,
    params: Params,
    tasks: Task,
    key: jax.Array,
    horizon: int,
    num_trajectories: int,
    params_per_task: bool = False,
    env_terminated: Callable | None = None,
) -> Trajectory:
    """``N`` trajectories on each of ``T`` tasks: :func:`rollout_batch` vmapped over tasks.

    Task ``i`` uses key ``split(key, T)[i]`` for its :func:`rollout_batch`.

    Args:
      env_reset, env_step, policy_sample, horizon, num_trajectories, env_terminated:
        as in :func:`rollout_batch`.
      params: one parameter pytree shared by all tasks, or, with
        ``params_per_task``, a pytree whose leaves carry a leading task axis ``[T, ...]``
        (adapted parameters, one set per task).
      tasks: pytree whose leaves carry a leading task axis ``[T, ...]``.
      key: PRNG key of the whole batch.
      params_per_task: whether ``params`` is stacked over tasks (a Python bool).

    Returns:
      A :class:`Trajectory` with fields ``[T, N, H, ...]``.
    """
    num_tasks = jax.tree_util.tree_leaves(tasks)[0].shape[0]
    keys = jax.random.split(key, num_tasks)
    one_task = lambda p, task, k: rollout_batch(
        env_reset, env_step, policy_sample, p, task, k, horizon, num_trajectories, env_terminated
    )
    return jax.vmap(one_task, in_axes=(0 if params_per_task else None, 0, 0))(params, tasks, keys)
