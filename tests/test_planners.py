"""Planner correctness against closed-form oracles."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metadapt.planning import CEM, MPPI, RandomShooting, WarmStart

COST = 0.5


def lq_objective(s0: float, horizon: int):
    """s' = s + a, reward -(s')^2 - COST a^2, summed over the horizon: a concave quadratic."""

    def objective(actions: torch.Tensor) -> torch.Tensor:
        a = actions[..., 0]
        s = s0 + torch.cumsum(a, dim=1)
        return -(s.pow(2) + COST * a.pow(2)).sum(1)

    return objective


def lq_optimum(s0: float, horizon: int) -> torch.Tensor:
    """Maximiser of the quadratic in closed form: with L lower-triangular ones, s = s0 + L a,
    the return is -|s0 1 + L a|^2 - COST |a|^2, so a* = -(L^T L + COST I)^-1 L^T 1 s0."""
    L = torch.tril(torch.ones(horizon, horizon, dtype=torch.float64))
    A = L.T @ L + COST * torch.eye(horizon, dtype=torch.float64)
    return -torch.linalg.solve(A, L.T @ torch.ones(horizon, dtype=torch.float64) * s0)


@pytest.mark.parametrize(
    ("make", "tol"),
    [
        (lambda lo, hi, h: RandomShooting(lo, hi, h, num_samples=4000, seed=0), 0.15),
        (lambda lo, hi, h: CEM(lo, hi, h, num_samples=400, iterations=8, num_elites=40, seed=0), 0.02),
        (lambda lo, hi, h: MPPI(lo, hi, h, num_samples=1000, temperature=0.01, noise_std=0.3,
                                iterations=10, seed=0), 0.05),
    ],
    ids=["rs", "cem", "mppi"],
)
def test_first_action_matches_lq_optimum(make, tol):
    horizon, s0 = 3, 0.8
    a_star = lq_optimum(s0, horizon)
    assert bool((a_star.abs() < 1).all())  # interior optimum: bounds do not bind
    planner = make(-torch.ones(1), torch.ones(1), horizon)
    res = planner.plan(lq_objective(s0, horizon), planner.make_warm_start())
    assert res.action.shape == (1,)
    assert abs(float(res.action[0]) - float(a_star[0])) < tol


def test_cem_elites_are_top_k_by_return():
    planner = CEM(-torch.ones(2), torch.ones(2), 4, num_samples=64, num_elites=7, seed=3)
    actions = planner.sample(torch.zeros(4, 2), torch.full((4, 2), 0.3))
    returns = torch.randn(64, generator=torch.Generator().manual_seed(1))
    elites = planner.elites(actions, returns)
    order = sorted(range(64), key=lambda i: -float(returns[i]))[:7]
    assert torch.equal(elites, actions[order])
    assert not torch.equal(elites, actions[:7])  # not picked by index


@settings(max_examples=40, deadline=None)
@given(
    low=st.lists(st.floats(-5, 4), min_size=1, max_size=4),
    width=st.floats(0.01, 3),
    seed=st.integers(0, 1000),
)
def test_random_shooting_stays_in_bounds(low, width, seed):
    lo = torch.tensor(low)
    hi = lo + width
    planner = RandomShooting(lo, hi, horizon=5, num_samples=200, seed=seed)
    res = planner.plan(lambda a: a.sum((1, 2)) * 1e6, planner.make_warm_start())  # pushes to the bound
    assert bool((res.action >= lo).all() and (res.action <= hi).all())
    assert bool((res.sequence >= lo).all() and (res.sequence <= hi).all())


@pytest.mark.parametrize("cls", [RandomShooting, CEM, MPPI])
def test_nonfinite_returns_score_minus_inf_and_are_counted(cls):
    planner = cls(-torch.ones(1), torch.ones(1), 2, num_samples=50, seed=0)

    def objective(actions: torch.Tensor) -> torch.Tensor:
        r = -(actions[:, 0, 0] - 0.5).abs()
        r[::2] = float("nan")
        r[1::4] = float("inf")
        return r

    res = planner.plan(objective, planner.make_warm_start())
    assert res.nonfinite > 0
    assert math.isfinite(res.expected_return)
    assert torch.isfinite(res.action).all()


def test_all_nonfinite_still_returns_a_valid_action():
    for cls in (RandomShooting, CEM, MPPI):
        planner = cls(-torch.ones(2), torch.ones(2), 3, num_samples=20, seed=0)
        res = planner.plan(lambda a: torch.full((a.shape[0],), float("nan")), planner.make_warm_start())
        assert torch.isfinite(res.action).all()
        assert bool((res.action.abs() <= 1).all())


def test_warm_start_shifts_and_resets():
    ws = WarmStart(3, torch.tensor([0.5]))
    assert torch.equal(ws.mean(), torch.full((3, 1), 0.5))
    ws.update(torch.tensor([[1.0], [2.0], [3.0]]))
    assert torch.equal(ws.mean(), torch.tensor([[2.0], [3.0], [0.5]]))
    ws.reset()
    assert not ws.active
    assert torch.equal(ws.mean(), torch.full((3, 1), 0.5))


def test_planners_are_reproducible_for_a_seed():
    for cls in (RandomShooting, CEM, MPPI):
        a = cls(-torch.ones(2), torch.ones(2), 4, num_samples=30, seed=5)
        b = cls(-torch.ones(2), torch.ones(2), 4, num_samples=30, seed=5)
        obj = lq_objective(0.3, 4)
        one = lambda acts, f=obj: f(acts[..., :1])  # noqa: E731
        assert torch.equal(a.plan(one, a.make_warm_start()).action, b.plan(one, b.make_warm_start()).action)


def test_bad_planner_arguments_are_rejected():
    with pytest.raises(ValueError, match="horizon"):
        RandomShooting(-torch.ones(1), torch.ones(1), 0, 10)
    with pytest.raises(ValueError, match="low < high"):
        RandomShooting(torch.ones(1), torch.ones(1), 2, 10)
    with pytest.raises(ValueError, match="num_elites"):
        CEM(-torch.ones(1), torch.ones(1), 2, num_samples=5, num_elites=6)
    with pytest.raises(ValueError, match="temperature"):
        MPPI(-torch.ones(1), torch.ones(1), 2, temperature=0)


def test_speed_benchmark_runs_every_case_on_a_small_network():
    """`metadapt bench speed`'s code path at toy size: every row is measured and the last line is the ratio."""
    from metadapt.experiments.benchmarks.bench import bench_speed

    lines: list[str] = []
    out = bench_speed(repeats=1, num_samples=32, horizon=3, hidden=(16, 16), components=(1, 10), print_fn=lines.append)
    assert lines[-1].startswith("mole_step_over_bf16_floor=")
    for key in ("rs_f32_ms", "cem_bf16_ms", "mole_10_learner_ms", "mole_10_plain_learner_ms",
                "mole_10_whole_learner_ms", "control_mole_10_ms", "control_mole_10_cem_ms",
                "control_mole_10_cem_64x2_ms", "control_mole_10_cem_32x2_ms",
                "prepack_cem_warm_unpacked_ms", "control_de_ms",
                "meta_second_order_steps_per_s"):
        assert math.isfinite(out[key]) and out[key] > 0
    assert any(line.startswith("control step mole x10, CEM 32x2") for line in lines)
    assert any(line.startswith("mole_warm_cem_32x2_step_ms=") for line in lines)
