"""HalfCheetah on a floating pier (seed 004): the floor is a row of blocks on vertical springs.

Each block is a body on a vertical slide joint with a spring (stiffness
``STIFFNESS``) whose rest length offsets the block's weight (it floats at
height 0 when nothing stands on it); the task is the joints' damping, drawn per task, which decides
how much a block sinks and bounces when the cheetah lands on it. There is no
other floor. ``N_BLOCKS`` blocks of 1.5 m are recycled from behind the robot to
in front of it (and back when it runs backwards), so episodes of any length
work; a recycled block starts at rest. The blocks' state is not observed: the
observation is the cheetah's, as in metadapt/HalfCheetah-v0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import mujoco
import numpy as np

from metadapt.envs.base import EnvInfo
from metadapt.envs.halfcheetah import HalfCheetahEnv
from metadapt.envs.tasks import Task
from metadapt.errors import ConfigError

N_BLOCKS = 3  # three 1.5 m blocks keep the simulation within 25% of the plain cheetah's cost (5 x 1 m: 45%)
BLOCK = 1.5
FIRST_BLOCK = -1  # block i starts centred at x = (FIRST_BLOCK + i) * BLOCK
BEHIND = 1.2  # in blocks: the torso stays at most this far ahead of the rearmost block's centre...
AHEAD = 2.0  # ...and the frontmost block's centre at most this far ahead of the torso
STIFFNESS = 1500.0
BLOCK_MASS = 4.0
GRAVITY = 9.81  # MuJoCo's default; the spring's rest length offsets the block's weight, so it floats at 0
TRAIN_DAMPING = (10.0, 100.0)
PREFIX = "pier_"


def _block_xml(i: int) -> str:
    x = (FIRST_BLOCK + i) * BLOCK
    return (
        f'<body name="{PREFIX}{i}" pos="{x} 0 -0.1">'
        f'<joint name="{PREFIX}slide_{i}" type="slide" axis="0 0 1" stiffness="{STIFFNESS}" damping="50"'
        f' springref="{BLOCK_MASS * GRAVITY / STIFFNESS}" limited="true" range="-0.4 0.1" armature="0"/>'
        f'<geom name="{PREFIX}geom_{i}" type="box" size="{BLOCK / 2 - 0.01} 0.5 0.1" mass="{BLOCK_MASS}" contype="0"'
        ' conaffinity="1" condim="3" friction="0.4 0.1 0.1" rgba="0.55 0.4 0.25 1"/></body>'
    )


class HalfCheetahPierEnv(HalfCheetahEnv):
    """HalfCheetah on floating blocks; task parameter ``damping`` (N s/m) of the blocks' springs."""

    INFO: ClassVar[EnvInfo] = EnvInfo(
        robot="HalfCheetah-v5 on 3 floating 1.5 m blocks (dt 0.05 s)",
        obs="18: as metadapt/HalfCheetah-v0 (blocks unobserved)",
        action="6 torques in [-1, 1]",
        reward="v_x - 0.1 |a|^2",
        train="block damping ~ log-U[10, 100] N s/m",
        test="bouncy (damping 2), stiff (damping 400)",
    )
    ADDED_PREFIX: ClassVar[str] = PREFIX
    CATALOG: ClassVar[dict[str, dict[str, Any]]] = {
        "calm": {"damping": 100.0},
        "medium": {"damping": 30.0},
        "choppy": {"damping": 10.0},
        "bouncy": {"damping": 2.0},
        "stiff": {"damping": 400.0},
    }
    TRAIN: ClassVar[tuple[str, ...]] = ("calm", "medium", "choppy")
    TEST: ClassVar[tuple[str, ...]] = ("bouncy", "stiff")
    PRESETS: ClassVar[dict[str, Any]] = {
        "train_distribution": {"type": "sampled"},
        "test_bouncy": {"type": "constant", "task": "bouncy"},
        "alternating_500": {"type": "alternating", "tasks": ["calm", "bouncy"], "period": 500},
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        names = [f"{PREFIX}{i}" for i in range(N_BLOCKS)]
        self._bodies = np.array([mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, n) for n in names])
        self._start_x = self.model.body_pos[self._bodies, 0].copy()
        self._dofs = self.model.jnt_dofadr[self.model.body_jntadr[self._bodies]]
        self._qadr = self.model.jnt_qposadr[self.model.body_jntadr[self._bodies]]

    def transform_xml(self) -> Any:
        blocks = "".join(_block_xml(i) for i in range(N_BLOCKS))

        def edit(text: str) -> str:
            floor_start = text.index('<geom conaffinity="1"')
            floor_end = text.index("/>", floor_start) + 2
            text = text[:floor_start] + text[floor_end:]
            return text.replace("</worldbody>", blocks + "</worldbody>", 1)

        return edit

    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if set(params) != {"damping"}:
            raise ConfigError(f"a pier task takes exactly 'damping' (N s/m), got keys {sorted(params)}")
        d = params["damping"]
        if isinstance(d, bool) or not isinstance(d, int | float) or not np.isfinite(d) or not 0 < d <= 1e4:
            raise ConfigError(f"pier 'damping' must be a number in (0, 10000], got {d!r}")
        d = float(f"{float(d):.2g}")
        return f"damping({d:g})", {"damping": d}

    def sample_train_task(self, rng: np.random.Generator) -> Task:
        lo, hi = np.log(TRAIN_DAMPING)
        return self.resolve_task({"damping": float(np.exp(rng.uniform(lo, hi)))})

    def apply_task(self, task: Task) -> None:
        self.model.dof_damping[self._dofs] = task.params["damping"]

    def reset_scenery(self) -> None:
        self.model.body_pos[self._bodies, 0] = self._start_x
        self.data.qpos[self._qadr] = 0.0
        self.data.qvel[self._dofs] = 0.0
        # Block centres as Python floats, front to back order kept by recycling: a step's bookkeeping is then
        # two float comparisons, not array operations (the simulation itself is as cheap as the plain cheetah's).
        self._xs = [float(x) for x in self._start_x]
        mujoco.mj_forward(self.model, self.data)

    def after_step(self) -> None:
        x = float(self.data.qpos[0])
        xs = self._xs
        # Recycle the farthest block behind to the front (or the other way round when running backwards).
        while True:
            lo, hi = min(xs), max(xs)
            if x - lo > BEHIND * BLOCK:
                self._move(xs.index(lo), hi + BLOCK)
            elif hi - x > AHEAD * BLOCK:
                self._move(xs.index(hi), lo - BLOCK)
            else:
                return

    def _move(self, i: int, x: float) -> None:
        self._xs[i] = x
        self.model.body_pos[self._bodies[i], 0] = x
        self.data.qpos[self._qadr[i]] = 0.0
        self.data.qvel[self._dofs[i]] = 0.0

    def block_heights(self) -> np.ndarray:
        """Vertical displacement of every block (metres), in block order."""
        return self.data.qpos[self._qadr].copy()

