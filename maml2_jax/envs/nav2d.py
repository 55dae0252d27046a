r"""2-D point navigation, the continuous task family of MAML (DESIGN §1.2).

The agent is a point that starts at the origin of the plane; it observes its position
``p_t ∈ R²``. An action ``a_t ∈ R²`` is clipped to ``[-m, m]`` per coordinate
(``m = max_action``, 0.1 by default) and added to the position; the reward is the
negative distance to the goal ``g`` *after* the move:

.. math::
   p_{t+1} = p_t + \mathrm{clip}(a_t, -m, m), \qquad
   r_{t+1} = -\lVert p_{t+1} - g \rVert_2 .

An episode ends after ``horizon`` steps (100 by default), or earlier once the point is
within ``goal_tolerance`` (0.01) of the goal in *both* coordinates,
:math:`|p_{t+1} - g|_\infty < \text{tol}` (:func:`terminated`); from then on it earns
nothing. This is the "2DNavigation-v0" task of Finn et al. (2017) as pytorch-maml-rl
defines it; ``goal_tolerance = 0`` gives episodes that never end early.

A task is nothing but its goal, a float32 array ``[2]``. Tasks are data: a batch of
different tasks is an array ``[T, 2]`` and one compiled, vmapped step serves any mix.
:func:`reset` and :func:`step` act on *one* environment; callers vmap.

Task distributions
------------------
``"nav2d"`` — :func:`sample_tasks`: goals uniform on ``[goal_low, goal_high]²``
(``[-0.5, 0.5]²`` by default), the distribution of the MAML paper.

``"nav2d-isolated"`` — :func:`sample_isolated_tasks`, the *isolated-category*
distribution on which MAML² must show its worth. Most goals lie in *dense* clusters,
a few in *isolated* clusters on the opposite side of the start (default
:data:`DEFAULT_ISOLATED_LAYOUT`)::

      dense 0:    disc of radius 0.05 around (0.35,  0.35)
      dense 1:    disc of radius 0.05 around (0.35, -0.35)
      isolated 2: disc of radius 0.05 around (-0.4,  0.0)

A policy tuned for the dense goals heads to positive ``x``; the isolated goals need
the opposite first move, so an initialisation good on average adapts badly there
(the "negative adaptation" of DESIGN §1). With the defaults every isolated goal is at
least ``0.83 − 0.10 = 0.73`` from every dense goal, while the two dense clusters are
``0.70 − 0.10 = 0.60`` apart at least and lie on the same side.

Design choices, all configurable through :class:`IsolatedLayout`:

- Goals are uniform in a *disc* around their cluster centre (radius ``dense_radius``
  or ``isolated_radius``). A bounded spread, unlike a Gaussian, makes "tight" and
  "far" guarantees rather than likelihoods; every disc must lie inside the goal box.
- The number of isolated tasks is deterministic (:func:`num_isolated`):
  ``round(isolated_fraction · T)`` rounding halves up, then kept in ``[1, T − 1]``
  when ``T ≥ 2`` so there is always at least one isolated and one dense task.
- Dense tasks are dealt to the dense clusters in turn (counts differ by at most one),
  isolated tasks likewise to the isolated clusters: the size of every category is a
  function of ``T`` alone, so a per-category evaluation is never empty by bad luck.
- The ground-truth category of a task is its cluster index: dense clusters first
  (``0 .. D−1``), then isolated ones (``D .. D+I−1``).
- The order of the tasks is a random permutation drawn from the key, so the position
  of a task carries no information (taking the first ``k`` tasks is a fair subsample).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from maml2_jax.errors import ConfigError, check_positive_int

OBS_DIM = 2
ACTION_DIM = 2


def _check_real(name: str, value) -> float:
    """The value as a float; ConfigError unless it is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Nav2dConfig:
    """The navigation environment (defaults: MAML's 2DNavigation-v0).

    Attributes:
      horizon: steps per episode at most.
      max_action: each action coordinate is clipped to ``[-max_action, max_action]``.
      goal_low: lower bound of each goal coordinate (of the uniform distribution, and
        the box every isolated-distribution cluster must fit in).
      goal_high: upper bound of each goal coordinate.
      goal_tolerance: the episode ends once both coordinates are within this of the
        goal's; 0 never ends it early.
    """

    horizon: int = 100
    max_action: float = 0.1
    goal_low: float = -0.5
    goal_high: float = 0.5
    goal_tolerance: float = 0.01

    def __post_init__(self):
        check_positive_int("horizon", self.horizon)
        for name in ("max_action", "goal_low", "goal_high", "goal_tolerance"):
            object.__setattr__(self, name, _check_real(name, getattr(self, name)))
        if not self.max_action > 0:
            raise ConfigError(f"max_action must be positive, got {self.max_action}")
        if self.goal_tolerance < 0:
            raise ConfigError(f"goal_tolerance must be non-negative, got {self.goal_tolerance}")
        if not self.goal_low < self.goal_high:
            raise ConfigError(f"need goal_low < goal_high, got {self.goal_low} and {self.goal_high}")


