"""MAML-RL's locomotion task families (Finn et al. 2017) on Gymnasium's v5 physics.

The tasks change the reward, not the robot: a goal velocity or a direction of
travel for the half-cheetah, a direction for the ant (rllab's
``half_cheetah_env_rand.py``, ``half_cheetah_env_rand_direc.py`` and
``ant_env_rand_direc.py`` in the MAML-RL code). Every reward is an exact
function of ``(obs, act, next_obs)`` and the current task; the task itself is
hidden from the observation unless ``task_in_obs=True`` (the paper's oracle
baseline), which appends it as the last entry.

Forward velocities are the torso's average x velocity over the step (the last
robot entry of the observation), where rllab read the centre-of-mass velocity
at the end of the step.

The cheetahs act at rllab's control period: one physics step of 0.01 s per
action (``frame_skip=1``; Gymnasium's HalfCheetah-v5 steps 5), so an episode of
200 steps is the original's 2 seconds, not 10. At Gymnasium's period the action
noise of a fresh policy (standard deviation 1, held for 5 physics steps) flips
the cheetah onto its back in a tenth of the steps, and some initialisations
never got up again; at rllab's it almost never does (``docs/results.md``).
Pass ``frame_skip=5`` for Gymnasium's period.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium.envs.mujoco.ant_v5 import AntEnv as _GymAnt
from gymnasium.spaces import Box

from metadapt.envs.ant_crippled import AntSteps
from metadapt.envs.base import EnvInfo, split_task_kwargs
from metadapt.envs.halfcheetah import HalfCheetahEnv
from metadapt.envs.point_nav import DECIMALS, ParametricTasks, finite_number
from metadapt.envs.tasks import Task
from metadapt.errors import ConfigError

CHEETAH_CTRL_COST = 0.05  # rllab: 0.5 * 1e-1 * sum(a^2)
CHEETAH_FRAME_SKIP = 1  # rllab's half_cheetah.xml: timestep 0.01 s and no frame_skip entry, so 1
VELOCITY_LOW, VELOCITY_HIGH = 0.0, 2.0  # goal velocities (train and test), m/s
CHEETAH_OBS = 18  # metadapt/HalfCheetah-v0's observation; the step's mean x velocity is its last entry
ANT_QPOS_QVEL = 27  # qpos[2:] (13) and qvel (14)
ANT_CONTACT = 78  # cfrc_ext of the 13 robot bodies, 6 each, clipped to the contact force range
ANT_OBS = ANT_QPOS_QVEL + ANT_CONTACT + 1  # + the torso's mean x velocity over the step

_DIRECTIONS: dict[str, dict[str, Any]] = {"forward": {"direction": 1}, "backward": {"direction": -1}}


def _direction(params: Mapping[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    if set(params) != {"direction"}:
        raise ConfigError(f"a {what} task takes exactly 'direction' (+1 or -1), got keys {sorted(params)}")
    value = params["direction"]
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) or value not in (1, -1):
        raise ConfigError(f"{what} 'direction' must be +1 (forward) or -1 (backward), got {value!r}")
    return ("forward" if value == 1 else "backward"), {"direction": int(value)}


class _TaskObservation:
    """``task_in_obs``: the current task's parameter appended to the observation (MAML's oracle)."""

    task_in_obs: bool
    task: Task
    TASK_PARAM: ClassVar[str]

    def task_value(self) -> float:
        """The current task's parameter (goal velocity or direction)."""
        return float(self.task.params[self.TASK_PARAM])

    def _with_task(self, obs: np.ndarray) -> np.ndarray:
        return np.concatenate((obs, [self.task_value()])) if self.task_in_obs else obs

    def _task_param(self, next_obs: torch.Tensor) -> torch.Tensor | float:
        """The task's parameter for a batch: read from ``next_obs`` with ``task_in_obs``, else the current task's."""
        return next_obs[..., -1] if self.task_in_obs else self.task_value()


