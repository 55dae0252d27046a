r"""Locomotion task families on brax robots: the MuJoCo benchmarks of MAML, in JAX.

Two brax robots, the 2-D ``halfcheetah`` and the 3-D ``ant``, each with the reward
replaced by a task-dependent one. Every reward is built from the torso's motion over
one control step of length :math:`\Delta t` (``env.dt``, 0.05 s for both robots on
every backend):

.. math::
   v_t = \frac{p_{t+1} - p_t}{\Delta t} \in R^2, \qquad
   c(a) = w \lVert \bar a \rVert_2^2, \qquad \bar a = \mathrm{clip}(a, -1, 1),

where :math:`p_t` is the torso's ``(x, y)`` position (``pipeline_state.x.pos[0, :2]``),
:math:`\bar a` the clipped action the robot actually receives and :math:`w`
``ctrl_cost_weight`` (0.05). The velocity is the *mean* over the step, a finite
difference of positions, as brax's own rewards and the MAML environments
(``(xposafter − xposbefore) / dt``) define it, not the instantaneous ``qd`` at its end.

======================  ==================  ===================================================
family                  task                reward :math:`r_{t+1}`
======================  ==================  ===================================================
``halfcheetah-vel``     ``v* ~ U[0, 2]``    :math:`-\lvert v_x - v^* \rvert - c(a)`
``halfcheetah-dir``     ``d ∈ {−1, +1}``    :math:`d\, v_x - c(a)`
``ant-vel``             ``v* ~ U[0, 3]``    :math:`-\lvert v_x - v^* \rvert - c(a)`
``ant-dir``             ``φ ~ U[0, 2π)``    :math:`v \cdot (\cos φ, \sin φ) - c(a)`
``ant-goal``            ``g`` uniform on    :math:`-\lVert p_{t+1} - g \rVert_1 - c(a)`
                        the disc ``‖g‖ ≤ 3``
======================  ==================  ===================================================

A task is a float32 vector, ``[1]`` for the first four families (``v*``, ``d`` or
``φ``) and ``[2]`` for ``ant-goal``; a batch of tasks is ``[T, task_dim]``. Tasks are
data passed to :func:`step`, so one compiled, vmapped step serves any mix of tasks.

Choices and omissions, against the original MuJoCo tasks:

- Ant rewards keep only the task term and the control cost: no survival bonus, no
  contact cost, no health check. Brax's ant raises ``done`` when the torso leaves
  ``z ∈ [0.2, 1]``; here ``done`` is ignored for every robot and episodes always run
  the fixed ``horizon`` (an upside-down ant keeps stepping; nothing resets mid-episode).
- One control-cost weight, 0.05, for every family (the MAML cheetah's
  ``0.5 · 1e-1``); gym's MuJoCo Ant used 0.5.
- ``ant-goal`` uses the L1 distance of ProMP's ``AntRandGoal`` and, unlike the other
  ant families, observes the torso's ``(x, y)``: brax's ant observation drops them,
  which would leave the goal task to dead reckoning. Its observation is brax's with
  ``exclude_current_positions_from_observation=False`` (``q`` then ``qd``, 29 values),
  built by prepending ``q[:2]`` to the default one so every ant family shares one
  compiled physics step.
- Resets are deterministic: brax's reset draws its initial-state noise from a fixed
  key (``reset_seed``), so every episode of every task starts from the same state and
  all randomness of a rollout is the policy's.

Isolated-category distributions
-------------------------------
``<family>-isolated`` draws most tasks from *dense* clusters and
``nav2d.num_isolated(T, isolated_fraction)`` (10 % by default) from an *isolated*
cluster far away, with ground-truth categories (dense clusters first, then isolated)
and a random task order, as :func:`maml2_jax.envs.nav2d.sample_isolated_tasks` does.
Cluster sizes are functions of ``T`` alone.

======================  =================================  ==============================
family                  dense                              isolated
======================  =================================  ==============================
halfcheetah-vel         ``v* ~ U[0, 0.5]``                 ``v* ~ U[1.75, 2]``
halfcheetah-dir         ``d = +1``                         ``d = −1``
ant-vel                 ``v* ~ U[0, 0.75]``                ``v* ~ U[2.5, 3]``
ant-dir                 ``φ ∈ [−π/8, π/8]`` (mod 2π)       ``φ ∈ [7π/8, 9π/8]``
ant-goal                discs r = 0.3 at (1.5, ±1.5)       disc r = 0.3 at (−2, 0)
======================  =================================  ==============================

Physics backend
---------------
``BraxTaskConfig.backend`` picks brax's pipeline. Measured by
``benchmarks/brax_backends.py`` on a 2-core CPU shared with another job (one jitted
reset plus 50 steps of 32 environments, random actions; compile = lower + compile;
``benchmarks/results/brax_backends-cpu-2core.json``):

=============  ===========================  ===========================
backend        halfcheetah-vel              ant-vel
               compile s    steps/s         compile s    steps/s
=============  ===========================  ===========================
spring         16.7         7 450           9.8          10 700
positional     26.0         2 650           19.2         3 970
generalized    20.2         3 100           13.9         4 910
mjx            20.1         950             15.3         15 700
=============  ===========================  ===========================

``spring`` compiles fastest for both robots (17–30 % below the next), which dominates
tests and short runs on a 2-core CPU, and steps fastest on the cheetah (2.4× the
next); only mjx steps the ant faster (1.5×) at 1.6× its compile time. So ``spring``
is the default on CPUs. No GPU or TPU has measured the backends yet; until one does,
the default is the same there (``benchmarks/brax_backends.py`` is the measurement).
Spring and positional use brax's retuned timesteps and gears for these robots, so a
policy does not transfer between backends.

``mjx`` is MuJoCo itself, compiled by XLA (the ``mujoco-mjx`` package, through brax's
mjx pipeline): the maintained physics, and the one whose dynamics match MuJoCo's. Its
rewards are the same functions of the torso's motion as on every backend, checked
against a hand computation for every family. This module only reads the torso's
position and brax's observation, so a family on an MJX-native model (MuJoCo
Playground's robots) is a new file providing ``reset``/``step`` with the same
:class:`Motion`, not a change here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from maml2_jax.envs import nav2d
from maml2_jax.envs.nav2d import TaskFamily
from maml2_jax.errors import ConfigError, check_positive_int

BACKENDS = ("spring", "positional", "generalized", "mjx")
ROBOTS = ("halfcheetah", "ant")


@dataclasses.dataclass(frozen=True)
class BraxTaskConfig:
    """The environment of every brax task family.

    Attributes:
      horizon: steps per episode (200, as in MAML); there is no early termination.
      backend: brax physics pipeline, one of :data:`BACKENDS` (see the module doc for
        why ``"spring"``).
      ctrl_cost_weight: ``w`` of the control cost ``w‖clip(a)‖²``, non-negative.
      reset_seed: seed of the fixed key brax's reset draws its initial noise from.
    """

    horizon: int = 200
    backend: str = "spring"
    ctrl_cost_weight: float = 0.05
    reset_seed: int = 0

    def __post_init__(self):
        check_positive_int("horizon", self.horizon)
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown brax backend {self.backend!r}; valid backends: {', '.join(BACKENDS)}")
        w = self.ctrl_cost_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"ctrl_cost_weight must be a finite non-negative number, got {w!r}")
        object.__setattr__(self, "ctrl_cost_weight", float(w))
        if isinstance(self.reset_seed, bool) or not isinstance(self.reset_seed, int) or self.reset_seed < 0:
            raise ConfigError(f"reset_seed must be a non-negative integer, got {self.reset_seed!r}")


class BraxTaskState(NamedTuple):
    """One environment.

    Attributes:
      pipeline_state: brax's physics state (``.q``, ``.qd``, ``.x.pos [bodies, 3]``,
        ``.xd.vel``; body 0 is the torso).
      t: int32 scalar, steps taken so far.
    """

    pipeline_state: object
    t: jax.Array


class Motion(NamedTuple):
    """What the rewards read of one step: the torso's ``(x, y)`` mean velocity ``[2]``
    over the step and its position ``[2]`` at the end of it."""

    velocity: jax.Array
    position: jax.Array


# --- brax, one environment per (robot, backend) -------------------------------------


@functools.lru_cache(maxsize=None)
def brax_env(robot: str, backend: str):
    """The brax environment of ``robot`` on ``backend``, built once and shared.

    Sharing the object matters: it is a static argument of the jitted physics below,
    so every family of one robot (and every eager call) reuses one compiled step.
    """
    if robot not in ROBOTS:
        raise ConfigError(f"unknown brax robot {robot!r}; valid robots: {', '.join(ROBOTS)}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown brax backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    from brax import envs  # brax loads slowly; families that never use it do not pay

    if jax.process_count() == 1:
        return envs.get_environment(robot, backend=backend)
    # MuJoCo's loader (mjx.put_model, called by brax) places the model on
    # jax.devices()[0], which in a multi-process run is process 0's: the other
    # processes would hold constants they cannot read. Place it on this process's own.
    from mujoco import mjx

    put_model = mjx.put_model
    mjx.put_model = functools.partial(put_model, device=jax.local_devices()[0])
    try:
        return envs.get_environment(robot, backend=backend)
    finally:
        mjx.put_model = put_model


@functools.lru_cache(maxsize=None)
def control_dt(robot: str, backend: str) -> float:
    """Seconds per control step, ``env.dt`` as a Python float."""
    # env.dt multiplies jax arrays: under a caller's trace it would be a tracer.
    with jax.ensure_compile_time_eval():
        return float(brax_env(robot, backend).dt)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _brax_reset(env, seed: int):
    """brax's reset from the fixed key ``PRNGKey(seed)``: ``(pipeline_state, obs)``."""
    state = env.reset(jax.random.PRNGKey(seed))
    return state.pipeline_state, state.obs