class Nav2dState(NamedTuple):
    """One environment.

    Attributes:
      position: ``[2]`` float32, the point's position ``p_t``.
      t: int32 scalar, steps taken so far.
    """

    position: jax.Array
    t: jax.Array


def reset(config: Nav2dConfig, task: jax.Array) -> tuple[Nav2dState, jax.Array]:
    """Starts an episode at the origin.

    Args:
      config: the environment (unused: every task starts at the origin; kept so all
        environment functions share one signature).
      task: ``[2]`` goal (unused at reset, checked for shape).

    Returns:
      ``(state, obs)`` with ``obs = position = [0, 0]`` float32.
    """
    del config
    if jnp.shape(task) != (2,):
        raise ConfigError(f"a nav2d task is a goal of shape (2,), got shape {jnp.shape(task)}")
    position = jnp.zeros((OBS_DIM,), jnp.float32)
    return Nav2dState(position, jnp.zeros((), jnp.int32)), position


def step(
    config: Nav2dConfig, state: Nav2dState, action: jax.Array, task: jax.Array
) -> tuple[Nav2dState, jax.Array, jax.Array]:
    r"""One move: :math:`p' = p + \mathrm{clip}(a, -m, m)`, :math:`r = -\lVert p' - g\rVert_2`.

    Args:
      config: the environment.
      state: the current state.
      action: ``[2]``, any real values; clipped here, so a policy may pass its raw
        Gaussian sample.
      task: ``[2]`` goal ``g``.

    Returns:
      ``(state', obs', reward)``: the new state, its observation ``p'`` ``[2]`` and the
      float32 scalar reward. The reward is meant as data for policy gradients: it is
      not differentiable at the goal itself (the norm's kink).
    """
    if jnp.shape(action) != (ACTION_DIM,) or jnp.shape(task) != (2,):
        raise ConfigError(
            f"nav2d step needs action and task of shape (2,), got {jnp.shape(action)} and {jnp.shape(task)}"
        )
    move = jnp.clip(jnp.asarray(action, jnp.float32), -config.max_action, config.max_action)
    position = state.position + move
    reward = -jnp.sqrt(jnp.sum(jnp.square(position - jnp.asarray(task, jnp.float32))))
    return Nav2dState(position, state.t + 1), position, reward


def terminated(config: Nav2dConfig, state: Nav2dState, task: jax.Array) -> jax.Array:
    """Whether the episode ends at ``state``: ``|p − g| < goal_tolerance`` in both coordinates.

    Returns a bool scalar (always False when ``goal_tolerance`` is 0).
    """
    gap = jnp.abs(state.position - jnp.asarray(task, jnp.float32))
    return jnp.all(gap < config.goal_tolerance)


def sample_tasks(key: jax.Array, num_tasks: int, config: Nav2dConfig = Nav2dConfig()) -> jax.Array:
    """Goals uniform on ``[goal_low, goal_high]²``.

    Args:
      key: PRNG key; the same key gives the same goals.
      num_tasks: ``T``, a Python int (it fixes a shape).
      config: the environment (its goal box).

    Returns:
      ``[T, 2]`` float32 goals.
    """
    check_positive_int("number of tasks", num_tasks)
    return jax.random.uniform(
        key, (num_tasks, 2), jnp.float32, minval=config.goal_low, maxval=config.goal_high
    )


def _check_centres(name: str, centres) -> tuple[tuple[float, float], ...]:
    try:
        pairs = tuple(tuple(c) for c in centres)
    except TypeError:
        raise ConfigError(f"{name} must be a sequence of (x, y) pairs, got {centres!r}") from None
    if not pairs:
        raise ConfigError(f"{name} needs at least one (x, y) centre")
    for c in pairs:
        if len(c) != 2:
            raise ConfigError(f"{name} must hold (x, y) pairs, got {c!r}")
    return tuple((_check_real(name, x), _check_real(name, y)) for x, y in pairs)


