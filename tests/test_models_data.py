"""Dynamics model, normalizer, buffer and fitting."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from torch.func import functional_call, vmap

from metadapt.data import ReplayBuffer
from metadapt.meta.fit import fit_dynamics
from metadapt.models import MLPDynamics, Normalizer, make_objective, rollout_returns
from metadapt.models.mlp import FoldedMLP, fused_linear_available
from metadapt.types import Window


def _model(obs=3, act=2, hidden=(16, 16), activation="relu") -> tuple[MLPDynamics, dict]:
    m = MLPDynamics(obs, act, hidden, activation, sigma=0.7)
    g = torch.Generator().manual_seed(0)
    m.normalizer = Normalizer.from_data(torch.randn(50, obs, generator=g) * 3 + 1,
                                        torch.rand(50, act, generator=g), torch.randn(50, obs, generator=g))
    return m, m.init_params(g)


@pytest.mark.parametrize("activation", ["relu", "tanh", "silu"])
def test_params_are_a_functional_call_dict_and_the_forward_is_that_call(activation):
    m, p = _model(activation=activation)
    assert set(p) == set(m.param_shapes())
    obs, act = torch.randn(7, 3), torch.randn(7, 2)
    # The hand-written forward must be the module's, bit for bit.
    ref = functional_call(m.net, p, (m.normalizer.normalize_inputs(obs, act),))
    assert torch.equal(m.predict_normalized_delta(p, obs, act), ref)


def test_log_likelihood_matches_torch_normal():
    m, p = _model()
    obs, act, nxt = torch.randn(9, 3), torch.randn(9, 2), torch.randn(9, 3)
    mean = m.predict_normalized_delta(p, obs, act)
    ref = torch.distributions.Normal(mean, m.sigma).log_prob(m.target(obs, nxt)).sum(-1)
    torch.testing.assert_close(m.log_likelihood(p, obs, act, nxt), ref)


def test_predict_inverts_target():
    m, p = _model()
    obs, act = torch.randn(4, 3), torch.randn(4, 2)
    nxt = m.predict(p, obs, act)
    torch.testing.assert_close(m.target(obs, nxt), m.predict_normalized_delta(p, obs, act), atol=1e-5, rtol=1e-5)


def test_stacked_params_vmap():
    m, p = _model()
    q = m.init_params(torch.Generator().manual_seed(1))
    stacked = {k: torch.stack([p[k], q[k]]) for k in p}
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    out = vmap(lambda prm: m.predict(prm, obs, act))(stacked)
    torch.testing.assert_close(out[0], m.predict(p, obs, act))
    torch.testing.assert_close(out[1], m.predict(q, obs, act))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_folded_rollout_equals_plain_rollout(activation):
    m, p = _model(activation=activation)
    obs = torch.randn(3)
    actions = torch.rand(6, 4, 2) * 2 - 1
    reward = lambda o, a, o2: o2[:, 0] - 0.1 * a.pow(2).sum(-1)  # noqa: E731
    s, ref = obs.expand(6, -1), torch.zeros(6)
    for t in range(4):
        s2 = m.predict(p, s, actions[:, t])
        ref += reward(s, actions[:, t], s2)
        s = s2
    torch.testing.assert_close(rollout_returns(m.fold(p), obs, actions, reward), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(make_objective(m.fold(p), obs, reward)(actions), ref, atol=1e-4, rtol=1e-4)


def test_bfloat16_fold_is_close_to_float32():
    m, p = _model(hidden=(64, 64))
    obs, actions = torch.randn(3), torch.rand(32, 5, 2) * 2 - 1
    reward = lambda o, a, o2: o2[:, 0]  # noqa: E731
    r32 = rollout_returns(m.fold(p), obs, actions, reward)
    r16 = rollout_returns(m.fold(p, torch.bfloat16), obs, actions, reward)
    assert r16.dtype == torch.float32
    assert float((r16 - r32).abs().max()) < 0.05 * float(r32.abs().max()) + 0.05


def _control_reward(o: torch.Tensor, a: torch.Tensor, o2: torch.Tensor) -> torch.Tensor:
    return o2[:, 0] - 0.1 * a.pow(2).sum(-1)


@pytest.mark.skipif(not fused_linear_available(), reason="this PyTorch build has no oneDNN fused linear")
def test_fused_bfloat16_rollout_equals_the_plain_one():
    """The oneDNN bias + ReLU epilogue path gives the plain bfloat16 path's returns, and is the default."""
    m, p = _model(hidden=(64, 64))
    obs, actions, reward = torch.randn(3), torch.rand(32, 5, 2) * 2 - 1, _control_reward
    fused, plain = m.fold(p, torch.bfloat16), m.fold(p, torch.bfloat16, fused=False)
    assert fused.fused and not plain.fused and not m.fold(p).fused  # float32 keeps the plain path
    torch.testing.assert_close(rollout_returns(fused, obs, actions, reward),
                               rollout_returns(plain, obs, actions, reward), atol=2e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="fused planning path"):
        m.fold(p, torch.float32, fused=True)


