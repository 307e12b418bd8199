"""Loading MuJoCo models the way Gymnasium does, without deprecated compiler attributes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import mujoco

_TOTALMASS = re.compile(r'\s+settotalmass="([^"]+)"')


def load_model(
    xml_path: str | Path,
    offwidth: int = 480,
    offheight: int = 480,
    transform: Callable[[str], str] | None = None,
    added_prefix: str = "",
) -> mujoco.MjModel:
    """Compile ``xml_path`` (after ``transform`` of its text), applying ``settotalmass`` after compilation.

    Bodies whose names start with ``added_prefix`` (scenery a transform added,
    such as floating blocks) are left out of the mass rescaling, so the robot
    weighs what it weighs in the original file.

    MuJoCo 4 deprecates ``<compiler settotalmass>`` (Gymnasium's cheetah uses it)
    and prints a warning on every load. ``mj_setTotalmass`` followed by
    ``mj_setConst`` performs the same rescaling of masses and inertias on the
    compiled model, so the physics is unchanged and the warning is gone.
    """
    path = Path(xml_path)
    text = path.read_text()
    if transform is not None:
        text = transform(text)
    match = _TOTALMASS.search(text)
    if match is None and transform is None:
        model = mujoco.MjModel.from_xml_path(str(path))
    else:
        text = _TOTALMASS.sub("", text, count=1)
        # from_xml_string resolves relative includes and meshes against this directory.
        model = mujoco.MjModel.from_xml_string(text, assets=_assets_beside(path))
    if match is not None:
        _set_total_mass(model, float(match.group(1)), added_prefix)
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, offwidth)
    model.vis.global_.offheight = max(model.vis.global_.offheight, offheight)
    return model


def _set_total_mass(model: mujoco.MjModel, total: float, added_prefix: str) -> None:
    # mj_setTotalmass on the robot's bodies only: scale mass and inertia, then recompute constants.
    robot = [
        b for b in range(1, model.nbody)
        if not (added_prefix and (mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, b) or "").startswith(added_prefix))
    ]
    scale = total / float(model.body_mass[robot].sum())
    model.body_mass[robot] *= scale
    model.body_inertia[robot] *= scale
    mujoco.mj_setConst(model, mujoco.MjData(model))


def _assets_beside(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.is_file() and p.suffix != ".xml"}
