"""Planner speed against the matrix-product peak, measured side by side in one run."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from metadapt.models.mlp import MLPDynamics
from metadapt.models.rollout import make_objective
from metadapt.planning import CEM, MPPI, Planner, RandomShooting

CHEETAH_OBS, CHEETAH_ACT = 18, 6


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, thread pool, lazy init
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def rollout_flops(num_samples: int, horizon: int, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> float:
    sizes = (obs_dim + act_dim, *hidden, obs_dim)
    per_step = sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return float(num_samples * horizon * per_step)


def bench_planner(
    num_samples: int = 1000,
    horizon: int = 10,
    hidden: tuple[int, ...] = (500, 500, 500),
    repeats: int = 10,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    print_fn: Callable[[str], None] = print,
) -> dict[str, float]:
    """Time RS, CEM and MPPI per control step and a plain product of the planner's widest shape.

    Returns a dict of seconds and ratios; ``planner_fraction_of_matmul_peak`` is
    random shooting's achieved FLOP rate over the product's, both float32-or-``dtype``.
    """
    gen = torch.Generator().manual_seed(seed)
    model = MLPDynamics(CHEETAH_OBS, CHEETAH_ACT, hidden)
    folded = model.fold(model.init_params(gen), dtype)
    obs = torch.randn(CHEETAH_OBS, generator=gen)
    reward = lambda o, a, o2: o2[:, -1] - 0.1 * a.pow(2).sum(-1)  # noqa: E731  (HalfCheetah's form)
    objective = make_objective(folded, obs, reward)
    low, high = -torch.ones(CHEETAH_ACT), torch.ones(CHEETAH_ACT)
    planners: dict[str, Planner] = {
        "rs": RandomShooting(low, high, horizon, num_samples, seed=seed),
        "cem": CEM(low, high, horizon, num_samples, iterations=5, num_elites=max(1, num_samples // 10), seed=seed),
        "mppi": MPPI(low, high, horizon, num_samples, seed=seed),
    }
    width = max(hidden)
    x = torch.randn(num_samples, width, generator=gen).to(dtype)
    w = torch.randn(width, width, generator=gen).to(dtype)
    b = torch.randn(width, generator=gen).to(dtype)
    mm_reps = 50

    def matmul() -> None:
        for _ in range(mm_reps):
            torch.addmm(b, x, w)

    mm_flops = 2.0 * num_samples * width * width * mm_reps
    times = {"matmul": float("inf"), **{k: float("inf") for k in planners}}
    warm = {k: p.make_warm_start() for k, p in planners.items()}
    with torch.no_grad():
        # Interleaved rounds: every candidate sees the same machine load.
        for _ in range(repeats):
            times["matmul"] = min(times["matmul"], _best_time(matmul, 1))
            for k, p in planners.items():
                times[k] = min(times[k], _best_time(lambda p=p, k=k: p.plan(objective, warm[k]), 1))
    peak = mm_flops / times["matmul"]
    flops = rollout_flops(num_samples, horizon, CHEETAH_OBS, CHEETAH_ACT, hidden)
    out: dict[str, float] = {"matmul_gflops": peak / 1e9}
    print_fn(f"threads={torch.get_num_threads()} dtype={str(dtype).removeprefix('torch.')} "
             f"N={num_samples} H={horizon} hidden={list(hidden)}")
    print_fn(f"{'case':<10}{'ms/step':>10}{'GFLOP/s':>10}{'of peak':>9}")
    print_fn(f"{'matmul':<10}{mm_flops / mm_reps / peak * 1e3:>10.2f}{peak / 1e9:>10.1f}{1.0:>9.2f}")
    for k in planners:
        evals = planners[k].num_samples * (planners[k].iterations if hasattr(planners[k], "iterations") else 1)
        f = flops * evals / num_samples
        rate = f / times[k]
        out[f"{k}_ms"] = times[k] * 1e3
        out[f"{k}_fraction_of_peak"] = rate / peak
        print_fn(f"{k:<10}{times[k] * 1e3:>10.2f}{rate / 1e9:>10.1f}{rate / peak:>9.2f}")
    out["planner_fraction_of_matmul_peak"] = out["rs_fraction_of_peak"]
    print_fn(f"planner_fraction_of_matmul_peak={out['rs_fraction_of_peak']:.3f}")
    return out
