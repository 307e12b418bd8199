"""An endless image maze whose action frame rotates (Meta-GCG, Co-Reyes et al.; seed 001).

The maze is a corridor of ``rows`` cells (default 16) between walls above and
below, open to the right without end. It is generated column by column, lazily
as the agent advances, from a generator of its own: obstacles fall with a
probability that grows to the right,
``p(x) = min(density_max, density_start + x / density_ramp)``, a carved path
(a row that random-walks by at most one row per column) keeps the corridor
passable, and no free cell is a dead end: each has a way on right within two
vertical moves (``_open_ahead``), so an agent rewarded for going right is never
trapped in a pocket whose only exit is leftwards. The agent occupies one cell
and starts at column 0 on the path.

A task is a rotation ``r`` of the agent's action frame (0, 90, 180 or 270
degrees): action ``a`` (0 up, 1 right, 2 down, 3 left in the agent's frame)
moves the agent in maze direction ``(a + r // 90) % 4`` (0 up, 1 right, 2 down,
3 left). The reward is the number of columns moved right (+1, 0 or -1), so
progress needs the rotation to be inferred from experience. Two modes: episodic
(the paper's evaluation: a rotation drawn at every reset, 200-step episodes)
and lifelong (one endless episode, the rotation switching unannounced on a
schedule). Pure numpy: no physics, no rendering library.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box, Discrete

from metadapt.envs.base import EnvInfo, TaskEnv
from metadapt.envs.tasks import Task
from metadapt.errors import ConfigError

ROTATIONS = (0, 90, 180, 270)
MODES = ("episodic", "lifelong")
VIEW = 16  # cells per side of the agent's view
CELL = 4  # pixels per cell side
FRAME = VIEW * CELL  # 64: pixels per frame side
AGENT_CELL = (8, 8)  # the agent's (row, column) in its view: 8 cells above it and 7 below, 8 left and 7 right
HALF = VIEW // 2  # the padding of walls around the stored maze: the view never slices outside the array
FREE, AGENT, WALL = 0, 128, 255  # grey levels of a free cell, the agent and an obstacle or wall
# Maze direction -> (dy, dx); rows grow downwards, so "up" is towards row 0, the top of the image.
MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)], dtype=np.int64)
OPEN_REACH = 2  # every free cell has a way on right within this many vertical moves (see _open_ahead)
CHUNK = 512  # columns generated at a time; fixed, so the maze of a seed never depends on when it was generated
LIFELONG_SCHEDULE: dict[str, Any] = {
    "type": "random", "tasks": ["rot0", "rot90", "rot180", "rot270"], "min_len": 1500, "max_len": 2500,
}
# The maze generators of every env are drawn from a stream keyed by (this constant, seed): never the stream of
# the task draws (gymnasium's np_random), so a seed gives the same maze whatever the schedule draws.
_MAZE_STREAM = 0x6D617A65


def _open_ahead(cells: np.ndarray, rng: np.random.Generator, reach: int = OPEN_REACH) -> None:
    """Free cells so that no free cell is a dead end for an agent heading right (in place; ``rows x n``).

    In every column but the last, each free cell gets a free right neighbour within ``reach`` cells up or down its
    own vertical run of free cells: the agent can always go on right in at most ``reach + 1`` moves without
    stepping left. Random obstacles alone make pockets whose only exit is leftwards, where an agent rewarded for
    moving right (the paper's maze) is trapped by any short-horizon planner; the carved path alone only keeps one
    row passable. Which neighbour is freed is drawn from ``rng`` (the maze's own generator).
    """
    rows = cells.shape[0]
    for c in range(cells.shape[1] - 1):
        free = cells[:, c] == FREE
        r = 0
        while r < rows:
            if not free[r]:
                r += 1
                continue
            end = r
            while end + 1 < rows and free[end + 1]:
                end += 1
            # The run r..end: open right neighbours so every cell has one within reach.
            opened = [i for i in range(r, end + 1) if cells[i, c + 1] == FREE]
            i = r
            while i <= end:
                if not any(abs(i - o) <= reach for o in opened):
                    # Open within reach below i (or the run's end), so the cells from i on are covered.
                    choice = min(end, i + int(rng.integers(reach + 1)))
                    cells[choice, c + 1] = FREE
                    opened.append(choice)
                i += 1
            r = end + 1


def _quarter_turns(rotation: Any) -> Any:
    """Degrees (int or int array, multiples of 90) -> quarter turns; ``ValueError`` for any other angle."""
    rot = np.asarray(rotation)
    if not np.issubdtype(rot.dtype, np.integer) or np.any(rot % 90 != 0):
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation!r}")
    return rotation // 90


def movement(action: Any, rotation: Any) -> Any:
    """The maze direction (0 up, 1 right, 2 down, 3 left) that ``action`` executes under ``rotation`` degrees.

    ``action`` and ``rotation`` are ints or integer arrays (broadcast); the result has their type and shape.
    """
    return (action + _quarter_turns(rotation)) % 4


def action_for(move: Any, rotation: Any) -> Any:
    """The action that executes maze direction ``move`` under ``rotation`` degrees: the inverse of ``movement``.

    ``movement(action_for(m, r), r) == m`` for every direction and rotation; ints or integer arrays.
    """
    return (move - _quarter_turns(rotation)) % 4


def _positive_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _probability(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
            or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


class RotatingMazeEnv(TaskEnv, gym.Env):
    """Endless image maze whose action frame rotates (Meta-GCG): go right; task parameter ``rotation``.

    Observation ``frame_stack x 64 x 64`` uint8 (default ``4 x 64 x 64``): the
    last ``frame_stack`` frames, oldest first. A frame is a ``16 x 16``-cell view
    (4 x 4 pixels a cell) centred on the agent, whose cell is the view's row 8,
    column 8 (pixels ``[32:36, 32:36]``); obstacles and walls are 255, free cells
    0, the agent 128; everything outside the maze (above and below the walls,
    left of column 0) draws as wall. After ``reset`` the stack holds
    ``frame_stack`` copies of the first frame: a stream that rebuilds stacks from
    single frames must pad the same way.

    Action ``Discrete(4)``: 0 up, 1 right, 2 down, 3 left in the agent's frame;
    the maze executes ``movement(action, rotation)``. A move into an obstacle, a
    wall or left of column 0 leaves the agent in place (``info["blocked"]``).
    Reward: the columns moved right this step, +1, 0 or -1 (float). There is no
    batched ``reward_fn``: the reward is not a function of the frames alone, a
    model predicts it.

    Tasks: ``{"rotation": d}``, ``d`` in 0, 90, 180, 270 (``rot0`` ... ``rot270``;
    train = test = all four). ``info`` of every step: ``task_id``, ``task``,
    ``rotation`` (degrees), ``x``, ``y`` (the agent's cell after the step) and
    ``blocked``.

    Keyword arguments: ``mode`` ``"episodic"`` (default: a rotation drawn at
    every reset, truncated after ``episode_steps`` = 200 steps by the env itself)
    or ``"lifelong"`` (one episode that never ends; default schedule
    ``LIFELONG_SCHEDULE``, a new rotation every 1500-2500 steps); ``schedule``,
    ``task_sampler`` as for every metadapt env; ``frame_stack`` (4); ``rows``
    (16); ``density_start`` (0.05), ``density_max`` (0.35), ``density_ramp``
    (2000 columns); ``render_mode="rgb_array"`` with ``width`` x ``height``
    (default 256 x 256: the newest frame, 4 times larger, grey).

    ``reset(seed=s)`` seeds the maze from a stream of its own and the task draws
    from gymnasium's ``np_random``: the same seed gives the same maze under any
    rotations and schedule. Memory: ``rows + 16`` bytes per column generated (16 columns ahead of the farthest the
    agent reached, in chunks of 512; the array doubles when full): 1.6 to 3.2 MB for 50,000 columns.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}
    OBS_VERSION: ClassVar[int] = 1
    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="grid agent (numpy, no physics)",
        obs="4 x 64 x 64 uint8 frames (frame_stack x 64 x 64), oldest first",
        action="Discrete(4): up, right, down, left in the agent's rotated frame",
        reward="columns moved right (+1, 0, -1)",
        train="rotation 0, 90, 180, 270",
        test="rotation 0, 90, 180, 270",
    )
    CATALOG: ClassVar[dict[str, dict[str, Any]]] = {f"rot{d}": {"rotation": d} for d in ROTATIONS}
    TRAIN: ClassVar[tuple[str, ...]] = tuple(CATALOG)
    TEST: ClassVar[tuple[str, ...]] = tuple(CATALOG)
    PRESETS: ClassVar[dict[str, Any]] = {
        "lifelong_random": LIFELONG_SCHEDULE,
        "every_2000": {"type": "alternating", "tasks": list(CATALOG), "period": 2000},
        "every_500": {"type": "alternating", "tasks": list(CATALOG), "period": 500},
    }

    def __init__(
        self,
        *,
        mode: str = "episodic",
        schedule: Any = None,
        task_sampler: Any = None,
        frame_stack: int = 4,
        rows: int = 16,
        density_start: float = 0.05,
        density_max: float = 0.35,
        density_ramp: float = 2000.0,
        episode_steps: int = 200,
        render_mode: str | None = None,
        width: int = VIEW * CELL * 4,
        height: int = VIEW * CELL * 4,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.frame_stack = _positive_int(frame_stack, "frame_stack", 1)
        self.rows = _positive_int(rows, "rows", 3)
        self.density_start = _probability(density_start, "density_start")
        self.density_max = _probability(density_max, "density_max")
        if isinstance(density_ramp, bool) or not isinstance(density_ramp, int | float | np.integer | np.floating) \
                or not (math.isfinite(density_ramp) and density_ramp > 0):
            raise ConfigError(f"density_ramp must be a positive number of columns, got {density_ramp!r}")
        self.density_ramp = float(density_ramp)
        self.episode_steps = _positive_int(episode_steps, "episode_steps", 1)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.width, self.height = _positive_int(width, "width", 1), _positive_int(height, "height", 1)
        self.observation_space = Box(0, 255, shape=(self.frame_stack, FRAME, FRAME), dtype=np.uint8)
        self.action_space = Discrete(4)
        if schedule is None and mode == "lifelong":
            schedule = LIFELONG_SCHEDULE
        self._init_tasks(schedule, task_sampler)
        self._turns = 0
        self._maze_seeds: np.random.Generator | None = None
        self._maze_rng = np.random.default_rng(0)
        # Maze cells padded with HALF wall cells on every side but the right: cell (y, x) is _grid[y + HALF, x + HALF].
        self._grid = np.zeros((0, 0), dtype=np.uint8)
        self._columns = 0  # maze columns generated so far
        self._path_row = 0  # the carved path's row in the last generated column
        self._start_row = 0  # the carved path's row in column 0: the agent's start
        self._x = self._y = 0
        self._stack = np.zeros(self.observation_space.shape, dtype=np.uint8)

    # ---- tasks -----------------------------------------------------------------------------------------------
    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """``{"rotation": d}``, ``d`` in 0, 90, 180, 270 -> ``("rot<d>", {"rotation": d})``; one error line else."""
        if set(params) != {"rotation"}:
            raise ConfigError(f"a RotatingMaze task takes exactly 'rotation' (0, 90, 180 or 270), got keys "
                              f"{sorted(params)}")
        value = params["rotation"]
        ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating) \
            and value in ROTATIONS
        if not ok:
            raise ConfigError(f"rotation {value!r} is not one of {', '.join(map(str, ROTATIONS))}")
        return f"rot{int(value)}", {"rotation": int(value)}

    def apply_task(self, task: Task) -> None:
        self._turns = int(task.params["rotation"]) // 90

    @property
    def rotation(self) -> int:
        """The current task's rotation in degrees."""
        return self._turns * 90

    # ---- the maze --------------------------------------------------------------------------------------------
    def _new_maze(self, seed: int | None) -> None:
        if seed is not None or self._maze_seeds is None:
            self._maze_seeds = np.random.default_rng(None if seed is None else [_MAZE_STREAM, int(seed)])
        self._maze_rng = np.random.default_rng(int(self._maze_seeds.integers(2**63)))
        self._grid = np.full((self.rows + 2 * HALF, HALF + 2 * CHUNK), WALL, dtype=np.uint8)
        self._columns = 0
        self._path_row = self._start_row = int(self._maze_rng.integers(self.rows))
        self._generate()

    def _generate(self) -> None:
        """Append ``CHUNK`` columns: obstacles at this column's density, then the carved path freed."""
        rng, start, n = self._maze_rng, self._columns, CHUNK
        if HALF + start + n > self._grid.shape[1]:  # double the capacity: amortised O(1) per column
            grown = np.full((self._grid.shape[0], 2 * self._grid.shape[1]), WALL, dtype=np.uint8)
            grown[:, : self._grid.shape[1]] = self._grid
            self._grid = grown
        x = np.arange(start, start + n)
        density = np.minimum(self.density_max, self.density_start + x / self.density_ramp)
        cells = np.where(rng.random((self.rows, n)) < density, WALL, FREE).astype(np.uint8)
        steps = rng.integers(-1, 2, n)
        row, last = self._path_row, self.rows - 1
        for i in range(n):
            # Column start + i keeps free the path's previous row (entered from the left) and its new row (reached
            # by one vertical move), so the agent can always go on right.
            cells[row, i] = FREE
            if start + i > 0:  # column 0 has no previous column: the path starts where it starts
                row = min(max(row + int(steps[i]), 0), last)
            cells[row, i] = FREE
        self._path_row = row
        if start > 0:  # the previous chunk's last column needs its openings into this chunk's first one
            previous = self._grid[HALF: HALF + self.rows, HALF + start - 1].copy()
            both = np.concatenate([previous[:, None], cells], axis=1)
            _open_ahead(both, rng)
            self._grid[HALF: HALF + self.rows, HALF + start - 1] = both[:, 0]
            cells = both[:, 1:]
        else:
            _open_ahead(cells, rng)
        self._grid[HALF: HALF + self.rows, HALF + start: HALF + start + n] = cells
        self._columns = start + n

    def obstacles(self, stop: int, start: int = 0) -> np.ndarray:
        """``rows x (stop - start)`` bool: True where maze columns ``start..stop-1`` hold an obstacle.

        Generates the maze that far if needed (the same maze as stepping there would); ``0 <= start <= stop``.
        """
        if not 0 <= start <= stop:
            raise ValueError(f"need 0 <= start <= stop, got start={start} stop={stop}")
        while self._columns < stop:
            self._generate()
        return self._grid[HALF: HALF + self.rows, HALF + start: HALF + stop] != FREE

    @property
    def position(self) -> tuple[int, int]:
        """The agent's cell ``(x, y)``: column from the start, row from the top wall."""
        return self._x, self._y

    # ---- the MDP -----------------------------------------------------------------------------------------------
    def _frame(self) -> np.ndarray:
        """``64 x 64`` uint8: the ``16 x 16``-cell view around the agent, each cell ``4 x 4`` pixels."""
        # View row i shows maze row y - 8 + i, i.e. padded row y + i (and the same for columns).
        view = self._grid[self._y: self._y + VIEW, self._x: self._x + VIEW]
        frame = view.repeat(CELL, axis=0).repeat(CELL, axis=1)
        r, c = AGENT_CELL
        frame[r * CELL: (r + 1) * CELL, c * CELL: (c + 1) * CELL] = AGENT
        return frame

    def _info(self, blocked: bool) -> dict[str, Any]:
        return {**self.task_info(), "rotation": self._turns * 90, "x": self._x, "y": self._y, "blocked": blocked}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._begin_episode(self.np_random)
        self._new_maze(seed)
        self._x, self._y = 0, self._start_row  # the carved path's first cell: always free
        self._stack[:] = self._frame()  # frame_stack copies of the first frame
        return self._stack.copy(), self._info(False)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._begin_step()
        dy, dx = MOVES[(int(action) + self._turns) % 4]
        y, x = self._y + int(dy), self._x + int(dx)
        # Cells one step outside the maze are padding (walls), so one lookup covers obstacles, walls and x < 0.
        blocked = bool(self._grid[y + HALF, x + HALF] != FREE)
        if not blocked:
            self._y, self._x = y, x
            if self._x + VIEW > self._columns:  # the view reaches 7 columns right of the agent, moves 1 more
                self._generate()
        reward = 0.0 if blocked else float(dx)
        # Shift the stack by one frame (numpy copes with the overlap) and put the newest frame last.
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = self._frame()
        truncated = self.mode == "episodic" and self._step_in_episode >= self.episode_steps
        return self._stack.copy(), reward, False, truncated, self._info(blocked)

    def oracle_action(self, move: int) -> int:
        """The action that makes the next step move the agent in maze direction ``move`` (0 up, 1 right, 2 down,
        3 left) under that step's rotation: what an oracle baseline is told. No learner calls it."""
        return int(action_for(move, self.upcoming_task().params["rotation"]))

    def render(self) -> np.ndarray | None:
        """``height x width x 3`` uint8: the newest frame scaled to the render size (default 4x, 256 x 256), grey."""
        if self.render_mode != "rgb_array":
            gym.logger.warn("RotatingMaze renders only with render_mode='rgb_array'")
            return None
        rows = np.arange(self.height) * FRAME // self.height
        cols = np.arange(self.width) * FRAME // self.width
        grey = self._stack[-1][rows[:, None], cols[None, :]]
        return np.repeat(grey[:, :, None], 3, axis=2)


def steps_per_second(n: int = 20000, seed: int = 0) -> float:
    """Environment steps per second of ``RotatingMazeEnv`` (episodic, resets included) under random actions."""
    env = RotatingMazeEnv()
    actions = np.random.default_rng(seed).integers(0, 4, n)
    env.reset(seed=seed)
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(int(a))
        if terminated or truncated:
            env.reset()
    return n / (time.perf_counter() - start)


__all__ = ["LIFELONG_SCHEDULE", "ROTATIONS", "RotatingMazeEnv", "action_for", "movement", "steps_per_second"]
