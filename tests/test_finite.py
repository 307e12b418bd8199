"""Finite by construction (issue 26): one NaN or inf never poisons a learner, a fit, a checkpoint or a plan."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from metadapt.adapt.base import REFUSED, SKIPPED, OnlineLearner, params_are_finite, window_is_finite
from metadapt.adapt.continual import ContinualLearner
from metadapt.adapt.mole import MOLeLearner
from metadapt.adapt.rebal import RecurrentLearner
from metadapt.adapt.static import StaticLearner
from metadapt.adapt.ts import KShotLearner
from metadapt.agent import MPCAgent
from metadapt.cli import main
from metadapt.data.buffer import ReplayBuffer
from metadapt.envs import get_reward_fn, make_env
from metadapt.errors import CheckpointError
from metadapt.experiments.jobs.iterate import IterationSettings, IterativeTrainer
from metadapt.experiments.jobs.trial import run_trial
from metadapt.experiments.reporting.progress import Reporter
from metadapt.meta.checkpoint import load_model, save_model
from metadapt.meta.fit import FitDiverged, fit_dynamics, improves
from metadapt.meta.maml import MetaSettings, fit_meta, initial_inner_lrs
from metadapt.meta.prior import Prior, load_prior, save_prior
from metadapt.meta.rebal import fit_recurrent, load_recurrent, recurrent_state
from metadapt.models.mlp import MLPDynamics
from metadapt.models.normalizer import Normalizer
from metadapt.models.recurrent import RecurrentDynamics
from metadapt.planning.cem import CEM
from metadapt.planning.mppi import MPPI
from metadapt.planning.random_shooting import RandomShooting
from metadapt.types import Window

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("stability", ROOT / "benchmarks" / "stability.py")
assert _spec is not None and _spec.loader is not None
stability = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stability)

O, A, K = 3, 2, 6
BAD = (math.nan, math.inf, -math.inf)


def _mlp(hidden: tuple[int, ...] = (16, 16), activation: str = "relu") -> tuple[MLPDynamics, dict]:
    model = MLPDynamics(O, A, hidden, activation)
    return model, model.init_params(torch.Generator().manual_seed(0))


def _windows(n: int, seed: int = 0) -> list[Window]:
    """``n`` sliding windows (up to K steps) of one smooth stream."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n + 1, O, generator=g).cumsum(0) * 0.1
    act = torch.rand(n, A, generator=g) * 2 - 1
    return [Window(obs[max(0, t - K + 1) : t + 1], act[max(0, t - K + 1) : t + 1], obs[max(0, t - K + 1) + 1 : t + 2])
            for t in range(n)]


def _poison(window: Window, field: str, value: float) -> Window:
    t = getattr(window, field).clone()
    t[-1, 0] = value
    return window.replace(**{field: t})


def _learners() -> dict[str, Callable[[], OnlineLearner]]:
    model, params = _mlp()
    rec = RecurrentDynamics(O, A, [16], context=4)
    rec_params = rec.init_params(torch.Generator().manual_seed(1))
    return {
        "mb": lambda: StaticLearner(params),
        "de": lambda: ContinualLearner(model, params, 0.01),
        "ts": lambda: KShotLearner(model, params, 0.01),
        "gs": lambda: ContinualLearner(model, params, {k: torch.full_like(v, 0.01) for k, v in params.items()}),
        "mole": lambda: MOLeLearner(model, params, 0.01),
        "mole_plain": lambda: MOLeLearner(model, params, 0.01, fused=False),
        "rebal": lambda: RecurrentLearner(rec, rec_params),
    }


def _snapshot(learner: OnlineLearner) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in learner.params().items()}
    if isinstance(learner, MOLeLearner):
        out.update({f"stack.{k}": v.clone() for k, v in learner.stack.items()})
        out["counts"] = learner.counts.clone()
    return out