@pytest.mark.skipif(not fused_linear_available(), reason="this PyTorch build has no oneDNN fused linear")
def test_prepacked_weights_give_the_same_rollouts_bit_for_bit():
    """oneDNN's prepacked weight layout changes where the product reads from, not what it computes."""
    m, p = _model(hidden=(64, 64))
    obs, actions, reward = torch.randn(3), torch.rand(125, 5, 2) * 2 - 1, _control_reward
    packed, unpacked = m.fold(p, torch.bfloat16), m.fold(p, torch.bfloat16, prepack=False)
    assert packed.mid[0][0].layout == torch._mkldnn and unpacked.mid[0][0].layout == torch.strided
    for n in (1, 125):  # any batch size, whatever the layout was chosen for
        assert torch.equal(rollout_returns(packed, obs, actions[:n], reward),
                           rollout_returns(unpacked, obs, actions[:n], reward))


def test_normalizer_uses_all_raw_data():
    buf = ReplayBuffer(2, 1, capacity=100)
    first = torch.zeros(10, 2)
    buf.add(first, torch.zeros(10, 1), first + 1, torch.zeros(10), torch.zeros(10), torch.arange(10),
            torch.zeros(10))
    second = torch.full((10, 2), 4.0)
    buf.add(second, torch.ones(10, 1), second + 3, torch.zeros(10), torch.ones(10), torch.arange(10),
            torch.zeros(10))
    d = buf.transitions()
    n = Normalizer.from_data(d.obs, d.act, d.next_obs)
    torch.testing.assert_close(n.obs_mean, torch.full((2,), 2.0))
    torch.testing.assert_close(n.delta_mean, torch.full((2,), 2.0))
    torch.testing.assert_close(n.obs_std, torch.full((2,), float(torch.tensor([0.0] * 10 + [4.0] * 10).std())))


def test_ring_buffer_overwrites_oldest_and_keeps_order():
    buf = ReplayBuffer(1, 1, capacity=5)
    for i in range(3):
        v = torch.arange(3 * i, 3 * i + 3, dtype=torch.float32)[:, None]
        buf.add(v, v, v, v[:, 0], torch.full((3,), i), torch.arange(3), torch.full((3,), i))
    assert len(buf) == 5 and buf.total_added == 9
    assert buf.column("obs")[:, 0].tolist() == [4, 5, 6, 7, 8]
    restored = ReplayBuffer.from_state_dict(buf.state_dict())
    assert restored.column("obs")[:, 0].tolist() == [4, 5, 6, 7, 8]


def test_windows_are_contiguous_within_one_episode_and_m_k_independent():
    buf = ReplayBuffer(1, 1, capacity=100)
    for ep, length in enumerate([7, 3, 12]):
        t = torch.arange(length, dtype=torch.float32)
        buf.add(t[:, None] + 100 * ep, t[:, None], t[:, None] + 1 + 100 * ep, t, torch.full((length,), ep),
                torch.arange(length), torch.full((length,), 10 + ep))
    g = torch.Generator().manual_seed(0)
    w = buf.sample_windows(past=4, future=2, batch=200, generator=g)
    assert w.obs.shape == (200, 6, 1)
    steps = w.obs[..., 0] % 100
    assert bool((steps[:, 1:] - steps[:, :-1] == 1).all())  # contiguous
    assert set(w.task_id.tolist()) <= {10, 12}  # episode 1 is too short for 6 steps
    past, future = w.past(), w.future()
    assert past[0].shape[1] == 4 and future[0].shape[1] == 2
    w2 = buf.sample_windows(past=1, future=9, batch=10, generator=g)
    assert set(w2.task_id.tolist()) == {12}
    with pytest.raises(ValueError, match="consecutive"):
        buf.sample_windows(past=10, future=10, batch=1, generator=g)


