"""MB: a model trained without meta-learning and never adapted at run time."""

from __future__ import annotations

from metadapt.adapt.base import StepInfo
from metadapt.types import Params, Window


class StaticLearner:
    """Plans with fixed parameters; ``observe`` changes nothing."""

    def __init__(self, params: Params) -> None:
        self._params = {k: v.detach() for k, v in params.items()}

    def reset(self) -> None:
        pass

    def observe(self, window: Window) -> StepInfo:
        return StepInfo()

    def params(self) -> Params:
        return self._params
