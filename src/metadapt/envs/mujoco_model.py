"""Loading MuJoCo models the way Gymnasium does, without deprecated compiler attributes."""

from __future__ import annotations

import re
from pathlib import Path

import mujoco

_TOTALMASS = re.compile(r'\s+settotalmass="([^"]+)"')


def load_model(xml_path: str | Path, offwidth: int = 480, offheight: int = 480) -> mujoco.MjModel:
    """Compile ``xml_path``, applying a ``settotalmass`` compiler attribute after compilation.

    MuJoCo 4 deprecates ``<compiler settotalmass>`` (Gymnasium's cheetah uses it)
    and prints a warning on every load. ``mj_setTotalmass`` followed by
    ``mj_setConst`` performs the same rescaling of masses and inertias on the
    compiled model, so the physics is unchanged and the warning is gone.
    """
    path = Path(xml_path)
    text = path.read_text()
    match = _TOTALMASS.search(text)
    if match is None:
        model = mujoco.MjModel.from_xml_path(str(path))
    else:
        text = _TOTALMASS.sub("", text, count=1)
        # from_xml_string resolves relative includes and meshes against this directory.
        model = mujoco.MjModel.from_xml_string(text, assets=_assets_beside(path))
        mujoco.mj_setTotalmass(model, float(match.group(1)))
        mujoco.mj_setConst(model, mujoco.MjData(model))
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, offwidth)
    model.vis.global_.offheight = max(model.vis.global_.offheight, offheight)
    return model


def _assets_beside(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.is_file() and p.suffix != ".xml"}
