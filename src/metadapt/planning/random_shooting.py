"""Random shooting: the best of N uniformly sampled action sequences (seed 000's planner)."""

from __future__ import annotations

import torch

from metadapt.planning.base import Planner, PlanResult, WarmStart
from metadapt.types import Objective


class RandomShooting(Planner):
    """Samples ``N x H x A`` actions uniformly inside the bounds and keeps the best sequence.

    The warm start is not used to sample (seed 000 samples afresh each step) but
    is still updated, so planners stay interchangeable.
    """

    def sample(self) -> torch.Tensor:
        """``N x H x A`` uniform candidates inside the action bounds."""
        u = torch.rand(
            (self.num_samples, self.horizon, self.act_dim), generator=self.generator, device=self.device
        )
        return self.low + u * (self.high - self.low)

    def plan(self, objective: Objective, warm_start: WarmStart) -> PlanResult:
        actions = self.sample()
        returns, nonfinite = self.score(objective, actions)
        best = int(torch.argmax(returns))
        sequence = actions[best]
        warm_start.update(sequence)
        return PlanResult(sequence[0].clone(), sequence, float(returns[best]), self.num_samples, nonfinite)
