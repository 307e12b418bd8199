"""Meta-learning (GrBAL): meta-gradients against plain autograd, Meta-SGD, fitting, priors on disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metadapt.adapt.ts import KShotLearner
from metadapt.data.buffer import ReplayBuffer
from metadapt.envs import observation_version
from metadapt.errors import CheckpointError
from metadapt.meta.checkpoint import load_model, save_model
from metadapt.meta.maml import (
    MetaSettings,
    adapted_loss,
    broadcast_inner_lrs,
    expand_inner_lrs,
    fit_meta,
    initial_inner_lrs,
)
from metadapt.meta.prior import Prior, load_prior, save_prior
from metadapt.meta.rebal import load_recurrent, recurrent_state
from metadapt.models.mlp import MLPDynamics
from metadapt.models.normalizer import Normalizer
from metadapt.models.recurrent import RecurrentDynamics
from metadapt.types import Window

ROOT = Path(__file__).resolve().parents[1]


def _model64(obs: int = 3, act: int = 2) -> tuple[MLPDynamics, dict[str, torch.Tensor]]:
    model = MLPDynamics(obs, act, [8, 8], "tanh", 1.0)
    n = Normalizer.identity(obs, act)
    model.normalizer = Normalizer(**{k: getattr(n, k).double() for k in Normalizer.__dataclass_fields__})
    init = model.init_params(torch.Generator().manual_seed(0))
    params = {k: v.double().requires_grad_(True) for k, v in init.items()}
    return model, params


def _windows(b: int, m: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def mk(n, d):
        return torch.randn(b, n, d, generator=g, dtype=torch.float64)

    return (mk(m, 3), mk(m, 2), mk(m, 3)), (mk(k, 3), mk(k, 2), mk(k, 3))


def _reference_meta_grad(model, params, past, fut, lr, steps, first_order):
    """MAML with plain autograd, one window at a time (an independent implementation)."""
    total = 0.0
    for b in range(past[0].shape[0]):
        fast = dict(params)
        for _ in range(steps):
            loss = model.transition_loss(fast, past[0][b], past[1][b], past[2][b])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            step = {k: (lr[k] if isinstance(lr, dict) else lr) * g for k, g in zip(fast, grads, strict=True)}
            fast = {k: v - step[k] for k, v in fast.items()}
        total = total + model.transition_loss(fast, fut[0][b], fut[1][b], fut[2][b])
    wrt = list(params.values()) + (list(lr.values()) if isinstance(lr, dict) else [])
    return torch.autograd.grad(total / past[0].shape[0], wrt)


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_plain_autograd(steps):
    model, params = _model64()
    past, fut = _windows(4, 5, 3)
    loss = adapted_loss(model, params, past, fut, 0.1, steps, first_order=False)
    ours = torch.autograd.grad(loss, list(params.values()))
    ref = _reference_meta_grad(model, params, past, fut, 0.1, steps, first_order=False)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_first_order_meta_gradient_is_the_gradient_at_the_adapted_parameters():
    model, params = _model64()
    past, fut = _windows(4, 5, 3, seed=1)
    loss = adapted_loss(model, params, past, fut, 0.1, 1, first_order=True)
    ours = torch.autograd.grad(loss, list(params.values()))
    # Definition: (1/B) sum_b grad_{theta'} L_future(theta'_b), theta'_b = theta - lr grad L_past(theta).
    expected = [torch.zeros_like(p) for p in params.values()]
    for b in range(4):
        inner = model.transition_loss(params, past[0][b], past[1][b], past[2][b])
        g = torch.autograd.grad(inner, list(params.values()))
        fast = {k: (v - 0.1 * gi).detach().requires_grad_(True) for (k, v), gi in zip(params.items(), g, strict=True)}
        gf = torch.autograd.grad(model.transition_loss(fast, fut[0][b], fut[1][b], fut[2][b]), list(fast.values()))
        expected = [e + x / 4 for e, x in zip(expected, gf, strict=True)]
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    second = torch.autograd.grad(adapted_loss(model, params, past, fut, 0.1, 1, False), list(params.values()))
    assert any(not torch.allclose(a, b) for a, b in zip(ours, second, strict=True))


def test_meta_sgd_gradient_reaches_the_inner_learning_rates():
    model, params = _model64()
    past, fut = _windows(3, 4, 4, seed=2)
    lrs = {k: torch.full_like(v, 0.05).requires_grad_(True) for k, v in params.items()}
    loss = adapted_loss(model, params, past, fut, lrs, 1, False)
    ours = torch.autograd.grad(loss, list(params.values()) + list(lrs.values()))
    ref = _reference_meta_grad(model, params, past, fut, lrs, 1, False)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_per_tensor_rate_gradient_is_the_sum_of_the_per_entry_gradients():
    # One rate shared by a tensor's entries: d/d(eta) = sum over entries of d/d(eta_entry) at equal rates.
    model, params = _model64()
    past, fut = _windows(3, 4, 4, seed=5)
    entry = {k: torch.full_like(v, 0.05).requires_grad_(True) for k, v in params.items()}
    tensor = {k: torch.full((), 0.05, dtype=v.dtype).requires_grad_(True) for k, v in params.items()}
    g_entry = torch.autograd.grad(adapted_loss(model, params, past, fut, entry, 2, False), list(entry.values()))
    g_tensor = torch.autograd.grad(adapted_loss(model, params, past, fut, tensor, 2, False), list(tensor.values()))
    for a, b in zip(g_entry, g_tensor, strict=True):
        torch.testing.assert_close(a.sum(), b, rtol=1e-9, atol=1e-12)


def test_initial_inner_rates_have_the_configured_shape():
    params = MLPDynamics(3, 2, [8], "relu").init_params(torch.Generator().manual_seed(0))
    assert initial_inner_lrs(params, MetaSettings(inner_lr=0.02)) is None
    entry = initial_inner_lrs(params, MetaSettings(inner_lr=0.02, learn_inner_lr=True))
    tensor = initial_inner_lrs(params, MetaSettings(inner_lr=0.02, learn_inner_lr=True, inner_lr_per="tensor"))
    assert entry is not None and tensor is not None
    assert all(entry[k].shape == v.shape and tensor[k].shape == () for k, v in params.items())
    expanded = expand_inner_lrs(tensor, params)
    for k, v in params.items():
        assert expanded[k].shape == v.shape and torch.equal(expanded[k], entry[k])
    with pytest.raises(ValueError, match="inner_lr_per"):
        initial_inner_lrs(params, MetaSettings(learn_inner_lr=True, inner_lr_per="row"))


def _two_task_buffer(episodes: int = 40, length: int = 40, seed: int = 0) -> ReplayBuffer:
    """x' = x + a * u with a = +1 or -1 per episode: a prior must adapt to the sign from a few steps."""
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(2, 2, 100_000)
    for ep in range(episodes):
        a = 1.0 if ep % 2 == 0 else -1.0
        obs = rng.normal(size=(length, 2))
        act = rng.uniform(-1, 1, size=(length, 2))
        nxt = obs + 0.3 * a * act
        buf.add(obs, act, nxt, np.zeros(length), np.full(length, ep), np.arange(length), np.full(length, int(a > 0)),
                np.full(length, ep >= episodes - 6))
    return buf


