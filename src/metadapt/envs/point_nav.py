"""2D point navigation (MAML-RL, Finn et al. 2017): reach a hidden goal in the plane.

The agent is a point that starts at the origin; an action is a displacement,
clipped to ``[-0.1, 0.1]`` per axis; the reward is minus the Euclidean distance
from the new position to the goal. A task is a goal position, drawn uniformly
from ``[-0.5, 0.5]^2`` for training and testing. Pure numpy: no MuJoCo.

``PointNavVectorEnv`` steps many of these points as one array operation, with
the semantics of ``SyncVectorEnv`` over ``metadapt/PointNav-v0`` (same
observations, rewards, truncations, task draws per seed and ``infos``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium.spaces import Box
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from metadapt.envs.base import EnvInfo, TaskEnv
from metadapt.envs.tasks import Constant, Sampled, Task, TaskSchedule, TaskSpec
from metadapt.errors import ConfigError

MAX_STEP = 0.1  # largest displacement per axis and step
GOAL_LOW, GOAL_HIGH = -0.5, 0.5  # the goal distribution (train and test), per axis
HORIZON = 100
# Task parameters are kept to this many decimals, so that a task's name ("goal=(0.1234,-0.2000)") names it exactly
# and equal names are equal tasks (task ids come from names). 1e-4 is far below the 0.1 an action moves.
DECIMALS = 4


def finite_number(value: Any, what: str) -> float:
    """``value`` as a float rounded to ``DECIMALS``; one ``ConfigError`` line unless it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return round(number, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0: one name per value


class ParametricTasks(TaskEnv):
    """Task families without (many) names: an unknown name gets an error line that shows the mapping to write."""

    EXAMPLE: ClassVar[str] = "{}"

    def resolve_task(self, spec: TaskSpec) -> Task:
        if isinstance(spec, str) and spec not in self.CATALOG:
            names = f" or one of {', '.join(self.CATALOG)}" if self.CATALOG else ""
            raise ConfigError(f"unknown task '{spec}': a task is a mapping such as {self.EXAMPLE}{names}")
        return super().resolve_task(spec)


def _distance(position: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """``... x 2`` float32 positions, ``... x 2`` goals -> ``...`` float64 distances.

    Written out per axis so that one point and a batch of points give bit-identical
    results (the vector env equals ``SyncVectorEnv`` exactly).
    """
    d = position.astype(np.float64) - goal
    return np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1])


def _at_goal(position: np.ndarray, goal: np.ndarray, tolerance: float | None) -> np.ndarray:
    """``... x 2`` positions within ``tolerance`` of the goal on both axes (MAML's end of an episode)."""
    if tolerance is None:
        return np.zeros(position.shape[:-1], dtype=bool)
    return np.all(np.abs(position.astype(np.float64) - goal) < tolerance, axis=-1)


