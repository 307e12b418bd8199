"""Meta-GCG's costs, measured side by side in one run: planning per control step, the latent rollout against the
matrix-product peak, one meta-training step, and the maze's frames per second; for the paper's widths and the CPU
configuration's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from metadapt.data.stream import FrameStream
from metadapt.envs import make_env
from metadapt.experiments.benchmarks.bench import _best_time
from metadapt.meta.lifelong import LifelongLearner, LifelongSettings
from metadapt.models.latent_image import LatentImageModel
from metadapt.planning.discrete_cem import DiscreteCEM

# (samples, rounds, horizon) of CEM: the paper's (Appendix A) and the shipped CPU configs' (configs/*_maze.yaml)
PLANNERS = {"paper": (500, 4, 5), "cpu": (100, 3, 5)}
FRAME_STACK, ACTIONS = 4, 4


def _stream(steps: int, seed: int) -> FrameStream:
    env = make_env("metadapt/RotatingMaze-v0", mode="lifelong", frame_stack=FRAME_STACK)
    obs, _ = env.reset(seed=seed)
    stream = FrameStream(FRAME_STACK, tuple(obs.shape[1:]))
    stream.begin(obs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        a = int(torch.randint(ACTIONS, (), generator=gen))
        obs, r, *_ = env.step(a)
        stream.append(a, float(r), obs)
    env.close()
    return stream


def bench_gcg(repeats: int = 5, seed: int = 0, print_fn: Callable[[str], Any] = print,
              presets: tuple[str, ...] = ("paper", "cpu")) -> dict[str, float]:
    """Print and return the timings; ``gcg_rollout_fraction_of_peak`` is the first preset's (the paper model's)
    rollout throughput over the matrix-product peak of the same precision, the better of float32 and bfloat16."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    n = 1024
    a32, b32 = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    peak = {torch.float32: 2.0 * n ** 3 / _best_time(lambda: torch.mm(a32, b32), repeats * 4),
            torch.bfloat16: 2.0 * n ** 3 / _best_time(lambda: torch.mm(a16, b16), repeats * 4)}
    out["matmul_f32_gflops"], out["matmul_bf16_gflops"] = peak[torch.float32] / 1e9, peak[torch.bfloat16] / 1e9
    print_fn(f"matrix-product peak ({n}^3): float32 {out['matmul_f32_gflops']:.1f} GFLOP/s, "
             f"bfloat16 {out['matmul_bf16_gflops']:.1f} GFLOP/s")

    env = make_env("metadapt/RotatingMaze-v0", mode="lifelong", frame_stack=FRAME_STACK)
    obs, _ = env.reset(seed=seed)
    actions = torch.randint(ACTIONS, (2000,), generator=gen).tolist()

    def env_steps() -> None:
        for a in actions:
            env.step(a)

    out["maze_steps_per_second"] = len(actions) / _best_time(env_steps, repeats)
    env.close()
    print_fn(f"maze: {out['maze_steps_per_second']:.0f} steps/s (one core)")

    stream = _stream(1200, seed)
    frames = torch.as_tensor(obs)[None]
    print_fn(f"{'preset':<7}{'CEM':>14}{'plan ms':>9}{'rollout GFLOP/s':>17}{'of f32 peak':>12}{'of bf16 peak':>13}"
             f"{'meta step ms':>14}{'(1st order)':>12}")
    for preset in presets:
        samples, rounds, horizon = PLANNERS[preset]
        model = LatentImageModel.from_preset(preset, FRAME_STACK, ACTIONS)
        params = model.init_params(torch.Generator().manual_seed(seed))
        planner = DiscreteCEM(ACTIONS, horizon, num_samples=samples, iterations=rounds, seed=seed)
        seqs = torch.randint(ACTIONS, (samples, horizon), generator=gen)
        flops = model.rollout_flops(samples, horizon)
        fractions = {}
        for dt, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            objective = model.planning_objective(params, frames, dt, share_prefixes=False)  # the dense workload
            seconds = _best_time(lambda objective=objective, seqs=seqs: objective(seqs), repeats)
            fractions[name] = flops / seconds / peak[dt]
            out[f"{preset}_rollout_{name}_gflops"] = flops / seconds / 1e9
            out[f"{preset}_rollout_{name}_fraction_of_peak"] = fractions[name]

        def plan(model: LatentImageModel = model, params: dict = params, planner: DiscreteCEM = planner) -> None:
            planner.plan(model.planning_objective(params, frames), planner.make_warm_start())

        out[f"{preset}_plan_ms"] = _best_time(plan, repeats) * 1e3
        meta = {}
        for first_order in (False, True):
            learner = LifelongLearner(model.loss, params, LifelongSettings(first_order=first_order))
            g = torch.Generator().manual_seed(seed)
            meta[first_order] = _best_time(lambda learner=learner, g=g: learner.train_step(stream, g),
                                           max(1, repeats // 2))
        out[f"{preset}_meta_step_ms"], out[f"{preset}_meta_step_first_order_ms"] = meta[False] * 1e3, meta[True] * 1e3
        print_fn(f"{preset:<7}{f'{samples}x{rounds}x{horizon}':>14}{out[f'{preset}_plan_ms']:>9.1f}"
                 f"{out[f'{preset}_rollout_f32_gflops']:>17.1f}{fractions['f32']:>12.2f}{fractions['bf16']:>13.2f}"
                 f"{meta[False] * 1e3:>14.0f}{meta[True] * 1e3:>12.0f}")
    out["gcg_rollout_fraction_of_peak"] = max(out[f"{presets[0]}_rollout_f32_fraction_of_peak"],
                                              out[f"{presets[0]}_rollout_bf16_fraction_of_peak"])
    print_fn("meta step: one outer step of Appendix A's sizes (8 windows of 400, 32 sequences of 5 per half, "
             "3 inner SGD steps)")
    print_fn(f"gcg_rollout_fraction_of_peak={out['gcg_rollout_fraction_of_peak']:.3f}")
    return out