def test_meta_training_makes_adaptation_work_on_held_out_trajectories():
    buf = _two_task_buffer()
    every = buf.transitions()
    model = MLPDynamics(2, 2, [32, 32], "tanh", 1.0, Normalizer.from_data(every.obs, every.act, every.next_obs))
    params = model.init_params(torch.Generator().manual_seed(0))
    settings = MetaSettings(inner_lr=0.5, past=8, future=8, meta_batch=16, batches_per_epoch=40, val_batches=4)
    _, _, _, res = fit_meta(model, params, buf, settings, epochs=15, lr=3e-3, patience=15,
                            generator=torch.Generator().manual_seed(1))
    assert res.val_loss < 0.5 * res.val_prior, res  # adaptation more than halves the held-out error


def test_meta_sgd_learns_its_rates():
    buf = _two_task_buffer(episodes=20)
    every = buf.transitions()
    model = MLPDynamics(2, 2, [16], "tanh", 1.0, Normalizer.from_data(every.obs, every.act, every.next_obs))
    params = model.init_params(torch.Generator().manual_seed(0))
    lrs = {k: torch.full_like(v, 0.1) for k, v in params.items()}
    settings = MetaSettings(inner_lr=0.1, learn_inner_lr=True, past=8, future=8, meta_batch=8, batches_per_epoch=10)
    _, new_lrs, _, _ = fit_meta(model, params, buf, settings, epochs=2, lr=1e-2, patience=5,
                                generator=torch.Generator().manual_seed(0), inner_lrs=lrs)
    assert new_lrs is not None and any(not torch.equal(new_lrs[k], lrs[k]) for k in lrs)