def test_fit_learns_a_linear_system_with_early_stopping():
    g = torch.Generator().manual_seed(0)
    A = torch.tensor([[0.9, 0.1], [-0.1, 0.95]])
    obs, act = torch.randn(2000, 2, generator=g), torch.rand(2000, 1, generator=g) * 2 - 1
    nxt = obs @ A.T + 0.3 * act
    m = MLPDynamics(2, 1, (32, 32))
    m.normalizer = Normalizer.from_data(obs, act, nxt)
    p0 = m.init_params(g)
    train = Window(obs[:1600], act[:1600], nxt[:1600], torch.zeros(1600))
    val = Window(obs[1600:], act[1600:], nxt[1600:], torch.zeros(400))
    p, state, res = fit_dynamics(m, p0, train, val, epochs=60, batch_size=64, lr=3e-3, patience=3, generator=g)
    assert res.val_loss < 0.01 * float(m.transition_loss(p0, val.obs, val.act, val.next_obs))
    assert 1 <= res.best_epoch <= res.epochs <= 60
    assert "state" in state
    assert not any(v.requires_grad for v in p.values())
    assert math.isfinite(res.train_loss)


def test_bfloat16_rollout_survives_offset_observations():
    """Inputs far from zero relative to their spread (mean 50, std 0.1) must not lose precision
    in bfloat16: the state is normalized in float32 before the cast (folding the normalization
    into the weights made bfloat16 cancel catastrophically)."""
    g = torch.Generator().manual_seed(0)
    m = MLPDynamics(2, 1, (64, 64))
    obs = 50 + 0.1 * torch.randn(200, 2, generator=g)
    act = torch.rand(200, 1, generator=g) * 2 - 1
    m.normalizer = Normalizer.from_data(obs, act, obs + 0.01 * torch.randn(200, 2, generator=g))
    p = m.init_params(g)
    actions = torch.rand(64, 3, 1, generator=g) * 2 - 1
    start = obs[0]
    reward = lambda o, a, o2: o2[:, 0]  # noqa: E731
    r32 = rollout_returns(m.fold(p), start, actions, reward)
    r16 = rollout_returns(m.fold(p, torch.bfloat16), start, actions, reward)
    # rank agreement: the planner's choice depends on the ordering of returns
    assert float(torch.corrcoef(torch.stack([r32, r16]))[0, 1]) > 0.95


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("scale", [[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])  # every member (batched) / one (views)
@pytest.mark.parametrize("meta_sgd", [False, True])
def test_stacked_mlp_step_equals_vmap_grad(activation, scale, meta_sgd):
    from torch.func import grad, vmap

    from metadapt.models.stacked import StackedMLP

    gen = torch.Generator().manual_seed(0)
    m = MLPDynamics(4, 2, [12, 10], activation)
    stack = {k: torch.stack([m.init_params(gen)[k] for _ in range(3)]) for k in m.param_shapes()}
    obs, nxt = torch.randn(16, 4, generator=gen), torch.randn(16, 4, generator=gen)
    act = torch.randn(16, 2, generator=gen)
    lr = {k: torch.rand(v.shape[1:], generator=gen) for k, v in stack.items()} if meta_sgd else 0.3
    s = torch.tensor(scale, dtype=torch.float64)
    grads = vmap(grad(m.transition_loss), in_dims=(0, None, None, None))(stack, obs, act, nxt)
    ref = {k: v - (lr[k] if meta_sgd else lr) * s.float().view(-1, *[1] * (v.dim() - 1)) * grads[k]
           for k, v in stack.items()}
    loss_ref = vmap(m.transition_loss, in_dims=(0, None, None, None))(stack, obs, act, nxt)
    fused = StackedMLP(m)
    work = fused.to_storage(stack)
    assert all(v.is_contiguous() for v in work.values())
    loss, inputs, err = fused.forward(work, obs, act, nxt)
    torch.testing.assert_close(loss, loss_ref)
    fused.sgd_step_(work, inputs, err, s, fused.to_storage(lr) if meta_sgd else lr)
    work = fused.from_storage(work)
    for k in stack:
        torch.testing.assert_close(work[k], ref[k], rtol=1e-5, atol=1e-6)
    for j in range(3):  # an idle member is left bit-for-bit unchanged
        if scale[j] == 0:
            assert all(torch.equal(work[k][j], stack[k][j]) for k in stack)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="inductor needs a C++ compiler")
