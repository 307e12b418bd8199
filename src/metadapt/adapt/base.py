"""The protocol every online learner follows; the planner never knows which one it serves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from metadapt.types import Params


@dataclass(frozen=True)
class StepInfo:
    """What a learner did on one step, as scalars (or short strings) for ``metrics.csv``."""

    metrics: dict[str, float | str] = field(default_factory=dict)


def split_window(x: torch.Tensor, obs_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``K x (O + A)`` window inputs -> (``K x O`` states, ``K x A`` actions)."""
    return x[:, :obs_dim], x[:, obs_dim:]


@runtime_checkable
class OnlineLearner(Protocol):
    """Adapts parameters from a stream of windows.

    ``observe`` receives the latest window: ``x`` is ``K x (O + A)`` (the K
    previous states and actions, oldest first) and ``y`` is ``K x O`` (the
    states that followed them). Early in an episode K may be smaller.
    """

    def reset(self) -> None:
        """Forget the trial's adaptation (called at the start of a trial)."""

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> StepInfo:
        """Update from the latest window."""

    def params(self) -> Params:
        """The parameters the planner should use now."""
