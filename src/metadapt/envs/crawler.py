"""A six-legged crawler (seed 000, section 3.2): crippled joints, crippled legs, walking straight or turning.

The robot is metadapt's own MJCF (``assets/crawler.xml``): six legs with a hip
and a knee each, about the size of Gymnasium's Ant, with Ant-v5's physics
(RK4, 0.01 s, five substeps: dt 0.05 s).

A task has two parts. ``disabled``: any subset of the 12 joints (``2 * leg``
is a hip, ``2 * leg + 1`` a knee) whose actuators produce no torque; a leg with
both joints disabled is *crippled* and its foot segment is drawn and collides
half as long. ``command``: ``straight`` rewards walking forward (the torso's
velocity along its own heading, so that "straight" after a turn means straight
on, not back towards the world's x axis), ``left`` / ``right`` reward turning
(yaw rate, counter-clockwise / clockwise).

The torso's state is observed in its own frame: the world's up axis and the
linear velocity expressed in torso coordinates (with the angular velocity, which
MuJoCo gives in that frame already). On a flat floor the dynamics do not depend
on which way the robot faces, and a model fed the world-frame heading has to
learn every heading separately; a crawler that has turned half a circle looks
like one that has never turned, and a memoryless learner walks straight on as
well as it did at the start. Unlike a quaternion with the heading taken out,
the up axis is continuous everywhere: rolling onto the back moves it smoothly
instead of flipping the quaternion's sign. The turning reward is the torso's
rate of rotation about the world's vertical axis averaged over the step, not
the change of the heading angle, which jumps by up to pi when the torso pitches
through vertical (planners found that flipping over paid 30 per step).

The command is a goal, not a hidden dynamics change: the reward must be a
function of the observation, so the command's two reward weights are the last
two observations. The crippling is not observed.

A crawler on its back cannot walk again, and an online trial is one unbroken
stream whose task schedule must not restart, so instead of terminating the
episode (Ant-v5's health check) the environment sets a crawler that has spent
``right_after`` consecutive steps on its back upright again where it lies, with
its heading kept and its joints at rest: the caretaker of a real robot.
``info["righted"]`` is 1 on that step.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import mujoco
import numpy as np
import torch
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.spaces import Box

from metadapt.envs.base import EnvInfo, LimbEdits, TaskEnv, split_task_kwargs
from metadapt.envs.mujoco_model import load_model
from metadapt.envs.posture import Legged
from metadapt.envs.tasks import Task
from metadapt.errors import ConfigError

N_LEGS = 6
N_JOINTS = 12
SHORTEN = 0.5
COMMANDS: dict[str, tuple[float, float]] = {"straight": (1.0, 0.0), "left": (0.0, 1.0), "right": (0.0, -1.0)}
XML = Path(__file__).parent / "assets" / "crawler.xml"
OBS_DIM = 1 + 3 + 12 + 18 + 2 + 2


def _task(disabled: list[int], command: str = "straight") -> dict[str, Any]:
    return {"disabled": disabled, "command": command}


def _crippled(disabled: list[int]) -> list[int]:
    """Legs with both joints disabled."""
    return [leg for leg in range(N_LEGS) if 2 * leg in disabled and 2 * leg + 1 in disabled]


def _yaw(quat: np.ndarray) -> float:
    w, x, y, z = quat
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def torso_frame(qpos: np.ndarray, qvel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The world's up axis and the torso's linear velocity in torso coordinates (both yaw-invariant).

    ``qpos[3:7]`` (w, x, y, z) -> ``R^T e_z`` (3; ``(0, 0, 1)`` upright, its last
    entry is ``torso_up``); ``qvel[0:3]`` (world frame) -> ``R^T v``. Continuous
    in the orientation everywhere, and a turn about the vertical changes neither.
    """
    rot = _rotation(qpos[3:7])
    return rot[2].copy(), rot.T @ qvel[0:3]