# -- 1. online learners ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(_learners()))
def test_every_learner_skips_a_window_with_a_nonfinite_number_and_keeps_its_parameters(name):
    learner = _learners()[name]()
    learner.reset()
    windows = _windows(12)
    for w in windows[:8]:
        keys = set(learner.observe(w).metrics)
    for field in ("obs", "act", "next_obs"):
        for value in BAD:
            before = _snapshot(learner)
            info = learner.observe(_poison(windows[8], field, value)).metrics
            after = _snapshot(learner)
            assert all(torch.equal(before[k], after[k]) for k in before), (field, value)
            assert info.get(SKIPPED) == 1.0 and set(info) == keys, (field, value)  # the same metrics.csv columns
    # The next finite window is learned from as usual, and every number stays finite.
    info = learner.observe(windows[9]).metrics
    assert params_are_finite(learner.params()) and info.get(SKIPPED) == 0.0
    assert all(math.isfinite(v) for v in info.values() if isinstance(v, float))


def test_the_window_check_reads_obs_actions_and_next_obs_and_allows_integer_actions():
    w = _windows(3)[-1]
    assert window_is_finite(w)
    assert not any(window_is_finite(_poison(w, f, v)) for f in ("obs", "act", "next_obs") for v in BAD)
    discrete = Window(w.obs, torch.zeros(len(w), dtype=torch.long), w.next_obs)
    assert window_is_finite(discrete)


@pytest.mark.parametrize("fused", [True, False])
def test_mole_e_step_when_every_likelihood_is_zero_falls_back_to_the_prior_posterior(fused):
    # A finite window no component can predict (its error overflows): every log-likelihood is -inf, whose
    # softmax is NaN; the M step used to multiply every component by it.
    model, params = _mlp()
    mole = MOLeLearner(model, params, 0.01, fused=fused)
    windows = _windows(10)
    for w in windows[:6]:
        mole.observe(w)
    counts, stack = mole.counts.clone(), {k: v.clone() for k, v in mole.stack.items()}
    huge = windows[6].replace(next_obs=torch.full_like(windows[6].next_obs, 1e30))
    info = mole.observe(huge).metrics
    assert torch.equal(mole.counts, counts) and all(torch.equal(stack[k], v) for k, v in mole.stack.items())
    prior_post = counts / counts.sum()
    torch.testing.assert_close(mole.last_posterior, prior_post)
    assert all(math.isfinite(v) for v in info.values() if isinstance(v, float))
    assert info.get(REFUSED) == 1.0 and info.get(SKIPPED) == 0.0
    mole.observe(windows[7])
    assert params_are_finite(mole.stack) and bool(torch.isfinite(mole.counts).all())


def _overflowing() -> tuple[MLPDynamics, dict, Window]:
    """A linear model and a finite window whose loss is finite (1e38) but whose gradient overflows (8e38)."""
    model = MLPDynamics(1, 1, [], "relu", sigma=0.1)
    params = {"layers.0.weight": torch.tensor([[0.25, 0.0]]), "layers.0.bias": torch.zeros(1)}
    obs = torch.full((2, 1), 4e19)
    return model, params, Window(obs, torch.zeros(2, 1), obs.clone())


@pytest.mark.parametrize("name", ["ts", "gs", "mole", "mole_plain"])
def test_a_step_that_would_leave_nonfinite_parameters_is_refused(name):
    model, params, window = _overflowing()
    assert math.isfinite(float(model.transition_loss(params, window.obs, window.act, window.next_obs)))
    learner = {
        "ts": lambda: KShotLearner(model, params, 0.5),
        "gs": lambda: ContinualLearner(model, params, 0.5),
        "mole": lambda: MOLeLearner(model, params, 0.5),
        "mole_plain": lambda: MOLeLearner(model, params, 0.5, fused=False),
    }[name]()
    info = learner.observe(window).metrics
    assert all(torch.equal(v, params[k]) for k, v in learner.params().items())  # the previous parameters
    if isinstance(learner, MOLeLearner):
        assert params_are_finite(learner.stack) and bool(torch.isfinite(learner.counts).all())
    assert info.get(REFUSED) == 1.0 and info.get(SKIPPED) == 0.0


# -- 2. training and loading ---------------------------------------------------------------------------------------