@functools.partial(jax.jit, static_argnums=0)
def _brax_advance(env, pipeline_state, action):
    """One control step of brax's dynamics: ``(pipeline_state', obs')``.

    Goes through ``env.step`` for brax's own observation; a fresh ``State`` each call
    because brax's step updates its ``metrics`` dict in place. Its reward and ``done``
    are dropped (dead code under jit). Jitted at module level so eager calls compile
    once; inside a caller's jit it is inlined.
    """
    from brax.envs.base import State

    zero = jnp.zeros((), jnp.float32)
    # env.step reads only pipeline_state; obs, reward and done are placeholders.
    state = env.step(State(pipeline_state, zero, zero, zero, {}), action)
    return state.pipeline_state, state.obs.astype(jnp.float32)


def torso_xy(pipeline_state) -> jax.Array:
    """The torso's ``(x, y)`` position ``[2]`` (body 0 of both robots)."""
    return pipeline_state.x.pos[0, :2]


# --- rewards: (motion, clipped action, task, w) -> scalar ----------------------------


def control_cost(action: jax.Array, weight: float) -> jax.Array:
    r""":math:`w \lVert a \rVert_2^2` of the (already clipped) action ``[A]``."""
    return weight * jnp.sum(jnp.square(action))


def velocity_reward(motion: Motion, action: jax.Array, task: jax.Array, weight: float) -> jax.Array:
    r""":math:`-\lvert v_x - v^* \rvert - c(a)`; ``task = [v*]``."""
    return -jnp.abs(motion.velocity[0] - task[0]) - control_cost(action, weight)


