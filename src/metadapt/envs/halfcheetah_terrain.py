"""HalfCheetah on a heightfield terrain (seeds 000 section 5 and 004): shallow random slopes, basins, hills.

The floor plane of HalfCheetah-v5 is replaced by a MuJoCo heightfield. A task is
a piecewise-linear height profile over one period of ``PERIOD`` metres (knots on
the heightfield's 2 m grid, starting at height 0), repeated forever: period
``k`` is raised by ``k`` times the period's net rise. The heightfield covers
1.5 periods around the robot and is moved by whole periods as the robot runs,
which leaves the ground under it unchanged, so episodes of any length work and
collisions stay as cheap as on a short field. Every profile is flat for 2 m on
both sides of a period boundary, where the robot starts.

Training tasks: one ramp per period with a slope uniform in ``[-0.1, 0.1]``.
Test terrains: ``basin`` (down then up), ``hill`` (up then down), ``gentle`` (a
series of 0.5 m rises) and ``steep`` (the same rises, four times higher).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any, ClassVar

import mujoco
import numpy as np

from metadapt.envs.base import EnvInfo
from metadapt.envs.halfcheetah import HalfCheetahEnv
from metadapt.envs.tasks import Task
from metadapt.errors import ConfigError

PERIOD = 16.0
GRID = 2.0  # metres between heightfield columns: fewer prisms under each geom keep collisions cheap
MARGIN = 4.0  # heightfield beyond half a period on each side: the cheetah is about 1.2 m long
HALF_X = PERIOD / 2 + MARGIN
NCOL = round(2 * HALF_X / GRID) + 1
ELEVATION = 8.0  # the tallest profile's range over the covered 1.5 periods must fit
MAX_SLOPE = 0.1


def _ramp(slope: float) -> dict[str, Any]:
    rise = round(12.0 * slope, 4)
    return {"knots": [[0.0, 0.0], [2.0, 0.0], [14.0, rise], [16.0, rise]]}


def _rises(height: float) -> dict[str, Any]:
    return {"knots": [[0.0, 0.0], [2.0, 0.0], [6.0, height], [10.0, height], [14.0, 2 * height], [16.0, 2 * height]]}


class HalfCheetahTerrainEnv(HalfCheetahEnv):
    """HalfCheetah on a periodic heightfield; task parameter ``knots`` ([[x, h], ...] over one 16 m period)."""

    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="HalfCheetah-v5 on a heightfield (dt 0.05 s)",
        obs="18: as metadapt/HalfCheetah-v0 (rootz is the absolute height)",
        action="6 torques in [-1, 1]",
        reward="v_x - 0.1 |a|^2",
        train="one ramp per 16 m, slope ~ U[-0.1, 0.1]",
        test="basin, hill, gentle, steep",
    )
    CATALOG: ClassVar[dict[str, dict[str, Any]]] = {
        "flat": _ramp(0.0),
        "slope_up": _ramp(MAX_SLOPE),
        "slope_down": _ramp(-MAX_SLOPE),
        "basin": {"knots": [[0.0, 0.0], [2.0, 0.0], [6.0, -0.8], [10.0, -0.8], [14.0, 0.0], [16.0, 0.0]]},
        "hill": {"knots": [[0.0, 0.0], [2.0, 0.0], [6.0, 0.8], [10.0, 0.8], [14.0, 0.0], [16.0, 0.0]]},
        "gentle": _rises(0.5),
        "steep": _rises(2.0),
    }
    TRAIN: ClassVar[tuple[str, ...]] = ("flat", "slope_up", "slope_down")
    TEST: ClassVar[tuple[str, ...]] = ("basin", "hill", "gentle", "steep")
    PRESETS: ClassVar[dict[str, Any]] = {
        "train_distribution": {"type": "sampled"},
        "test_basin": {"type": "constant", "task": "basin"},
        "test_hill": {"type": "constant", "task": "hill"},
        "test_gentle": {"type": "constant", "task": "gentle"},
        "test_steep": {"type": "constant", "task": "steep"},
    }

    ADDED_PREFIX: ClassVar[str] = "terrain_"

    def __init__(self, **kwargs: Any) -> None:
        self._shift: int | None = None
        super().__init__(**kwargs)

    def transform_xml(self) -> Any:
        def edit(text: str) -> str:
            floor_start = text.index('<geom conaffinity="1"')
            floor_end = text.index("/>", floor_start) + 2
            # A mocap body: its position lives in mjData and is re-read every step (a world geom's is not).
            floor = (
                '<body name="terrain_body" mocap="true" pos="0 0 0"><geom conaffinity="1" condim="3"'
                ' material="MatPlane" name="floor" type="hfield" hfield="terrain" rgba="0.8 0.9 0.8 1"/></body>'
            )
            asset = f'<asset>\n    <hfield name="terrain" nrow="2" ncol="{NCOL}" size="{HALF_X} 1.0 {ELEVATION} 0.5"/>'
            return (text[:floor_start] + floor + text[floor_end:]).replace("<asset>", asset, 1)

        return edit

    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if set(params) != {"knots"}:
            raise ConfigError(f"a terrain task takes exactly 'knots' ([[x, h], ...]), got keys {sorted(params)}")
        try:
            knots = np.asarray(params["knots"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"terrain 'knots' must be a list of [x, h] pairs, got {params['knots']!r}") from None
        if knots.ndim != 2 or knots.shape[1] != 2 or len(knots) < 2 or not np.isfinite(knots).all():
            raise ConfigError(f"terrain 'knots' must be at least two finite [x, h] pairs, got {params['knots']!r}")
        x, h = knots.T
        if x[0] != 0.0 or h[0] != 0.0 or x[-1] != PERIOD or np.any(np.diff(x) <= 0):
            raise ConfigError(f"terrain 'knots' must start at [0, 0], end at x={PERIOD} and increase strictly in x")
        if np.any(np.abs(x / GRID - np.round(x / GRID)) > 1e-9):
            raise ConfigError(f"terrain knot x positions must lie on the {GRID} m grid, got {x.tolist()}")
        if h[1] != 0.0 or x[1] < 2.0 or h[-2] != h[-1] or PERIOD - x[-2] < 2.0:
            raise ConfigError("terrain profiles must be flat for the first and last 2 m of the period (the start zone)")
        span = _relative_heights(knots)
        if span.max() - span.min() > ELEVATION:
            raise ConfigError(f"terrain too tall: it spans {span.max() - span.min():.2f} m, at most {ELEVATION}")
        knots = np.round(knots, 4) + 0.0
        key = "terrain(" + ";".join(f"{a:g},{b:g}" for a, b in knots) + ")"
        return key, {"knots": knots.tolist()}

    def sample_train_task(self, rng: np.random.Generator) -> Task:
        return self.resolve_task(_ramp(round(float(rng.uniform(-MAX_SLOPE, MAX_SLOPE)), 2)))

    @cached_property
    def _hfield_ids(self) -> tuple[int, int]:
        """(heightfield id, mocap index of the body carrying it); looked up once."""
        body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "terrain_body")
        return mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_HFIELD, "terrain"), int(self.model.body_mocapid[body])

    def apply_task(self, task: Task) -> None:
        knots = np.asarray(task.params["knots"])
        heights = _relative_heights(knots)
        self._rise = float(knots[-1, 1])
        self._low = float(heights.min())
        hid, _ = self._hfield_ids
        self.model.hfield_data[:] = np.tile((heights - self._low) / ELEVATION, 2)
        self._shift = None
        self._place(float(self.data.qpos[0]))
        for viewer in getattr(self.mujoco_renderer, "_viewers", {}).values():
            # The GPU copy of a heightfield is only refreshed on request.
            con = getattr(viewer, "con", None)
            if con is not None:
                mujoco.mjr_uploadHField(self.model, con, hid)

    def height_at(self, x: float) -> float:
        """Ground height under world position ``x`` (metres)."""
        knots = np.asarray(self.task.params["knots"])
        k = np.floor(x / PERIOD)
        return float(np.interp(x - k * PERIOD, knots[:, 0], knots[:, 1]) + k * knots[-1, 1])

    def _place(self, x: float) -> None:
        shift = int(np.round(x / PERIOD))
        if shift != self._shift:
            _, mocap = self._hfield_ids
            self.data.mocap_pos[mocap] = (shift * PERIOD, 0.0, shift * self._rise + self._low)
            self._shift = shift

    def after_step(self) -> None:
        self._place(float(self.data.qpos[0]))


def _relative_heights(knots: np.ndarray) -> np.ndarray:
    """Heights at the heightfield's columns, x from -HALF_X to HALF_X around a period boundary."""
    xs = np.linspace(-HALF_X, HALF_X, NCOL)
    k = np.floor(xs / PERIOD)
    return np.interp(xs - k * PERIOD, knots[:, 0], knots[:, 1]) + k * knots[-1, 1]