def test_the_buffer_drops_nonfinite_transitions_and_counts_them():
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(O, A, 1000)
    obs, act = rng.normal(size=(20, O)), rng.uniform(-1, 1, size=(20, A))
    nxt = obs + 0.1
    obs[5, 1], act[9, 0], nxt[14, 2] = np.nan, np.inf, -np.inf
    buf.add(obs, act, nxt, np.zeros(20), np.zeros(20), np.arange(20))
    assert len(buf) == 17 and buf.dropped_nonfinite == 3 and buf.total_added == 17
    every = buf.transitions()
    assert all(bool(torch.isfinite(t).all()) for t in (every.obs, every.act, every.next_obs))
    # No window spans a dropped step: the runs of consecutive steps are 0-4, 6-8, 10-13 and 15-19.
    assert buf.window_starts(5).tolist() == [0, 12] and buf.window_starts(6).numel() == 0
    again = ReplayBuffer.from_state_dict(buf.state_dict())
    assert again.dropped_nonfinite == 3 and len(again) == 17
    norm = Normalizer.from_data(every.obs, every.act, every.next_obs)
    assert norm.is_finite()


def test_the_normalizer_leaves_nonfinite_transitions_out():
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(50, O, generator=g), torch.randn(50, A, generator=g)
    clean = Normalizer.from_data(obs[1:], act[1:], obs[1:] + 1)
    obs[0, 0] = math.nan
    dirty = Normalizer.from_data(obs, act, obs + 1)
    assert dirty.is_finite()
    assert all(torch.equal(getattr(dirty, k), getattr(clean, k)) for k in ("obs_mean", "obs_std", "act_std"))


def test_a_nonfinite_validation_loss_never_becomes_the_best():
    assert not improves(math.nan, 1.0, True) and not improves(math.inf, math.nan, True)
    assert improves(0.5, math.nan, True) and improves(0.5, 1.0, True) and not improves(1.0, 0.5, True)
    assert improves(math.nan, math.nan, False)  # no validation data: the latest parameters are kept


def _data() -> ReplayBuffer:
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(O, A, 10_000)
    for ep in range(12):
        obs, act = rng.normal(size=(30, O)), rng.uniform(-1, 1, size=(30, A))
        buf.add(obs, act, obs + 0.3 * np.pad(act, ((0, 0), (0, O - A))), np.zeros(30), np.full(30, ep),
                np.arange(30), 0, np.full(30, ep % 4 == 0))
    return buf


def test_a_diverging_fit_stops_and_keeps_finite_parameters():
    buf = _data()
    every = buf.transitions()
    model = MLPDynamics(O, A, [16], normalizer=Normalizer.from_data(every.obs, every.act, every.next_obs))
    params = model.init_params(torch.Generator().manual_seed(1))
    best, state, res = fit_dynamics(model, params, buf.transitions("train"), buf.transitions("val"), epochs=5,
                                    batch_size=16, lr=1e10, patience=5, generator=torch.Generator().manual_seed(2))
    assert params_are_finite(best) and math.isfinite(res.val_loss) and res.diverged >= 1
    assert all(bool(torch.isfinite(t).all()) for s in state["state"].values() for t in s.values())
    settings = MetaSettings(past=4, future=4, meta_batch=4, batches_per_epoch=5, val_batches=2, learn_inner_lr=True)
    best, lrs, _, meta_res = fit_meta(model, params, buf, settings, epochs=4, lr=1e10, patience=5,
                                      generator=torch.Generator().manual_seed(2),
                                      inner_lrs=initial_inner_lrs(params, settings, A))
    assert params_are_finite(best) and lrs is not None and params_are_finite(lrs) and meta_res.diverged >= 1
    rec = RecurrentDynamics(O, A, [16], context=4, normalizer=model.normalizer)
    best, rec_res = fit_recurrent(rec, rec.init_params(torch.Generator().manual_seed(1)), buf, past=4, future=4,
                                  batch=8, batches_per_epoch=5, val_batches=2, epochs=4, lr=1e10,
                                  generator=torch.Generator().manual_seed(2))
    assert params_are_finite(best) and rec_res.diverged >= 1


