"""HalfCheetah with a disabled joint (seed 004): one actuator produces no torque.

Joints 1-5 are disabled in training; joint 0 (the back thigh) is held out for testing.
With ``train_gain=(low, high)`` a training task weakens one of joints 1-5 to a gain
drawn uniformly from that range (rounded to 0.05) instead of disabling it: a
continuous training distribution, in which joint 0 still never varies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from metadapt.envs.base import EnvInfo, optional_index
from metadapt.envs.halfcheetah import N_ACTUATORS, HalfCheetahEnv
from metadapt.envs.tasks import Task
from metadapt.errors import ConfigError

GAIN_STEP = 0.05


class HalfCheetahDisabledJointEnv(HalfCheetahEnv):
    """HalfCheetah with one actuator producing no (or less) torque.

    Task parameters: ``joint`` (0-5 or ``None``) and optionally ``gain`` (the
    joint's torque multiplier in ``[0, 1]``, default 0: disabled).

    Args:
        train_gain: ``(low, high)``: training tasks weaken one of joints 1-5 to a
            gain uniform in that range; ``None`` (default): they disable it.
        **kwargs: the task schedule and sampler, and HalfCheetah-v5's options.
    """

    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="HalfCheetah-v5 (dt 0.05 s)",
        obs="18: as metadapt/HalfCheetah-v0",
        action="6 torques in [-1, 1]",
        reward="v_x - 0.1 |a|^2 (commanded action)",
        train="joint_1 ... joint_5 disabled (or weakened: train_gain)",
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

    def __init__(self, train_gain: tuple[float, float] | list[float] | None = None, **kwargs: Any) -> None:
        self._train_gain = None if train_gain is None else _gain_range(train_gain)
        super().__init__(**kwargs)

    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        params = dict(params)
        gain = params.pop("gain", 0.0)
        joint = optional_index(params, "joint", N_ACTUATORS, "disabled-joint")
        if isinstance(gain, bool) or not isinstance(gain, int | float) or not 0.0 <= gain <= 1.0:
            raise ConfigError(f"disabled-joint 'gain' must be a number in [0, 1], got {gain!r}")
        gain = round(float(gain), 4)
        if joint is None or gain == 1.0:
            return "normal", {"joint": None, "gain": 0.0}
        if gain == 0.0:
            return f"joint_{joint}", {"joint": joint, "gain": 0.0}
        # The name carries every digit the gain keeps, so two different gains never share a task id.
        return f"joint_{joint}_gain_{gain:.4f}".rstrip("0"), {"joint": joint, "gain": gain}

    def sample_train_task(self, rng: np.random.Generator) -> Task:
        if self._train_gain is None:
            return super().sample_train_task(rng)
        joint = int(rng.integers(1, N_ACTUATORS))
        low, high = self._train_gain
        # Rounded to the grid (finite task names), then kept inside the range the user asked for.
        gain = min(max(round(float(rng.uniform(low, high)) / GAIN_STEP) * GAIN_STEP, low), high)
        return self.resolve_task({"joint": joint, "gain": gain})

    def apply_task(self, task: Task) -> None:
        gains = np.ones(N_ACTUATORS)
        if task.params["joint"] is not None:
            gains[task.params["joint"]] = task.params["gain"]
        self.set_gains(gains)


def _gain_range(value: Any) -> tuple[float, float]:
    """``[low, high]`` with ``0 <= low <= high <= 1`` (one-line error otherwise)."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"disabled-joint 'train_gain' must be two numbers [low, high], got {value!r}") from None
    if not 0.0 <= low <= high <= 1.0:
        raise ConfigError(f"disabled-joint 'train_gain' must satisfy 0 <= low <= high <= 1, got {value!r}")
    return low, high
