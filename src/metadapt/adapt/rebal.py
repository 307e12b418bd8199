"""ReBAL at run time: the recurrent context carried forward step by step; planning with it fixed.

The learner keeps the GRU state, advances it by one step per observed
transition, and hands the planner ``MLPDynamics`` parameters with the context
folded into the first layer's bias (``RecurrentDynamics.planning_params``), so
the context is broadcast across all candidates at no cost.
"""

from __future__ import annotations

import torch

from metadapt.adapt.base import REFUSED, SKIPPED, StepInfo, window_is_finite
from metadapt.models.recurrent import RecurrentDynamics
from metadapt.types import Params, Window


class RecurrentLearner:
    """``observe`` feeds the newest transition of the window to the GRU; ``params`` are the folded MLP."""

    def __init__(self, model: RecurrentDynamics, params: Params) -> None:
        self.model = model
        self.rec_params = {k: v.detach() for k, v in params.items()}
        self.reset()

    def reset(self) -> None:
        self.h = torch.zeros(self.model.context_dim, device=next(iter(self.rec_params.values())).device)
        self._params = self.model.planning_params(self.rec_params, self.h)

    def observe(self, window: Window) -> StepInfo:
        """Only the window's newest transition (``window[-1:]``) advances the context.

        A newest transition with a non-finite number is skipped, and a context that would come out
        non-finite is refused: the context stays as it was.
        """
        newest = window[-1:]
        if not window_is_finite(newest):
            return StepInfo({"context_norm": float(self.h.norm()), REFUSED: 0.0, SKIPPED: 1.0})
        with torch.no_grad():
            h = self.model.context(self.rec_params, newest.obs, newest.act, newest.next_obs, self.h)
            finite = bool(torch.isfinite(h).all())  # the context is C numbers: the plain check is cheap
            if finite:
                self.h = h
                self._params = self.model.planning_params(self.rec_params, self.h)
        return StepInfo({"context_norm": float(self.h.norm()), REFUSED: float(not finite), SKIPPED: 0.0})

    def params(self) -> Params:
        return self._params
