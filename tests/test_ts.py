"""TS (GrBAL at run time): a step that raises its own window's loss is backtracked, then the prior kept."""

from __future__ import annotations

import pytest
import torch

from metadapt.adapt.ts import KShotLearner
from metadapt.meta.maml import adapt_with_loss
from metadapt.models.mlp import MLPDynamics
from metadapt.types import Window

O, A, K = 3, 2, 8


def _setup(seed: int = 0) -> tuple[MLPDynamics, dict[str, torch.Tensor], Window]:
    model = MLPDynamics(O, A, (16, 16), "relu")
    params = model.init_params(torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    obs = torch.randn(K + 1, O, generator=g).cumsum(0)
    act = torch.rand(K, A, generator=g) * 2 - 1
    return model, params, Window(obs[:-1], act, obs[1:])


def _loss(model: MLPDynamics, params: dict[str, torch.Tensor], w: Window) -> float:
    return float(model.transition_loss(params, w.obs, w.act, w.next_obs))


def _rates(params: dict[str, torch.Tensor], value: float) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, value) for k, v in params.items()}


def test_a_small_step_is_taken_as_it_comes():
    model, params, w = _setup()
    literal, _ = adapt_with_loss(model, params, w.obs, w.act, w.next_obs, 1e-3, 1, first_order=True)
    ts = KShotLearner(model, params, 1e-3)
    info = ts.observe(w).metrics
    assert info["step_scale"] == 1.0
    assert all(torch.equal(ts.params()[k], literal[k]) for k in params)
    assert info["window_loss_adapted"] < info["window_loss_prior"]


def test_an_overshooting_step_is_halved_until_it_lowers_the_window_loss():
    model, params, w = _setup()
    rates = _rates(params, 50.0)  # Meta-SGD-like per-entry rates, far too large for this window
    literal = KShotLearner(model, params, rates)  # the default: the GrBAL code's literal step
    info_literal = literal.observe(w).metrics
    assert info_literal["window_loss_adapted"] > info_literal["window_loss_prior"]  # the literal step overshoots
    assert info_literal["step_scale"] == 1.0

    ts = KShotLearner(model, params, rates, backtrack=20)
    info = ts.observe(w).metrics
    scale = info["step_scale"]
    assert 0 < scale < 1 and info["window_loss_adapted"] <= info["window_loss_prior"]
    # Exactly the step with the halved rates, and the first halving that does not raise the loss.
    expected, _ = adapt_with_loss(model, params, w.obs, w.act, w.next_obs, _rates(params, 50.0 * scale), 1,
                                  first_order=True)
    assert all(torch.equal(ts.params()[k], expected[k]) for k in params)
    coarser, _ = adapt_with_loss(model, params, w.obs, w.act, w.next_obs, _rates(params, 100.0 * scale), 1,
                                 first_order=True)
    assert _loss(model, coarser, w) > info["window_loss_prior"]


def test_a_step_that_no_halving_rescues_keeps_the_prior():
    model, params, w = _setup()
    ts = KShotLearner(model, params, -1.0, backtrack=3)  # a negative rate ascends the loss at every scale
    info = ts.observe(w).metrics
    assert info["step_scale"] == 0.0
    assert all(torch.equal(ts.params()[k], params[k]) for k in params)
    assert info["window_loss_adapted"] == pytest.approx(info["window_loss_prior"])


def test_backtracking_is_a_config_option_and_a_negative_count_is_refused(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "metadapt.cli", "check", str(root / "configs/mole_halfcheetah_malfunction.yaml"),
           "learner.type=ts"]
    ok = subprocess.run([*cmd, "learner.ts.backtrack=0"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*cmd, "learner.ts.backtrack=-1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "learner.ts.backtrack" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="backtrack"):
        KShotLearner(*_setup()[:2], 0.01, backtrack=-1)


def test_the_default_leaves_the_run_ids_of_earlier_sweeps_unchanged():
    from metadapt.experiments.configuration.config import load_config
    from metadapt.experiments.jobs.sweep import config_hash

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs/mole_halfcheetah_malfunction.yaml", ["learner.type=ts"])
    assert cfg["learner"]["ts"] == {"backtrack": 0}
    older = {**cfg, "learner": {k: v for k, v in cfg["learner"].items() if k != "ts"}}  # before the option
    assert config_hash(cfg) == config_hash(older)
    changed = load_config(root / "configs/mole_halfcheetah_malfunction.yaml", ["learner.type=ts",
                                                                                "learner.ts.backtrack=4"])
    assert config_hash(changed) != config_hash(cfg)
