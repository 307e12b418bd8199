"""A legged robot's posture (is it upright?) and a camera that follows it.

A robot that flips onto its back can still earn reward (the HalfCheetah runs on
its back), so returns alone do not say whether an agent walks. Every legged
metadapt environment mixes in ``Legged`` and puts ``posture()`` into each
step's ``info``; the trial log turns those numbers into ``env/torso_up``,
``env/torso_pitch``, ``env/torso_roll`` and ``env/upside_down`` columns and the
reports into the fraction of steps spent upside down.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import mujoco
import numpy as np

from metadapt.types import UPSIDE_DOWN

# Behind and slightly above the robot, far enough to see a HalfCheetah's whole body and a stride of floor.
FOLLOW_DISTANCE = 5.0
FOLLOW_ELEVATION = -15.0


class Legged:
    """Mixin for a MuJoCo robot with a torso: posture numbers and a tracking camera.

    ``POSTURE_BODY`` names the body whose orientation is the robot's posture;
    ``PLANAR`` robots (the HalfCheetah) only pitch about the world's y axis, so
    their pitch is the full angle in ``(-pi, pi]`` and they have no roll.
    """

    POSTURE_BODY: ClassVar[str] = "torso"
    PLANAR: ClassVar[bool] = False
    model: mujoco.MjModel
    data: mujoco.MjData
    mujoco_renderer: Any
    _posture_body_id: int
    _posture_scratch: mujoco.MjData

    def posture(self) -> dict[str, float]:
        """``torso_up`` (world-z component of the torso's up axis: 1 upright, -1 on its back), ``torso_pitch``
        (radians; planar robots: the full angle, 0 upright, +-pi on the back), ``torso_roll`` (3-D robots only) and
        ``upside_down`` (1.0 when the up axis points below the horizon, else 0.0)."""
        # After mj_step the body frames in ``data`` lag qpos by one substep. They are recomputed from qpos on a
        # scratch MjData: ``data`` itself stays as the step left it (the ants' velocity reads its xpos).
        scratch = self._posture_scratch
        scratch.qpos[:] = self.data.qpos
        mujoco.mj_kinematics(self.model, scratch)
        r = scratch.xmat[self._posture_body_id].reshape(3, 3)
        up = float(r[2, 2])
        out = {"torso_up": up}
        if self.PLANAR:
            out["torso_pitch"] = math.atan2(float(r[0, 2]), up)
        else:  # Z-Y-X Euler angles: pitch about the body's y axis, roll about its x axis
            out["torso_pitch"] = math.asin(float(np.clip(-r[2, 0], -1.0, 1.0)))
            out["torso_roll"] = math.atan2(float(r[2, 1]), up)
        out[UPSIDE_DOWN] = float(up < 0.0)
        return out

    def init_legged(self, kwargs: dict[str, Any]) -> None:
        """After ``MujocoEnv.__init__(**kwargs)``: find the torso, make the posture's scratch data, and follow the
        robot with the camera unless the caller chose a ``default_camera_config``.

        A fixed camera loses a running HalfCheetah after about 90 steps; the
        followed view keeps the torso in the middle of every frame, seen from the
        side at ``FOLLOW_DISTANCE``.
        """
        self._posture_body_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, self.POSTURE_BODY)
        if self._posture_body_id < 0:
            raise ValueError(f"{type(self).__name__}: no body named '{self.POSTURE_BODY}'")
        self._posture_scratch = mujoco.MjData(self.model)
        self._follow = "default_camera_config" not in kwargs
        if self._follow:
            self.mujoco_renderer.default_cam_config = {
                "distance": FOLLOW_DISTANCE, "elevation": FOLLOW_ELEVATION, "azimuth": 90.0}

    def render(self) -> Any:
        if getattr(self, "_follow", False) and self.render_mode is not None:
            # Gymnasium's renderer resets its camera to a free one on every frame (camera_id -1), so a MuJoCo
            # tracking camera would not stick: aim the free camera at the torso instead, frame by frame.
            viewer = self.mujoco_renderer._get_viewer(self.render_mode)
            viewer.cam.lookat[:] = self.data.xpos[self._posture_body_id]
        return super().render()  # type: ignore[misc]
