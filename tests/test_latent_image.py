"""Meta-GCG's latent image model (seed 001, Appendix A): known answers of the real code."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap
from torch.utils.flop_counter import FlopCounterMode

from metadapt.meta.inner import inner_adapt
from metadapt.models.latent_image import (
    PRESETS,
    LatentImageModel,
    expected_value,
    reward_support,
    two_hot,
)

A = 4  # actions


def _small(**overrides) -> LatentImageModel:
    """A fast model of the same code: 24-pixel frames -> a 5 x 5 grid; hidden 12 != 8 exercises the projection."""
    args = {"image_size": 24, "encoder_channels": (8, 8), "encoder_kernels": (3, 3), "encoder_strides": (2, 2),
            "hidden": 12, "reward_channels": 8, "reward_kernel": 2, "reward_hidden": (32,), "bins": 21}
    return LatentImageModel(2, A, **{**args, **overrides})


def _batch(model: LatentImageModel, n: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random frames and actions; the reward is +1 for action 1, -1 for action 3, 0 otherwise (learnable)."""
    g = torch.Generator().manual_seed(seed)
    s = model.image_size
    frames = torch.randint(0, 256, (n, model.frame_stack, s, s), dtype=torch.uint8, generator=g)
    actions = torch.randint(0, model.num_actions, (n, t), generator=g)
    rewards = (actions == 1).float() - (actions == 3).float()
    return frames, actions, rewards


def _params(model: LatentImageModel, seed: int = 0) -> dict[str, torch.Tensor]:
    return model.init_params(torch.Generator().manual_seed(seed))


# -- reward bins --------------------------------------------------------------
def test_two_hot_round_trips_through_the_expectation():
    support = reward_support(41, -1.0, 1.0)
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.rand(200, generator=g) * 3 - 1.5,  # a third outside the support
                        support, (support[1:] + support[:-1]) / 2, torch.tensor([-1.0, 1.0, -7.0, 7.0])])
    target = two_hot(values, support)
    assert target.shape == (len(values), 41)
    torch.testing.assert_close(target.sum(-1), torch.ones(len(values)))
    torch.testing.assert_close(expected_value(target, support, probs=True), values.clamp(-1, 1), atol=3e-6, rtol=0)
    nonzero = target > 0
    assert int(nonzero.sum(-1).max()) <= 2 and int(nonzero.sum(-1).min()) >= 1
    two = nonzero.sum(-1) == 2  # the two bins that share a value are neighbours
    first = nonzero.float().argmax(-1)
    assert bool(nonzero[two].gather(1, (first[two] + 1).unsqueeze(1)).all())
    # a bin centre puts all of its mass on its own bin
    torch.testing.assert_close(two_hot(support, support), torch.eye(41), atol=1e-5, rtol=0)


def test_expected_value_of_logits_is_that_of_their_softmax():
    support = reward_support(5, 0.0, 2.0)
    logits = torch.randn(3, 7, 5)
    torch.testing.assert_close(expected_value(logits, support),
                               (logits.softmax(-1) * support).sum(-1))


# -- shapes and sizes ---------------------------------------------------------
def _expected_param_count(m: LatentImageModel) -> int:
    """From the widths, layer by layer, independently of ``param_shapes``."""
    count, c_in = 0, m.frame_stack
    for c, k in zip(m.encoder_channels, m.encoder_kernels, strict=True):
        count += c * c_in * k * k + c
        c_in = c
    if m.hidden != c_in:
        count += m.hidden * c_in + m.hidden
    count += 3 * m.hidden * (m.num_actions + m.hidden) * m.gru_kernel ** 2 + 3 * m.hidden
    count += m.reward_channels * m.hidden * m.reward_kernel ** 2 + m.reward_channels
    width = m.reward_channels * (m.grid - m.reward_kernel + 1) ** 2
    for w in (*m.reward_hidden, m.bins):
        count += width * w + w
        width = w
    return count


@pytest.mark.parametrize("preset", ["paper", "cpu"])
def test_presets_give_the_papers_grid_and_bins(preset):
    m = LatentImageModel.from_preset(preset, 4, A)
    p = _params(m)
    frames, actions, rewards = _batch(m, 2, 3, seed=1)
    h = m.encode(p, frames)
    assert h.shape == (2, PRESETS[preset]["hidden"], 6, 6)  # 64 -> 31 -> 15 -> 7 -> 6
    assert m.step(p, h, actions[:, 0]).shape == h.shape
    assert m.reward_logits(p, h).shape == (2, 41)
    assert m.predict_logits(p, frames, actions).shape == (2, 3, 41)
    assert m.losses(p, (frames, actions, rewards)).shape == (2,)
    assert {k: tuple(v.shape) for k, v in p.items()} == m.param_shapes()
    total = sum(v.numel() for v in p.values())
    assert total == m.num_params() == _expected_param_count(m)
    if preset == "paper":
        assert m.hidden == 128 and not m.project and total > 500_000
    else:
        assert total < _expected_param_count(LatentImageModel.from_preset("paper", 4, A)) / 10


