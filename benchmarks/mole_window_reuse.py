"""MOLe's learner step with and without window reuse, on the windows of a real trial, side by side.

One HalfCheetah motor-malfunction trial with the shipped prior (normal and
"sign negative" alternating every ``--period`` steps), planned by warm-started
CEM 125 x 2 in bfloat16 with the MOLe learner that reuses the window
(``reuse_window=True``, the default). A second MOLe learner with
``reuse_window=False`` is fed exactly the same windows; each step times both on
the same window, in alternating order, so both see the same machine load. Prints
the median step time of each (overall and by component count), how often the
two chose the same component and agreed on the component count, and last
``window_reuse_speedup=<x>`` (median without reuse / median with).

    python benchmarks/mole_window_reuse.py --steps 400 --period 100 --seed 0
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from metadapt.adapt.mole import MOLeLearner
from metadapt.agent import MPCAgent
from metadapt.envs import make_env
from metadapt.experiments.benchmarks.bench import WARM_CEM_ELITES, WARM_CEM_ITERATIONS, WARM_CEM_SAMPLES
from metadapt.experiments.configuration.components import continual_lr
from metadapt.experiments.jobs.rollout import rollout
from metadapt.meta.prior import load_prior
from metadapt.planning.cem import CEM
from metadapt.types import Params, Window


class _SideBySide:
    """The agent's learner: ``main`` decides, ``shadow`` sees the same windows; both are timed per step."""

    def __init__(self, main: MOLeLearner, shadow: MOLeLearner) -> None:
        self.main, self.shadow = main, shadow
        self.times: dict[str, list[float]] = {"reuse": [], "whole": []}
        self.components: list[int] = []  # before each step
        self.same_choice = self.same_count = 0

    def reset(self) -> None:
        self.main.reset()
        self.shadow.reset()

    def params(self) -> Params:
        return self.main.params()

    def observe(self, window: Window) -> object:
        self.components.append(self.main.num_components)
        order = [("reuse", self.main), ("whole", self.shadow)]
        if len(self.times["reuse"]) % 2:
            order.reverse()
        infos = {}
        for name, learner in order:
            t0 = time.perf_counter()
            infos[name] = learner.observe(window)
            self.times[name].append(time.perf_counter() - t0)
        self.same_choice += self.main.chosen_id == self.shadow.chosen_id
        self.same_count += self.main.num_components == self.shadow.num_components
        return infos["reuse"]


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--period", type=int, default=100, help="steps between task switches")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    schedule = {"type": "alternating", "tasks": ["normal", "sign_negative"], "period": args.period}
    env = make_env("metadapt/HalfCheetahMalfunction-v0", schedule=schedule, max_episode_steps=args.steps)
    prior = load_prior("builtin:halfcheetah_malfunction", *env.observation_space.shape, env.action_space.shape[0])

    def mole(reuse: bool) -> MOLeLearner:  # as `learner.type=mole` builds it
        return MOLeLearner(prior.model, prior.params, continual_lr(None, prior.inner_lr), alpha=1.0,
                           new_lr=prior.inner_lr, reuse_window=reuse)

    learner = _SideBySide(mole(True), mole(False))
    low, high = (torch.as_tensor(b, dtype=torch.float32) for b in (env.action_space.low, env.action_space.high))
    planner = CEM(low, high, 10, WARM_CEM_SAMPLES, iterations=WARM_CEM_ITERATIONS, num_elites=WARM_CEM_ELITES,
                  seed=args.seed)
    agent = MPCAgent(prior.model, learner, planner, env.unwrapped.reward_fn, window=16,  # type: ignore[arg-type]
                     dtype=torch.bfloat16)
    total = rollout(env, agent, args.steps, args.seed, reset_on_done=False).total_return  # one episode
    n = len(learner.times["reuse"])
    med = {k: statistics.median(v) * 1e3 for k, v in learner.times.items()}
    print(f"steps {n}, return {total:.1f}, components at the end {learner.main.num_components} "
          f"(without reuse {learner.shadow.num_components}), window reuses {learner.main.window_reuses}")
    print(f"same chosen component {learner.same_choice / n:.3f} of the steps, same count {learner.same_count / n:.3f}")
    for k in ("reuse", "whole"):
        times = np.asarray(learner.times[k]) * 1e3
        print(f"{k:>6}: median {med[k]:.2f} ms, mean {times.mean():.2f} ms, p90 {np.percentile(times, 90):.2f} ms")
    # Reuse needs a window that slid and at most half the slots changed: by component count.
    counts = np.asarray(learner.components)
    for c in sorted(set(learner.components)):
        at = counts == c
        if at.sum() >= 10:
            r, w = (float(np.median(np.asarray(learner.times[k])[at])) * 1e3 for k in ("reuse", "whole"))
            print(f"{c:>3} components: {int(at.sum()):>4} steps, median {r:.2f} ms with reuse, {w:.2f} without "
                  f"({w / r:.2f}x)")
    speedup = med["whole"] / med["reuse"]
    print(f"window_reuse_speedup={speedup:.2f}")
    return speedup


if __name__ == "__main__":
    main()
