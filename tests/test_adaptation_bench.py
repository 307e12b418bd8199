"""`metadapt bench adaptation`: the four K-step errors on held-out-task data, and its input checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from metadapt.experiments.benchmarks.adaptation import AdaptationErrors, adaptation_errors, collect_random, format_table
from metadapt.meta.checkpoint import save_model
from metadapt.meta.maml import adapt
from metadapt.meta.prior import Prior, save_prior
from metadapt.models.mlp import MLPDynamics

ENV = "metadapt/HalfCheetahDisabledJoint-v0"


def _models(tmp_path):
    mb = MLPDynamics(18, 6, [16], "relu", 1.0)
    mb_params = mb.init_params(torch.Generator().manual_seed(0))
    prior = Prior(mb, mb.init_params(torch.Generator().manual_seed(1)), 0.05, 1, 4, 4)
    save_model(mb, mb_params, tmp_path / "model.pt")
    save_prior(prior, tmp_path / "prior.pt")
    return (mb, mb_params), prior


def test_errors_match_a_direct_computation(tmp_path):
    mb, prior = _models(tmp_path)
    res = adaptation_errors(ENV, "joint_0", mb, prior, steps=60, episode_length=60, windows=1, seed=3)
    # Recompute the one window the function drew (same seeds) by hand.
    import numpy as np

    traj = collect_random(ENV, "joint_0", 60, 60, 3)[0]
    s = int(np.random.default_rng(4).integers(len(traj) - 8 + 1))
    w = torch.from_numpy(traj[s : s + 8])
    obs, act, nxt = w[:, :18], w[:, 18:24], w[:, 24:]
    adapted = adapt(prior.model, prior.params, obs[:4], act[:4], nxt[:4], 0.05)
    expected = float(prior.model.transition_loss(adapted, obs[4:], act[4:], nxt[4:]))
    assert res.grbal == pytest.approx(expected, rel=1e-5)
    before = float(prior.model.transition_loss(prior.params, obs[4:], act[4:], nxt[4:]))
    assert res.prior == pytest.approx(before, rel=1e-5)


def test_table_ends_with_the_worst_reduction():
    rows = [AdaptationErrors("a", "t", 10, 1.0, 0.9, 2.0, 1.0), AdaptationErrors("b", "t", 10, 1.0, 0.9, 2.0, 1.5)]
    assert format_table(rows).splitlines()[-1] == "min_adaptation_error_reduction=0.250"


def test_cli_refuses_models_of_another_environment(tmp_path):
    _models(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "metadapt.cli", "bench", "adaptation", "--case", "metadapt/AntCrippled-v0", "leg_3",
         str(tmp_path / "model.pt"), str(tmp_path / "prior.pt")], capture_output=True, text=True,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "28/8" in proc.stderr


def test_cli_scores_a_case_end_to_end(tmp_path):
    """The whole command: both files load (the prior against the env's observation version) and a table prints."""
    _models(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "metadapt.cli", "bench", "adaptation", "--case", ENV, "joint_0",
         str(tmp_path / "model.pt"), str(tmp_path / "prior.pt"), "--steps", "60", "--episode-length", "60",
         "--windows", "2"], capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("min_adaptation_error_reduction=")
