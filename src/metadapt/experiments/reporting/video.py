"""MP4 videos of trials: MuJoCo offscreen frames with the true task and the learner's choice drawn on them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from metadapt.errors import MetadaptError

GL_BACKENDS = ("egl", "osmesa")
FPS = 20  # the cheetah's and the crawler's control rate (dt = 0.05 s)


def gl_backend() -> str:
    """The OpenGL backend MuJoCo renders offscreen with; sets ``MUJOCO_GL`` for this process.

    Tries ``MUJOCO_GL`` when it is set, else EGL then OSMesa, each in a
    subprocess (a failed GL initialisation can abort the process that tries
    it). Must run before ``mujoco`` is imported. Raises ``MetadaptError`` (one
    line) when none works.
    """
    chosen = os.environ.get("MUJOCO_GL")
    for backend in (chosen,) if chosen else GL_BACKENDS:
        probe = subprocess.run([sys.executable, "-c", "import mujoco; mujoco.GLContext(8, 8)"],
                               env={**os.environ, "MUJOCO_GL": backend}, capture_output=True)
        if probe.returncode == 0:
            os.environ["MUJOCO_GL"] = backend
            return backend
    if chosen:
        raise MetadaptError(f"--video: MUJOCO_GL={chosen} cannot open an offscreen OpenGL context here "
                            "(unset it to try EGL and OSMesa)")
    raise MetadaptError("--video needs offscreen OpenGL and neither EGL nor OSMesa works here "
                        "(on Debian/Ubuntu: apt-get install libosmesa6, then MUJOCO_GL=osmesa)")


def check_video_writer() -> None:
    """One clear line when the MP4 encoder is missing."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise MetadaptError("--video needs an MP4 encoder: pip install 'metadapt[video]'") from None


class TrialVideo:
    """Frames in, MP4 out, each frame captioned (``H x W x 3`` uint8 frames)."""

    def __init__(self, path: Path, fps: int = FPS) -> None:
        import imageio.v2 as imageio

        check_video_writer()
        self.path = path
        # macro_block_size 1: any frame size (the default pads to multiples of 16 with a warning).
        self._writer: Any = imageio.get_writer(str(path), fps=fps, codec="libx264", quality=7, macro_block_size=1)

    def add(self, frame: np.ndarray, caption: list[str]) -> None:
        from PIL import Image, ImageDraw

        image = Image.fromarray(np.ascontiguousarray(frame))
        draw = ImageDraw.Draw(image)
        y = 4
        for line in caption:
            # A dark outline keeps the text readable on the sky and on the floor.
            draw.text((6, y), line, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
            y += 14
        self._writer.append_data(np.asarray(image))

    def close(self) -> None:
        self._writer.close()