@dataclasses.dataclass(frozen=True)
class IsolatedLayout:
    """Where the goals of the isolated-category distribution lie (see module doc).

    Attributes:
      dense_centres: centres of the dense clusters, which get most tasks.
      isolated_centres: centres of the isolated clusters, which get the few others.
      dense_radius: goals of a dense cluster are uniform in a disc of this radius.
      isolated_radius: the same for the isolated clusters.
    """

    dense_centres: tuple[tuple[float, float], ...] = ((0.35, 0.35), (0.35, -0.35))
    isolated_centres: tuple[tuple[float, float], ...] = ((-0.4, 0.0),)
    dense_radius: float = 0.05
    isolated_radius: float = 0.05

    def __post_init__(self):
        object.__setattr__(self, "dense_centres", _check_centres("dense_centres", self.dense_centres))
        object.__setattr__(self, "isolated_centres", _check_centres("isolated_centres", self.isolated_centres))
        for name in ("dense_radius", "isolated_radius"):
            value = _check_real(name, getattr(self, name))
            if value < 0:
                raise ConfigError(f"{name} must be non-negative, got {value}")
            object.__setattr__(self, name, value)

    @property
    def num_categories(self) -> int:
        return len(self.dense_centres) + len(self.isolated_centres)

    def check_inside(self, config: Nav2dConfig) -> None:
        """ConfigError unless every cluster's disc lies inside the goal box."""
        for centres, radius in ((self.dense_centres, self.dense_radius), (self.isolated_centres, self.isolated_radius)):
            for x, y in centres:
                if min(x, y) - radius < config.goal_low or max(x, y) + radius > config.goal_high:
                    raise ConfigError(
                        f"cluster at ({x}, {y}) with radius {radius} leaves the goal box "
                        f"[{config.goal_low}, {config.goal_high}]²"
                    )


DEFAULT_ISOLATED_LAYOUT = IsolatedLayout()


def num_isolated(num_tasks: int, isolated_fraction: float) -> int:
    """How many of ``num_tasks`` tasks are isolated: ``round(fraction · T)``, halves up,
    kept in ``[1, T − 1]`` when ``T ≥ 2`` (for ``T = 1`` the one task is isolated iff
    ``fraction ≥ 0.5``)."""
    check_positive_int("number of tasks", num_tasks)
    fraction = _check_real("isolated_fraction", isolated_fraction)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"isolated_fraction must be in (0, 1), got {isolated_fraction}")
    # Half-up rather than Python's round-half-even: 0.1 · 5 = 0.5 gives 1, not 0.
    count = math.floor(fraction * num_tasks + 0.5)
    if num_tasks >= 2:
        count = min(max(count, 1), num_tasks - 1)
    return count


def _deal(count: int, num_clusters: int, first_id: int) -> list[int]:
    """Cluster ids ``first_id + i mod num_clusters`` for ``i < count`` (balanced)."""
    return [first_id + i % num_clusters for i in range(count)]


def sample_isolated_tasks(
    key: jax.Array,
    num_tasks: int,
    config: Nav2dConfig = Nav2dConfig(),
    isolated_fraction: float = 0.1,
    layout: IsolatedLayout = DEFAULT_ISOLATED_LAYOUT,
) -> tuple[jax.Array, jax.Array]:
    """Goals of the isolated-category distribution, with their ground-truth categories.

    ``I = num_isolated(T, isolated_fraction)`` tasks go to the isolated clusters and
    the other ``T − I`` to the dense ones, each cluster getting its share in turn; each
    goal is uniform in its cluster's disc; the task order is then permuted at random.

    Args:
      key: PRNG key; the same key gives the same goals, categories and order.
      num_tasks: ``T``, a Python int (it fixes shapes and the category sizes).
      config: the environment; every cluster must fit in its goal box.
      isolated_fraction: share of isolated tasks, in ``(0, 1)``.
      layout: cluster centres and radii.

    Returns:
      ``(goals [T, 2] float32, category [T] int32)``; ``category`` is the cluster
      index: dense clusters ``0 .. D−1``, then isolated ``D .. D+I−1``.
    """
    layout.check_inside(config)
    isolated = num_isolated(num_tasks, isolated_fraction)
    dense = num_tasks - isolated
    num_dense = len(layout.dense_centres)
    # Cluster ids are fixed host side so the category sizes never depend on the key.
    ids = _deal(dense, num_dense, 0) + _deal(isolated, len(layout.isolated_centres), num_dense)
    centres = jnp.asarray(layout.dense_centres + layout.isolated_centres, jnp.float32)
    radii = jnp.asarray(
        [layout.dense_radius] * num_dense + [layout.isolated_radius] * len(layout.isolated_centres), jnp.float32
    )
    category = jnp.asarray(ids, jnp.int32)

    key_radius, key_angle, key_order = jax.random.split(key, 3)
    del key
    # Uniform in a disc: radius ∝ sqrt(u) makes the density flat in area.
    u = jax.random.uniform(key_radius, (num_tasks,), jnp.float32)
    angle = jax.random.uniform(key_angle, (num_tasks,), jnp.float32, maxval=2.0 * math.pi)
    radius = radii[category] * jnp.sqrt(u)
    offset = radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    goals = centres[category] + offset
    order = jax.random.permutation(key_order, num_tasks)
    return goals[order], category[order]


