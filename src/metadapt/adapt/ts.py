"""TS: the meta-trained prior adapted every step from the prior on the last K transitions (k-shot).

This is GrBAL at run time (seed 004) and the TS baseline of seed 000: the
adaptation never accumulates, so nothing is forgotten and nothing is learned
beyond the window.

With ``backtrack > 0`` a step that raises the loss of the very window it was
taken on is backtracked (up to ``backtrack`` halvings of its rate, then the
prior itself). Off the training distribution (a HalfCheetah on its back)
Meta-SGD's learned rates overshoot: the literal step raised the window's loss
in half of those steps, up to 90 times in closed loop and 1e5 times on random
actions. The default is the literal step of the GrBAL code (``backtrack=0``):
the step is meta-trained to lower the loss of the *next* K steps, and on the
held-out disabled joint the 1-3% of steps that raised the past window's loss
(by at most 1.7 times) were still good ones; backtracking them cost most of the
return (docs/results.md, "TS: backtracking the adaptation step").
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
        backtrack: halvings of the rate tried when the adapted parameters' window loss is above the prior's
            (then the prior is kept); 0 takes every step as it comes.
    """

    def __init__(self, model: DynamicsModel, prior: Params, inner_lr: InnerLR, steps: int = 1,
                 backtrack: int = 0) -> None:
        if backtrack < 0:
            raise ValueError(f"backtrack must be >= 0, got {backtrack}")
        self.model, self.steps, self.backtrack = model, steps, backtrack
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
                             SKIPPED: 1.0, "step_scale": math.nan})
        obs, act, y = window.obs, window.act, window.next_obs
        with torch.no_grad():  # torch.func.grad still differentiates the inner loss
            new, before_t = adapt_with_loss(self.model, self.prior, obs, act, y, self.inner_lr, self.steps,
                                            first_order=True)
            finite = params_are_finite(new)
            before, scale = float(before_t), 1.0
            if self.backtrack and finite:
                new, scale = self._backtracked(new, before, obs, act, y)
            if finite:
                self._params = new
            after = float(self.model.transition_loss(self._params, obs, act, y))
        return StepInfo({"window_loss_prior": before, "window_loss_adapted": after, REFUSED: float(not finite),
                         SKIPPED: 0.0, "step_scale": scale})

    def _backtracked(self, new: Params, before: float, obs: torch.Tensor, act: torch.Tensor,
                     y: torch.Tensor) -> tuple[Params, float]:
        """``new`` if it does not raise the window loss above ``before``, else the step with the largest rate
        ``inner_lr / 2^i`` (``i <= backtrack``) that does not, else the prior; and that rate's scale (0: prior)."""
        scale = 1.0
        for _ in range(self.backtrack):
            if float(self.model.transition_loss(new, obs, act, y)) <= before:
                return new, scale
            scale /= 2
            new, _ = adapt_with_loss(self.model, self.prior, obs, act, y, _scaled(self.inner_lr, scale),
                                     self.steps, first_order=True)
        if params_are_finite(new) and float(self.model.transition_loss(new, obs, act, y)) <= before:
            return new, scale
        return self.prior, 0.0

    def params(self) -> Params:
        return self._params


def _scaled(lr: InnerLR, scale: float) -> InnerLR:
    return {k: v * scale for k, v in lr.items()} if isinstance(lr, dict) else lr * scale