def direction_reward(motion: Motion, action: jax.Array, task: jax.Array, weight: float) -> jax.Array:
    r""":math:`d\, v_x - c(a)`; ``task = [d]``, ``d = ±1``."""
    return task[0] * motion.velocity[0] - control_cost(action, weight)


def angle_reward(motion: Motion, action: jax.Array, task: jax.Array, weight: float) -> jax.Array:
    r""":math:`v \cdot (\cos φ, \sin φ) - c(a)`, the speed along heading ``φ``; ``task = [φ]``."""
    heading = jnp.stack([jnp.cos(task[0]), jnp.sin(task[0])])
    return jnp.dot(motion.velocity, heading) - control_cost(action, weight)


def goal_reward(motion: Motion, action: jax.Array, task: jax.Array, weight: float) -> jax.Array:
    r""":math:`-\lVert p_{t+1} - g \rVert_1 - c(a)`; ``task = g`` ``[2]``."""
    return -jnp.sum(jnp.abs(motion.position - task)) - control_cost(action, weight)


# --- the environment functions of one family -----------------------------------------


class _Spec(NamedTuple):
    """A family's robot, task shape, reward and task distributions."""

    robot: str
    task_dim: int
    reward: Callable
    observe_xy: bool
    sample: Callable  # (key, T) -> tasks [T, task_dim]
    sample_isolated: Callable  # (key, T, fraction) -> (tasks, category [T])
    isolated_categories: int


