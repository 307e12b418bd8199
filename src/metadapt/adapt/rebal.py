"""ReBAL at run time: the recurrent context carried forward step by step; planning with it fixed.

The learner keeps the GRU state, advances it by one step per observed
transition, and hands the planner ``MLPDynamics`` parameters with the context
folded into the first layer's bias (``RecurrentDynamics.planning_params``), so
the context is broadcast across all candidates at no cost.
"""

from __future__ import annotations

import torch

from metadapt.adapt.base import StepInfo
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
        """Only the window's newest transition (``window[-1:]``) advances the context."""
        newest = window[-1:]
        with torch.no_grad():
            self.h = self.model.context(self.rec_params, newest.obs, newest.act, newest.next_obs, self.h)
            self._params = self.model.planning_params(self.rec_params, self.h)
        return StepInfo({"context_norm": float(self.h.norm())})

    def params(self) -> Params:
        return self._params
