"""ReBAL: the recurrent context adapts predictions; planning with the folded MLP equals the recurrent model."""

from __future__ import annotations

import numpy as np
import torch

from metadapt.adapt.rebal import RecurrentLearner
from metadapt.data.buffer import ReplayBuffer
from metadapt.data.normalizer import Normalizer
from metadapt.meta.rebal import fit_recurrent
from metadapt.models.recurrent import RecurrentDynamics


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
    x = torch.cat([obs, act], -1)
    for t in range(6):
        learner.observe(x[: t + 1], nxt[: t + 1])
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