def _move(position: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Positions after a step: ``... x 2`` float32 positions and raw actions -> ``... x 2`` float32."""
    return (position + np.clip(np.asarray(action, dtype=np.float64), -MAX_STEP, MAX_STEP)).astype(np.float32)


class PointNavEnv(ParametricTasks, gym.Env):
    """2D point navigation to a hidden goal (MAML-RL); task parameter ``goal`` ([x, y]).

    Observation (2, float32): the position, ``(0, 0)`` after a reset; with
    ``task_in_obs=True`` (the MAML paper's oracle) the goal follows (4). Action
    (2): a displacement, clipped to ``[-0.1, 0.1]`` per axis. Reward: minus the
    distance from the position *after* the move to the goal (MAML's point env).

    By default episodes never terminate: fixed-length episodes (100 steps, the
    registry's time limit) make returns comparable across tasks and policies.
    ``goal_tolerance=0.01`` ends an episode as MAML's code does, when the point
    is within 0.01 of the goal on both axes (the later steps then count 0, which
    the original's returns include: its numbers need it).

    Tasks: ``{"goal": [gx, gy]}``, any two finite numbers (kept to 4 decimals);
    training and test goals are uniform in ``[-0.5, 0.5]^2``. Keyword arguments
    ``schedule`` and ``task_sampler`` as for every metadapt env (default: a new
    goal at every reset); ``next_task`` sets the goal of the following episodes.
    ``render_mode="rgb_array"`` draws the point and the goal with numpy.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}
    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="point in the plane (numpy, no physics)",
        obs="2: position (x, y), float32; + goal with task_in_obs",
        action="2: displacement, clipped to [-0.1, 0.1]",
        reward="-|p' - goal|",
        train="goal ~ U[-0.5, 0.5]^2",
        test="goal ~ U[-0.5, 0.5]^2",
    )
    CATALOG: ClassVar[dict[str, dict[str, Any]]] = {}
    TRAIN: ClassVar[tuple[str, ...]] = ()
    TEST: ClassVar[tuple[str, ...]] = ()
    EXAMPLE: ClassVar[str] = "{'goal': [0.1, -0.3]}"

    def __init__(
        self,
        *,
        task_in_obs: bool = False,
        schedule: Any = None,
        task_sampler: Any = None,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
        goal_tolerance: float | None = None,
    ) -> None:
        if goal_tolerance is not None and not (isinstance(goal_tolerance, int | float) and goal_tolerance > 0):
            raise ConfigError(f"goal_tolerance must be a positive number or null, got {goal_tolerance!r}")
        self.goal_tolerance = None if goal_tolerance is None else float(goal_tolerance)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.task_in_obs = bool(task_in_obs)
        self.render_mode, self.width, self.height = render_mode, int(width), int(height)
        self.observation_space = Box(-np.inf, np.inf, shape=(4 if self.task_in_obs else 2,), dtype=np.float32)
        self.action_space = Box(-MAX_STEP, MAX_STEP, shape=(2,), dtype=np.float32)
        self._position = np.zeros(2, dtype=np.float32)
        self._init_tasks(schedule, task_sampler)

    # ---- tasks -----------------------------------------------------------------------------------------------
    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if set(params) != {"goal"}:
            raise ConfigError(f"a navigation task takes exactly 'goal' ([x, y]), got keys {sorted(params)}")
        goal = params["goal"]
        if isinstance(goal, str | bytes | Mapping) or not isinstance(goal, Sequence | np.ndarray) or len(goal) != 2:
            raise ConfigError(f"navigation 'goal' must be two finite numbers [x, y], got {goal!r}")
        gx, gy = (finite_number(g, "navigation 'goal' entry") for g in goal)
        return f"goal=({gx:.{DECIMALS}f},{gy:.{DECIMALS}f})", {"goal": (gx, gy)}

    def sample_train_task(self, rng: np.random.Generator) -> Task:
        """A goal uniform in ``[-0.5, 0.5]^2``."""
        return self.resolve_task({"goal": rng.uniform(GOAL_LOW, GOAL_HIGH, size=2)})

    def sample_test_task(self, rng: np.random.Generator) -> Task:
        """A goal uniform in ``[-0.5, 0.5]^2`` (MAML tests on the training distribution)."""
        return self.resolve_task({"goal": rng.uniform(GOAL_LOW, GOAL_HIGH, size=2)})

    @property
    def goal(self) -> np.ndarray:
        """The current task's goal, shape ``(2,)`` float64."""
        return np.asarray(self.task.params["goal"], dtype=np.float64)

    # ---- the MDP -----------------------------------------------------------------------------------------------
    def _get_obs(self) -> np.ndarray:
        if self.task_in_obs:
            return np.concatenate((self._position, self.goal)).astype(np.float32)
        return self._position.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._begin_episode(self.np_random)
        self._position = np.zeros(2, dtype=np.float32)
        return self._get_obs(), self.task_info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._begin_step()
        self._position = _move(self._position, action)
        reward = -float(_distance(self._position, self.goal))
        return self._get_obs(), reward, bool(_at_goal(self._position, self.goal, self.goal_tolerance)), False, \
            self.task_info()

    def reward_fn(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Batched reward: ``N x D, N x 2, N x D -> N``; equals ``env.step``'s reward.

        The goal is hidden from the observation, so it is the *current* task's goal
        (the task of the env's last reset or step): exact for transitions of that
        task. With ``task_in_obs=True`` it is read from ``next_obs`` instead, exact
        for transitions of any task.
        """
        if self.task_in_obs:
            goal = next_obs[..., 2:4]
        else:
            goal = torch.as_tensor(self.goal, dtype=next_obs.dtype, device=next_obs.device)
        return -(next_obs[..., :2] - goal).pow(2).sum(-1).sqrt()

    def render(self) -> np.ndarray | None:
        """An ``height x width x 3`` uint8 frame: the goal (red), the point (blue), the axes (grey)."""
        if self.render_mode != "rgb_array":
            gym.logger.warn("PointNav renders only with render_mode='rgb_array'")
            return None
        return draw_frame(self._position, self.goal, self.width, self.height)


def draw_frame(position: np.ndarray, goal: np.ndarray, width: int, height: int) -> np.ndarray:
    """``height x width x 3`` uint8: a view centred on the origin that always holds the point and the goal."""
    half = 1.1 * max(0.6, float(np.abs(position).max()), float(np.abs(goal).max()))
    scale = min(width, height) / (2 * half)  # pixels per unit
    ys, xs = np.mgrid[0:height, 0:width]
    wx, wy = (xs - width / 2) / scale, (height / 2 - ys) / scale
    frame = np.full((height, width, 3), 255, dtype=np.uint8)
    frame[(np.abs(wx) < 0.5 / scale) | (np.abs(wy) < 0.5 / scale)] = (200, 200, 200)
    radius = max(0.035 * half, 1.5 / scale)
    for (px, py), colour in ((goal, (220, 40, 40)), (position, (40, 70, 220))):
        frame[(wx - px) ** 2 + (wy - py) ** 2 <= radius**2] = colour
    return frame


class PointNavVectorEnv(VectorEnv):
    """``num_envs`` points stepped as one array operation, with the semantics of ``SyncVectorEnv(PointNav-v0)``.

    Observations ``num_envs x 2`` float32 (``x 4`` with ``task_in_obs``), actions
    ``num_envs x 2`` (clipped), rewards ``num_envs`` float64, truncation after
    ``max_episode_steps``, termination at the goal with ``goal_tolerance``. ``reset(seed=s)`` seeds sub-env ``i``
    with ``s + i`` as ``SyncVectorEnv`` does, so the goals drawn are those of the
    same seeds there. ``infos`` carry ``task_id`` (int64) and ``task`` (object)
    arrays with their ``_task_id`` / ``_task`` masks, as ``SyncVectorEnv`` builds
    them. ``metadata["autoreset_mode"]`` is the ``AutoresetMode`` chosen at
    construction (default ``NEXT_STEP``, Gymnasium's default).

    Every sub-env has a ``PointNavEnv`` (``self.envs[i]``) that keeps its tasks:
    schedule, sampler, generator and ``next_task``. ``set_attr("next_task", [...])``
    reaches them exactly as it does through ``SyncVectorEnv``. Stepping is one
    array operation; Python loops run only over the sub-envs that reset, and, for
    schedules that switch tasks inside an episode (alternating, random, sequence),
    over the sub-envs to read each one's task of the step.
    """

    def __init__(
        self,
        num_envs: int,
        *,
        max_episode_steps: int = HORIZON,
        task_in_obs: bool = False,
        schedule: Any = None,
        task_sampler: Any = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        goal_tolerance: float | None = None,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ConfigError(f"num_envs must be a positive integer, got {num_envs!r}")
        if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1:
            raise ConfigError(f"max_episode_steps must be a positive integer, got {max_episode_steps!r}")
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            modes = ", ".join(m.value for m in AutoresetMode)
            raise ConfigError(f"autoreset_mode must be one of {modes}, got {autoreset_mode!r}") from None
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.task_in_obs = bool(task_in_obs)
        self.metadata = {"autoreset_mode": self.autoreset_mode, "render_modes": []}
        self.render_mode = None
        # A schedule object (rather than a spec) would be shared and its state mixed between sub-envs: copy it.
        self.envs = [
            PointNavEnv(
                task_in_obs=task_in_obs,
                goal_tolerance=goal_tolerance,
                schedule=copy.deepcopy(schedule) if isinstance(schedule, TaskSchedule) else schedule,
                task_sampler=task_sampler,
            )
            for _ in range(num_envs)
        ]
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._position = np.zeros((num_envs, 2), dtype=np.float32)
        self._goal = np.zeros((num_envs, 2), dtype=np.float64)
        self._task_id = np.zeros(num_envs, dtype=np.int64)
        self._task_name = np.full(num_envs, None, dtype=object)
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._steady = np.ones(num_envs, dtype=bool)  # the task cannot change inside the current episode
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._needs_reset = True

    # ---- sub-env attributes (next_task) -------------------------------------------------------------------------
    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Attribute ``name`` of every sub-env's ``PointNavEnv`` (e.g. ``next_task``, ``task``)."""
        return tuple(getattr(env, name) for env in self.envs)

    def set_attr(self, name: str, values: Any) -> None:
        """Set ``name`` on every sub-env; a list or tuple gives one value per sub-env (as ``SyncVectorEnv``)."""
        if not isinstance(values, list | tuple):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr needs one value per sub-env: got {len(values)} for {self.num_envs}")
        for env, value in zip(self.envs, values, strict=True):
            env.set_wrapper_attr(name, value)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call method ``name`` of every sub-env's ``PointNavEnv`` (an attribute's value if not callable)."""
        if name in ("reset", "step", "close"):
            raise ValueError(f"call('{name}') would desynchronise the sub-envs; use {name}() on the vector env")
        out = []
        for env in self.envs:
            attr = getattr(env, name)
            out.append(attr(*args, **kwargs) if callable(attr) else attr)
        return tuple(out)

    # ---- episodes ----------------------------------------------------------------------------------------------
    def _observations(self) -> np.ndarray:
        if self.task_in_obs:
            return np.concatenate((self._position, self._goal.astype(np.float32)), axis=1)
        return self._position.copy()

    def _read_tasks(self, index: Sequence[int] | np.ndarray) -> None:
        for i in index:
            task = self.envs[i].task
            self._goal[i] = task.params["goal"]
            self._task_id[i], self._task_name[i] = task.task_id, task.name

    def _reset_envs(self, index: np.ndarray, seeds: Sequence[int | None] | None = None) -> None:
        """Start new episodes of the sub-envs ``index`` through their ``PointNavEnv`` (tasks, generators)."""
        for k, i in enumerate(index):
            env = self.envs[i]
            env.reset(seed=None if seeds is None else seeds[k])
            self._steady[i] = env._episode_task is not None or isinstance(env.schedule, Constant | Sampled)
        self._read_tasks(index)
        self._position[index] = 0.0
        self._steps[index] = 0
        self._autoreset[index] = False

    def _infos(self) -> dict[str, Any]:
        ones = np.ones(self.num_envs, dtype=bool)
        return {"task_id": self._task_id.copy(), "_task_id": ones, "task": self._task_name.copy(), "_task": ones.copy()}

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-env, or those of ``options["reset_mask"]`` (a bool array of shape ``(num_envs,)``).

        ``seed``: ``None``, an int ``s`` (sub-env ``i`` gets ``s + i``) or one seed per sub-env.
        """
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, int | np.integer) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset needs one seed per sub-env: got {len(seeds)} for {self.num_envs}")
        mask = np.ones(self.num_envs, dtype=bool)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"])
            if mask.dtype != np.bool_ or mask.shape != (self.num_envs,) or not mask.any():
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},) with a True")
        index = np.flatnonzero(mask)
        self._reset_envs(index, [seeds[i] for i in index])
        self._needs_reset = False
        infos = self._infos()
        if not mask.all():  # as SyncVectorEnv: only the sub-envs that reset report, the others are masked out
            infos["task_id"][~mask], infos["task"][~mask] = 0, None
            infos["_task_id"], infos["_task"] = mask.copy(), mask.copy()
        return self._observations(), infos

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._needs_reset:
            raise gym.error.ResetNeeded("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, 2):
            raise ValueError(f"actions must have shape ({self.num_envs}, 2), got {actions.shape}")
        restart = self._autoreset.copy() if self.autoreset_mode is AutoresetMode.NEXT_STEP else None
        if self.autoreset_mode is AutoresetMode.DISABLED and self._autoreset.any():
            raise ValueError(
                f"sub-envs {np.flatnonzero(self._autoreset).tolist()} ended: autoreset is disabled, reset them with "
                "reset(options={'reset_mask': mask}) first"
            )
        stepping = ~restart if restart is not None else np.ones(self.num_envs, dtype=bool)
        switching = np.flatnonzero(stepping & ~self._steady)
        for i in switching:  # only schedules that switch inside an episode: each sub-env's task of this step
            self.envs[i]._begin_step()
        self._read_tasks(switching)
        # one array operation for every sub-env (those restarting are overwritten below)
        self._position = _move(self._position, actions)
        rewards = -_distance(self._position, self._goal)
        self._steps += 1
        terminated = _at_goal(self._position, self._goal, self.envs[0].goal_tolerance)
        truncated = self._steps >= self.max_episode_steps
        infos: dict[str, Any] = {}
        if restart is not None and restart.any():
            index = np.flatnonzero(restart)
            self._reset_envs(index)
            rewards[index], terminated[index], truncated[index] = 0.0, False, False
        ended = terminated | truncated
        if self.autoreset_mode is AutoresetMode.SAME_STEP and ended.any():
            infos = self._final(np.flatnonzero(ended))
            self._reset_envs(np.flatnonzero(ended))
        # SAME_STEP has already restarted the ended sub-envs; the other modes restart them later
        self._autoreset = ended if self.autoreset_mode is not AutoresetMode.SAME_STEP else np.zeros_like(ended)
        infos.update(self._infos())
        return self._observations(), rewards, terminated, truncated, infos

    def _final(self, index: np.ndarray) -> dict[str, Any]:
        """SAME_STEP autoreset: the last observation and info of the sub-envs ``index``, as ``SyncVectorEnv`` sends."""
        mask = np.zeros(self.num_envs, dtype=bool)
        mask[index] = True
        obs = self._observations()
        final_obs = np.full(self.num_envs, None, dtype=object)
        task_id = np.zeros(self.num_envs, dtype=np.int64)
        task = np.full(self.num_envs, None, dtype=object)
        for i in index:
            final_obs[i] = obs[i]
        task_id[index], task[index] = self._task_id[index], self._task_name[index]
        final_info = {"task_id": task_id, "_task_id": mask.copy(), "task": task, "_task": mask.copy()}
        return {"final_obs": final_obs, "_final_obs": mask.copy(), "final_info": final_info, "_final_info": mask.copy()}

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()


__all__ = ["HORIZON", "MAX_STEP", "PointNavEnv", "PointNavVectorEnv", "draw_frame", "finite_number"]