class TaskFamily(NamedTuple):
    """A task family: its environment functions and task distribution, config bound.

    Attributes:
      name: the registry name.
      config: the environment config.
      obs_dim: observation size.
      action_dim: action size.
      num_categories: number of ground-truth categories of ``sample_tasks``.
      reset: ``task -> (state, obs)``, one environment.
      step: ``(state, action, task) -> (state, obs, reward)``, one environment.
      sample_tasks: ``(key, num_tasks) -> (tasks [T, ...], category [T] int32)``.
        Every family returns categories so evaluation can always report per
        category; a family without categories (uniform goals) returns all zeros.
      terminated: ``(state, task) -> bool``, whether an episode ends early at
        ``state`` (:func:`maml2_jax.rollout.rollout`); None if it never does.
    """

    name: str
    config: Nav2dConfig
    obs_dim: int
    action_dim: int
    num_categories: int
    reset: Callable
    step: Callable
    sample_tasks: Callable
    terminated: Callable | None = None


def _uniform_with_categories(config: Nav2dConfig, key: jax.Array, num_tasks: int):
    return sample_tasks(key, num_tasks, config), jnp.zeros((num_tasks,), jnp.int32)


def _isolated_with_categories(config, isolated_fraction, layout, key, num_tasks):
    return sample_isolated_tasks(key, num_tasks, config, isolated_fraction, layout)


TASK_FAMILIES = ("nav2d", "nav2d-isolated")


def make_task_family(
    name: str,
    config: Nav2dConfig | None = None,
    *,
    isolated_fraction: float | None = None,
    layout: IsolatedLayout | None = None,
) -> TaskFamily:
    """The task family registered as ``name``.

    Args:
      name: one of :data:`TASK_FAMILIES`.
      config: the environment; ``Nav2dConfig()`` if None.
      isolated_fraction: "nav2d-isolated" only: the share of isolated tasks
        (default 0.1).
      layout: "nav2d-isolated" only: the clusters (default
        :data:`DEFAULT_ISOLATED_LAYOUT`).

    Returns:
      A :class:`TaskFamily` whose functions have ``config`` bound.
    """
    if name not in TASK_FAMILIES:
        raise ConfigError(f"unknown task family {name!r}; valid names: {', '.join(TASK_FAMILIES)}")
    config = Nav2dConfig() if config is None else config
    env_reset = functools.partial(reset, config)
    env_step = functools.partial(step, config)
    env_terminated = functools.partial(terminated, config) if config.goal_tolerance > 0 else None
    if name == "nav2d":
        # An option that would be silently ignored is refused instead.
        if isolated_fraction is not None or layout is not None:
            raise ConfigError("isolated_fraction and layout apply to 'nav2d-isolated' only, not 'nav2d'")
        sampler = functools.partial(_uniform_with_categories, config)
        return TaskFamily(name, config, OBS_DIM, ACTION_DIM, 1, env_reset, env_step, sampler, env_terminated)
    isolated_fraction = 0.1 if isolated_fraction is None else isolated_fraction
    layout = DEFAULT_ISOLATED_LAYOUT if layout is None else layout
    # Fail at construction, not at the first draw.
    num_isolated(2, isolated_fraction)
    layout.check_inside(config)
    sampler = functools.partial(_isolated_with_categories, config, isolated_fraction, layout)
    return TaskFamily(
        name, config, OBS_DIM, ACTION_DIM, layout.num_categories, env_reset, env_step, sampler, env_terminated
    )
