"""TS: the meta-trained prior adapted every step from the prior on the last K transitions (k-shot).

This is GrBAL at run time (seed 004) and the TS baseline of seed 000: the
adaptation never accumulates, so nothing is forgotten and nothing is learned
beyond the window.
"""

from __future__ import annotations

import math

import torch

from metadapt.adapt.base import REFUSED, SKIPPED, StepInfo, params_are_finite, window_is_finite
from metadapt.meta.maml import InnerLR, adapt_with_loss
from metadapt.models.base import DynamicsModel
from metadapt.types import Params, Window


class KShotLearner:
    """``observe`` re-adapts the prior on the window; ``params`` are the adapted parameters.

    Args:
        model: the dynamics model (its normalizer is used for the loss).
        prior: the meta-trained parameters ``theta*``.
        inner_lr: the inner learning rate (a float, or per-entry tensors for Meta-SGD).
        steps: gradient steps per adaptation.
    """

    def __init__(self, model: DynamicsModel, prior: Params, inner_lr: InnerLR, steps: int = 1) -> None:
        self.model, self.steps = model, steps
        self.prior = {k: v.detach() for k, v in prior.items()}
        self.inner_lr = {k: v.detach() for k, v in inner_lr.items()} if isinstance(inner_lr, dict) else inner_lr
        self._params = self.prior

    def reset(self) -> None:
        # A fresh trial plans with the prior itself, never with parameters adapted in the last one.
        self._params = self.prior

    def observe(self, window: Window) -> StepInfo:
        """Adapt the prior on the window's ``obs``, ``act`` and ``next_obs`` (raw observations).

        A window with a non-finite number is skipped and an adaptation that would give non-finite
        parameters refused: either way the parameters of the last good window stay (losses: NaN when
        skipped; ``window_loss_adapted`` is then of the parameters kept).
        """
        if not window_is_finite(window):
            return StepInfo({"window_loss_prior": math.nan, "window_loss_adapted": math.nan, REFUSED: 0.0,
                             SKIPPED: 1.0})
        obs, act, y = window.obs, window.act, window.next_obs
        with torch.no_grad():  # torch.func.grad still differentiates the inner loss
            new, before_t = adapt_with_loss(self.model, self.prior, obs, act, y, self.inner_lr, self.steps,
                                            first_order=True)
            finite = params_are_finite(new)
            if finite:
                self._params = new
            before = float(before_t)
            after = float(self.model.transition_loss(self._params, obs, act, y))
        return StepInfo({"window_loss_prior": before, "window_loss_adapted": after, REFUSED: float(not finite),
                         SKIPPED: 0.0})

    def params(self) -> Params:
        return self._params