def _rotation(quat: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> the ``3 x 3`` body-to-world rotation."""
    rot = np.empty(9)
    mujoco.mju_quat2Mat(rot, np.asarray(quat, dtype=np.float64))
    return rot.reshape(3, 3)


class CrawlerEnv(Legged, TaskEnv, MujocoEnv):
    """Six-legged crawler; task parameters ``disabled`` (joint indices 0-11) and ``command``.

    Observation (38): height, the world's up axis in torso coordinates (3), the
    12 joint angles, the torso's linear and angular velocity in torso
    coordinates (6), the 12 joint velocities, the torso's average forward
    velocity (along its heading) and yaw rate (about the world's vertical) over
    the step, then the command's weights ``(w_x, w_yaw)``. Reward: ``w_x v_forward + w_yaw
    yaw_rate - 0.01 |a|^2``. No termination: a trial keeps going whatever happens
    (a crawler left on its back is righted, see the module docstring).
    """

    # 1: the torso's orientation and velocity in the world frame; 2: a quaternion with the heading taken out
    # and the heading angle's change as the yaw rate
    OBS_VERSION: ClassVar[int] = 3
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 20}
    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="metadapt crawler: 6 legs x 2 joints (dt 0.05 s)",
        obs="38: height, up axis, joints, torso and joint velocities (torso frame), forward velocity, yaw rate, "
            "command weights",
        action="12 torques in [-1, 1]",
        reward="w_x v_forward + w_yaw yaw_rate - 0.01 |a|^2 (righted after 10 steps on its back)",
        train="0-2 random joints disabled; command straight/left/right",
        test="one crippled leg (leg_0 ... leg_5), straight or turning",
    )
    CATALOG: ClassVar[dict[str, dict[str, Any]]] = {
        "normal": _task([]),
        "turn_left": _task([], "left"),
        "turn_right": _task([], "right"),
        **{f"leg_{i}": _task([2 * i, 2 * i + 1]) for i in range(N_LEGS)},
        **{f"leg_{i}_left": _task([2 * i, 2 * i + 1], "left") for i in range(N_LEGS)},
    }
    TRAIN: ClassVar[tuple[str, ...]] = ("normal", "turn_left", "turn_right")
    TEST: ClassVar[tuple[str, ...]] = tuple(f"leg_{i}" for i in range(N_LEGS))
    PRESETS: ClassVar[dict[str, Any]] = {
        "train_distribution": {"type": "sampled"},
        "test_leg_0": {"type": "constant", "task": "leg_0"},
        "alternating_500": {"type": "alternating", "tasks": ["normal", "leg_0"], "period": 500},
        # Seed 000 Fig. 4 (right): crippled during steps 500-1000 and 1500-2000.
        "crippled_periods": {"type": "sequence", "entries": [[0, "normal"], [500, "leg_0"], [1000, "normal"],
                                                             [1500, "leg_0"]]},
        "straight_turn_crippled": {"type": "sequence", "entries": [[0, "normal"], [500, "turn_left"],
                                                                   [1000, "leg_0"], [1500, "normal"]]},
    }

    def __init__(
        self,
        frame_skip: int = 5,
        ctrl_cost_weight: float = 0.01,
        reset_noise_scale: float = 0.1,
        right_after: int | None = 10,
        **kwargs: Any,
    ) -> None:
        schedule, sampler = split_task_kwargs(kwargs)
        if right_after is not None and (isinstance(right_after, bool) or not isinstance(right_after, int)
                                        or right_after < 1):
            raise ConfigError(f"crawler 'right_after' must be a positive number of steps or null, got {right_after!r}")
        self._right_after = right_after
        self._on_back = 0
        self._ctrl_cost_weight = ctrl_cost_weight
        self._reset_noise_scale = reset_noise_scale
        obs_space = Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float64)
        MujocoEnv.__init__(self, str(XML), frame_skip, observation_space=obs_space, **kwargs)
        self.init_legged(kwargs)
        m = self.model
        feet = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, f"foot_{i}") for i in range(N_LEGS)]
        self._limbs = LimbEdits(m, feet, SHORTEN)
        self._velocity = np.zeros(2)
        self._command = COMMANDS["straight"]
        self._init_tasks(schedule, sampler)

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = load_model(self.fullpath, self.width, self.height)
        return model, mujoco.MjData(model)

    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        unknown = set(params) - {"disabled", "command"}
        if unknown:
            raise ConfigError(f"a crawler task takes 'disabled' and 'command', got unknown keys {sorted(unknown)}")
        disabled = params.get("disabled", [])
        if not isinstance(disabled, list | tuple) or any(
            isinstance(j, bool) or not isinstance(j, int | np.integer) or not 0 <= j < N_JOINTS for j in disabled
        ):
            raise ConfigError(f"crawler 'disabled' must be a list of joint indices in 0-11, got {disabled!r}")
        command = params.get("command", "straight")
        if command not in COMMANDS:
            raise ConfigError(f"crawler 'command' must be one of {', '.join(COMMANDS)}, got {command!r}")
        joints = sorted({int(j) for j in disabled})
        return f"crawler({command}; off {','.join(map(str, joints)) or '-'})", _task(joints, command)

    def sample_train_task(self, rng: np.random.Generator) -> Task:
        command = ("straight", "straight", "left", "right")[int(rng.integers(4))]
        joints = rng.choice(N_JOINTS, size=int(rng.integers(3)), replace=False)
        return self.resolve_task(_task([int(j) for j in joints], command))

    def apply_task(self, task: Task) -> None:
        self._limbs.apply(task.params["disabled"], _crippled(task.params["disabled"]))
        self._command = COMMANDS[task.params["command"]]

    def crippled_legs(self) -> list[int]:
        return _crippled(self.task.params["disabled"])

    def _get_obs(self) -> np.ndarray:
        qpos, qvel = self.data.qpos, self.data.qvel
        up, torso_vel = torso_frame(qpos, qvel)
        return np.concatenate((qpos[2:3], up, qpos[7:], torso_vel, qvel[3:], self._velocity, self._command))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._begin_step()
        xy_before, yaw_before = self.data.qpos[:2].copy(), _yaw(self.data.qpos[3:7])
        yaw_rate = 0.0
        for _ in range(self.frame_skip):  # the same physics as one call with frame_skip substeps
            self.do_simulation(action, 1)
            yaw_rate += self._world_yaw_rate() / self.frame_skip
        turn = (_yaw(self.data.qpos[3:7]) - yaw_before + np.pi) % (2 * np.pi) - np.pi
        # the step's displacement along the heading halfway through the step
        heading = yaw_before + 0.5 * turn
        dx, dy = self.data.qpos[:2] - xy_before
        forward_velocity = (dx * np.cos(heading) + dy * np.sin(heading)) / self.dt
        self._velocity = np.array([forward_velocity, yaw_rate])
        posture = self.posture()  # before any righting
        torso_up = self._torso_up()
        righted = self._right_if_stuck(torso_up)
        obs = self._get_obs()
        forward = self._command[0] * self._velocity[0]
        turning = self._command[1] * self._velocity[1]
        ctrl = self._ctrl_cost_weight * float(np.square(action).sum())
        info = {
            "x_position": self.data.qpos[0],
            "y_position": self.data.qpos[1],
            "x_velocity": dx / self.dt,
            "forward_velocity": self._velocity[0],
            "yaw_rate": self._velocity[1],
            **posture,
            "righted": float(righted),
            "reward_forward": forward,
            "reward_turn": turning,
            "reward_ctrl": -ctrl,
            **self.task_info(),
        }
        if self.render_mode == "human":
            self.render()
        return obs, float(forward + turning - ctrl), False, False, info

    def _world_yaw_rate(self) -> float:
        """The torso's angular velocity about the world's vertical (MuJoCo's free joint gives it in the body frame)."""
        # Called every substep: only the up axis (the rotation's last row), not torso_frame's velocity.
        return float(_rotation(self.data.qpos[3:7])[2] @ self.data.qvel[3:6])

    def _torso_up(self) -> float:
        return 1.0 - 2.0 * float(self.data.qpos[4] ** 2 + self.data.qpos[5] ** 2)

    def _right_if_stuck(self, torso_up: float) -> bool:
        """Count steps on the back; after ``right_after`` of them stand the crawler up where it lies."""
        self._on_back = self._on_back + 1 if torso_up < 0.0 else 0
        if self._right_after is None or self._on_back < self._right_after:
            return False
        self._on_back = 0
        qpos = self.init_qpos.copy()
        qpos[:2] = self.data.qpos[:2]
        half_yaw = 0.5 * _yaw(self.data.qpos[3:7])
        qpos[3:7] = (np.cos(half_yaw), 0.0, 0.0, np.sin(half_yaw))
        self.set_state(qpos, np.zeros(self.model.nv))
        return True

    def reset_model(self) -> np.ndarray:
        self._begin_episode(self.np_random)
        self._on_back = 0
        c = self._reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(-c, c, size=self.model.nq)
        qvel = self.init_qvel + c * self.np_random.standard_normal(self.model.nv)
        qpos[3:7] /= np.linalg.norm(qpos[3:7])
        self.set_state(qpos, qvel)
        self._velocity = np.zeros(2)
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, Any]:
        return {"x_position": self.data.qpos[0], "y_position": self.data.qpos[1], **self.task_info()}

    def reward_fn(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Batched reward: ``N x 38, N x 12, N x 38 -> N``; equals ``env.step``'s reward."""
        velocity, command = next_obs[..., -4:-2], next_obs[..., -2:]
        return (velocity * command).sum(-1) - self._ctrl_cost_weight * act.pow(2).sum(-1)