class _GoalCheetah(_TaskObservation, ParametricTasks, HalfCheetahEnv):
    """metadapt/HalfCheetah-v0 with a task-dependent reward and rllab's control cost (0.05)."""

    OBJECTIVES: ClassVar[dict[str, str]] = {}  # the authors' cost rewards running forward, whatever the task
    # Policy files written before runs recorded their control period (2026-12-06) were trained at Gymnasium's
    # 0.05 s: a run refuses to load or resume them at another period.
    UNRECORDED_DT: ClassVar[float] = 0.05

    def __init__(self, *, task_in_obs: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("ctrl_cost_weight", CHEETAH_CTRL_COST)
        kwargs.setdefault("frame_skip", CHEETAH_FRAME_SKIP)
        self.task_in_obs = bool(task_in_obs)
        super().__init__(**kwargs)
        self.observation_space = Box(-np.inf, np.inf, shape=(CHEETAH_OBS + self.task_in_obs,), dtype=np.float64)

    def _get_obs(self) -> np.ndarray:
        return self._with_task(super()._get_obs())

    def forward_reward(self, x_velocity: Any, task_param: Any) -> Any:
        """The task's reward for the step's mean x velocity (numpy or torch, broadcasting)."""
        raise NotImplementedError

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        forward = float(self.forward_reward(x_velocity, self.task_value()))
        ctrl = float(self.control_cost(action))
        return forward - ctrl, {"reward_forward": forward, "reward_ctrl": -ctrl}

    def reward_fn(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Batched reward: ``N x D, N x 6, N x D -> N`` (D = 18, or 19 with ``task_in_obs``); equals ``env.step``'s.

        Without ``task_in_obs`` the task is the current one (of the env's last reset
        or step): exact for transitions of that task; with it, the task is read from
        ``next_obs`` and any transition is scored exactly.
        """
        velocity = next_obs[..., CHEETAH_OBS - 1]
        return self.forward_reward(velocity, self._task_param(next_obs)) - self._ctrl_cost_weight * act.pow(2).sum(-1)


class HalfCheetahVelEnv(_GoalCheetah):
    """HalfCheetah running at a goal velocity (MAML-RL); task parameter ``velocity`` (m/s).

    metadapt/HalfCheetah-v0's robot and observation (18: ``qpos[1:9]``, ``qvel[:9]``,
    the torso's mean x velocity over the step; 19 with ``task_in_obs``, the goal
    velocity last). Reward (rllab's ``half_cheetah_env_rand.py``):
    ``-|v_x - v_goal| - 0.05 |a|^2``; no termination; 200 steps (registry).
    Tasks ``{"velocity": v}``, any finite number (kept to 4 decimals); training
    and test goals are uniform in ``[0, 2]``.
    """

    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="HalfCheetah-v5 at rllab's dt 0.01 s",
        obs="18: as metadapt/HalfCheetah-v0; + goal velocity with task_in_obs",
        action="6 torques in [-1, 1]",
        reward="-|v_x - v_goal| - 0.05 |a|^2",
        train="v_goal ~ U[0, 2]",
        test="v_goal ~ U[0, 2]",
    )
    CATALOG: ClassVar[dict[str, dict[str, Any]]] = {}
    TRAIN: ClassVar[tuple[str, ...]] = ()
    TEST: ClassVar[tuple[str, ...]] = ()
    EXAMPLE: ClassVar[str] = "{'velocity': 1.5}"
    TASK_PARAM: ClassVar[str] = "velocity"

    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if set(params) != {"velocity"}:
            raise ConfigError(f"a goal-velocity task takes exactly 'velocity' (m/s), got keys {sorted(params)}")
        v = finite_number(params["velocity"], "goal 'velocity'")
        return f"velocity={v:.{DECIMALS}f}", {"velocity": v}

    def sample_train_task(self, rng: np.random.Generator) -> Task:
        """A goal velocity uniform in ``[0, 2]``."""
        return self.resolve_task({"velocity": rng.uniform(VELOCITY_LOW, VELOCITY_HIGH)})

    def sample_test_task(self, rng: np.random.Generator) -> Task:
        """A goal velocity uniform in ``[0, 2]`` (MAML tests on the training distribution)."""
        return self.resolve_task({"velocity": rng.uniform(VELOCITY_LOW, VELOCITY_HIGH)})

    def forward_reward(self, x_velocity: Any, task_param: Any) -> Any:
        return -self._forward_reward_weight * abs(x_velocity - task_param)


class HalfCheetahDirEnv(_GoalCheetah):
    """HalfCheetah running forward or backward (MAML-RL); task parameter ``direction`` (+1 or -1).

    metadapt/HalfCheetah-v0's robot and observation (18; 19 with ``task_in_obs``,
    the direction last). Reward (rllab's ``half_cheetah_env_rand_direc.py``):
    ``direction * v_x - 0.05 |a|^2``; no termination; 200 steps (registry).
    Tasks ``forward`` (+1) and ``backward`` (-1), both in training and testing.
    """

    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="HalfCheetah-v5 at rllab's dt 0.01 s",
        obs="18: as metadapt/HalfCheetah-v0; + direction with task_in_obs",
        action="6 torques in [-1, 1]",
        reward="d v_x - 0.05 |a|^2, d = +-1",
        train="forward, backward",
        test="forward, backward",
    )
    CATALOG: ClassVar[dict[str, dict[str, Any]]] = _DIRECTIONS
    TRAIN: ClassVar[tuple[str, ...]] = ("forward", "backward")
    TEST: ClassVar[tuple[str, ...]] = ("forward", "backward")
    EXAMPLE: ClassVar[str] = "{'direction': -1}"
    TASK_PARAM: ClassVar[str] = "direction"

    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        return _direction(params, "cheetah-direction")

    def forward_reward(self, x_velocity: Any, task_param: Any) -> Any:
        return self._forward_reward_weight * task_param * x_velocity


class AntDirEnv(AntSteps, _TaskObservation, ParametricTasks, _GymAnt):
    """Ant running forward or backward along x (MAML-RL); task parameter ``direction`` (+1 or -1).

    Ant-v5 (same XML, physics, dt 0.05 s, reset noise, termination when the torso
    leaves ``z`` in [0.2, 1.0] unless ``terminate_when_unhealthy=False``).
    Observation (106): ``qpos[2:]`` (13), ``qvel`` (14), the contact forces of the
    13 robot bodies clipped to [-1, 1] (78, as Ant-v5 includes them), then the
    torso's mean x velocity over the step; 107 with ``task_in_obs``, the direction
    last. Reward (rllab's ``ant_env_rand_direc.py`` with Gymnasium v5's weights):
    ``d * v_x - 0.5 |a|^2 - 5e-4 |clip(cfrc_ext)|^2 + 1[healthy]``. rllab used the
    same contact weight (0.5 * 1e-3) and healthy range, but a control weight of
    0.005 and a survival reward of 0.05: pass ``ctrl_cost_weight=0.005,
    healthy_reward=0.05`` for its numbers. Tasks ``forward`` and ``backward``,
    both in training and testing; 200 steps (registry).

    The reward is an exact function of ``next_obs``: the contact forces it charges
    are observed (the world body's row, left out of the observation as in Ant-v5,
    is always zero), and "healthy" is the observed torso height in range with a
    finite observation. So ``reward_fn`` returns the full reward, contact cost
    and healthy reward included.
    """

    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="Ant-v5 (dt 0.05 s)",
        obs="106: qpos[2:], qvel, clipped contact forces, mean x-velocity; + direction with task_in_obs",
        action="8 torques in [-1, 1]",
        reward="d v_x + 1[0.2 <= z <= 1] - 0.5 |a|^2 - 5e-4 |f_contact|^2, d = +-1",
        train="forward, backward",
        test="forward, backward",
    )
    CATALOG: ClassVar[dict[str, dict[str, Any]]] = _DIRECTIONS
    TRAIN: ClassVar[tuple[str, ...]] = ("forward", "backward")
    TEST: ClassVar[tuple[str, ...]] = ("forward", "backward")
    EXAMPLE: ClassVar[str] = "{'direction': -1}"
    TASK_PARAM: ClassVar[str] = "direction"

    def __init__(self, *, task_in_obs: bool = False, **kwargs: Any) -> None:
        fixed = ("include_cfrc_ext_in_observation", "use_contact_forces", "exclude_current_positions_from_observation")
        for key in fixed:
            if key in kwargs:
                raise ValueError(f"metadapt AntDir fixes '{key}' (its reward is a function of the observation)")
        schedule, sampler = split_task_kwargs(kwargs)
        self.task_in_obs = bool(task_in_obs)
        super().__init__(include_cfrc_ext_in_observation=True, **kwargs)
        self.init_legged(kwargs)
        self._last_velocity = 0.0
        self.observation_space = Box(-np.inf, np.inf, shape=(ANT_OBS + self.task_in_obs,), dtype=np.float64)
        self._init_tasks(schedule, sampler)

    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        return _direction(params, "ant-direction")

    def _get_obs(self) -> np.ndarray:
        contact = self.contact_forces[1:].ravel()
        return self._with_task(np.concatenate((self.data.qpos[2:], self.data.qvel, contact, [self._last_velocity])))

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        forward = self._forward_reward_weight * self.task_value() * x_velocity
        healthy = float(self.healthy_reward)
        ctrl, contact = float(self.control_cost(action)), float(self.contact_cost)
        info = {"reward_forward": forward, "reward_ctrl": -ctrl, "reward_contact": -contact, "reward_survive": healthy}
        return forward + healthy - ctrl - contact, info

    def reward_fn(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Batched reward: ``N x D, N x 8, N x D -> N`` (D = 106, or 107 with ``task_in_obs``); equals ``env.step``'s.

        All four terms come from ``next_obs`` (see the class docstring). Without
        ``task_in_obs`` the direction is the current task's (exact for transitions
        of that task); with it, it is read from ``next_obs``.
        """
        lo, hi = self._healthy_z_range
        z = next_obs[..., 0]
        healthy = (z >= lo) & (z <= hi) & torch.isfinite(next_obs).all(-1)
        contact = next_obs[..., ANT_QPOS_QVEL : ANT_QPOS_QVEL + ANT_CONTACT]
        return (
            self._forward_reward_weight * self._task_param(next_obs) * next_obs[..., ANT_OBS - 1]
            + self._healthy_reward * healthy.to(next_obs.dtype)
            - self._ctrl_cost_weight * act.pow(2).sum(-1)
            - self._contact_cost_weight * contact.pow(2).sum(-1)
        )


__all__ = ["AntDirEnv", "HalfCheetahDirEnv", "HalfCheetahVelEnv"]
