"""SIGKILL at random points of a training run and of a sweep, then resume (issue 26's bar: 10 random kill points).

Each chain starts a command, kills it after a random delay, resumes (or reruns) it, kills that after another
random delay, and so on; then lets the last resume finish. The delays are wall-clock fractions of the
uninterrupted run's duration, so kills land anywhere: during imports, collection, fitting, a checkpoint's
write, between sweep points or while a point's files are written. Whatever the points, the chain must end
with the uninterrupted run's numbers.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from metadapt.meta.checkpoint import load_model
from test_sweep import _results, _sweep_file
from test_training import SMALL, _rows

ROOT = Path(__file__).resolve().parents[1]
KILLS_PER_CHAIN = 5  # two chains: 10 random kill points
CLI = [sys.executable, "-m", "metadapt.cli"]


def _timed(cmd: list[str]) -> float:
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - start


def kill_chain(next_cmd: Callable[[], list[str]], kills: int, span: float, rng: random.Random) -> list[float]:
    """Run ``next_cmd()`` ``kills`` times, each SIGKILLed after a delay drawn uniformly from ``span`` x (0.1, 0.7)
    unless it finished first, then once more to completion. Returns the delays at which a live process was
    killed."""
    hits = []
    for _ in range(kills):
        delay = span * rng.uniform(0.1, 0.7)
        proc = subprocess.Popen(next_cmd(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            hits.append(round(delay, 2))
        proc.wait()
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"{next_cmd()} failed after the kills at {hits}: {proc.stderr.read()}")
        proc.stderr.close()
    last = subprocess.run(next_cmd(), capture_output=True, text=True, timeout=900)
    assert last.returncode == 0, f"kills at {hits}: {last.stderr}"
    return hits


def test_training_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path):
    def train(out: Path) -> list[str]:
        return [*CLI, "train", str(ROOT / "configs/mb_halfcheetah.yaml"), *SMALL, "train.iterations=5",
                "--out", str(out), "--quiet"]

    full = tmp_path / "full"
    span = _timed(train(full))
    killed = tmp_path / "killed"

    def next_cmd() -> list[str]:
        # Killed before its config was written, the run is no run yet: the user starts it again.
        if (killed / "config.yaml").is_file():
            return [*CLI, "train", "--resume", str(killed), "--quiet"]
        return [*train(killed), "--force"]

    hits = kill_chain(next_cmd, KILLS_PER_CHAIN, span, random.Random(26))
    print("training kills at", hits)
    assert hits, "no kill landed while the run was alive"
    assert _rows(killed / "metrics.csv") == _rows(full / "metrics.csv"), hits
    _, p_full = load_model(full / "model.pt")
    _, p_killed = load_model(killed / "model.pt")
    for k in p_full:
        assert torch.equal(p_full[k], p_killed[k]), (k, hits)


def test_sweep_killed_at_random_points_reruns_to_the_uninterrupted_result(tmp_path):
    path = _sweep_file(tmp_path, {"seed": [0, 1, 2], "learner.type": ["mb", "de"]})
    full = tmp_path / "full"
    span = _timed([*CLI, "sweep", str(path), "--out", str(full), "--quiet"])
    killed = tmp_path / "killed"
    hits = kill_chain(lambda: [*CLI, "sweep", str(path), "--out", str(killed), "--quiet"], KILLS_PER_CHAIN, span,
                      random.Random(260))
    print("sweep kills at", hits)
    assert hits, "no kill landed while the sweep was alive"
    assert _results(killed) == _results(full), hits
    assert len(list((killed / "runs").iterdir())) == 6, hits  # none lost, none duplicated