def test_per_tensor_rates_are_learned_and_stay_one_per_tensor():
    buf = _two_task_buffer(episodes=20)
    every = buf.transitions()
    model = MLPDynamics(2, 2, [16], "tanh", 1.0, Normalizer.from_data(every.obs, every.act, every.next_obs))
    params = model.init_params(torch.Generator().manual_seed(0))
    settings = MetaSettings(inner_lr=0.1, learn_inner_lr=True, inner_lr_per="tensor", past=8, future=8,
                            meta_batch=8, batches_per_epoch=10)
    lrs = initial_inner_lrs(params, settings)
    _, new_lrs, _, _ = fit_meta(model, params, buf, settings, epochs=2, lr=1e-2, patience=5,
                                generator=torch.Generator().manual_seed(0), inner_lrs=lrs)
    assert new_lrs is not None and all(v.shape == () for v in new_lrs.values())
    assert any(float(new_lrs[k]) != 0.1 for k in new_lrs)


def test_tied_action_rates_gradient_is_the_sum_over_the_action_columns():
    # The shared rate of the A action columns: d/d(eta) = sum of the per-entry gradients of those columns.
    model, params = _model64()  # 3 observation + 2 action inputs
    past, fut = _windows(3, 4, 4, seed=7)
    settings = MetaSettings(inner_lr=0.05, learn_inner_lr=True, inner_lr_per="entry_tied_actions")
    tied = {k: v.double().requires_grad_(True) for k, v in initial_inner_lrs(params, settings, 2).items()}
    w = params["layers.0.weight"]
    assert tied["layers.0.weight"].shape == (w.shape[0], w.shape[1] - 1)
    entry = {k: torch.full_like(v, 0.05).requires_grad_(True) for k, v in params.items()}
    g_entry = torch.autograd.grad(adapted_loss(model, params, past, fut, entry, 2, False), list(entry.values()))
    g_tied = torch.autograd.grad(adapted_loss(model, params, past, fut, broadcast_inner_lrs(tied, params), 2, False),
                                 list(tied.values()))
    for name, a, b in zip(entry, g_entry, g_tied, strict=True):
        if name == "layers.0.weight":
            torch.testing.assert_close(a[:, :3], b[:, :3], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(a[:, 3:].sum(1), b[:, 3], rtol=1e-9, atol=1e-12)
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="action_dim"):
        initial_inner_lrs(params, settings)


def test_tied_action_rates_are_learned_and_stored_expanded_with_equal_action_columns():
    buf = _two_task_buffer(episodes=20)
    every = buf.transitions()
    model = MLPDynamics(2, 2, [16], "tanh", 1.0, Normalizer.from_data(every.obs, every.act, every.next_obs))
    params = model.init_params(torch.Generator().manual_seed(0))
    settings = MetaSettings(inner_lr=0.1, learn_inner_lr=True, inner_lr_per="entry_tied_actions", past=8,
                            future=8, meta_batch=8, batches_per_epoch=10)
    lrs = initial_inner_lrs(params, settings, model.act_dim)
    best, new_lrs, _, _ = fit_meta(model, params, buf, settings, epochs=2, lr=1e-2, patience=5,
                                   generator=torch.Generator().manual_seed(0), inner_lrs=lrs)
    assert new_lrs is not None and new_lrs["layers.0.weight"].shape == (16, 3)
    full = expand_inner_lrs(new_lrs, best)
    w = full["layers.0.weight"]
    assert w.shape == (16, 4) and torch.equal(w[:, 2], w[:, 3])
    assert not torch.equal(w[:, 2], torch.full_like(w[:, 2], 0.1))


