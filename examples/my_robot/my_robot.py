"""A user's own MuJoCo robot for metadapt, registered with Gymnasium when this module is imported.

metadapt makes it from a config with ``env.id: my_robot:MyRobot-v0`` (Gymnasium's
``module:id`` form: importing ``my_robot`` registers ``MyRobot-v0``), provided the
folder holding this file is on ``PYTHONPATH``. Nothing here knows about metadapt:
its tasks (a payload, a slippery floor, stiff joints) are perturbations written in
the YAML configs beside it, and its batched reward is ``reward_fn``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.spaces import Box

XML = Path(__file__).with_name("my_robot.xml")
CTRL_COST = 0.05


class MyRobotEnv(MujocoEnv):
    """A planar torso on two two-link legs that should run forward (+x).

    Observation (14): ``qpos[1:]`` (height, pitch and the four leg angles: 6),
    ``qvel`` (7: x, z, pitch, legs) and the torso's average x velocity over the
    last step. Action (4): hip and knee torques in ``[-1, 1]``. Reward: that
    average velocity minus ``0.05 |a|^2``, which ``reward_fn`` computes from
    ``(obs, act, next_obs)`` alone.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"], "render_fps": 20}

    def __init__(self, frame_skip: int = 5, reset_noise_scale: float = 0.05, **kwargs: Any) -> None:
        self._reset_noise_scale = reset_noise_scale
        self._last_velocity = 0.0
        space = Box(-np.inf, np.inf, shape=(14,), dtype=np.float64)
        MujocoEnv.__init__(self, str(XML), frame_skip, observation_space=space,
                           default_camera_config={"trackbodyid": 1, "distance": 3.0}, **kwargs)

    def _get_obs(self) -> np.ndarray:
        return np.concatenate((self.data.qpos[1:], self.data.qvel, [self._last_velocity]))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        x_before = self.data.qpos[0]
        self.do_simulation(action, self.frame_skip)
        self._last_velocity = float((self.data.qpos[0] - x_before) / self.dt)
        reward = self._last_velocity - CTRL_COST * float(np.square(action).sum())
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, False, False, {"x_position": float(self.data.qpos[0]),
                                                       "x_velocity": self._last_velocity}

    def reset_model(self) -> np.ndarray:
        noise = self._reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(-noise, noise, self.model.nq)
        qvel = self.init_qvel + noise * self.np_random.standard_normal(self.model.nv)
        self.set_state(qpos, qvel)
        self._last_velocity = float(self.data.qvel[0])
        return self._get_obs()

    @staticmethod
    def reward_fn(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Batched reward: ``N x 14, N x 4, N x 14 -> N``; equals ``step``'s reward."""
        return next_obs[..., -1] - CTRL_COST * act.pow(2).sum(-1)


if "MyRobot-v0" not in gym.registry:
    gym.register(id="MyRobot-v0", entry_point=MyRobotEnv, max_episode_steps=1000)