TINY = ["train.iterations=1", "train.steps_per_iteration=80", "train.rollout_length=40", "train.epochs=3",
        "train.batch_size=16", "model.hidden=[8]", "planner.num_samples=4", "planner.horizon=2", "trial.steps=10",
        "trial.episode_length=10"]


def test_a_run_whose_first_fit_diverges_stops_with_one_line_and_writes_no_model(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, "train.lr=1.0e+10", "--out", str(out),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "diverged" in err and "train.lr" in err
    assert not (out / "train" / "model.pt").exists()


def test_loading_refuses_nonfinite_models_normalizers_priors_and_rebal_models(tmp_path):
    model, params = _mlp()
    for value in BAD:
        bad = {k: v.clone() for k, v in params.items()}
        bad["layers.1.weight"][0, 0] = value
        save_model(model, bad, tmp_path / "model.pt")
        with pytest.raises(CheckpointError, match=r"model\.pt.*non-finite.*layers\.1\.weight") as exc:
            load_model(tmp_path / "model.pt")
        assert len(str(exc.value).splitlines()) == 1
    broken = MLPDynamics(O, A, (16, 16), normalizer=Normalizer.identity(O, A))
    broken.normalizer.delta_std[1] = math.nan
    save_model(broken, params, tmp_path / "norm.pt")
    with pytest.raises(CheckpointError, match=r"norm\.pt.*normalizer.*delta_std"):
        load_model(tmp_path / "norm.pt")
    rates = {k: torch.full_like(v, 0.01) for k, v in params.items()}
    rates["layers.0.bias"][2] = math.inf
    save_prior(Prior(model, params, rates, 1, 4, 4), tmp_path / "prior.pt")
    with pytest.raises(CheckpointError, match=r"prior\.pt.*inner learning rates"):
        load_prior(tmp_path / "prior.pt")
    save_prior(Prior(model, params, math.nan, 1, 4, 4), tmp_path / "prior_nan.pt")
    with pytest.raises(CheckpointError, match=r"prior_nan\.pt.*inner learning rate"):
        load_prior(tmp_path / "prior_nan.pt")
    nan_params = {k: torch.full_like(v, math.nan) for k, v in params.items()}
    save_prior(Prior(model, nan_params, 0.01, 1, 4, 4), tmp_path / "prior_params.pt")
    with pytest.raises(CheckpointError, match=r"prior_params\.pt.*parameters"):
        load_prior(tmp_path / "prior_params.pt")
    rec = RecurrentDynamics(O, A, [8], context=4)
    rec_params = {k: torch.full_like(v, math.nan) for k, v in rec.init_params(torch.Generator()).items()}
    torch.save(recurrent_state(rec, rec_params), tmp_path / "rebal.pt")
    with pytest.raises(CheckpointError, match=r"rebal\.pt.*non-finite"):
        load_recurrent(tmp_path / "rebal.pt")


class _NaNObservations(gym.ObservationWrapper):
    """The environment's observation, with a NaN in it at every ``every``-th step (counted from each reset)."""

    def __init__(self, env: gym.Env, every: int) -> None:
        super().__init__(env)
        self.every, self.t = every, 0

    def reset(self, **kwargs):  # type: ignore[no-untyped-def]
        self.t = 0
        return super().reset(**kwargs)

    def observation(self, observation):  # type: ignore[no-untyped-def]
        self.t += 1
        if self.t % self.every == 0:
            observation = observation.copy()
            observation[0] = np.nan
        return observation


class _Lines(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def _planner(env: gym.Env, seed: int = 0) -> RandomShooting:
    space = env.action_space
    return RandomShooting(torch.as_tensor(space.low), torch.as_tensor(space.high), horizon=2, num_samples=8, seed=seed)


def test_collected_nonfinite_transitions_are_dropped_and_counted_and_the_model_stays_finite(tmp_path):
    env = _NaNObservations(make_env("metadapt/HalfCheetah-v0"), every=15)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    settings = IterationSettings(iterations=1, steps_per_iteration=60, rollout_length=30, epochs=2, batch_size=16)
    trainer = IterativeTrainer(env, get_reward_fn(env), MLPDynamics(obs_dim, act_dim, [8]), lambda seed: _planner(env),
                               settings, seed=0, run_dir=tmp_path, reporter=(lines := _Lines()))
    trainer.run()
    model, params = load_model(tmp_path / "model.pt")
    assert params_are_finite(params) and model.normalizer.is_finite()
    # Two episodes of 30 steps, each with two NaN observations (the 15th and 30th after the reset's); one is
    # the next observation of one transition and the observation of the next.
    assert trainer.buffer.dropped_nonfinite == 8 and len(trainer.buffer) == 52
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].split(",")[-1] == "8"
    assert any("dropped 8 transitions" in line for line in lines.lines)


def test_a_later_divergence_goes_on_with_the_parameters_it_had_and_the_first_one_stops(tmp_path):
    env = make_env("metadapt/HalfCheetah-v0")
    trainer = IterativeTrainer(env, get_reward_fn(env), MLPDynamics(17, 6, [8]), lambda seed: _planner(env),
                               IterationSettings(), seed=0, run_dir=tmp_path, reporter=(lines := _Lines()))
    trainer.check_divergence(0, 0, 0)  # no divergence: nothing to say
    trainer.check_divergence(0, 3, 2)  # an epoch improved before it diverged
    with pytest.raises(FitDiverged, match=r"iteration 0.*epoch 1.*train\.lr"):
        trainer.check_divergence(0, 1, 0)
    trainer.completed = 0
    trainer.check_divergence(1, 1, 0)  # the previous iteration's parameters
    assert lines.lines == [
        "iteration 0: training diverged (a non-finite loss in epoch 3); going on with epoch 2's parameters",
        "iteration 1: training diverged (a non-finite loss in epoch 1); going on with the previous iteration's "
        "parameters"]


def test_a_trial_with_nonfinite_observations_skips_them_and_reports_a_finite_model_error(tmp_path):
    env = _NaNObservations(make_env("metadapt/HalfCheetah-v0"), every=10)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    model = MLPDynamics(obs_dim, act_dim, [8])
    params = model.init_params(torch.Generator().manual_seed(0))
    agent = MPCAgent(model, KShotLearner(model, params, 0.01), _planner(env), get_reward_fn(env), window=4)
    res = run_trial(env, agent, 30, seed=0, out_dir=tmp_path)
    assert math.isfinite(res.mean_model_error) and res.nonfinite_observations == 6
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    skipped = [float(r.split(",")[rows[0].split(",").index(SKIPPED)]) for r in rows[1:]]
    # Each bad observation is in the windows of 5 steps (K + 1) from the step it follows: 8-12, 18-22, 28-29.
    assert sum(skipped) == 12 and skipped[8:14] == [1.0] * 5 + [0.0]
    assert params_are_finite(agent.learner.params())


# -- 3. planning ------------------------------------------------------------------------------------------------------


def _reward(obs: torch.Tensor, act: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    return -nxt.pow(2).sum(-1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("planner", [RandomShooting, CEM, MPPI])
def test_planning_with_nonfinite_parameters_counts_every_candidate_as_nonfinite(planner, dtype):
    # One NaN weight of a hidden layer: oneDNN's fused ReLU (the bfloat16 CPU path) maps NaN to 0, so the
    # rollout returned finite returns for a model that predicts nothing.
    model, params = _mlp()
    params["layers.1.weight"][0, 0] = math.nan
    low, high = -torch.ones(A), torch.ones(A)
    p = planner(low, high, horizon=3, num_samples=20, seed=0)
    agent = MPCAgent(model, StaticLearner(params), p, _reward, window=K, dtype=dtype)
    agent.reset()
    action = agent.act(np.zeros(O, dtype=np.float32))
    plan = agent.last_plan
    assert plan is not None and plan.nonfinite == plan.evaluations and np.isfinite(action).all()
    assert bool(((action >= -1) & (action <= 1)).all())


# -- 4. fault injection (benchmarks/stability.py on a short stream) ---------------------------------------------------


def _short_stream_learners() -> tuple[Window, dict[str, tuple[Callable[[], OnlineLearner], object]]]:
    # A 240-step stream of the real environment, a small MB model (a short fit) and every learner on it.
    stream = stability.collect_stream(240, 240, seed=0, env_id=stability.ENV)
    obs_dim, act_dim = stream.obs.shape[1], stream.act.shape[1]
    normalizer = Normalizer.from_data(stream.obs, stream.act, stream.next_obs)
    model = MLPDynamics(obs_dim, act_dim, [32, 32], normalizer=normalizer)
    init = model.init_params(torch.Generator().manual_seed(0))
    params, _, _ = fit_dynamics(model, init, stream, stream[:0], epochs=5, batch_size=80, lr=3e-3, patience=5,
                                generator=torch.Generator().manual_seed(1))
    rates = {k: torch.full_like(v, 0.001) for k, v in params.items()}  # a Meta-SGD prior's layout
    rec = RecurrentDynamics(obs_dim, act_dim, [32], context=8, normalizer=normalizer)
    rec_params = rec.init_params(torch.Generator().manual_seed(2))
    return stream, {
        "mb": (lambda: StaticLearner(params), model),
        "de": (lambda: ContinualLearner(model, params, 0.001), model),
        "ts": (lambda: KShotLearner(model, params, rates), model),
        "gs": (lambda: ContinualLearner(model, params, rates), model),
        "mole": (lambda: MOLeLearner(model, params, 0.001, max_components=5, new_lr=rates), model),
        "rebal": (lambda: RecurrentLearner(rec, rec_params), rec.planning_model()),
    }


def test_fault_injection_every_learner_stays_finite_skips_and_recovers():
    # The benchmark's code path with small budgets: an injection every 40 steps, windows of 6 steps; each learner
    # runs on the injected stream, a copy of it on the clean one from just before each fault for reference.
    stream, learners = _short_stream_learners()
    window, every = 6, 40
    injected, steps = stability.inject_nonfinite(stream, every)
    assert steps == [40, 80, 120, 160, 200] and not window_is_finite(injected[40:41])
    assert not window_is_finite(injected[39:40]) and window_is_finite(injected[41:42])
    assert stability.inject_nonfinite(stream, every, first=25)[1] == [25, 65, 105, 145, 185, 225]
    for name, (make, scorer) in learners.items():
        res = stability.fault_injection(make, scorer, stream, window, every, check_every=20, recovery=2 * window)
        assert res["non_finite_steps"] == 0, (name, res)
        # A bad observation is in two transitions (t - 1 and t): a window holds it for K + 1 steps; ReBAL
        # reads the newest transition only.
        assert res["skipped_steps"] == len(steps) * (2 if name == "rebal" else window + 1), name
        assert res["injections"] == len(steps) and res["unrecovered"] == 0, (name, res)


def test_fault_injection_reference_copies_leave_the_run_alone_and_match_a_clean_run():
    # The reference of an injection is a deep copy of the learner going on along the clean stream. Forking must
    # not change the learner fed the injected stream (same errors, bit for bit, as without forks), and before the
    # first fault the copy is the clean run itself: its errors over its span equal a whole clean run's.
    stream, learners = _short_stream_learners()
    window, every, span = 6, 40, 30
    injected, steps = stability.inject_nonfinite(stream, every)
    forks = {t - 1: span for t in steps}
    for name, (make, scorer) in learners.items():
        clean: list[float] = []
        stability.run_learner(make(), scorer, stream, window, 20, errors=clean)
        plain: list[float] = []
        stability.run_learner(make(), scorer, injected, window, 20, errors=plain)
        forked: list[float] = []
        reference = [math.nan] * len(stream)
        stability.run_learner(make(), scorer, injected, window, 20, errors=forked, clean=stream, forks=forks,
                              reference=reference)
        np.testing.assert_array_equal(np.array(forked), np.array(plain), err_msg=name)
        first = slice(steps[0] - 1, steps[0] - 1 + span)
        np.testing.assert_array_equal(np.array(reference[first]), np.array(clean[first]), err_msg=name)
        for t in steps:  # every copy ran on clean observations: an error at each step of its span
            assert np.isfinite(reference[t - 1 : t - 1 + span]).all(), (name, t)
        assert not np.isfinite(forked[steps[0]]) and np.isfinite(reference[steps[0]]), name
