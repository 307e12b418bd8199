"""metadapt on your own environment: a 2-D point mass that must reach the origin.

Any Gymnasium env with a Box action space works; all metadapt needs besides
the env is a batched reward ``reward_fn(obs, act, next_obs) -> N``.

    python examples/custom_env.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from metadapt import MLPDynamics, MPCAgent, RandomShooting, StaticLearner
from metadapt.experiments.jobs.iterate import IterationSettings, IterativeTrainer
from metadapt.experiments.jobs.trial import run_trial


class PointMass(gym.Env):
    """State (x, y, vx, vy); action: a force in [-1, 1]^2; reward: minus distance to the origin."""

    dt = 0.1

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.s = np.concatenate([self.np_random.uniform(-2, 2, 2), np.zeros(2)])
        return self.s.copy(), {}

    def step(self, action):
        a = np.clip(action, -1, 1)
        vel = 0.9 * self.s[2:] + self.dt * a
        self.s = np.concatenate([self.s[:2] + self.dt * vel, vel])
        return self.s.copy(), float(-np.linalg.norm(self.s[:2]) - 0.01 * np.sum(a**2)), False, False, {}

    @staticmethod
    def reward_fn(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        return -next_obs[..., :2].norm(dim=-1) - 0.01 * act.pow(2).sum(-1)


def main(out_dir: str = "runs/custom_env", iterations: int = 3, trial_steps: int = 200) -> float:
    env = PointMass()
    low, high = torch.as_tensor(env.action_space.low), torch.as_tensor(env.action_space.high)
    def planner(seed: int) -> RandomShooting:
        return RandomShooting(low, high, horizon=10, num_samples=500, seed=seed)

    model = MLPDynamics(obs_dim=4, act_dim=2, hidden=(64, 64))
    settings = IterationSettings(iterations=iterations, steps_per_iteration=1000, rollout_length=100, epochs=30)
    trainer = IterativeTrainer(env, PointMass.reward_fn, model, planner, settings, seed=0, run_dir=out_dir)
    params = trainer.run()  # iteration 0: random actions; then MPC with the current model

    agent = MPCAgent(model, StaticLearner(params), planner(seed=1), PointMass.reward_fn)
    result = run_trial(env, agent, steps=trial_steps, seed=1, out_dir=Path(out_dir) / "trial")
    print(f"return over {trial_steps} steps: {result.total_return:.1f}")
    return result.total_return


if __name__ == "__main__":
    main(*sys.argv[1:2])