def test_compiled_rollout_gives_the_eager_returns():
    """planner.compile: the torch.compile'd rollout (plain fold) returns what eager does, for new parameters too."""
    from metadapt.models.rollout import compiled_rollout_returns

    m, _ = _model(hidden=(32, 32))
    gen = torch.Generator().manual_seed(3)
    reward = lambda o, a, o2: o2[:, 0] - 0.1 * a.pow(2).sum(-1)  # noqa: E731
    compiled = compiled_rollout_returns()
    for dtype in (torch.float32, torch.bfloat16):
        for _ in range(2):  # a new fold reuses the compiled graph and must still be right
            folded = m.fold(m.init_params(gen), dtype, fused=False)
            obs, actions = torch.randn(3, generator=gen), torch.rand(16, 4, 2, generator=gen) * 2 - 1
            with torch.no_grad():
                torch.testing.assert_close(compiled(folded, obs, actions, reward),
                                           rollout_returns(folded, obs, actions, reward), atol=1e-2, rtol=1e-3)


def test_report_smoothing_keeps_the_length_of_short_and_non_finite_series():
    """Regression: a 12-step trial's model-error figure got a 25-long curve and the report raised."""
    from metadapt.experiments.reporting.report import smooth

    for x in (np.arange(12.0), np.array([np.nan, 1.0, np.inf]), np.array([np.nan] * 4), np.arange(100.0)):
        out = smooth(x)
        assert out.shape == x.shape and np.isfinite(out).all()
    assert smooth(np.array([])).shape == (0,)


def test_stacked_step_written_into_another_place_leaves_the_member_as_it_was():
    """member_out: the member's step lands in the given tensors (its own slot untouched), the same numbers as
    the in-place step; a member that does not step is copied there."""
    from metadapt.models.stacked import StackedMLP

    gen = torch.Generator().manual_seed(3)
    m = MLPDynamics(4, 2, [12, 10], "relu")
    fused = StackedMLP(m)
    stack = fused.to_storage({k: torch.stack([m.init_params(gen)[k] for _ in range(3)]) for k in m.param_shapes()})
    obs, act = torch.randn(16, 4, generator=gen), torch.randn(16, 2, generator=gen)
    nxt = torch.randn(16, 4, generator=gen)
    scale = torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)
    before = {k: v.clone() for k, v in stack.items()}
    _, inputs, err = fused.forward(stack, obs, act, nxt)
    in_place = {k: v.clone() for k, v in stack.items()}
    fused.sgd_step_(in_place, inputs, err, scale, 0.3, {1: 0.1})
    out = {k: torch.full_like(v[0], float("nan")) for k, v in stack.items()}
    idle = {k: torch.full_like(v[0], float("nan")) for k, v in stack.items()}
    fused.sgd_step_(stack, inputs, err, scale, 0.3, {1: 0.1}, {1: out, 2: idle})
    for k in stack:
        assert torch.equal(stack[k][1], before[k][1])
        torch.testing.assert_close(out[k], in_place[k][1])
        assert not torch.equal(out[k], before[k][1])
        assert torch.equal(idle[k], before[k][2])
        torch.testing.assert_close(stack[k][0], in_place[k][0])


def test_a_dimension_constant_in_the_data_is_neither_read_nor_predicted():
    # The crawler's command weights never change within a training episode; a task switch mid-trial changes
    # them between two observations. Divided by their floored std (1e-6) that change was an input and a
    # target of 1e6, and one GS step on the window blew the model up (crawler sweep, step 500).
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(200, 3, generator=g), torch.randn(200, 2, generator=g)
    obs[:, 2] = 1.0
    nxt = obs + 0.1 * torch.randn(200, 3, generator=g)
    nxt[:, 2] = 1.0
    model = MLPDynamics(3, 2, hidden=(16, 16), normalizer=Normalizer.from_data(obs, act, nxt))
    params = model.init_params(generator=g)
    switched = nxt.clone()
    switched[:, 2] = 0.0
    target = model.target(obs, switched)
    assert torch.equal(target[:, 2], torch.zeros(200))
    assert torch.equal(target[:, :2], model.target(obs, nxt)[:, :2])
    new_command = obs.clone()
    new_command[:, 2] = 0.0
    pred = model.predict(params, new_command, act)
    assert torch.equal(pred[:, :2], model.predict(params, obs, act)[:, :2])
    assert torch.equal(pred[:, 2], new_command[:, 2])
    folded = FoldedMLP(model, params, fused=False)
    step = folded.step(new_command, folded.project_actions(act[:, None, :])[0])
    torch.testing.assert_close(step, pred, rtol=1e-5, atol=1e-5)
    loss = float(model.transition_loss(params, obs, act, switched))
    assert loss == pytest.approx(float(model.transition_loss(params, obs, act, nxt)))


