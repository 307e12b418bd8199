"""metadapt/RotatingMaze-v0 (Meta-GCG's image maze): rotations, frames, modes, schedules, the maze itself."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from metadapt.envs import make_env
from metadapt.envs.rotating_maze import ROTATIONS, RotatingMazeEnv, action_for, movement
from metadapt.errors import ConfigError

ENV_ID = "metadapt/RotatingMaze-v0"
# Maze direction -> (dx, dy), written out here rather than read from the module: 0 up, 1 right, 2 down, 3 left,
# with rows counted downwards from the top wall.
DXDY = {0: (0, -1), 1: (1, 0), 2: (0, 1), 3: (-1, 0)}


def empty(rotation: int = 0, **kwargs) -> RotatingMazeEnv:
    """A maze without obstacles (the walls only), one fixed rotation, reset with seed 0."""
    env = make_env(ENV_ID, schedule=f"rot{rotation}", density_start=0.0, density_max=0.0, **kwargs)
    env.reset(seed=0)
    return env


def go(env, direction: int, times: int = 1) -> list[dict]:
    """Move ``times`` steps in maze ``direction`` whatever the rotation (the oracle's un-rotation)."""
    out = []
    for _ in range(times):
        *_, info = env.step(action_for(direction, env.unwrapped.rotation))
        out.append(info)
    return out


def bfs(free: np.ndarray, start: tuple[int, int]) -> dict[tuple[int, int], tuple[int, int] | None]:
    """Parents of every cell ``(y, x)`` reachable from ``start`` through free cells of ``free`` (rows x columns)."""
    parent: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
    queue = deque([start])
    while queue:
        y, x = queue.popleft()
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            n = (y + dy, x + dx)
            if 0 <= n[0] < free.shape[0] and 0 <= n[1] < free.shape[1] and free[n] and n not in parent:
                parent[n] = (y, x)
                queue.append(n)
    return parent


# ---- Gymnasium ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{}, {"mode": "lifelong"}, {"mode": "lifelong", "schedule": "every_2000"}])
def test_passes_gymnasium_env_checker(kwargs):
    env = make_env(ENV_ID, **kwargs)
    assert env.spec.max_episode_steps is None  # the env truncates itself: no TimeLimit
    check_env(env.unwrapped, skip_render_check=True)
    check_env(make_env(ENV_ID, render_mode="rgb_array", **kwargs).unwrapped)


def test_spaces_and_render():
    env = make_env(ENV_ID, render_mode="rgb_array")
    assert env.observation_space.shape == (4, 64, 64) and env.observation_space.dtype == np.uint8
    assert env.action_space.n == 4
    obs, _ = env.reset(seed=1)
    frame = env.render()
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[::4, ::4, 1], obs[-1])  # the newest frame, 4 times larger, grey
    small = make_env(ENV_ID, render_mode="rgb_array", width=64, height=48)
    small.reset(seed=1)
    assert small.render().shape == (48, 64, 3)
    assert make_env(ENV_ID, frame_stack=2).observation_space.shape == (2, 64, 64)


# ---- determinism -------------------------------------------------------------------------------------------------
def _roll(seed: int, steps: int = 450, **kwargs) -> tuple[list, list, list]:
    env = make_env(ENV_ID, episode_steps=150, **kwargs)
    actions = np.random.default_rng(7).integers(0, 4, steps)
    obs, info = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], [info]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        observations.append(obs), rewards.append(r), infos.append(info)
        if term or trunc:  # later episodes (unseeded resets) must follow from the seed too
            obs, info = env.reset()
            observations.append(obs), infos.append(info)
    return observations, rewards, infos


def test_same_seed_same_run_and_other_seeds_other_mazes():
    a, b = _roll(3), _roll(3)
    np.testing.assert_array_equal(np.array(a[0]), np.array(b[0]))
    assert a[1] == b[1] and a[2] == b[2]
    c = _roll(4)
    assert not np.array_equal(np.array(a[0]), np.array(c[0]))
    mazes = [make_env(ENV_ID).unwrapped for _ in range(2)]
    for env, seed in zip(mazes, (3, 4), strict=True):
        env.reset(seed=seed)
    assert not np.array_equal(mazes[0].obstacles(300), mazes[1].obstacles(300))