def test_init_is_deterministic_per_generator_and_uint8_frames_are_scaled():
    m = _small()
    a, b, c = _params(m, 3), _params(m, 3), _params(m, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["gru.weight_h"], c["gru.weight_h"])
    frames = _batch(m, 3, 1, seed=0)[0]
    torch.testing.assert_close(m.encode(a, frames), m.encode(a, frames.float() / 255.0))


def test_conv_gru_step_is_the_textbook_cell_on_one_hot_channels():
    m = _small()
    p = _params(m)
    g = torch.Generator().manual_seed(5)
    h = torch.randn(9, m.hidden, m.grid, m.grid, generator=g)
    actions = torch.randint(0, A, (9,), generator=g)
    c, pad = m.hidden, m.gru_kernel // 2
    x = F.one_hot(actions, A).float()[:, :, None, None].expand(-1, -1, m.grid, m.grid)
    w = torch.cat([p["gru.weight_x"], p["gru.weight_h"]], dim=1)  # one convolution over [x, h]
    b = p["gru.bias"]
    zr = torch.sigmoid(F.conv2d(torch.cat([x, h], 1), w[: 2 * c], b[: 2 * c], padding=pad))
    z, r = zr[:, :c], zr[:, c:]
    n = torch.tanh(F.conv2d(torch.cat([x, r * h], 1), w[2 * c:], b[2 * c:], padding=pad))
    torch.testing.assert_close(m.step(p, h, actions), (1 - z) * h + z * n, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [3, 11])  # fewer sequences than actions, and more (the shared first step)
