"""Model predictive path integral control with time-correlated noise."""

from __future__ import annotations

import torch

from metadapt.planning.base import Planner, PlanResult, WarmStart
from metadapt.types import Objective


class MPPI(Planner):
    """Return-weighted averaging of perturbed copies of a nominal plan.

    The nominal plan is the warm start (the previous plan shifted by a step).
    Perturbations are Gaussian, correlated in time by a first-order filter
    ``e_t = beta * e_{t-1} + sqrt(1 - beta^2) * w_t`` (so each step keeps the
    marginal standard deviation ``noise_std`` times the half-range), clipped to
    the bounds. The new plan is the average of candidates weighted by
    ``softmax(returns / temperature)``, as in PDDM (Nagabandi et al., 2019).

    Args:
        temperature: lambda; smaller is greedier. Must be > 0.
        noise_std: perturbation standard deviation as a fraction of the half action range.
        noise_beta: time correlation in ``[0, 1)``; 0 is white noise.
        iterations: reweighting rounds per control step.
    """

    def __init__(
        self,
        action_low: torch.Tensor,
        action_high: torch.Tensor,
        horizon: int,
        num_samples: int = 1000,
        temperature: float = 0.1,
        noise_std: float = 0.5,
        noise_beta: float = 0.5,
        iterations: int = 1,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(action_low, action_high, horizon, num_samples, seed, device)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if noise_std <= 0:
            raise ValueError(f"noise_std must be > 0, got {noise_std}")
        if not 0.0 <= noise_beta < 1.0:
            raise ValueError(f"noise_beta must be in [0, 1), got {noise_beta}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.temperature, self.noise_beta, self.iterations = temperature, noise_beta, iterations
        self.noise_scale = noise_std * (self.high - self.low) / 2

    def noise(self) -> torch.Tensor:
        """``N x H x A`` time-correlated Gaussian noise."""
        w = torch.randn(
            (self.num_samples, self.horizon, self.act_dim), generator=self.generator, device=self.device
        )
        b = self.noise_beta
        c = (1 - b * b) ** 0.5
        eps = torch.empty_like(w)
        eps[:, 0] = w[:, 0]
        for t in range(1, self.horizon):
            eps[:, t] = b * eps[:, t - 1] + c * w[:, t]
        return eps * self.noise_scale

    def weights(self, returns: torch.Tensor) -> torch.Tensor:
        """``N`` softmax weights; uniform if every return is ``-inf``."""
        if not bool(torch.isfinite(returns).any()):
            return torch.full_like(returns, 1.0 / returns.numel())
        return torch.softmax(returns / self.temperature, dim=0)

    def plan(self, objective: Objective, warm_start: WarmStart) -> PlanResult:
        nominal = warm_start.mean()
        nonfinite = 0
        best_return = float("-inf")
        for _ in range(self.iterations):
            actions = torch.clamp(nominal + self.noise(), self.low, self.high)
            returns, bad = self.score(objective, actions)
            nonfinite += bad
            best_return = max(best_return, float(returns.max()))
            nominal = torch.einsum("n,nha->ha", self.weights(returns), actions)
        warm_start.update(nominal)
        return PlanResult(nominal[0].clone(), nominal, best_return, self.num_samples * self.iterations, nonfinite)