def _gain_model() -> tuple[MLPDynamics, dict, MLPDynamics, dict]:
    """The same network with and without action gains (gains 0, -1.5 on the two actuators)."""
    plain, p = _model(hidden=(32, 32))
    gained = MLPDynamics(3, 2, (32, 32), "relu", sigma=0.7, normalizer=plain.normalizer, action_gain=True)
    q = {**p, "action_gain": torch.tensor([0.0, -1.5])}
    return plain, p, gained, q


def test_action_gains_scale_the_normalized_actions():
    plain, p, gained, q = _gain_model()
    assert gained.param_shapes()["action_gain"] == (2,)
    assert torch.equal(gained.init_params(torch.Generator().manual_seed(0))["action_gain"], torch.ones(2))
    g = torch.Generator().manual_seed(4)
    obs, act = torch.randn(7, 3, generator=g), torch.rand(7, 2, generator=g) * 2 - 1
    # Gains of one are the plain network, bit for bit.
    assert torch.equal(gained.predict(p | {"action_gain": torch.ones(2)}, obs, act), plain.predict(p, obs, act))
    # The first layer with the gains multiplied into its action columns is the same function.
    w = p["layers.0.weight"].clone()
    w[:, 3:] *= q["action_gain"]
    torch.testing.assert_close(gained.predict(q, obs, act), plain.predict(p | {"layers.0.weight": w}, obs, act))
    # A gain of 0 removes its actuator: the prediction no longer depends on that action.
    other = act.clone()
    other[:, 0] = -other[:, 0]
    torch.testing.assert_close(gained.predict(q, obs, other), gained.predict(q, obs, act))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_folded_rollout_applies_the_action_gains(dtype):
    _, _, gained, q = _gain_model()
    obs, actions = torch.randn(3), torch.rand(16, 4, 2) * 2 - 1
    s, ref = obs.expand(16, -1), torch.zeros(16)
    for t in range(4):
        s2 = gained.predict(q, s, actions[:, t])
        ref += _control_reward(s, actions[:, t], s2)
        s = s2
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for fused in ([False, True] if dtype == torch.bfloat16 and fused_linear_available() else [False]):
        got = rollout_returns(gained.fold(q, dtype, fused=fused), obs, actions, _control_reward)
        torch.testing.assert_close(got, ref, atol=tol * float(ref.abs().max()), rtol=tol)


def test_stacked_step_with_action_gains_equals_vmap_grad():
    from metadapt.models.stacked import StackedMLP

    _, _, gained, q = _gain_model()
    g = torch.Generator().manual_seed(5)
    stack = {k: torch.stack([v, v * 0.9 + 0.01]) for k, v in q.items()}
    obs, act, nxt = torch.randn(16, 3, generator=g), torch.rand(16, 2, generator=g), torch.randn(16, 3, generator=g)
    grads = vmap(torch.func.grad(gained.transition_loss), in_dims=(0, None, None, None))(stack, obs, act, nxt)
    scale, lr = torch.tensor([1.0, 0.4]), 0.3
    want = {k: v - lr * scale.view(-1, *[1] * (v.dim() - 1)) * grads[k] for k, v in stack.items()}
    st = StackedMLP(gained)
    stored = st.to_storage({k: v.clone() for k, v in stack.items()})
    _, inputs, err = st.forward(stored, obs, act, nxt)
    st.sgd_step_(stored, inputs, err, scale, lr)
    for k, v in st.from_storage(stored).items():
        torch.testing.assert_close(v, want[k], rtol=1e-5, atol=1e-6)
    assert not torch.equal(stored["action_gain"], stack["action_gain"])


