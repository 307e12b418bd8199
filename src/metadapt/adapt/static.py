"""MB: a model trained without meta-learning and never adapted at run time."""

from __future__ import annotations

from metadapt.adapt.base import SKIPPED, StepInfo, window_is_finite
from metadapt.types import Params, Window


class StaticLearner:
    """Plans with fixed parameters; ``observe`` changes nothing (it only counts the windows it could not have
    learned from, as every learner does)."""

    def __init__(self, params: Params) -> None:
        self._params = {k: v.detach() for k, v in params.items()}

    def reset(self) -> None:
        pass

    def observe(self, window: Window) -> StepInfo:
        return StepInfo({SKIPPED: float(not window_is_finite(window))})

    def params(self) -> Params:
        return self._params
