"""Grid-world dynamics and layout validation (DESIGN §1.1)."""

from __future__ import annotations

import numpy as np
import pytest

from maml2_jax.envs.gridworld import PUBLISHED_GOALS, PUBLISHED_WALLS, GridWorld
from maml2_jax.errors import ConfigError

from helpers import bfs_distances

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


def test_published_layout_constants():
    # The layout as printed in DESIGN §1.1.
    assert PUBLISHED_WALLS == (2, 12, 29, 38, 43, 44, 45, 46, 47, 52, 61, 62, 67, 68, 76, 81, 86, 96)
    assert PUBLISHED_GOALS == (39, 48, 69, 79, 78, 77, 99, 98, 97, 90)
    world = GridWorld()
    assert (world.rows, world.cols, world.start, world.max_steps) == (10, 10, 0, 1000)
    assert world.num_states == 100 and world.num_tasks == 10
    tasks = world.task_array()
    assert tasks.dtype == np.int32
    np.testing.assert_array_equal(tasks, PUBLISHED_GOALS)


# (cell, action, expected next cell), worked out by hand on the published map.
HAND_MOVES = [
    (0, UP, 0),  # top edge
    (0, LEFT, 0),  # left edge
    (0, RIGHT, 1),
    (0, DOWN, 10),
    (1, RIGHT, 1),  # 2 is a wall
    (1, DOWN, 11),
    (1, LEFT, 0),
    (11, RIGHT, 11),  # 12 is a wall
    (11, UP, 1),
    (3, LEFT, 3),  # 2 is a wall
    (22, UP, 22),  # 12 is a wall
    (9, RIGHT, 9),  # right edge
    (9, UP, 9),
    (19, DOWN, 19),  # 29 is a wall
    (28, RIGHT, 28),  # 29 is a wall
    (39, UP, 39),  # 29 is a wall
    (39, LEFT, 39),  # 38 is a wall
    (39, DOWN, 49),
    (33, DOWN, 33),  # 43 is a wall
    (34, DOWN, 34),  # 44
    (35, DOWN, 35),  # 45
    (36, DOWN, 36),  # 46
    (37, DOWN, 37),  # 47
    (53, UP, 53),  # 43
    (57, UP, 57),  # 47
    (42, RIGHT, 42),  # 43
    (48, LEFT, 48),  # 47
    (48, UP, 48),  # 38 is a wall
    (80, UP, 70),
    (71, DOWN, 71),  # 81 is a wall
    (91, LEFT, 90),
    (90, UP, 80),
    (90, DOWN, 90),  # bottom edge
    (95, DOWN, 95),  # bottom edge
    (95, RIGHT, 95),  # 96 is a wall
    (97, LEFT, 97),  # 96 is a wall
    (99, RIGHT, 99),
    (99, DOWN, 99),
    (99, UP, 89),
    (89, LEFT, 88),
]


@pytest.mark.parametrize("cell,action,expected", HAND_MOVES)
def test_hand_worked_moves(published_world, cell, action, expected):
    table = published_world.next_cell_table()
    assert table[cell, action] == expected


def test_table_shape_and_geometry(published_world):
    """Every move from a free cell is to the geometric neighbour, or stays when blocked."""
    table = published_world.next_cell_table()
    assert table.shape == (100, 4) and table.dtype == np.int32
    walls = set(PUBLISHED_WALLS)
    offsets = ((-1, 0), (1, 0), (0, -1), (0, 1))
    for s in range(100):
        if s in walls:
            continue
        row, col = divmod(s, 10)
        for a, (dr, dc) in enumerate(offsets):
            r2, c2 = row + dr, col + dc
            blocked = not (0 <= r2 < 10 and 0 <= c2 < 10) or (r2 * 10 + c2) in walls
            assert table[s, a] == (s if blocked else r2 * 10 + c2), (s, a)
            assert table[s, a] not in walls


def test_every_published_goal_reachable(published_world):
    dist = bfs_distances(published_world, 0)
    for goal in PUBLISHED_GOALS:
        assert dist[goal] > 0
    # Task 9 (goal 90) lies straight down the left column: 9 moves.
    assert dist[90] == 9


def test_custom_3x4_layout():
    # row0:  0  1  2  3
    # row1:  4 [5] 6  7
    # row2:  8  9 10 11
    world = GridWorld(rows=3, cols=4, walls=(5,), start=0, goals=(11,), max_steps=50)
    expected = {
        0: (0, 4, 0, 1),
        1: (1, 1, 0, 2),
        2: (2, 6, 1, 3),
        3: (3, 7, 2, 3),
        4: (0, 8, 4, 4),
        6: (2, 10, 6, 7),
        7: (3, 11, 6, 7),
        8: (4, 8, 8, 9),
        9: (9, 9, 8, 10),
        10: (6, 10, 9, 11),
        11: (7, 11, 10, 11),
    }
    table = world.next_cell_table()
    assert table.shape == (12, 4)
    for s, moves in expected.items():
        assert tuple(int(x) for x in table[s]) == moves, s


def test_custom_single_row():
    world = GridWorld(rows=1, cols=3, walls=(), start=0, goals=(2,))
    np.testing.assert_array_equal(world.next_cell_table(), [[0, 0, 0, 1], [1, 1, 0, 2], [2, 2, 1, 2]])


@pytest.mark.parametrize(
    "kwargs,cell",
    [
        (dict(goals=(39, 43)), "43"),  # goal on a wall
        (dict(goals=(100,)), "100"),  # off a 10x10 grid
        (dict(goals=(-1,)), "-1"),
        (dict(start=2), "2"),  # start on a wall
        (dict(start=100), "100"),  # start off the grid
        (dict(walls=(2, 150)), "150"),  # wall off the grid
        (dict(goals=(0,)), "0"),  # goal on the start cell
    ],
)
def test_bad_layouts_raise(kwargs, cell):
    with pytest.raises(ConfigError, match=rf"(?<!\d){cell}(?!\d)"):
        GridWorld(**kwargs)


def test_unreachable_goal_raises():
    # Goal 8 of a 3x3 grid boxed in by walls 5 and 7.
    with pytest.raises(ConfigError, match=r"goal cell 8 .*reach"):
        GridWorld(rows=3, cols=3, walls=(5, 7), start=0, goals=(2, 8))
    # The same goal with one wall removed is fine.
    GridWorld(rows=3, cols=3, walls=(5,), start=0, goals=(2, 8))


def test_unreachable_goal_on_published_map_raises():
    # Box in cell 99 (neighbours 89 and 98).
    with pytest.raises(ConfigError, match=r"99"):
        GridWorld(walls=PUBLISHED_WALLS + (89, 98), goals=(99,))


@pytest.mark.parametrize("kwargs", [dict(rows=0), dict(cols=0), dict(max_steps=0), dict(goals=())])
def test_degenerate_sizes_raise(kwargs):
    with pytest.raises(ConfigError):
        GridWorld(**kwargs)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)
