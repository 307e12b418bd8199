from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def gl_backend() -> str:
    """The offscreen OpenGL backend MuJoCo can render with here (``MUJOCO_GL``); skips the test when neither
    EGL nor OSMesa works (each probed in a subprocess: a failed GL start can abort the process)."""
    for backend in ("egl", "osmesa"):
        probe = subprocess.run([sys.executable, "-c", "import mujoco; mujoco.GLContext(8, 8)"],
                               env={**os.environ, "MUJOCO_GL": backend}, capture_output=True)
        if probe.returncode == 0:
            return backend
    pytest.skip("no OpenGL backend: EGL and OSMesa are both missing (apt-get install libosmesa6)")
