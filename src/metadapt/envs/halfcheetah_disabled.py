"""HalfCheetah with a disabled joint (seed 004): one actuator produces no torque.

Joints 1-5 are disabled in training; joint 0 (the back thigh) is held out for testing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from metadapt.envs.base import EnvInfo, optional_index
from metadapt.envs.halfcheetah import N_ACTUATORS, HalfCheetahEnv
from metadapt.envs.tasks import Task


class HalfCheetahDisabledJointEnv(HalfCheetahEnv):
    """HalfCheetah with one actuator producing no torque; task parameter ``joint`` (0-5 or ``None``)."""

    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="HalfCheetah-v5 (dt 0.05 s)",
        obs="18: as metadapt/HalfCheetah-v0",
        action="6 torques in [-1, 1]",
        reward="v_x - 0.1 |a|^2 (commanded action)",
        train="joint_1 ... joint_5 disabled",
        test="joint_0 disabled",
    )
    CATALOG: ClassVar[dict[str, dict[str, Any]]] = {
        "normal": {"joint": None},
        **{f"joint_{i}": {"joint": i} for i in range(N_ACTUATORS)},
    }
    TRAIN: ClassVar[tuple[str, ...]] = tuple(f"joint_{i}" for i in range(1, N_ACTUATORS))
    TEST: ClassVar[tuple[str, ...]] = ("joint_0",)
    PRESETS: ClassVar[dict[str, Any]] = {
        "train_distribution": {"type": "sampled"},
        "test_joint_0": {"type": "constant", "task": "joint_0"},
        "alternating_500": {"type": "alternating", "tasks": ["normal", "joint_0"], "period": 500},
    }

    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        joint = optional_index(params, "joint", N_ACTUATORS, "disabled-joint")
        return ("normal" if joint is None else f"joint_{joint}"), {"joint": joint}

    def apply_task(self, task: Task) -> None:
        gains = np.ones(N_ACTUATORS)
        if task.params["joint"] is not None:
            gains[task.params["joint"]] = 0.0
        self.set_gains(gains)
