"""What every planner shares: bounds, the warm start, and scoring with non-finite returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from metadapt.types import Objective


@dataclass(frozen=True)
class PlanResult:
    """The outcome of one planning problem.

    ``action`` is ``A`` (the first action to execute), ``sequence`` is ``H x A``
    (the full plan, reused by the warm start), ``expected_return`` is the
    objective of ``sequence`` as estimated by the planner, ``evaluations`` counts
    the action sequences scored and ``nonfinite`` those whose return was NaN or
    inf (scored ``-inf``).
    """

    action: torch.Tensor
    sequence: torch.Tensor
    expected_return: float
    evaluations: int
    nonfinite: int


class WarmStart:
    """The previous plan, shifted one step in time, as the next problem's starting point.

    Call ``reset()`` at every episode start: a plan for the last state of an
    episode says nothing about the first state of the next one.
    """

    def __init__(self, horizon: int, default: torch.Tensor) -> None:
        """``default`` (``A``) fills the step that shifts in at the end of the horizon."""
        self.horizon = horizon
        self.default = default
        self._mean: torch.Tensor | None = None

    def reset(self) -> None:
        self._mean = None

    @property
    def active(self) -> bool:
        return self._mean is not None

    def mean(self) -> torch.Tensor:
        """``H x A`` starting mean: the shifted previous plan, or ``default`` everywhere."""
        if self._mean is None:
            return self.default.expand(self.horizon, -1).clone()
        return self._mean.clone()

    def update(self, sequence: torch.Tensor) -> None:
        """Store ``sequence`` (``H x A``) shifted by one step."""
        self._mean = torch.cat([sequence[1:], self.default[None].to(sequence)], dim=0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The stored plan (none: an empty dict), for a checkpoint that must resume planning bit for bit."""
        return {} if self._mean is None else {"mean": self._mean.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._mean = state["mean"].to(self.default.device) if "mean" in state else None


class Planner(ABC):
    """Maximises an objective over action sequences inside box bounds.

    Args:
        action_low, action_high: ``A`` bounds of every action.
        horizon: ``H``, the planning horizon.
        num_samples: ``N``, candidates per iteration.
        seed: seeds the planner's own ``torch.Generator``.
    """

    def __init__(
        self,
        action_low: torch.Tensor,
        action_high: torch.Tensor,
        horizon: int,
        num_samples: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        low = torch.as_tensor(action_low, dtype=torch.float32, device=device)
        high = torch.as_tensor(action_high, dtype=torch.float32, device=device)
        if low.shape != high.shape or low.dim() != 1 or not bool((low < high).all()):
            raise ValueError("action bounds must be 1-D with low < high in every dimension")
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError("action bounds must be finite")
        self.low, self.high = low, high
        self.act_dim = int(low.shape[0])
        self.horizon, self.num_samples = horizon, num_samples
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def make_warm_start(self) -> WarmStart:
        """A warm start whose default is the middle of the action box."""
        return WarmStart(self.horizon, (self.low + self.high) / 2)

    def score(self, objective: Objective, actions: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Returns ``N`` of ``actions`` (``N x H x A``), non-finite ones replaced by ``-inf``."""
        returns = objective(actions).float()
        bad = ~torch.isfinite(returns)
        nonfinite = int(bad.sum())
        if nonfinite:
            returns = returns.masked_fill(bad, float("-inf"))
        return returns, nonfinite

    @abstractmethod
    def plan(self, objective: Objective, warm_start: WarmStart) -> PlanResult:
        """Solve one planning problem; updates ``warm_start`` with the new plan."""
