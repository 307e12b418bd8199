"""The protocol every online learner follows; the planner never knows which one it serves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from metadapt.types import Params, Window


@dataclass(frozen=True)
class StepInfo:
    """What a learner did on one step, as scalars (or short strings) for ``metrics.csv``."""

    metrics: dict[str, float | str] = field(default_factory=dict)


@runtime_checkable
class OnlineLearner(Protocol):
    """Adapts parameters from a stream of windows.

    ``observe`` receives the latest window (``metadapt.types.Window``): the K
    latest steps of the episode, oldest first, ``obs`` ``K x O``, ``act``
    ``K x A`` and ``next_obs`` ``K x O`` (the states that followed), with their
    rewards, ``done`` marks, episode and in-episode step indices. Early in an
    episode K may be smaller.
    """

    def reset(self) -> None:
        """Forget the trial's adaptation (called at the start of a trial)."""

    def observe(self, window: Window) -> StepInfo:
        """Update from the latest window."""

    def params(self) -> Params:
        """The parameters the planner should use now."""