def test_the_maze_of_a_seed_ignores_the_rotations():
    envs = [make_env(ENV_ID, schedule=s).unwrapped for s in ("rot0", "rot270")]
    envs.append(make_env(ENV_ID, mode="lifelong").unwrapped)
    envs.append(make_env(ENV_ID, mode="lifelong", schedule={"type": "alternating", "tasks": ["rot90", "rot180"],
                                                                "period": 7}).unwrapped)
    for env in envs:
        env.reset(seed=11)
        for a in np.random.default_rng(0).integers(0, 4, 300):  # lazily generated while stepping, at any pace
            env.step(int(a))
    maps = [env.obstacles(1500) for env in envs]
    for other in maps[1:]:
        np.testing.assert_array_equal(maps[0], other)
    # the same start cell too
    firsts = {make_env(ENV_ID, schedule=s).reset(seed=11)[1]["y"] for s in ("rot0", "rot90", "rot180", "rot270")}
    assert len(firsts) == 1


# ---- rotations ---------------------------------------------------------------------------------------------------
def test_movement_known_answers_and_action_for_inverts_it():
    assert movement(0, 0) == 0 and movement(1, 0) == 1  # rotation 0: the agent's frame is the maze's
    assert movement(0, 90) == 1  # rotated a quarter turn: "up" moves right
    assert movement(1, 180) == 3  # half a turn: "right" moves left
    assert movement(3, 270) == 2  # three quarters: "left" moves down
    for r in ROTATIONS:
        for a in range(4):
            assert movement(a, r) == (a + r // 90) % 4
            assert action_for(movement(a, r), r) == a
            assert movement(action_for(a, r), r) == a
    actions, rotations = np.repeat(np.arange(4), 4), np.tile(np.array(ROTATIONS), 4)
    moves = movement(actions, rotations)
    assert isinstance(moves, np.ndarray) and moves.shape == (16,)
    np.testing.assert_array_equal(action_for(moves, rotations), actions)
    with pytest.raises(ValueError):
        movement(0, 45)


@pytest.mark.parametrize("rotation", ROTATIONS)
def test_every_action_moves_as_its_rotation_says(rotation):
    env = empty(rotation)
    info = go(env, 1, 3)[-1]  # away from the left edge
    mid = env.unwrapped.rows // 2
    info = go(env, 0 if info["y"] > mid else 2, abs(info["y"] - mid))[-1] if info["y"] != mid else info
    assert (info["x"], info["y"]) == (3, mid)
    for action in range(4):
        _, reward, term, trunc, after = env.step(action)
        dx, dy = DXDY[(action + rotation // 90) % 4]
        assert (after["x"] - info["x"], after["y"] - info["y"]) == (dx, dy), (rotation, action)
        assert reward == float(dx) and not after["blocked"] and not term and not trunc
        assert after["rotation"] == rotation and after["task"] == f"rot{rotation}"
        info = go(env, (movement(action, rotation) + 2) % 4)[-1]  # back to (3, mid)
        assert (info["x"], info["y"]) == (3, mid)


def test_walls_and_the_left_edge_block():
    env = empty(90)
    _, info = env.reset(seed=0)
    *_, info = env.step(action_for(3, 90))  # left of column 0
    assert info["blocked"] and info["x"] == 0
    info = go(env, 0, info["y"])[-1] if info["y"] else info
    assert info["y"] == 0 and not info["blocked"]
    _, reward, _, _, info = env.step(action_for(0, 90))  # into the top wall
    assert info["blocked"] and (info["x"], info["y"]) == (0, 0) and reward == 0.0
    info = go(env, 2, env.unwrapped.rows - 1)[-1]
    assert info["y"] == env.unwrapped.rows - 1
    assert go(env, 2)[-1]["blocked"] and go(env, 2)[-1]["y"] == env.unwrapped.rows - 1


def test_obstacles_block():
    env = make_env(ENV_ID, schedule="rot180", density_start=0.3, density_max=0.3)
    _, info = env.reset(seed=5)
    free = ~env.unwrapped.obstacles(60)
    parent = bfs(free, (info["y"], 0))
    # a reachable free cell whose right neighbour is an obstacle
    target = next(c for c in sorted(parent, key=lambda c: c[1]) if c[1] + 1 < 60 and not free[c[0], c[1] + 1])
    path = [target]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    for (y0, x0), (y1, x1) in zip(path[::-1], path[-2::-1], strict=False):
        direction = {v: k for k, v in DXDY.items()}[(x1 - x0, y1 - y0)]
        assert not go(env, direction)[-1]["blocked"]
    _, reward, _, _, info = env.step(action_for(1, 180))
    assert info["blocked"] and (info["y"], info["x"]) == target and reward == 0.0


# ---- modes and schedules -----------------------------------------------------------------------------------------
def test_lifelong_never_ends_and_alternates_exactly():
    env = make_env(ENV_ID, mode="lifelong", schedule={"type": "alternating", "tasks": list(RotatingMazeEnv.CATALOG),
                                                      "period": 100})
    env.reset(seed=0)
    rotations = []
    for a in np.random.default_rng(0).integers(0, 4, 5000):
        _, _, term, trunc, info = env.step(a)
        assert not term and not trunc
        rotations.append(info["rotation"])
    rotations = np.array(rotations)
    np.testing.assert_array_equal(rotations, 90 * ((np.arange(5000) // 100) % 4))
    assert set(np.flatnonzero(np.diff(rotations)) + 1) == set(range(100, 5000, 100))


def test_lifelong_default_switches_about_every_2000_steps():
    env = make_env(ENV_ID, mode="lifelong")
    env.reset(seed=2)
    rotations = np.array([env.step(a)[4]["rotation"] for a in np.random.default_rng(0).integers(0, 4, 9000)])
    switches = np.flatnonzero(np.diff(rotations)) + 1
    lengths = np.diff(np.concatenate(([0], switches)))
    assert len(switches) >= 3 and lengths.min() >= 1500 and lengths.max() <= 2500


def test_sequence_schedule():
    env = make_env(ENV_ID, mode="lifelong", schedule={"type": "sequence", "entries": [[0, "rot0"], [30, "rot180"]]})
    _, info = env.reset(seed=0)
    assert info["rotation"] == 0
    rotations = [env.step(1)[4]["rotation"] for _ in range(60)]
    assert rotations == [0] * 30 + [180] * 30


def test_episodic_truncates_and_draws_rotations():
    env = make_env(ENV_ID, episode_steps=20)
    seen = set()
    env.reset(seed=0)
    for _ in range(40):
        rotations = set()
        for t in range(20):
            _, _, term, trunc, info = env.step(env.action_space.sample())
            assert not term and trunc == (t == 19)
            rotations.add(info["rotation"])
        assert len(rotations) == 1  # one rotation per episode
        seen |= rotations
        env.reset()
    assert seen == set(ROTATIONS)
    default = make_env(ENV_ID)
    default.reset(seed=0)
    truncs = [default.step(0)[3] for _ in range(200)]
    assert truncs == [False] * 199 + [True]


# ---- frames ------------------------------------------------------------------------------------------------------
def expected_frame(obstacles: np.ndarray, x: int, y: int) -> np.ndarray:
    """The 64 x 64 frame drawn cell by cell: view cell (i, j) shows maze cell (y - 8 + i, x - 8 + j), the agent
    sits at view cell (8, 8)."""
    rows = obstacles.shape[0]
    frame = np.zeros((64, 64), dtype=np.uint8)
    for i in range(16):
        for j in range(16):
            yy, xx = y - 8 + i, x - 8 + j
            inside = 0 <= yy < rows and xx >= 0
            value = 128 if (i, j) == (8, 8) else 255 if not inside or obstacles[yy, xx] else 0
            frame[4 * i: 4 * i + 4, 4 * j: 4 * j + 4] = value
    return frame


def test_frame_stack_shifts_and_starts_with_copies():
    env = make_env(ENV_ID, schedule="rot0", density_start=0.2)
    obs, info = env.reset(seed=9)
    for k in range(1, 4):
        np.testing.assert_array_equal(obs[k], obs[0])  # the reset stack: 4 copies of the first frame
    obstacles = env.unwrapped.obstacles(100)
    np.testing.assert_array_equal(obs[-1], expected_frame(obstacles, info["x"], info["y"]))
    single = make_env(ENV_ID, schedule="rot0", density_start=0.2, frame_stack=1)
    single.reset(seed=9)
    actions = [1, 1, 0, 1, 2, 2, 1, 3, 1]
    for a in actions:
        new, _, _, _, info = env.step(a)
        np.testing.assert_array_equal(new[:-1], obs[1:])  # shifted by one, oldest first
        np.testing.assert_array_equal(new[-1], single.step(a)[0][0])
        np.testing.assert_array_equal(new[-1], expected_frame(obstacles, info["x"], info["y"]))
        assert (new[-1][32:36, 32:36] == 128).all() and (new[-1] == 128).sum() == 16
        obs = new


def test_frame_at_the_top_wall_draws_the_outside_as_wall():
    env = empty(0)
    info = go(env, 1, 2)[-1]
    info = go(env, 0, info["y"])[-1] if info["y"] else info
    obs = env.step(0)[0]  # blocked: still at (2, 0)
    frame = obs[-1]
    assert (frame[:32] == 255).all()  # the 8 view rows above the agent are outside the maze
    assert (frame[32:36, :24] == 255).all() and (frame[32:36, 24:32] == 0).all()  # x < 0 is wall, columns 0-1 free
    assert (frame[36:, 24:] == 0).all()  # an empty corridor below and to the right


# ---- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "words"), [
    ({"mode": "forever"}, "mode must be one of episodic, lifelong"),
    ({"frame_stack": 0}, "frame_stack must be an integer >= 1, got 0"),
    ({"rows": 2}, "rows must be an integer >= 3"),
    ({"density_start": 1.0}, "density_start must be a number in [0, 1)"),
    ({"density_max": -0.1}, "density_max must be a number in [0, 1)"),
    ({"density_ramp": 0}, "density_ramp must be a positive number"),
    ({"episode_steps": 0}, "episode_steps must be an integer >= 1"),
    ({"schedule": {"type": "alternating", "tasks": ["rot0", {"rotation": 45}], "period": 10}},
     "rotation 45 is not one of 0, 90, 180, 270"),
    ({"schedule": {"type": "constant", "task": {"rotation": 360}}}, "rotation 360 is not one of 0, 90, 180, 270"),
    ({"schedule": {"type": "alternating", "tasks": ["rot0", "rot45"], "period": 10}}, "unknown task 'rot45'"),
    ({"schedule": {"type": "constant", "task": {"angle": 90}}}, "takes exactly 'rotation'"),
])
def test_bad_input_is_one_config_error_line(kwargs, words):
    with pytest.raises(ConfigError) as exc:
        make_env(ENV_ID, **kwargs)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_task_mappings_resolve_to_the_catalog():
    env = make_env(ENV_ID, schedule={"type": "constant", "task": {"rotation": 180}})
    _, info = env.reset(seed=0)
    assert (info["task"], info["task_id"], info["rotation"]) == ("rot180", 2, 180)
    with pytest.raises(ConfigError, match="rotation 45 is not one of"):
        env.unwrapped.next_task = {"rotation": 45}


# ---- the maze ----------------------------------------------------------------------------------------------------
def test_density_grows_to_the_right_and_a_path_goes_on():
    env = make_env(ENV_ID).unwrapped
    _, info = env.reset(seed=4)
    obstacles = env.obstacles(3200)
    near, far = obstacles[:, :200].mean(), obstacles[:, 2400:3200].mean()
    assert near < 0.12 and far > 0.25 and far > near + 0.15
    reached = bfs(~obstacles, (info["y"], 0))
    assert any(x == 200 for _, x in reached)
    assert any(x == 3199 for _, x in reached)  # the carved path crosses the dense columns too


def test_no_free_cell_is_a_dead_end_for_an_agent_heading_right() -> None:
    # A pocket whose only exit is leftwards traps any planner rewarded for going right (the first lifelong sweep's
    # agents, the oracle included, sat in one for 12,000 steps): every free cell has a free right neighbour within
    # two cells up or down its own free run, across chunk boundaries (512 columns) too.
    env = RotatingMazeEnv(mode="lifelong", density_start=0.3, density_max=0.3)
    env.reset(seed=5)
    blocked = env.obstacles(1500)
    rows = blocked.shape[0]
    for c in range(blocked.shape[1] - 1):
        for r in np.flatnonzero(~blocked[:, c]):
            lo = hi = r
            while lo > 0 and not blocked[lo - 1, c] and r - lo < 2:
                lo -= 1
            while hi + 1 < rows and not blocked[hi + 1, c] and hi - r < 2:
                hi += 1
            assert (~blocked[lo: hi + 1, c + 1]).any(), (c, r)