@pytest.mark.parametrize(("activation", "gain"), [("relu", False), ("tanh", False), ("relu", True)])
def test_stacked_forward_on_a_sliding_window_reuses_the_unchanged_members(activation, gain):
    """WindowCache: on a window moved by one transition, the cached forward (newest row through every
    unchanged member, whole window through the changed ones) gives the full forward's losses, and its buffers
    give the same step; a window that did not slide is run in full."""
    from metadapt.models.stacked import StackedMLP, WindowCache

    gen = torch.Generator().manual_seed(4)
    m = MLPDynamics(4, 2, [12, 10], activation, action_gain=gain)
    fused = StackedMLP(m)
    stack = fused.to_storage({k: torch.stack([m.init_params(gen)[k] * (1 + 0.1 * j) for j in range(5)])
                              for k in m.param_shapes()})
    if gain:
        stack["action_gain"] = torch.rand(5, 2, generator=gen) + 0.5
    obs, nxt = torch.randn(40, 4, generator=gen), torch.randn(40, 4, generator=gen)
    act = torch.randn(40, 2, generator=gen)
    cache, changed, reusable = WindowCache(), list[int](), 0
    for t in range(16, 40):
        reusable += t > 16 and 2 * len(changed) <= 5  # more than half changed: the whole window is cheaper
        if t == 31:  # members reordered (as MOLe's creations and merges do): the cached rows follow them
            order = [3, 0, 4, 2, 1]
            stack = {k: v[order] for k, v in stack.items()}
            cache.select(order)
            changed = [order.index(j) for j in changed]
        win = (obs[t - 16: t], act[t - 16: t], nxt[t - 16: t])
        ref_stack = {k: v.clone() for k, v in stack.items()}
        ref_loss, ref_inputs, ref_err = fused.forward(ref_stack, *win)
        loss, inputs, err = fused.forward(stack, *win, cache, changed)
        torch.testing.assert_close(loss, ref_loss)
        # A step from the cached buffers (rows in ring order) is the step from the full forward's.
        # Member by member (two patterns), and every member at once (more than half active).
        pattern = [[1.0, 0.0, 0.3, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0], [0.5, 0.2, 0.0, 0.1, 0.9]][t % 3]
        scale = torch.tensor(pattern, dtype=torch.float64)
        fused.sgd_step_(ref_stack, ref_inputs, ref_err, scale, 0.2)
        changed = fused.sgd_step_(stack, inputs, err, scale, 0.2)
        assert changed == torch.nonzero(scale).squeeze(1).tolist()
        for k in stack:
            torch.testing.assert_close(stack[k], ref_stack[k], rtol=1e-5, atol=1e-6)
    assert cache.hits == reusable >= 12
    # A window that is not the last one moved by one (here: the same window again) is run in full.
    fused.forward(stack, obs[23:39], act[23:39], nxt[23:39], cache, changed)
    assert cache.hits == reusable
    # Without naming the changed members, a changed member's rows would be stale: the cache is the caller's
    # contract, and the check above is what it buys.
    stack["layers.0.bias"][1] += 1.0
    stale, _, _ = fused.forward(stack, obs[24:40], act[24:40], nxt[24:40], cache, [])
    fresh, _, _ = fused.forward(stack, obs[24:40], act[24:40], nxt[24:40])
    assert not torch.allclose(stale[1], fresh[1]) and torch.allclose(stale[0], fresh[0])


def test_stacked_forward_reads_a_member_listed_twice_as_changed_once():
    """``changed=[j, j]`` is ``[j]``: the cache is reused (a duplicate does not count twice against the
    half-of-the-members limit) and the numbers are the same."""
    from metadapt.models.stacked import StackedMLP, WindowCache

    model = MLPDynamics(3, 2, [8, 8], "relu")
    gen = torch.Generator().manual_seed(0)
    stacked = StackedMLP(model)
    stack = stacked.to_storage({k: torch.stack([model.init_params(gen)[k] for _ in range(4)])
                                for k in model.init_params(gen)})
    obs, act, nxt = torch.randn(9, 3, generator=gen), torch.randn(9, 2, generator=gen), torch.randn(9, 3, generator=gen)
    results = []
    for changed in ([1], [1, 1, 1]):
        cache = WindowCache()
        stacked.forward(stack, obs[:8], act[:8], nxt[:8], cache)
        hits = cache.hits
        loss, _, _ = stacked.forward(stack, obs[1:], act[1:], nxt[1:], cache, changed)
        assert cache.hits == hits + 1
        results.append(loss.clone())
    torch.testing.assert_close(results[0], results[1])


def test_report_smoothing_is_causal_a_step_never_moves_the_curve_before_it():
    """Regression: the centred 25-step mean made the model error rise up to 12 steps before a task switch."""
    from metadapt.experiments.reporting.report import smooth

    x = np.r_[np.ones(100), np.full(100, 5.0)]  # the error jumps at step 100
    out = smooth(x)
    assert np.array_equal(out[:100], np.ones(100))
    assert out[100] == (24 + 5) / 25 and out[124] == 5.0
    np.testing.assert_allclose(smooth(np.arange(4.0), width=2), [0.0, 0.5, 1.5, 2.5])
