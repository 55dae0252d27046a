"""The tabular grid world of the published MAML² experiments (DESIGN §1.1).

Cells are numbered ``s = cols * row + col`` with 0 at the top-left. Actions are
0 up, 1 down, 2 left, 3 right; a move into a wall or off the grid leaves the agent in
place. Reward is 1 on entering the goal (which ends the episode), 0 otherwise. A task
is nothing but its goal cell, an ``int32`` scalar, so a batch of tasks is an array and
one compiled step serves any mix of goals.

The layout (size, walls, start) is static: it is compiled into a next-cell table
``[S, 4]`` once, host side.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from maml2_jax.errors import INT32_MAX, ConfigError, check_int, check_positive_int

NUM_ACTIONS = 4
# (row, col) offsets of up, down, left, right.
_MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))

PUBLISHED_WALLS = (2, 12, 29, 38, 43, 44, 45, 46, 47, 52, 61, 62, 67, 68, 76, 81, 86, 96)
PUBLISHED_GOALS = (39, 48, 69, 79, 78, 77, 99, 98, 97, 90)
# The paper's reporting groups: two tasks near the right wall, the bottom-right
# cluster, and the isolated bottom-left task.
PUBLISHED_GROUPS = ((0, 1), (2, 3, 4, 5, 6, 7, 8), (9,))


# A tabular task beyond this many cells is not a grid world SARSA learns in 2000
# episodes, and its layout checks (reachability, a table per cell) would take
# gigabytes before anything runs; the int32 cell numbers would hold 2**31 - 1.
MAX_CELLS = 2**20


@dataclasses.dataclass(frozen=True)
class GridWorld:
    """A grid-world layout and its task set (one task per goal cell).

    Attributes:
      rows: number of grid rows.
      cols: number of grid columns.
      walls: cells the agent cannot enter.
      start: the start cell of every task.
      goals: one goal cell per task; task ``i`` is ``goals[i]``.
      max_steps: an episode is cut after this many moves.
    """

    rows: int = 10
    cols: int = 10
    walls: tuple[int, ...] = PUBLISHED_WALLS
    start: int = 0
    goals: tuple[int, ...] = PUBLISHED_GOALS
    max_steps: int = 1000

    def __post_init__(self):
        for name in ("walls", "goals"):
            cells = getattr(self, name)
            if isinstance(cells, (str, bytes)) or not hasattr(cells, "__iter__"):
                raise ConfigError(f"{name} must be a sequence of cell numbers, got {cells!r}")
            object.__setattr__(self, name, tuple(check_int(f"{name[:-1]} cell", c) for c in cells))
        check_positive_int("rows", self.rows)
        check_positive_int("cols", self.cols)
        check_int("start", self.start)
        # Cells and step counters are int32 inside the compiled programs.
        check_int("max steps", self.max_steps, low=1, high=INT32_MAX)
        n = self.num_states
        if n > MAX_CELLS:
            raise ConfigError(f"a {self.rows}x{self.cols} grid has {n} cells; tabular learning here takes at most "
                              f"{MAX_CELLS} (rows x cols)")
        for w in self.walls:
            if not 0 <= w < n:
                raise ConfigError(f"wall cell {w} is off the {self.rows}x{self.cols} grid (cells 0..{n - 1})")
        if not 0 <= self.start < n:
            raise ConfigError(f"start cell {self.start} is off the {self.rows}x{self.cols} grid (cells 0..{n - 1})")
        if self.start in self.walls:
            raise ConfigError(f"start cell {self.start} is a wall")
        if not self.goals:
            raise ConfigError("at least one goal cell is needed")
        seen = set()
        for g in self.goals:
            if not 0 <= g < n:
                raise ConfigError(f"goal cell {g} is off the {self.rows}x{self.cols} grid (cells 0..{n - 1})")
            if g in self.walls:
                raise ConfigError(f"goal cell {g} is a wall")
            if g == self.start:
                raise ConfigError(f"goal cell {g} is the start cell")
            if g in seen:  # two tasks with one goal are one task counted twice
                raise ConfigError(f"goal cell {g} is given twice; each goal is one task")
            seen.add(g)
        reachable = _reachable(self.next_cell_table(), self.start)
        for g in self.goals:
            if not reachable[g]:
                raise ConfigError(f"goal cell {g} cannot be reached from start cell {self.start}")

    @property
    def num_states(self) -> int:
        return self.rows * self.cols

    @property
    def num_tasks(self) -> int:
        return len(self.goals)

    def next_cell_table(self) -> np.ndarray:
        """``[S, 4]`` int32 table: the cell reached from ``s`` by action ``a``."""
        wall = np.zeros(self.num_states, bool)
        wall[list(self.walls)] = True
        table = np.empty((self.num_states, NUM_ACTIONS), np.int32)
        for s in range(self.num_states):
            row, col = divmod(s, self.cols)
            for a, (dr, dc) in enumerate(_MOVES):
                r2, c2 = row + dr, col + dc
                inside = 0 <= r2 < self.rows and 0 <= c2 < self.cols
                target = r2 * self.cols + c2
                table[s, a] = target if inside and not wall[target] else s
        return table

    def task_array(self) -> np.ndarray:
        """The tasks as data: ``[T]`` int32 goal cells."""
        return np.asarray(self.goals, np.int32)


def _reachable(table: np.ndarray, start: int) -> np.ndarray:
    seen = np.zeros(table.shape[0], bool)
    seen[start] = True
    frontier = [start]
    while frontier:
        s = frontier.pop()
        for s2 in table[s]:
            if not seen[s2]:
                seen[s2] = True
                frontier.append(int(s2))
    return seen
