"""ReBAL: the recurrent context adapts predictions; planning with the folded MLP equals the recurrent model."""

from __future__ import annotations

import numpy as np
import torch

from metadapt.adapt.rebal import RecurrentLearner
from metadapt.data.buffer import ReplayBuffer
from metadapt.meta.rebal import fit_recurrent
from metadapt.models.normalizer import Normalizer
from metadapt.models.recurrent import RecurrentDynamics
from metadapt.types import Window


def _buffer(episodes: int = 40, length: int = 40) -> ReplayBuffer:
    """x' = x + c u with c = +0.3 or -0.3 per episode: only the recent past tells which."""
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(2, 2, 100_000)
    for ep in range(episodes):
        c = 0.3 if ep % 2 == 0 else -0.3
        obs = rng.normal(size=(length, 2))
        act = rng.uniform(-1, 1, size=(length, 2))
        buf.add(obs, act, obs + c * act, np.zeros(length), np.full(length, ep), np.arange(length),
                np.full(length, int(c > 0)), np.full(length, ep >= episodes - 6))
    return buf


def test_folded_planning_params_equal_the_recurrent_prediction():
    model = RecurrentDynamics(3, 2, [16, 16], context=5)
    params = model.init_params(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, generator=g)
    obs, act = torch.randn(7, 3, generator=g), torch.randn(7, 2, generator=g)
    direct = model.predict_normalized_delta(params, obs, act, h)
    folded = model.planning_model().predict_normalized_delta(model.planning_params(params, h), obs, act)
    torch.testing.assert_close(direct, folded, rtol=1e-5, atol=1e-6)


def test_context_step_by_step_equals_reading_the_window():
    model = RecurrentDynamics(3, 2, [8], context=4)
    params = model.init_params(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    obs, act, nxt = torch.randn(6, 3, generator=g), torch.randn(6, 2, generator=g), torch.randn(6, 3, generator=g)
    whole = model.context(params, obs, act, nxt)
    learner = RecurrentLearner(model, params)
    for t in range(6):
        learner.observe(Window(obs[: t + 1], act[: t + 1], nxt[: t + 1]))
    torch.testing.assert_close(learner.h, whole, rtol=1e-5, atol=1e-6)
    learner.reset()
    assert float(learner.h.abs().sum()) == 0.0


def test_training_makes_the_context_identify_the_task():
    buf = _buffer()
    every = buf.transitions()
    model = RecurrentDynamics(2, 2, [32, 32], context=8, activation="tanh",
                              normalizer=Normalizer.from_data(every.obs, every.act, every.next_obs))
    params = model.init_params(torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    before = buf.sample_windows(8, 8, 64, torch.Generator().manual_seed(5), split="val")
    loss0 = float(model.window_loss(params, before.past(), before.future()))
    params, res = fit_recurrent(model, params, buf, past=8, future=8, batch=32, batches_per_epoch=40, epochs=12,
                                lr=3e-3, patience=12, generator=gen)
    # The two tasks differ only in the sign of c: without a context the best loss is the variance
    # of +-c u (about 1 in normalized units); with it, the error must fall far below.
    assert res.val_loss < 0.3 * loss0 and res.val_loss < 0.3, (loss0, res)


def test_rebal_trains_and_runs_from_the_command_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from metadapt.meta.rebal import load_recurrent

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "r"
    proc = subprocess.run(
        [sys.executable, "-m", "metadapt.cli", "run", str(root / "configs/grbal_halfcheetah_malfunction.yaml"),
         "meta.method=rebal", "learner.type=rebal", "train.iterations=2", "train.steps_per_iteration=240",
         "train.rollout_length=60", "train.epochs=2", "model.hidden=[16]", "planner.num_samples=20",
         "meta.batches_per_epoch=3", "meta.context=4", "trial.steps=20", "train.val_fraction=0.3",
         "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    model, params = load_recurrent(out / "train")
    assert model.context_dim == 4 and "gru.weight_ih_l0" in params
    assert "context_norm" in (out / "trial_0" / "metrics.csv").read_text().splitlines()[0]
    # an MLP model.pt is not a ReBAL model: one line, exit 2
    from metadapt.meta.checkpoint import save_model
    from metadapt.models.mlp import MLPDynamics

    mlp = MLPDynamics(18, 6, [8])
    save_model(mlp, mlp.init_params(torch.Generator().manual_seed(0)), tmp_path / "model.pt")
    bad = subprocess.run(
        [sys.executable, "-m", "metadapt.cli", "run", str(root / "configs/grbal_halfcheetah_malfunction.yaml"),
         "learner.type=rebal", f"model.checkpoint={tmp_path / 'model.pt'}", "trial.steps=5",
         "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "not a ReBAL model" in bad.stderr
