"""Cross-entropy method, PETS style."""

from __future__ import annotations

import torch

from metadapt.planning.base import Planner, PlanResult, WarmStart
from metadapt.types import Objective


class CEM(Planner):
    """Iterative refit of a diagonal Gaussian over action sequences to its elites.

    As in PETS (Chua et al., 2018): candidates are drawn from a normal truncated
    at two standard deviations whose variance is shrunk so that the truncated
    support stays inside the action bounds; the ``num_elites`` best candidates
    (by rank of their return) refit mean and variance, blended with the previous
    ones by ``momentum``; the plan is the final mean.

    Args:
        iterations: refits per control step.
        num_elites: elites per refit (``<= num_samples``; default a tenth of them).
        momentum: weight of the previous mean and variance (0 keeps none).
        init_std_fraction: initial standard deviation as a fraction of the action range.
    """

    def __init__(
        self,
        action_low: torch.Tensor,
        action_high: torch.Tensor,
        horizon: int,
        num_samples: int = 500,
        iterations: int = 5,
        num_elites: int | None = None,
        momentum: float = 0.1,
        init_std_fraction: float = 0.25,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(action_low, action_high, horizon, num_samples, seed, device)
        if num_elites is None:
            num_elites = max(1, num_samples // 10)
        if not 1 <= num_elites <= num_samples:
            raise ValueError(f"num_elites must be in [1, num_samples={num_samples}], got {num_elites}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.iterations, self.num_elites, self.momentum = iterations, num_elites, momentum
        self.init_var = ((self.high - self.low) * init_std_fraction) ** 2

    def sample(self, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """``N x H x A`` truncated-normal candidates around ``mean`` (``H x A``), inside the bounds."""
        to_low, to_high = mean - self.low, self.high - mean
        var = torch.minimum(torch.minimum((to_low / 2) ** 2, (to_high / 2) ** 2), var)
        z = torch.empty((self.num_samples, self.horizon, self.act_dim), device=self.device)
        torch.nn.init.trunc_normal_(z, 0.0, 1.0, -2.0, 2.0, generator=self.generator)
        return torch.clamp(mean + z * var.sqrt(), self.low, self.high)

    def elites(self, actions: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        """The ``num_elites`` candidates with the highest returns, best first."""
        return actions[torch.topk(returns, self.num_elites, sorted=True).indices]

    def plan(self, objective: Objective, warm_start: WarmStart) -> PlanResult:
        mean = warm_start.mean()
        var = self.init_var.expand_as(mean).clone()
        nonfinite = 0
        best_return = float("-inf")
        for _ in range(self.iterations):
            actions = self.sample(mean, var)
            returns, bad = self.score(objective, actions)
            nonfinite += bad
            elites = self.elites(actions, returns)
            best_return = max(best_return, float(returns.max()))
            m = self.momentum
            mean = m * mean + (1 - m) * elites.mean(0)
            var = m * var + (1 - m) * elites.var(0, unbiased=False)
        warm_start.update(mean)
        return PlanResult(mean[0].clone(), mean, best_return, self.num_samples * self.iterations, nonfinite)
