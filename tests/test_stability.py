"""benchmarks/stability.py: the long-stream finiteness check of every learner, on a short stream."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from metadapt.adapt.continual import ContinualLearner
from metadapt.adapt.static import StaticLearner
from metadapt.envs import observation_version
from metadapt.experiments.configuration.components import continual_lr
from metadapt.meta.prior import load_prior

_spec = importlib.util.spec_from_file_location(
    "stability", Path(__file__).resolve().parents[1] / "benchmarks" / "stability.py")
assert _spec is not None and _spec.loader is not None
stability = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stability)


def test_every_learner_stays_finite_on_a_real_random_action_stream(capsys):
    assert stability.main(["--steps", "90", "--episode-length", "40", "--check-every", "30"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "non_finite_steps=0"
    for name in ("mb", "de", "ts", "gs", "mole"):
        assert any(line.startswith(f"{name} ") and "steps=90" in line for line in out.splitlines()), name


def test_the_check_counts_non_finite_parameters():
    prior = load_prior("builtin:halfcheetah_malfunction")
    stream = stability.collect_stream(12, 40, seed=1)
    assert len(stream) == 12 and stream.obs.shape == (12, prior.model.obs_dim)
    assert stream.act.shape == (12, prior.model.act_dim) and stream.step.tolist() == list(range(12))
    broken = {k: torch.full_like(v, math.nan) for k, v in prior.params.items()}
    res = stability.run_learner(StaticLearner(broken), prior.model, stream, 16, check_every=5)
    assert res["non_finite_steps"] == 12


def test_gs_stays_accurate_across_a_crawler_command_switch():
    # Regression: the command weights never change inside a training episode, so at a mid-trial switch
    # their normalized delta was 1e6; GS's step on that window left a model whose error reached 5e10 and
    # then inf (crawler sweep, step 500).
    crawler = stability.ENVS["crawler"][0]
    prior = load_prior("builtin:crawler", env_id=crawler, obs_version=observation_version(crawler))
    schedule = {"type": "sequence", "entries": [[0, "normal"], [30, "turn_left"]]}
    stream = stability.collect_stream(60, 100, seed=0, env_id=stability.ENVS["crawler"][0], schedule=schedule)
    gs = ContinualLearner(prior.model, prior.params, continual_lr(None, prior.inner_lr))
    res = stability.run_learner(gs, prior.model, stream, prior.future, check_every=10)
    assert res["non_finite_steps"] == 0 and res["refused_steps"] == 0
    assert res["largest_one_step_error"] < 100.0
