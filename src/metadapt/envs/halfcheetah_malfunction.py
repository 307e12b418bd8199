"""HalfCheetah motor malfunction (seed 000, section 3.1): per-actuator polarity flips and magnitude scaling.

A task is a vector of six gains multiplying the motors' force gains: ``-1`` reverses an
actuator, ``0.5`` halves its torque. Training rollouts each draw one random
actuator with a gain uniform in ``[-1, 1]`` (rounded to 0.05, so that a task has
a finite name); the test tasks reverse several actuators at once, far outside
that distribution ("sign negative" reverses all six).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from metadapt.envs.base import EnvInfo
from metadapt.envs.halfcheetah import N_ACTUATORS, HalfCheetahEnv
from metadapt.envs.tasks import Task
from metadapt.errors import ConfigError

GAIN_STEP = 0.05


def _gains(values: dict[int, float]) -> dict[str, Any]:
    return {"gains": [values.get(i, 1.0) for i in range(N_ACTUATORS)]}


class HalfCheetahMalfunctionEnv(HalfCheetahEnv):
    """HalfCheetah whose actuators may be reversed or weakened; task parameters: ``gains`` (6 floats)."""

    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="HalfCheetah-v5 (dt 0.05 s)",
        obs="18: as metadapt/HalfCheetah-v0",
        action="6 torques in [-1, 1]",
        reward="v_x - 0.1 |a|^2 (commanded action)",
        train="one random actuator, gain ~ U[-1, 1]",
        test="sign_negative (all reversed), back_reversed, front_reversed",
    )
    CATALOG: ClassVar[dict[str, dict[str, Any]]] = {
        "normal": _gains({}),
        "sign_negative": _gains(dict.fromkeys(range(N_ACTUATORS), -1.0)),
        "back_reversed": _gains(dict.fromkeys(range(3), -1.0)),
        "front_reversed": _gains(dict.fromkeys(range(3, 6), -1.0)),
        **{f"flip_{i}": _gains({i: -1.0}) for i in range(N_ACTUATORS)},
        **{f"half_{i}": _gains({i: 0.5}) for i in range(N_ACTUATORS)},
    }
    TRAIN: ClassVar[tuple[str, ...]] = ("normal", *(f"flip_{i}" for i in range(6)), *(f"half_{i}" for i in range(6)))
    TEST: ClassVar[tuple[str, ...]] = ("sign_negative", "back_reversed", "front_reversed")
    PRESETS: ClassVar[dict[str, Any]] = {
        "train_distribution": {"type": "sampled"},
        "test_sign_negative": {"type": "constant", "task": "sign_negative"},
        "alternating_500": {"type": "alternating", "tasks": ["normal", "sign_negative"], "period": 500},
        "alternating_100": {"type": "alternating", "tasks": ["normal", "sign_negative"], "period": 100},
        "random_test": {"type": "random", "tasks": ["normal", *TEST], "min_len": 200, "max_len": 600},
    }

    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if set(params) != {"gains"}:
            raise ConfigError(f"a malfunction task takes exactly 'gains' (6 numbers), got keys {sorted(params)}")
        gains = params["gains"]
        try:
            g = np.asarray(gains, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"malfunction 'gains' must be 6 numbers, got {gains!r}") from None
        if g.shape != (N_ACTUATORS,) or not np.isfinite(g).all() or np.abs(g).max() > 10:
            raise ConfigError(f"malfunction 'gains' must be 6 finite numbers in [-10, 10], got {gains!r}")
        g = np.round(g, 4) + 0.0  # + 0.0 turns -0.0 into 0.0, so equal tasks get equal names
        return "gains(" + ",".join(f"{x:+.2f}" for x in g) + ")", {"gains": g.tolist()}

    def sample_train_task(self, rng: np.random.Generator) -> Task:
        actuator = int(rng.integers(N_ACTUATORS))
        gain = round(float(rng.uniform(-1.0, 1.0)) / GAIN_STEP) * GAIN_STEP
        return self.resolve_task(_gains({actuator: gain}))

    def apply_task(self, task: Task) -> None:
        self.set_gains(np.asarray(task.params["gains"]))
