"""MOLe and the continual learners on streams whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metadapt.adapt.continual import ContinualLearner
from metadapt.adapt.mole import MOLeLearner
from metadapt.adapt.ts import KShotLearner
from metadapt.experiments.reporting.metrics import adjusted_rand_index, away_from_switches, effective_components
from metadapt.models.mlp import MLPDynamics
from metadapt.types import Window

K = 16


def _win(x: torch.Tensor, y: torch.Tensor) -> Window:
    """The window of ``x`` (``K x (O + A)``: states, then actions) and ``y`` (``K x O``: the next states)."""
    o = y.shape[-1]
    return Window(x[:, :o], x[:, o:], y)


def _linear_model(sigma: float = 0.1) -> tuple[MLPDynamics, dict[str, torch.Tensor]]:
    """A linear model s' - s = w . [s, a] + b (identity normalizer); the prior predicts no change."""
    model = MLPDynamics(1, 1, [], "relu", sigma)
    prior = {k: torch.zeros_like(v) for k, v in model.init_params(torch.Generator().manual_seed(0)).items()}
    return model, prior


def _stream(learner, steps: int, period: int, seed: int = 0, noise: float = 0.05):
    """Two linear-Gaussian tasks s' = s + c a + noise, c = +1 / -1, alternating every ``period`` steps.

    With s = 0 and a = +-1, one SGD step of size 0.5 on a window's MSE takes the
    prior (w = 0) to the task's c: the prior reaches either model in one step.
    """
    rng = np.random.default_rng(seed)
    hist, truth, chosen = [], [], []
    for t in range(steps):
        c = 1 if (t // period) % 2 == 0 else -1
        a = float(rng.choice([-1.0, 1.0]))
        hist.append((0.0, a, c * a + noise * rng.normal()))
        win = torch.tensor(hist[-K:], dtype=torch.float32)
        learner.observe(Window(win[:, :1], win[:, 1:2], win[:, 2:]))
        truth.append(c)
        chosen.append(learner.chosen_id if isinstance(learner, MOLeLearner) else 0)
    return np.array(truth), np.array(chosen)


def test_mole_recovers_two_alternating_tasks_and_recalls_them():
    model, prior = _linear_model()
    mole = MOLeLearner(model, prior, lr=0.5, alpha=1.0, creation_margin=5.0)
    truth, chosen = _stream(mole, 1000, 100)
    keep = away_from_switches(truth, K)
    assert adjusted_rand_index(truth[keep], chosen[keep]) >= 0.95
    # When a task returns, the component that served it before is chosen again.
    first_pos = np.bincount(chosen[K:100]).argmax()
    first_neg = np.bincount(chosen[100 + K : 200]).argmax()
    assert first_pos != first_neg
    for start in range(200, 1000, 100):
        served = np.bincount(chosen[start + K : start + 100]).argmax()
        assert served == (first_pos if (start // 100) % 2 == 0 else first_neg)
    assert effective_components(chosen) == 2


def test_literal_algorithm_creates_extra_components_around_switches():
    """Algorithm 1 as written creates components from mixed windows; the count is what the report shows."""
    model, prior = _linear_model()
    mole = MOLeLearner(model, prior, lr=0.5, alpha=1.0)
    truth, chosen = _stream(mole, 1000, 100)
    switches = int((truth[1:] != truth[:-1]).sum())
    assert mole.created_total > switches  # more than one creation per switch
    keep = away_from_switches(truth, K)
    assert adjusted_rand_index(truth[keep], chosen[keep]) < 0.95


def test_posterior_matches_a_hand_computed_value():
    sigma = 0.5
    model, prior = _linear_model(sigma)
    mole = MOLeLearner(model, prior, lr=0.1, alpha=0.0)  # alpha 0: no creation, only the E and M steps
    w = torch.tensor([[[0.0, 1.0]], [[0.0, -0.5]]])  # two components: c = 1 and c = -0.5
    mole.stack = {"layers.0.weight": w.clone(), "layers.0.bias": torch.zeros(2, 1)}
    mole.counts = torch.tensor([3.0, 1.0], dtype=torch.float64)
    mole.ids, mole.steps = [0, 1], 4
    a = torch.tensor([1.0, -1.0, 1.0])
    y = torch.tensor([0.8, -0.6, 0.9])
    x = torch.stack([torch.zeros(3), a], -1)
    mole.observe(_win(x, y[:, None]))
    log_terms = []
    for c, n in ((1.0, 3.0), (-0.5, 1.0)):
        ll = sum(-((yk - c * ak) ** 2) / (2 * sigma**2) - 0.5 * math.log(2 * math.pi * sigma**2)
                 for yk, ak in zip(y.tolist(), a.tolist(), strict=True))
        log_terms.append(ll + math.log(n))
    expected = np.exp(np.array(log_terms) - np.logaddexp(*log_terms))
    np.testing.assert_allclose(mole.last_posterior.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(mole.counts.numpy(), np.array([3.0, 1.0]) + expected, rtol=1e-6)
    # M step (Eq. 7): each component moved by its posterior times the gradient of the window MSE.
    for i, c in enumerate((1.0, -0.5)):
        grad_w = 2 * float(((c * a - y) * a).mean())
        assert float(mole.stack["layers.0.weight"][i, 0, 1]) == pytest.approx(c - 0.1 * expected[i] * grad_w, rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1e-300])
def test_alpha_to_zero_never_creates_a_component(alpha):
    model, prior = _linear_model()
    mole = MOLeLearner(model, prior, lr=0.5, alpha=alpha)
    _stream(mole, 400, 50)
    assert mole.num_components == 1 and mole.created_total == 0


def test_component_cap_drops_the_least_used():
    model, prior = _linear_model()
    mole = MOLeLearner(model, prior, lr=0.5, alpha=1.0, max_components=3)
    _stream(mole, 600, 100)
    assert mole.created_total > 3 and mole.num_components <= 3


def test_no_nan_or_inf_with_huge_log_likelihoods():
    model, prior = _linear_model(sigma=1e-3)
    mole = MOLeLearner(model, prior, lr=1e-4, alpha=1.0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        x = torch.tensor(rng.normal(scale=100, size=(K, 2)), dtype=torch.float32)
        y = torch.tensor(rng.normal(scale=1e4, size=(K, 1)), dtype=torch.float32)  # log-likelihoods ~ -1e13
        info = mole.observe(_win(x, y))
        assert all(math.isfinite(v) for v in info.metrics.values() if isinstance(v, float))
        assert torch.isfinite(mole.last_posterior).all() and abs(float(mole.last_posterior.sum()) - 1) < 1e-9
        assert all(torch.isfinite(v).all() for v in mole.stack.values())


def test_components_are_one_stacked_dict_and_params_is_the_chosen_slice():
    model, prior = _linear_model()
    mole = MOLeLearner(model, prior, lr=0.5, alpha=1.0, creation_margin=5.0)
    _stream(mole, 300, 100)
    assert all(v.shape[0] == mole.num_components for v in mole.stack.values())
    for k, v in mole.params().items():
        assert torch.equal(v, mole.stack[k][mole.chosen])


def test_gs_keeps_adapting_while_ts_restarts_from_the_prior():
    model, prior = _linear_model()
    gs, ts = ContinualLearner(model, prior, lr=0.1), KShotLearner(model, prior, 0.1)
    a = torch.tensor([1.0, -1.0] * 8)
    x, y = torch.stack([torch.zeros(16), a], -1), (0.7 * a)[:, None]
    for _ in range(30):
        gs.observe(_win(x, y))
        ts.observe(_win(x, y))
    # GS accumulates 30 steps and converges to w = 0.7; TS is always one step from the prior.
    assert float(gs.params()["layers.0.weight"][0, 1]) == pytest.approx(0.7, abs=1e-3)
    assert float(ts.params()["layers.0.weight"][0, 1]) == pytest.approx(0.1 * 2 * 0.7, abs=1e-5)
    gs.reset()
    assert gs.params() is gs.init


def test_window_log_likelihood_from_the_loss_equals_the_models():
    model = MLPDynamics(3, 2, [8], "tanh", 0.7)
    params = model.init_params(torch.Generator().manual_seed(0))
    mole = MOLeLearner(model, params)
    g = torch.Generator().manual_seed(1)
    obs, act, nxt = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g), torch.randn(5, 3, generator=g)
    direct = model.log_likelihood(params, obs, act, nxt).sum().double()
    via_loss = mole._log_lik(model.transition_loss(params, obs, act, nxt), 5)
    assert float(via_loss) == pytest.approx(float(direct), rel=1e-5)


def _random_stream(model: MLPDynamics, steps: int, seed: int):
    """Windows from three random linear systems switching every 15 steps (the learners' real input shapes)."""
    gen = torch.Generator().manual_seed(seed)
    o, a = model.obs_dim, model.act_dim
    systems = [torch.randn(o + a, o, generator=gen) for _ in range(3)]
    for t in range(steps):
        x = torch.randn(K, o + a, generator=gen)
        y = x[:, :o] + x @ systems[(t // 15) % 3] + 0.01 * torch.randn(K, o, generator=gen)
        yield x, y


def _sliding_stream(model: MLPDynamics, steps: int, seed: int, systems: int = 3, period: int = 15):
    """As an agent feeds a learner: the window of the last K transitions, moved by one each step (shorter
    at the start), of ``systems`` random linear systems switching every ``period`` steps."""
    gen = torch.Generator().manual_seed(seed)
    o, a = model.obs_dim, model.act_dim
    matrices = [torch.randn(o + a, o, generator=gen) for _ in range(systems)]
    hist: list[torch.Tensor] = []
    for t in range(steps):
        x = torch.randn(o + a, generator=gen)
        y = x[:o] + x @ matrices[(t // period) % systems] + 0.01 * torch.randn(o, generator=gen)
        hist = [*hist[-(K - 1):], torch.cat([x, y])]
        win = torch.stack(hist)
        yield win[:, : o + a], win[:, o + a:]


@pytest.mark.parametrize(
    ("activation", "options", "meta_sgd", "sliding", "gain"),
    [
        ("relu", {}, False, False, False),
        ("tanh", {"choose": "posterior", "creation_test": "likelihood"}, True, False, False),
        ("relu", {"max_components": 2, "merge_kl": 2.0}, True, False, False),
        ("relu", {"new_lr": "meta_sgd"}, False, False, False),
        ("relu", {}, False, True, False),
        # On this sliding stream a merge happens, in the same step as a creation.
        ("relu", {"max_components": 2, "merge_kl": 20.0}, True, True, False),
        ("relu", {"new_lr": "meta_sgd"}, False, True, False),
        # Creations at the cap keep the slot count: the reused rows must follow the slots.
        ("relu", {"max_components": 2}, False, True, False),
        # Action gains: per-member first-layer inputs and their own step.
        ("relu", {}, False, False, True),
        ("tanh", {"choose": "posterior", "creation_test": "likelihood"}, True, False, True),
        ("relu", {"max_components": 2, "merge_kl": 20.0}, True, True, True),
        ("relu", {"new_lr": "meta_sgd"}, False, True, True),
    ],
)
def test_fused_step_equals_the_plain_one(activation, options, meta_sgd, sliding, gain):
    """The fused EM step (one forward, one in-place backward over C + 2 slots) is the vmap(grad) algorithm,
    on independent windows and on the sliding ones an agent feeds, with and without action gains.

    The gain cases run in float64: a negative gain amplifies float32 rounding over 90 steps to ~5e-5 of the
    weights (float64: 1e-14), so only double precision tells a wrong gain step from rounding."""
    if gain:
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            _fused_equals_plain(activation, options, meta_sgd, sliding, gain)
        finally:
            torch.set_default_dtype(default)
    else:
        _fused_equals_plain(activation, options, meta_sgd, sliding, gain)


def _fused_equals_plain(activation, options, meta_sgd, sliding, gain):
    model = MLPDynamics(3, 2, [16, 16], activation, sigma=0.3, action_gain=gain)
    gen = torch.Generator().manual_seed(1)
    prior = model.init_params(gen)
    if gain:  # gains away from 1 and of both signs, so a wrong gain path cannot pass
        prior["action_gain"] = torch.tensor([0.7, -1.2])
    lr = {k: torch.rand(v.shape, generator=gen) * 0.6 for k, v in prior.items()} if meta_sgd else 0.3
    if options.get("new_lr") == "meta_sgd":  # continual steps of 0.3, theta_new from learned rates
        options = {**options, "new_lr": {k: torch.rand(v.shape, generator=gen) * 0.6 for k, v in prior.items()}}
    plain = MOLeLearner(model, prior, lr, alpha=1.0, fused=False, **options)
    fused = MOLeLearner(model, prior, lr, alpha=1.0, fused=True, **options)
    created = merged = 0
    for x, y in (_sliding_stream if sliding else _random_stream)(model, 90, seed=2):
        a, b = plain.observe(_win(x, y)).metrics, fused.observe(_win(x, y)).metrics
        assert (a["components"], a["chosen"], a["created"], a["merged"]) == (
            b["components"], b["chosen"], b["created"], b["merged"])
        created += int(a["created"])
        merged += int(a["merged"])
        torch.testing.assert_close(fused.counts, plain.counts, rtol=1e-4, atol=1e-6)
        for k, v in plain.stack.items():
            torch.testing.assert_close(fused.stack[k], v, rtol=1e-4, atol=1e-5)
        for k, v in plain.params().items():
            torch.testing.assert_close(fused.params()[k], v, rtol=1e-4, atol=1e-5)
    # The stream exercised the creation path (and the cap where set, and merging on the sliding stream).
    assert created >= 2
    assert merged >= (1 if sliding and options.get("merge_kl") else 0)
    assert fused.ids == plain.ids
    # On the sliding stream (90 steps, windows full from step 16) the steps without a creation or merge reuse
    # the last window's activations (WindowCache).
    assert (fused.window_reuses >= 30) if sliding else fused.window_reuses == 0


def test_window_reuse_gives_the_whole_window_step_and_follows_replaced_components():
    """reuse_window: the same components, posteriors and choices as running every slot on the whole window,
    on a sliding stream with a creation (at the cap of 5) every other step or so, and a stack replaced
    mid-stream by one of the same size. Small M steps (0.02) against a large one for theta_new (0.6) make
    the candidate win often, so most reuses come right after a creation moved the slots."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = MLPDynamics(3, 2, [16, 16], "relu", sigma=0.3)
        prior = model.init_params(torch.Generator().manual_seed(1))
        on, off = (MOLeLearner(model, prior, 0.02, alpha=1.0, max_components=5, new_lr=0.6, reuse_window=r)
                   for r in (True, False))
        after_creation, created = 0, False
        for t, (x, y) in enumerate(_sliding_stream(model, 90, seed=3, systems=5, period=6)):
            if t == 40:  # same size, new parameters: nothing cached may survive it
                new = {k: v.flip(0) + 0.1 for k, v in on.stack.items()}
                on.stack, off.stack = new, {k: v.clone() for k, v in new.items()}
            reuses = on.window_reuses
            a, b = on.observe(_win(x, y)).metrics, off.observe(_win(x, y)).metrics
            after_creation += created and on.window_reuses > reuses
            created = bool(a["created"])
            # A slot listed twice would run the whole window twice and count twice against reuse's limit.
            assert len(set(on._changed)) == len(on._changed), (t, on._changed)
            assert (a["components"], a["chosen"], a["created"]) == (b["components"], b["chosen"], b["created"])
            torch.testing.assert_close(on.last_posterior, off.last_posterior, rtol=1e-9, atol=1e-12)
            for k, v in off.stack.items():
                torch.testing.assert_close(on.stack[k], v, rtol=1e-9, atol=1e-12)
        assert on.created_total >= 20 and after_creation >= 10
        assert on.window_reuses >= 40 and off.window_reuses == 0
    finally:
        torch.set_default_dtype(default)


def test_fused_is_refused_for_an_unsupported_activation():
    model = MLPDynamics(3, 2, [8], "gelu")
    prior = model.init_params(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="fused MOLe"):
        MOLeLearner(model, prior, fused=True)
    assert not MOLeLearner(model, prior).fused


def test_trial_analysis_counts_segments_recovery_components_and_forgetting():
    from metadapt.experiments.reporting.metrics import mean_analysis, trial_analysis

    tasks = np.repeat([0, 1, 0, 1], 500)
    chosen = np.where(tasks == 0, 3, 7)
    chosen[500:510] = 9  # an extra component born at the first switch, used for 10 steps only
    created = np.zeros(2000)
    created[[0, 500, 505]] = 1
    reward = np.where(tasks == 0, 1.0, -1.0)
    reward[1000:1500] = 0.5  # the recurring first task pays less the second time
    cols = {"reward": reward, "task_id": tasks, "chosen": chosen, "components": np.full(2000, 3.0),
            "created": created}
    a = trial_analysis(cols, window=16)
    assert a["segment_returns"] == [500.0, -500.0, 250.0, -500.0]
    assert (a["true_tasks"], a["switches"]) == (2.0, 3.0)
    assert (a["first_500"], a["last_500"]) == (500.0, 250.0)
    assert a["task_recovery_ari"] == 1.0  # the 10 odd steps lie within K of the switch
    assert a["effective_components"] == 2.0 and a["components"] == 3.0
    assert a["created_per_switch"] == 1.0
    assert math.isnan(mean_analysis([trial_analysis({"reward": reward, "task_id": tasks}, 16)])["components"])


def _random_action_windows(env_id: str, steps: int, schedule: str):
    from metadapt.envs import make_env

    env = make_env(env_id, schedule=schedule)
    obs, _ = env.reset(seed=0)
    rng, hist = np.random.default_rng(0), []
    for _ in range(steps):
        a = rng.uniform(-1, 1, env.action_space.shape[0]).astype(np.float32)
        nxt, *_ = env.step(a)
        hist.append(np.concatenate([obs, a, nxt]))
        obs = nxt
        w = torch.tensor(np.array(hist[-K:]), dtype=torch.float32)
        yield w[:, : -obs.shape[0]], w[:, -obs.shape[0]:]


def test_continual_learners_built_from_a_meta_sgd_prior_stay_finite():
    """Regression: GS stepped with the prior's learned Meta-SGD rates every step diverged (inf at step 47 here,
    NaN plans in the first demo). Built from config, GS and MOLe's M step use seed 000's 0.01 instead."""
    from metadapt.experiments.configuration.config import load_config
    from metadapt.experiments.jobs.build import build_learner
    from metadapt.meta.prior import load_prior

    prior = load_prior("builtin:halfcheetah_malfunction", 18, 6)
    assert isinstance(prior.inner_lr, dict)
    gs = build_learner(load_config(None, ["learner.type=gs"]), prior.params, prior, prior.model)
    mole = build_learner(load_config(None, ["learner.type=mole"]), prior.params, prior, prior.model)
    assert gs.lr == 0.01 and mole.lr == 0.01 and isinstance(mole.new_lr, dict)
    for x, y in _random_action_windows("metadapt/HalfCheetahMalfunction-v0", 300, "alternating_100"):
        g, m = gs.observe(_win(x, y)).metrics, mole.observe(_win(x, y)).metrics
        assert g["window_loss"] < 10 and g["step_refused"] == 0
        assert math.isfinite(m["posterior_chosen"])
    assert all(bool(torch.isfinite(v).all()) for v in {**gs.params(), **mole.params()}.values())


def test_a_step_to_non_finite_parameters_is_refused_and_a_non_finite_component_is_never_chosen():
    model, prior = _linear_model()
    gs = ContinualLearner(model, prior, lr=1e38)
    x, y = torch.tensor([[0.0, 1.0]] * K), torch.full((K, 1), 1e30)
    info = gs.observe(_win(x, y)).metrics
    assert info["step_refused"] == 1 and all(bool(torch.isfinite(v).all()) for v in gs.params().values())

    mole = MOLeLearner(model, prior, lr=0.1, alpha=0.0)
    mole.stack = {"layers.0.weight": torch.tensor([[[0.0, 1.0]], [[float("nan"), 1.0]]]),
                  "layers.0.bias": torch.zeros(2, 1)}
    mole.counts = torch.tensor([1.0, 5.0], dtype=torch.float64)
    mole.ids, mole.steps = [0, 1], 1
    info = mole.observe(_win(torch.tensor([[0.0, 1.0]] * K), torch.ones(K, 1))).metrics
    assert info["chosen"] == 0 and info["posterior_chosen"] == 1.0
    assert mole.last_posterior.tolist() == [1.0, 0.0]
