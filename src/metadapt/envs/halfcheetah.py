"""HalfCheetah with a reward that is an exact function of ``(obs, act, next_obs)``, and task switching.

Gymnasium's HalfCheetah-v5 rewards ``(x_after - x_before) / dt``, which its
observation does not contain (``qvel[0]`` is the instantaneous velocity at the
end of the step, not the average over it). This environment is HalfCheetah-v5
(same XML, physics, timestep 0.05 s and reset noise) with one observation
appended: that average forward velocity over the last step (``qvel[0]`` after
a reset). The reward is then ``w_fwd * next_obs[-1] - w_ctrl * |a|^2``.

The perturbed cheetahs (malfunction, disabled joint, terrain, pier) subclass
it: they declare tasks and change the compiled model in ``apply_task``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import mujoco
import numpy as np
import torch
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv as _GymHalfCheetah
from gymnasium.spaces import Box

from metadapt.envs.base import EnvInfo, TaskEnv, split_task_kwargs
from metadapt.envs.mujoco_model import load_model
from metadapt.envs.posture import Legged

N_ACTUATORS = 6
ROBOT_NQ = 9  # rootx, rootz, rooty and six hinges; scenery joints (the pier's blocks) come after
# The authors' planning cost: observation entries of the front thigh, shin and foot angles, the angle from
# which each counts as the start of a flip, and the penalty for each.
FRONT_THIGH, FRONT_FOOT = 5, 7
FRONT_LIMITS = (0.2, 0.0, 0.0)
POSTURE_PENALTY = 10.0


class HalfCheetahEnv(Legged, TaskEnv, _GymHalfCheetah):
    """HalfCheetah-v5 plus the forward velocity observation its reward needs.

    Observation (18): the 17 of HalfCheetah-v5 (``qpos[1:9]``, ``qvel[:9]``), then
    the torso's average x velocity over the last step. Action (6): torques in
    ``[-1, 1]``. Keyword arguments ``schedule`` and ``task_sampler`` choose the
    tasks (see ``metadapt.envs.tasks``); this unperturbed cheetah has one task.
    """

    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="HalfCheetah-v5 (dt 0.05 s)",
        obs="18: qpos[1:], qvel, mean x-velocity over the step",
        action="6 torques in [-1, 1]",
        reward="v_x - 0.1 |a|^2",
        train="normal",
        test="normal",
    )
    ADDED_PREFIX: ClassVar[str] = ""
    PLANAR: ClassVar[bool] = True
    OBJECTIVES: ClassVar[dict[str, str]] = {"authors": "authors_objective"}

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("exclude_current_positions_from_observation") is False:
            raise ValueError("metadapt HalfCheetah excludes the x position from the observation")
        schedule, sampler = split_task_kwargs(kwargs)
        super().__init__(**kwargs)
        self.init_legged(kwargs)
        self._last_velocity = 0.0
        self.observation_space = Box(-np.inf, np.inf, shape=(18,), dtype=np.float64)
        self._base_gain = self.model.actuator_gainprm[:, 0].copy()
        self._init_tasks(schedule, sampler)

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = load_model(self.fullpath, self.width, self.height, self.transform_xml(), self.ADDED_PREFIX)
        return model, mujoco.MjData(model)

    def transform_xml(self) -> Any:
        """A ``str -> str`` edit of the robot's XML (scenery), or ``None``."""
        return None

    def set_gains(self, gains: np.ndarray) -> None:
        """Per-actuator multipliers on the motor gain (actuator force = gain * ctrl): -1 flips polarity, 0 disables."""
        self.model.actuator_gainprm[:, 0] = self._base_gain * np.asarray(gains, dtype=np.float64)

    def _get_obs(self) -> np.ndarray:
        qpos, qvel = self.data.qpos, self.data.qvel
        return np.concatenate((qpos[1:ROBOT_NQ], qvel[:ROBOT_NQ], [self._last_velocity]))

    def after_step(self) -> None:
        """Scenery bookkeeping after the physics of a step (terrain and pier recentre here)."""

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._begin_step()
        x_before = self.data.qpos[0]
        self.do_simulation(action, self.frame_skip)
        self._last_velocity = (self.data.qpos[0] - x_before) / self.dt
        self.after_step()
        obs = self._get_obs()
        reward, reward_info = self._get_rew(self._last_velocity, action)
        info = {"x_position": self.data.qpos[0], "x_velocity": self._last_velocity, **reward_info, **self.posture(),
                **self.task_info()}
        if self.render_mode == "human":
            self.render()
        return obs, float(reward), False, False, info

    def reset_model(self) -> np.ndarray:
        self._begin_episode(self.np_random)
        self._last_velocity = 0.0
        super().reset_model()
        self.reset_scenery()
        self._last_velocity = float(self.data.qvel[0])
        return self._get_obs()

    def reset_scenery(self) -> None:
        """Put scenery back at its start after the robot's pose is drawn."""

    def _get_reset_info(self) -> dict[str, Any]:
        return {"x_position": self.data.qpos[0], **self.task_info()}

    def reward_fn(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Batched reward: ``N x 18, N x 6, N x 18 -> N``; equals ``env.step``'s reward."""
        return self._forward_reward_weight * next_obs[..., -1] - self._ctrl_cost_weight * act.pow(2).sum(-1)

    def authors_objective(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """The GrBAL / MOLe code's HalfCheetah planning cost, negated: ``N x 18, N x 6, N x 18 -> N``.

        Forward progress of the torso per second, minus ``POSTURE_PENALTY`` for each of the
        three front-leg angles of the *current* state that precede a flip: thigh >= 0.2, shin >= 0,
        foot >= 0 (observation entries 5, 6, 7: ``qpos[6:9]``). No control cost, as in the authors' code.
        """
        front = obs[..., FRONT_THIGH:FRONT_FOOT + 1]
        limits = front.new_tensor(FRONT_LIMITS)
        flips = (front >= limits).to(next_obs.dtype).sum(-1)
        return next_obs[..., -1] - POSTURE_PENALTY * flips
