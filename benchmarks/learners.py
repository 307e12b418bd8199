"""Per-step cost of the online learners at the paper's size (3 x 500 MLP, HalfCheetah, K = 16).

MOLe's E and M steps run on one stacked parameter dict with ``torch.func.vmap``;
this prints its step time with 1, 2, 5 and 10 components next to TS and GS,
measured interleaved in one run, and the ratio of 10 components to 1 last
(``mole_10_over_1=<x>``; linear growth would be 10).

    python benchmarks/learners.py --repeats 20
"""

from __future__ import annotations

import argparse
import time

import torch

from metadapt.adapt.continual import ContinualLearner
from metadapt.adapt.mole import MOLeLearner
from metadapt.adapt.ts import KShotLearner
from metadapt.models.mlp import MLPDynamics
from metadapt.types import Window


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    model = MLPDynamics(18, 6, [500, 500, 500], "relu", 1.0)
    prior = model.init_params(gen)
    x, y = torch.randn(16, 24, generator=gen), torch.randn(16, 18, generator=gen)
    window = Window(x[:, :18], x[:, 18:], y)  # K = 16 steps: obs, actions, next obs

    def mole(c: int) -> MOLeLearner:
        learner = MOLeLearner(model, prior, 0.01, alpha=0.0)  # alpha 0: the component count stays at c
        learner.stack = {k: v[None].repeat(c, *([1] * v.dim())) for k, v in prior.items()}
        learner.counts = torch.ones(c, dtype=torch.float64)
        learner.ids, learner.steps = list(range(c)), 1
        return learner

    learners = {"TS": KShotLearner(model, prior, 0.01), "GS": ContinualLearner(model, prior, 0.01),
                **{f"MOLe x{c}": mole(c) for c in (1, 2, 5, 10)}}
    times: dict[str, list[float]] = {k: [] for k in learners}
    for _ in range(args.repeats):
        for name, learner in learners.items():
            start = time.perf_counter()
            learner.observe(window)
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) * 1000 for k, v in times.items()}
    for name, ms in best.items():
        print(f"{name:<10} {ms:8.2f} ms/step   {ms / best['MOLe x1']:5.2f} x MOLe x1")
    ratio = best["MOLe x10"] / best["MOLe x1"]
    print(f"mole_10_over_1={ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