def _check_task(task, task_dim: int) -> None:
    if jnp.shape(task) != (task_dim,):
        raise ConfigError(f"a task of this family has shape ({task_dim},), got shape {jnp.shape(task)}")


def reset(spec: _Spec, config: BraxTaskConfig, task: jax.Array) -> tuple[BraxTaskState, jax.Array]:
    """Starts an episode from brax's reset with the fixed key ``PRNGKey(reset_seed)``.

    Deterministic and the same for every task (``task`` is only checked for shape).

    Returns:
      ``(state, obs)``; ``obs`` is brax's float32 observation ``[obs_dim]``
      (with the torso's ``(x, y)`` in front for ``ant-goal``).
    """
    _check_task(task, spec.task_dim)
    env = brax_env(spec.robot, config.backend)
    pipeline_state, obs = _brax_reset(env, config.reset_seed)
    return BraxTaskState(pipeline_state, jnp.zeros((), jnp.int32)), _observe(spec, pipeline_state, obs)


def _observe(spec: _Spec, pipeline_state, obs: jax.Array) -> jax.Array:
    obs = obs.astype(jnp.float32)
    if spec.observe_xy:
        # q[:2] is the free joint's (x, y): brax's obs without position exclusion.
        obs = jnp.concatenate([pipeline_state.q[:2].astype(jnp.float32), obs])
    return obs


def step(
    spec: _Spec, config: BraxTaskConfig, state: BraxTaskState, action: jax.Array, task: jax.Array
) -> tuple[BraxTaskState, jax.Array, jax.Array]:
    """One control step of the robot under the family's task reward.

    Args:
      spec: the family (bound by :func:`make_task_family`).
      config: the environment.
      state: the current state.
      action: ``[action_dim]``, any real values; clipped to the actuators' control
        range ``[-1, 1]`` here, so a policy may pass its raw Gaussian sample.
      task: ``[task_dim]`` task parameters.

    Returns:
      ``(state', obs', reward)``: brax's ``done`` is ignored, the episode never ends
      early; ``reward`` is a float32 scalar computed from the torso's motion (module
      doc).
    """
    env = brax_env(spec.robot, config.backend)
    if jnp.shape(action) != (env.action_size,):
        raise ConfigError(f"{spec.robot} takes actions of shape ({env.action_size},), got {jnp.shape(action)}")
    _check_task(task, spec.task_dim)
    low, high = np.asarray(env.sys.actuator.ctrl_range, np.float32).T
    action = jnp.clip(jnp.asarray(action, jnp.float32), low, high)
    pipeline_state, obs = _brax_advance(env, state.pipeline_state, action)
    position = torso_xy(pipeline_state)
    velocity = (position - torso_xy(state.pipeline_state)) / control_dt(spec.robot, config.backend)
    motion = Motion(velocity, position)
    reward = spec.reward(motion, action, jnp.asarray(task, jnp.float32), config.ctrl_cost_weight)
    state = BraxTaskState(pipeline_state, state.t + 1)
    return state, _observe(spec, pipeline_state, obs), reward.astype(jnp.float32)


# --- task distributions ----------------------------------------------------------------