def test_planning_objective_sums_the_training_forwards_expected_rewards(n):
    m = _small()
    p = _params(m)
    frames, actions, _ = _batch(m, n, 4, seed=2)
    logits = m.predict_logits(p, frames[:1].expand(n, -1, -1, -1), actions)
    want = expected_value(logits, m.support).sum(-1)
    torch.testing.assert_close(m.expected_returns(p, frames[0], actions), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(m.planning_objective(p, frames[:1])(actions[:, :0]), torch.zeros(n))


def test_rollout_flops_is_what_the_flop_counter_counts():
    m = LatentImageModel.from_preset("cpu", 2, A)
    obj = m.planning_objective(_params(m), torch.zeros(2, 64, 64, dtype=torch.uint8), share_prefixes=False)
    shared = m.planning_objective(_params(m), torch.zeros(2, 64, 64, dtype=torch.uint8))
    for n, horizon in ((3, 2), (10, 3), (50, 5)):
        actions = torch.randint(0, A, (n, horizon))
        with FlopCounterMode(display=False) as counter:
            obj(actions)
        assert m.rollout_flops(n, horizon) == counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            shared(actions)
        assert counter.get_total_flops() <= m.rollout_flops(n, horizon)  # prefixes shared: never more work


def test_bfloat16_planning_is_close_to_float32():
    m = LatentImageModel.from_preset("cpu", 2, A)
    p = _params(m)
    frames, actions, _ = _batch(m, 64, 5, seed=3)
    full = m.expected_returns(p, frames[0], actions)
    half = m.expected_returns(p, frames[0], actions, dtype=torch.bfloat16)
    assert half.dtype == torch.float32
    assert float((half - full).abs().max()) < 0.05


# -- adaptation and learning ---------------------------------------------------
def test_one_inner_step_lowers_the_loss_it_was_taken_on():
    m = _small()
    p = _params(m)
    batch = _batch(m, 16, 3, seed=4)
    before = m.loss(p, batch)
    after = m.loss(inner_adapt(m.loss, p, batch, 1e-2, 1), batch)
    assert float(after) < float(before)


def test_vmapped_meta_batch_adapts_each_task_and_has_second_order_gradients():
    m = _small()
    lanes = [_params(m, s) for s in range(3)]
    stacked = {k: torch.stack([q[k] for q in lanes]) for k in lanes[0]}
    support = tuple(torch.stack(x) for x in zip(*(_batch(m, 8, 3, seed=10 + s) for s in range(3)), strict=True))
    query = tuple(torch.stack(x) for x in zip(*(_batch(m, 8, 3, seed=20 + s) for s in range(3)), strict=True))

    before = vmap(m.loss)(stacked, support)
    after = vmap(lambda q, b: m.loss(inner_adapt(m.loss, q, b, 1e-2, 1), b))(stacked, support)
    assert before.shape == (3,) and bool((after < before).all())
    torch.testing.assert_close(before[1], m.loss(lanes[1], tuple(x[1] for x in support)))

    def outer(q, first_order=False):
        def task(qq, s, t):
            return m.loss(inner_adapt(m.loss, qq, s, 1e-2, 2, first_order=first_order), t)

        return vmap(task)(q, support, query).sum()

    second = grad(outer)(stacked)
    assert all(bool(v.isfinite().all()) for v in second.values())
    assert all(float(v[i].abs().sum()) > 0 for v in second.values() for i in range(3))
    # lane 0 of the vmapped second-order gradient is the unbatched one (vmap's double backward is right here)
    alone = grad(lambda q: m.loss(inner_adapt(m.loss, q, tuple(x[0] for x in support), 1e-2, 2),
                                  tuple(x[0] for x in query)))(lanes[0])
    for k in alone:
        torch.testing.assert_close(second[k][0], alone[k], atol=1e-5, rtol=1e-4)
    first = grad(lambda q: outer(q, first_order=True))(stacked)
    assert any(not torch.allclose(first[k], second[k]) for k in first)


def test_adam_learns_a_reward_of_the_action_and_planning_ranks_by_it():
    torch.manual_seed(0)
    m = _small()
    p = {k: v.requires_grad_(True) for k, v in _params(m).items()}
    batch = _batch(m, 32, 3, seed=6)
    opt = torch.optim.Adam(p.values(), lr=3e-3)
    first = float(m.loss(p, batch))
    for _ in range(60):
        opt.zero_grad()
        loss = m.loss(p, batch)
        loss.backward()
        opt.step()
    assert float(loss) < first / 2
    sequences = torch.tensor([[1] * 3, [3] * 3, [0] * 3, [2] * 3])
    returns = m.expected_returns(p, batch[0][0], sequences)
    assert float(returns[0]) > 1.5 and float(returns[1]) < -1.5  # +3 and -3 in truth
    assert float(returns[0]) > float(returns[2:].max()) and float(returns[1]) < float(returns[2:].min())
    half = m.expected_returns(p, batch[0][0], sequences, dtype=torch.bfloat16)
    assert torch.equal(half.argsort(), returns.argsort())
    torch.testing.assert_close(half, returns, atol=0.1, rtol=0)


# -- specs and arguments ------------------------------------------------------
@pytest.mark.parametrize("model", [_small(), LatentImageModel.from_preset("paper", 3, 5, reward_low=-2.0)])
def test_spec_round_trip_rebuilds_an_identical_model(model):
    spec = json.loads(json.dumps(model.spec()))
    rebuilt = LatentImageModel.from_spec(spec)
    assert rebuilt.spec() == model.spec() and rebuilt.param_shapes() == model.param_shapes()
    p = _params(model)
    frames, actions, _ = _batch(model, 2, 2, seed=7)
    assert torch.equal(rebuilt.predict_logits(p, frames, actions), model.predict_logits(p, frames, actions))
    assert torch.equal(rebuilt.support, model.support)


def test_from_spec_refuses_other_types_and_incomplete_specs():
    spec = _small().spec()
    with pytest.raises(ValueError, match="not a 'latent_image'"):
        LatentImageModel.from_spec({**spec, "type": "mlp"})
    with pytest.raises(ValueError, match="incomplete"):
        LatentImageModel.from_spec({k: v for k, v in spec.items() if k != "hidden"})
    with pytest.raises(ValueError, match="unknown latent image preset"):
        LatentImageModel.from_preset("tiny", 2, A)


@pytest.mark.parametrize("overrides", [
    {"frame_stack": 0}, {"num_actions": 0}, {"image_size": 0}, {"bins": 1},
    {"reward_low": 1.0, "reward_high": 1.0}, {"reward_low": 2.0}, {"reward_high": math.inf},
    {"encoder_kernels": (3, 3, 3)}, {"encoder_channels": (), "encoder_kernels": (), "encoder_strides": ()},
    {"encoder_channels": (32, 0, 64, 128)}, {"encoder_strides": (2, 2, 0, 1)},
    {"image_size": 8},  # the paper's encoder shrinks 8 pixels below 1 x 1
    {"hidden": 0}, {"gru_kernel": 2}, {"gru_kernel": 0}, {"reward_kernel": 7}, {"reward_kernel": 0},
    {"reward_channels": 0}, {"reward_hidden": (128, 0)},
])
def test_invalid_arguments_raise_value_error(overrides):
    args = {"frame_stack": 4, "num_actions": A, **overrides}
    with pytest.raises(ValueError):
        LatentImageModel(**args)


def test_frames_and_actions_of_the_wrong_shape_are_refused():
    m = _small()
    p = _params(m)
    with pytest.raises(ValueError, match="frames must be"):
        m.encode(p, torch.zeros(1, 3, 24, 24))
    with pytest.raises(ValueError, match="one observation"):
        m.planning_objective(p, torch.zeros(2, 2, 24, 24))
    with pytest.raises(ValueError, match="N x H"):
        m.expected_returns(p, torch.zeros(2, 24, 24), torch.zeros(5, dtype=torch.long))


def test_shared_prefixes_score_every_sequence_as_it_would_alone() -> None:
    model = LatentImageModel.from_preset("cpu", 2, 4)
    params = model.init_params(torch.Generator().manual_seed(1))
    frames = torch.randint(0, 256, (1, 2, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(3)
    # Random sequences, many repeated prefixes (a concentrated CEM round), and all 4^3 sequences of horizon 3.
    cases = [torch.randint(4, (50, 5), generator=gen), torch.randint(2, (40, 6), generator=gen),
             torch.cartesian_prod(*[torch.arange(4)] * 3)]
    for actions in cases:
        shared = model.planning_objective(params, frames, share_prefixes=True)(actions)
        alone = torch.stack([model.planning_objective(params, frames, share_prefixes=False)(row[None])[0]
                             for row in actions])
        torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-5)
