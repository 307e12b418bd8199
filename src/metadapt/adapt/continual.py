"""GS and DE: one gradient step per time step from the previous parameters (continual adaptation).

GS (seed 000) starts from the meta-trained prior; DE (dynamic evaluation,
Krause et al. 2017) starts from a model trained without meta-learning. Both
keep what they learn, which is how they overfit to the recent task and forget
the others.
"""

from __future__ import annotations

import math

import torch

from metadapt.adapt.base import REFUSED, SKIPPED, StepInfo, params_are_finite, window_is_finite
from metadapt.meta.maml import InnerLR, adapt_with_loss
from metadapt.models.base import DynamicsModel
from metadapt.types import Params, Window


class ContinualLearner:
    """``observe`` takes ``steps`` SGD steps on the window from the current parameters.

    Args:
        model: the dynamics model.
        init: the parameters a trial starts from (a prior for GS, an MB model for DE).
        lr: the step size (seed 000 Table 2: 0.01).
        steps: gradient steps per time step.
    """

    def __init__(self, model: DynamicsModel, init: Params, lr: InnerLR = 0.01, steps: int = 1) -> None:
        self.model, self.steps = model, steps
        self.init = {k: v.detach() for k, v in init.items()}
        self.lr = {k: v.detach() for k, v in lr.items()} if isinstance(lr, dict) else lr
        self._params = self.init

    def reset(self) -> None:
        self._params = self.init

    def observe(self, window: Window) -> StepInfo:
        """``steps`` SGD steps on the window's ``obs``, ``act`` and ``next_obs`` (raw observations).

        A window with a non-finite number is skipped (its loss is reported as NaN); a step that would leave
        non-finite parameters is refused: the parameters stay as they were.
        """
        if not window_is_finite(window):
            return StepInfo({"window_loss": math.nan, REFUSED: 0.0, SKIPPED: 1.0})
        obs, act, y = window.obs, window.act, window.next_obs
        with torch.no_grad():
            new, before = adapt_with_loss(self.model, self._params, obs, act, y, self.lr, self.steps, first_order=True)
            finite = params_are_finite(new)
        if finite:
            self._params = new
        return StepInfo({"window_loss": float(before), REFUSED: float(not finite), SKIPPED: 0.0})

    def params(self) -> Params:
        return self._params
