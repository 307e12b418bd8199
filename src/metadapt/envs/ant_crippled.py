"""Ant with a crippled leg (seed 004): both actuators of one leg disabled and its foot segment shortened.

Legs are numbered as in Gymnasium's ``ant.xml``: leg ``i`` is driven by
``hip_{i+1}`` and ``ankle_{i+1}``. Legs 0-2 are crippled in training; leg 3 is
held out for testing. The shortened segment keeps its mass (the XML derives
inertia from geometry at compile time only); its contact geometry and drawing
are half as long.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import mujoco
import numpy as np
import torch
from gymnasium.envs.mujoco.ant_v5 import AntEnv as _GymAnt
from gymnasium.spaces import Box

from metadapt.envs.base import EnvInfo, LimbEdits, TaskEnv, optional_index, split_task_kwargs
from metadapt.envs.mujoco_model import load_model
from metadapt.envs.posture import Legged
from metadapt.envs.tasks import Task

N_LEGS = 4
SHORTEN = 0.5
_FOOT_GEOMS = ("left_ankle_geom", "right_ankle_geom", "third_ankle_geom", "fourth_ankle_geom")


class AntSteps(Legged):
    """What the metadapt ants share over Ant-v5: the model loaded through ``load_model``, the torso's mean x
    velocity over each step (``_last_velocity``, which the observation ends with and the reward uses), and the
    task switch at the start of every step and episode (``TaskEnv``)."""

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = load_model(self.fullpath, self.width, self.height)
        return model, mujoco.MjData(model)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._begin_step()
        x_before = float(self.data.body(self._main_body).xpos[0])
        self.do_simulation(action, self.frame_skip)
        self._last_velocity = (float(self.data.body(self._main_body).xpos[0]) - x_before) / self.dt
        obs = self._get_obs()
        reward, reward_info = self._get_rew(self._last_velocity, action)
        terminated = (not self.is_healthy) and self._terminate_when_unhealthy
        info = {"x_position": self.data.qpos[0], "x_velocity": self._last_velocity, **reward_info, **self.posture(),
                **self.task_info()}
        if self.render_mode == "human":
            self.render()
        return obs, float(reward), bool(terminated), False, info

    def reset_model(self) -> np.ndarray:
        self._begin_episode(self.np_random)
        self._last_velocity = 0.0
        super().reset_model()
        self._last_velocity = float(self.data.qvel[0])
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, Any]:
        return {"x_position": self.data.qpos[0], **self.task_info()}


class AntCrippledEnv(AntSteps, TaskEnv, _GymAnt):
    """Ant-v5 with a crippled leg; task parameter ``leg`` (0-3 or ``None``).

    Observation (28): ``qpos[2:]``, ``qvel`` (as Ant-v5 without contact forces),
    then the torso's average x velocity over the step. Reward: ``v_x + 1[healthy]
    - 0.5 |a|^2`` (healthy: torso height in [0.2, 1.0]); Ant-v5's contact cost is
    dropped because contact forces are not observed. Episodes end when unhealthy
    unless ``terminate_when_unhealthy=False``.
    """

    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="Ant-v5 (dt 0.05 s)",
        obs="28: qpos[2:], qvel, mean x-velocity over the step",
        action="8 torques in [-1, 1]",
        reward="v_x + 1[0.2 <= z <= 1] - 0.5 |a|^2",
        train="leg_0, leg_1, leg_2 crippled",
        test="leg_3 crippled",
    )
    CATALOG: ClassVar[dict[str, dict[str, Any]]] = {
        "normal": {"leg": None},
        **{f"leg_{i}": {"leg": i} for i in range(N_LEGS)},
    }
    TRAIN: ClassVar[tuple[str, ...]] = ("leg_0", "leg_1", "leg_2")
    TEST: ClassVar[tuple[str, ...]] = ("leg_3",)
    PRESETS: ClassVar[dict[str, Any]] = {
        "train_distribution": {"type": "sampled"},
        "test_leg_3": {"type": "constant", "task": "leg_3"},
        "alternating_500": {"type": "alternating", "tasks": ["normal", "leg_3"], "period": 500},
    }

    def __init__(self, **kwargs: Any) -> None:
        fixed = ("include_cfrc_ext_in_observation", "use_contact_forces", "exclude_current_positions_from_observation")
        for key in fixed:
            if key in kwargs:
                raise ValueError(f"metadapt AntCrippled fixes '{key}' (its reward is a function of the observation)")
        schedule, sampler = split_task_kwargs(kwargs)
        kwargs.setdefault("contact_cost_weight", 0.0)
        if kwargs["contact_cost_weight"] != 0.0:
            raise ValueError("metadapt AntCrippled has no contact cost: contact forces are not observed")
        super().__init__(include_cfrc_ext_in_observation=False, **kwargs)
        self.init_legged(kwargs)
        self._last_velocity = 0.0
        self.observation_space = Box(-np.inf, np.inf, shape=(28,), dtype=np.float64)
        m = self.model
        joint_of = {
            mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, int(j)): a for a, j in enumerate(m.actuator_trnid[:, 0])
        }
        self._leg_actuators = [[joint_of[f"hip_{i + 1}"], joint_of[f"ankle_{i + 1}"]] for i in range(N_LEGS)]
        self._limbs = LimbEdits(m, [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, g) for g in _FOOT_GEOMS], SHORTEN)
        self._init_tasks(schedule, sampler)

    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        leg = optional_index(params, "leg", N_LEGS, "crippled-ant")
        return ("normal" if leg is None else f"leg_{leg}"), {"leg": leg}

    def apply_task(self, task: Task) -> None:
        leg = task.params["leg"]
        self._limbs.apply([] if leg is None else self._leg_actuators[leg], [] if leg is None else [leg])

    def _get_obs(self) -> np.ndarray:
        return np.concatenate((self.data.qpos[2:], self.data.qvel, [self._last_velocity]))

    def reward_fn(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Batched reward: ``N x 28, N x 8, N x 28 -> N``; equals ``env.step``'s reward."""
        lo, hi = self._healthy_z_range
        z = next_obs[..., 0]
        healthy = (z >= lo) & (z <= hi) & torch.isfinite(next_obs).all(-1)
        return (
            self._forward_reward_weight * next_obs[..., -1]
            + self._healthy_reward * healthy.to(next_obs.dtype)
            - self._ctrl_cost_weight * act.pow(2).sum(-1)
        )
