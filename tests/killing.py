"""Start a training command, SIGKILL it once its checkpoint shows a given progress (for the resume tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def kill_when(cmd: list[str], state: Path, ready: Callable[[dict[str, Any]], bool], cwd: Path | None = None,
              timeout: float = 300) -> None:
    """Run ``cmd``; SIGKILL it as soon as ``ready(checkpoint)`` holds for the checkpoint at ``state``.

    Fails the test when the command finishes first (the kill must come mid-run).
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if state.is_file():
            try:
                s = torch.load(state, weights_only=True)
            except (RuntimeError, EOFError):  # caught mid-rename
                s = None
            if s is not None and ready(s):
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