def _sample_speeds(top: float, key: jax.Array, num_tasks: int) -> jax.Array:
    return jax.random.uniform(key, (num_tasks, 1), jnp.float32, maxval=top)


def _sample_signs(key: jax.Array, num_tasks: int) -> jax.Array:
    return jnp.where(jax.random.bernoulli(key, 0.5, (num_tasks, 1)), 1.0, -1.0).astype(jnp.float32)


def _sample_angles(key: jax.Array, num_tasks: int) -> jax.Array:
    return jax.random.uniform(key, (num_tasks, 1), jnp.float32, maxval=2.0 * math.pi)


def _sample_disc(radius: float, key: jax.Array, num_tasks: int) -> jax.Array:
    key_radius, key_angle = jax.random.split(key)
    # radius ∝ sqrt(u): uniform density in area, not in radius.
    r = radius * jnp.sqrt(jax.random.uniform(key_radius, (num_tasks,), jnp.float32))
    angle = jax.random.uniform(key_angle, (num_tasks,), jnp.float32, maxval=2.0 * math.pi)
    return r[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)


def sample_intervals(
    key: jax.Array,
    num_tasks: int,
    isolated_fraction: float,
    dense: tuple[tuple[float, float], ...],
    isolated: tuple[tuple[float, float], ...],
    period: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Scalar tasks of an isolated-category distribution on intervals.

    ``I = nav2d.num_isolated(T, isolated_fraction)`` tasks are dealt in turn to the
    ``isolated`` intervals and the other ``T − I`` to the ``dense`` ones; each value is
    uniform on its interval (an interval ``(v, v)`` gives exactly ``v``); the order is
    then permuted at random.

    Args:
      key: PRNG key; the same key gives the same tasks, categories and order.
      num_tasks: ``T``, a Python int.
      isolated_fraction: share of isolated tasks, in ``(0, 1)``.
      dense, isolated: ``(low, high)`` intervals, one per category.
      period: if given, values are wrapped into ``[0, period)`` (angles).

    Returns:
      ``(tasks [T, 1] float32, category [T] int32)``: dense intervals are categories
      ``0 .. D−1``, isolated ones ``D .. D+I−1``.
    """
    count = nav2d.num_isolated(num_tasks, isolated_fraction)
    # Category ids are fixed host side so category sizes never depend on the key.
    ids = [i % len(dense) for i in range(num_tasks - count)]
    ids += [len(dense) + i % len(isolated) for i in range(count)]
    category = jnp.asarray(ids, jnp.int32)
    low, high = jnp.asarray(dense + isolated, jnp.float32)[category].T
    key_value, key_order = jax.random.split(key)
    del key
    values = low + (high - low) * jax.random.uniform(key_value, (num_tasks,), jnp.float32)
    if period is not None:
        values = jnp.mod(values, period)
    order = jax.random.permutation(key_order, num_tasks)
    return values[order, None], category[order]


GOAL_RADIUS = 3.0
ANT_GOAL_LAYOUT = nav2d.IsolatedLayout(
    dense_centres=((1.5, 1.5), (1.5, -1.5)),
    isolated_centres=((-2.0, 0.0),),
    dense_radius=0.3,
    isolated_radius=0.3,
)
# nav2d checks clusters against a box; these discs also lie inside the goal disc
# (the farthest point, of the dense ones, is 2.12 + 0.3 < 3 from the origin).
_GOAL_BOX = nav2d.Nav2dConfig(goal_low=-GOAL_RADIUS, goal_high=GOAL_RADIUS)

_ARC = math.pi / 8
_SPECS = {
    "halfcheetah-vel": _Spec(
        "halfcheetah", 1, velocity_reward, False,
        functools.partial(_sample_speeds, 2.0),
        functools.partial(sample_intervals, dense=((0.0, 0.5),), isolated=((1.75, 2.0),)), 2,
    ),
    "halfcheetah-dir": _Spec(
        "halfcheetah", 1, direction_reward, False, _sample_signs,
        functools.partial(sample_intervals, dense=((1.0, 1.0),), isolated=((-1.0, -1.0),)), 2,
    ),
    "ant-vel": _Spec(
        "ant", 1, velocity_reward, False,
        functools.partial(_sample_speeds, 3.0),
        functools.partial(sample_intervals, dense=((0.0, 0.75),), isolated=((2.5, 3.0),)), 2,
    ),
    "ant-dir": _Spec(
        "ant", 1, angle_reward, False, _sample_angles,
        functools.partial(
            sample_intervals, dense=((-_ARC, _ARC),), isolated=((math.pi - _ARC, math.pi + _ARC),),
            period=2.0 * math.pi,
        ), 2,
    ),
    "ant-goal": _Spec(
        "ant", 2, goal_reward, True,
        functools.partial(_sample_disc, GOAL_RADIUS),
        lambda key, num_tasks, fraction: nav2d.sample_isolated_tasks(
            key, num_tasks, _GOAL_BOX, fraction, ANT_GOAL_LAYOUT
        ),
        ANT_GOAL_LAYOUT.num_categories,
    ),
}

TASK_FAMILIES = tuple(name for base in _SPECS for name in (base, base + "-isolated"))


def _uniform_with_categories(spec: _Spec, key: jax.Array, num_tasks: int):
    check_positive_int("number of tasks", num_tasks)
    return spec.sample(key, num_tasks), jnp.zeros((num_tasks,), jnp.int32)


def _isolated_with_categories(spec: _Spec, isolated_fraction: float, key: jax.Array, num_tasks: int):
    return spec.sample_isolated(key, num_tasks, isolated_fraction)


@functools.lru_cache(maxsize=None)
def _obs_size(robot: str, backend: str) -> int:
    env = brax_env(robot, backend)
    # Shapes only: tracing the reset is cheap, running it eagerly is not.
    return jax.eval_shape(env.reset, jax.random.PRNGKey(0)).obs.shape[-1]


def make_task_family(
    name: str, config: BraxTaskConfig | None = None, *, isolated_fraction: float | None = None
) -> TaskFamily:
    """The brax task family registered as ``name``.

    Args:
      name: one of :data:`TASK_FAMILIES`.
      config: the environment; ``BraxTaskConfig()`` if None.
      isolated_fraction: ``-isolated`` families only: the share of isolated tasks
        (default 0.1).

    Returns:
      A :class:`maml2_jax.envs.nav2d.TaskFamily` whose functions have ``config``
      bound; ``sample_tasks(key, T)`` returns ``(tasks [T, task_dim], category [T])``.
    """
    if name not in TASK_FAMILIES:
        raise ConfigError(f"unknown task family {name!r}; valid names: {', '.join(TASK_FAMILIES)}")
    config = BraxTaskConfig() if config is None else config
    if not isinstance(config, BraxTaskConfig):
        raise ConfigError(f"brax task families take a BraxTaskConfig, got {type(config).__name__}")
    is_isolated = name.endswith("-isolated")
    spec = _SPECS[name.removesuffix("-isolated")]
    env = brax_env(spec.robot, config.backend)
    obs_dim = _obs_size(spec.robot, config.backend) + (2 if spec.observe_xy else 0)
    env_reset = functools.partial(reset, spec, config)
    env_step = functools.partial(step, spec, config)
    if not is_isolated:
        # An option that would be silently ignored is refused instead.
        if isolated_fraction is not None:
            raise ConfigError(f"isolated_fraction applies to '-isolated' families only, not {name!r}")
        sampler = functools.partial(_uniform_with_categories, spec)
        return TaskFamily(name, config, obs_dim, env.action_size, 1, env_reset, env_step, sampler)
    isolated_fraction = 0.1 if isolated_fraction is None else isolated_fraction
    nav2d.num_isolated(2, isolated_fraction)  # fail at construction, not at the first draw
    sampler = functools.partial(_isolated_with_categories, spec, isolated_fraction)
    return TaskFamily(name, config, obs_dim, env.action_size, spec.isolated_categories, env_reset, env_step, sampler)
