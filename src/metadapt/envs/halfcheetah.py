"""HalfCheetah with a reward that is an exact function of ``(obs, act, next_obs)``.

Gymnasium's HalfCheetah-v5 rewards ``(x_after - x_before) / dt``, which its
observation does not contain (``qvel[0]`` is the instantaneous velocity at the
end of the step, not the average over it). This environment is HalfCheetah-v5
(same XML, physics, timestep 0.05 s and reset noise) with one observation
appended: that average forward velocity over the last step (``qvel[0]`` after
a reset). The reward is then ``w_fwd * next_obs[-1] - w_ctrl * |a|^2``.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
import torch
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv as _GymHalfCheetah
from gymnasium.spaces import Box

from metadapt.envs.mujoco_model import load_model


class HalfCheetahEnv(_GymHalfCheetah):
    """HalfCheetah-v5 plus the forward velocity observation its reward needs.

    Observation (18): the 17 of HalfCheetah-v5 (``qpos[1:]``, ``qvel``), then the
    torso's average x velocity over the last step. Action (6): torques in
    ``[-1, 1]``. ``info["task_id"]`` is 0 and ``info["task"]`` is ``"normal"``:
    this environment has one task.
    """

    TASK_ID = 0
    TASK = "normal"

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("exclude_current_positions_from_observation") is False:
            raise ValueError("metadapt HalfCheetah excludes the x position from the observation")
        super().__init__(**kwargs)
        self._last_velocity = 0.0
        self.observation_space = Box(-np.inf, np.inf, shape=(18,), dtype=np.float64)

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = load_model(self.fullpath, self.width, self.height)
        return model, mujoco.MjData(model)

    def _get_obs(self) -> np.ndarray:
        return np.concatenate((super()._get_obs(), [self._last_velocity]))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        x_before = self.data.qpos[0]
        self.do_simulation(action, self.frame_skip)
        self._last_velocity = (self.data.qpos[0] - x_before) / self.dt
        obs = self._get_obs()
        reward, reward_info = self._get_rew(self._last_velocity, action)
        info = {
            "x_position": self.data.qpos[0],
            "x_velocity": self._last_velocity,
            **reward_info,
            "task_id": self.TASK_ID,
            "task": self.TASK,
        }
        if self.render_mode == "human":
            self.render()
        return obs, float(reward), False, False, info

    def reset_model(self) -> np.ndarray:
        self._last_velocity = 0.0
        super().reset_model()
        self._last_velocity = float(self.data.qvel[0])
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, Any]:
        return {"x_position": self.data.qpos[0], "task_id": self.TASK_ID, "task": self.TASK}

    def reward_fn(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Batched reward: ``N x 18, N x 6, N x 18 -> N``; equals ``env.step``'s reward."""
        return self._forward_reward_weight * next_obs[..., -1] - self._ctrl_cost_weight * act.pow(2).sum(-1)