def _prior(tmp_path: Path) -> tuple[Prior, Path]:
    model = MLPDynamics(3, 2, [16, 16], "relu", 1.0)
    prior = Prior(model, model.init_params(torch.Generator().manual_seed(0)), 0.01, 1, 16, 16, "metadapt/X-v0")
    path = tmp_path / "prior.pt"
    save_prior(prior, path)
    return prior, path


def test_prior_round_trip_and_one_call_adaptation(tmp_path):
    prior, path = _prior(tmp_path)
    loaded = load_prior(path, 3, 2)
    assert loaded.env_id == "metadapt/X-v0" and (loaded.past, loaded.future, loaded.inner_lr) == (16, 16, 0.01)
    for k in prior.params:
        assert torch.equal(prior.params[k], loaded.params[k])
    g = torch.Generator().manual_seed(3)
    obs, act = torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g)
    nxt = obs + 0.5 * act.sum(-1, keepdim=True)
    loaded.inner_lr = 0.1
    adapted = loaded.adapt(obs, act, nxt)
    loss = loaded.model.transition_loss
    assert float(loss(adapted, obs, act, nxt)) < float(loss(loaded.params, obs, act, nxt))
    learner = KShotLearner(loaded.model, loaded.params, 0.1)
    info = learner.observe(Window(obs, act, nxt))
    assert info.metrics["window_loss_adapted"] < info.metrics["window_loss_prior"]
    for k in adapted:
        torch.testing.assert_close(learner.params()[k], adapted[k])
    learner.reset()
    assert learner.params() is learner.prior


def test_bad_priors_are_refused_with_one_line(tmp_path):
    _, path = _prior(tmp_path)
    with pytest.raises(CheckpointError, match="observation size 3, the environment has 18"):
        load_prior(path, 18, 2)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_prior(truncated)
    state = torch.load(path, weights_only=True)
    state["format"] = "metadapt.prior.v0"
    old = tmp_path / "old.pt"
    torch.save(state, old)
    with pytest.raises(CheckpointError, match=r"not a metadapt prior of format metadapt\.prior\.v1"):
        load_prior(old)
    mb = tmp_path / "model.pt"
    model = MLPDynamics(3, 2, [8], "relu", 1.0)
    save_model(model, model.init_params(torch.Generator().manual_seed(0)), mb)
    with pytest.raises(CheckpointError, match="not a metadapt prior"):
        load_prior(mb)
    with pytest.raises(CheckpointError) as err:
        load_prior(truncated)
    assert "\n" not in str(err.value)


def test_a_prior_from_an_older_observation_layout_of_its_environment_is_refused(tmp_path):
    """The crawler's observation changed meaning at the same size (version 2: heading frame; 3: torso frame): a
    prior trained on an older layout loaded, and planned with inputs it never saw."""
    crawler = "metadapt/Crawler-v0"
    now = observation_version(crawler)
    old = now - 1
    stale = f"observation version {old}, the environment's is now {now}"
    model = MLPDynamics(38, 12, [8], "relu", 1.0)
    params = model.init_params(torch.Generator().manual_seed(0))
    for version in (old, now):
        save_prior(Prior(model, params, 0.01, 1, 4, 4, crawler, version), tmp_path / f"v{version}.pt")
    with pytest.raises(CheckpointError, match=f"{stale}: retrain"):
        load_prior(tmp_path / f"v{old}.pt", 38, 12, crawler, now)
    assert load_prior(tmp_path / f"v{now}.pt", 38, 12, crawler, now).obs_version == now
    assert load_prior(tmp_path / f"v{old}.pt", 38, 12).obs_version == old  # no environment named: dimensions only
    # a prior of another environment with the same sizes is the user's call, as before
    save_prior(Prior(model, params, 0.01, 1, 4, 4, "my/Robot-v0"), tmp_path / "other.pt")
    assert load_prior(tmp_path / "other.pt", 38, 12, crawler, now).env_id == "my/Robot-v0"
    # plain (MB, DE) and ReBAL models carry the same record
    save_model(model, params, tmp_path / "model.pt", crawler, old)
    with pytest.raises(CheckpointError, match=stale):
        load_model(tmp_path / "model.pt", crawler, now)
    assert load_model(tmp_path / "model.pt", crawler, old)[0].obs_dim == 38
    rnn = RecurrentDynamics(38, 12, [8], 4, "relu", 1.0)
    torch.save(recurrent_state(rnn, rnn.init_params(torch.Generator().manual_seed(0)), crawler, old),
               tmp_path / "rebal.pt")
    with pytest.raises(CheckpointError, match=stale):
        load_recurrent(tmp_path, crawler, now)


def test_cli_ts_with_a_model_that_is_not_a_prior_is_one_line(tmp_path):
    mb = tmp_path / "model.pt"
    model = MLPDynamics(18, 6, [8], "relu", 1.0)
    save_model(model, model.init_params(torch.Generator().manual_seed(0)), mb)
    proc = subprocess.run(
        [sys.executable, "-m", "metadapt.cli", "run", str(ROOT / "configs/grbal_halfcheetah_malfunction.yaml"),
         f"model.checkpoint={mb}", "trial.steps=5", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "not a metadapt prior" in proc.stderr


def test_unknown_builtin_prior_is_one_line():
    with pytest.raises(CheckpointError, match="no shipped prior 'nope'"):
        load_prior("builtin:nope")


def test_run_directory_resolves_to_its_prior(tmp_path):
    prior, _ = _prior(tmp_path)
    loaded = load_prior(tmp_path)
    assert all(torch.equal(loaded.params[k], prior.params[k]) for k in prior.params)


def test_every_shipped_prior_is_documented_and_fits_its_environment():
    from metadapt.envs import env_class, observation_version
    from metadapt.meta.prior import PRIORS_DIR, builtin_priors

    readme = (PRIORS_DIR / "README.md").read_text()
    assert set(builtin_priors()) == {"halfcheetah_malfunction", "halfcheetah_disabled", "halfcheetah_terrain",
                                     "ant_crippled", "crawler"}
    for name in builtin_priors():
        assert f"## {name}\n" in readme, f"priors/README.md has no section for {name}"
        assert (PRIORS_DIR / f"{name}.pt").stat().st_size < 6e6, name  # the wheel stays under 25 MB
        prior = load_prior(f"builtin:{name}")
        assert prior.env_id is not None and env_class(prior.env_id).TEST, name
        # Loads against its environment as it is now (dims and observation layout).
        load_prior(f"builtin:{name}", prior.model.obs_dim, prior.model.act_dim, env_id=prior.env_id,
                   obs_version=observation_version(prior.env_id))


@pytest.mark.parametrize("name", ["halfcheetah_malfunction", "halfcheetah_disabled", "halfcheetah_terrain",
                                  "ant_crippled"])
def test_shipped_prior_adapts_on_its_held_out_task(name):
    """One adaptation step on 16 random-action steps of the environment's first held-out task lowers the error of
    those steps (the crawler's tasks barely change its dynamics: its README reports 0.2-1.4%)."""
    from metadapt.envs import env_class
    from metadapt.experiments.benchmarks.adaptation import collect_random
    prior = load_prior(f"builtin:{name}")
    task = env_class(prior.env_id).TEST[0]
    traj = torch.from_numpy(max(collect_random(prior.env_id, task, 120, 60, 0), key=len)[:16])  # the ant may fall
    assert len(traj) == 16
    o, a = prior.model.obs_dim, prior.model.act_dim
    obs, act, nxt = traj[:, :o], traj[:, o:o + a], traj[:, o + a:]
    adapted = prior.adapt(obs, act, nxt)
    loss = prior.model.transition_loss
    assert float(loss(adapted, obs, act, nxt)) < float(loss(prior.params, obs, act, nxt))


def test_action_gains_share_one_learned_rate_whose_gradient_is_the_sum_over_the_gains():
    model = MLPDynamics(3, 2, [8, 8], "tanh", 1.0, action_gain=True)
    n = Normalizer.identity(3, 2)
    model.normalizer = Normalizer(**{k: getattr(n, k).double() for k in Normalizer.__dataclass_fields__})
    init = model.init_params(torch.Generator().manual_seed(0))
    params = {k: v.double().requires_grad_(True) for k, v in init.items()}
    past, fut = _windows(3, 4, 4, seed=8)
    for per in ("entry", "entry_tied_actions", "tensor"):
        settings = MetaSettings(inner_lr=0.05, gain_inner_lr=0.7, learn_inner_lr=True, inner_lr_per=per)
        lrs = initial_inner_lrs(params, settings, 2)
        assert lrs["action_gain"].numel() == 1 and float(lrs["action_gain"]) == pytest.approx(0.7)
        assert torch.equal(expand_inner_lrs(lrs, params)["action_gain"], torch.full((2,), 0.7, dtype=torch.float64))
    shared = {k: v.double().requires_grad_(True) for k, v in initial_inner_lrs(params, settings, 2).items()}
    entry = {k: torch.full_like(v, 0.05 if k != "action_gain" else 0.7).requires_grad_(True)
             for k, v in params.items()}
    g_entry = torch.autograd.grad(adapted_loss(model, params, past, fut, entry, 2, False), [entry["action_gain"]])[0]
    shared_loss = adapted_loss(model, params, past, fut, broadcast_inner_lrs(shared, params), 2, False)
    g_shared = torch.autograd.grad(shared_loss, [shared["action_gain"]])[0]
    torch.testing.assert_close(g_shared.sum(), g_entry.sum(), rtol=1e-9, atol=1e-12)
    assert float(g_entry.abs().min()) > 0  # both gains move the loss: the sum is not one gain's gradient


def test_a_prior_with_action_gains_round_trips_and_adapts_its_gains(tmp_path):
    model = MLPDynamics(3, 2, [16, 16], "relu", 1.0, action_gain=True)
    params = model.init_params(torch.Generator().manual_seed(0))
    lr = {k: torch.full_like(v, 0.01) for k, v in params.items()} | {"action_gain": torch.full((2,), 1.0)}
    save_prior(Prior(model, params, lr, 1, 16, 16, "metadapt/X-v0"), tmp_path / "prior.pt")
    loaded = load_prior(tmp_path / "prior.pt", 3, 2)
    assert loaded.model.action_gain and torch.equal(loaded.params["action_gain"], torch.ones(2))
    g = torch.Generator().manual_seed(3)
    obs, act = torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g)
    nxt = loaded.model.predict(loaded.params | {"action_gain": torch.tensor([0.0, 1.0])}, obs, act)
    adapted = loaded.adapt(obs, act, nxt)
    assert float(adapted["action_gain"][0]) < 1.0  # the disabled actuator's gain moves toward 0
    save_model(model, params, tmp_path / "model.pt")
    assert load_model(tmp_path / "model.pt")[0].action_gain


def test_prior_weight_adds_the_unadapted_priors_error_to_the_outer_loss():
    from metadapt.meta.maml import meta_loss

    model, params = _model64()
    past, fut = _windows(3, 4, 4, seed=9)
    maml = MetaSettings(inner_lr=0.05, inner_steps=2)
    weighted = MetaSettings(inner_lr=0.05, inner_steps=2, prior_weight=0.25)
    post = adapted_loss(model, params, past, fut, 0.05, 2)
    pre = model.transition_loss(params, *(t.flatten(0, 1) for t in fut))  # every window has K rows: the mean of means
    torch.testing.assert_close(meta_loss(model, params, past, fut, 0.05, maml), post, rtol=1e-12, atol=0)
    torch.testing.assert_close(meta_loss(model, params, past, fut, 0.05, weighted), post + 0.25 * pre,
                               rtol=1e-12, atol=1e-15)
    # and it reaches the parameters through both terms
    g_w = torch.autograd.grad(meta_loss(model, params, past, fut, 0.05, weighted), list(params.values()))
    g_post = torch.autograd.grad(post, list(params.values()))
    g_pre = torch.autograd.grad(pre, list(params.values()))
    for a, b, c in zip(g_w, g_post, g_pre, strict=True):
        torch.testing.assert_close(a, b + 0.25 * c, rtol=1e-9, atol=1e-12)
