"""Lifelong meta-learning on the agent's own stream (seed 001, Algorithm 1): the learning half of Meta-GCG.

The agent acts, appends to its stream, and between steps this module

- trains the initial parameters ``theta``: Meta-GCG takes MAML outer steps on tasks that are windows of the
  stream (the first half adapted on, the second half scored; ``meta/outer.py``'s ``MAML`` over
  ``data/stream.py``'s ``window_tasks``); GCG takes plain Adam steps on sequences drawn from the whole stream
  (the same model, the same stream, no meta-learning);
- adapts: ``theta* = theta - alpha grad L(theta, newest steps)`` (``meta/inner.py``), what the agent acts with
  until the next adaptation. GCG and the oracle never adapt.

Non-finite numbers follow the rules of every other fit (``meta/fit.py``, ``adapt/base.py``): an optimizer step whose
loss is not finite, or that would leave ``theta`` non-finite, is refused (``theta`` and Adam's moments stay as they
were) and counted (``refused_steps``, and ``refused_in_a_row`` for the caller to stop a run that keeps
diverging); an adaptation whose ``theta*``, or its loss, is not finite is refused (the agent acts with ``theta``)
and counted (``refused_adaptations``).

It knows nothing of images, mazes or planners: any functional model with ``loss(params, (frames, actions,
rewards))`` and any stream with ``window_tasks`` / ``sample_sequences`` / ``last`` will do.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from metadapt.meta.fit import finite
from metadapt.meta.inner import LossFn, inner_adapt
from metadapt.meta.outer import MAML
from metadapt.types import Params, TaskBatch

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Stream(Protocol):
    """What the learner reads of the agent's stream (``data/stream.py``'s ``FrameStream``)."""

    def __len__(self) -> int: ...

    def window_tasks(self, num_tasks: int, window: int, batch: int, length: int,
                     generator: torch.Generator, *, within_episode: bool = False) -> TaskBatch: ...

    def sample_sequences(self, lo: int, hi: int, n: int, length: int, generator: torch.Generator) -> Batch: ...

    def last(self, steps: int, length: int) -> Batch: ...


@dataclass(frozen=True)
class LifelongSettings:
    """Algorithm 1's numbers (Appendix A's defaults).

    ``meta``: MAML outer steps on windows (Meta-GCG), else Adam on sequences of the stream (GCG).
    ``adapt``: adapt online every ``adapt_every`` steps on the newest ``adapt_window`` steps.
    ``within_episode``: training windows lie inside one episode (episodic tasks: each reset draws a new one).
    """

    meta: bool = True
    adapt: bool = True
    inner_lr: float = 1e-2
    inner_steps: int = 3
    first_order: bool = False
    outer_lr: float = 1e-4
    meta_batch: int = 8
    batch: int = 32
    window: int = 400
    sequence_length: int = 5
    adapt_window: int = 10
    adapt_steps: int = 3
    within_episode: bool = False


class LifelongLearner:
    """``theta`` trained on the stream, and ``theta*`` adapted from it on the newest steps.

    Args:
        loss_fn: ``loss_fn(params, (frames, actions, rewards)) -> scalar`` (frames ``N x K x H x W``,
            actions and rewards ``N x L``).
        params: the initial ``theta`` (copied).
        settings: the numbers.
        device: where the sampled batches go (the parameters' device).
    """

    def __init__(self, loss_fn: LossFn, params: Params, settings: LifelongSettings,
                 device: torch.device | str = "cpu") -> None:
        self.loss_fn, self.settings, self.device = loss_fn, settings, torch.device(device)
        # GCG is MAML's outer optimizer with no inner step: one Adam over the same parameters, one state format.
        self.maml = MAML(loss_fn, params, settings.inner_lr, steps=max(1, settings.inner_steps),
                         first_order=settings.first_order, outer_lr=settings.outer_lr)
        self.adapted: Params | None = None
        self.refused_steps = 0  # optimizer steps refused for a non-finite loss or theta, in all
        self.refused_in_a_row = 0  # ... since the last step taken (the caller's measure of a persistent divergence)
        self.refused_adaptations = 0  # adaptations whose theta* (or its loss) was not finite, in all
        self.adapt_refused = False  # whether the latest ``adapt`` was refused

    @property
    def theta(self) -> Params:
        """The trained initial parameters (leaves of the optimizer: do not modify)."""
        return self.maml.params

    def train_step(self, stream: Stream, generator: torch.Generator) -> float:
        """One optimizer step on data drawn from the stream with ``generator``; returns its loss.

        Meta-GCG: the MAML outer loss of ``meta_batch`` windows (query loss after ``inner_steps`` inner steps on
        the support half). GCG: the loss of ``meta_batch x batch`` sequences drawn uniformly from the stream,
        as many as Meta-GCG's outer loss scores (its query halves; the support halves only adapt).

        A step whose loss is not finite, or after which ``theta`` is not, is refused: ``theta`` and Adam's state
        go back to what they were before it (``refused_steps`` and ``refused_in_a_row`` count it); the loss is
        returned as it was.
        """
        s = self.settings
        # Kept to undo the step: its gradient (of a NaN loss, or one that overflows theta) would leave theta and
        # every Adam moment non-finite for good. A copy of theta and the moments, small beside the step itself.
        before = ({k: v.detach().clone() for k, v in self.maml.params.items()},
                  copy.deepcopy(self.maml.optimizer.state_dict()))
        if s.meta:
            tasks = stream.window_tasks(s.meta_batch, s.window, s.batch, s.sequence_length, generator,
                                        within_episode=s.within_episode)
            loss = self.maml.step(_tasks_to(tasks, self.device))
        else:
            batch = _to(stream.sample_sequences(0, len(stream), s.meta_batch * s.batch, s.sequence_length,
                                                generator), self.device)
            value = self.loss_fn(self.maml.params, batch)
            self.maml.optimizer.zero_grad(set_to_none=True)
            value.backward()
            self.maml.optimizer.step()
            loss = float(value.detach())
        if math.isfinite(loss) and finite(self.maml.params):
            self.refused_in_a_row = 0
            return loss
        with torch.no_grad():
            for k, v in self.maml.params.items():
                v.copy_(before[0][k])
        self.maml.optimizer.load_state_dict(before[1])
        self.refused_steps += 1
        self.refused_in_a_row += 1
        return loss

    def adapt_on(self, batch: Batch, params: Params | None = None) -> Params:
        """``params`` (default ``theta``) after ``adapt_steps`` SGD steps on ``batch``, detached."""
        start = {k: v.detach() for k, v in (params or self.theta).items()}
        with torch.enable_grad():
            fast = inner_adapt(self.loss_fn, start, _to(batch, self.device), self.settings.inner_lr,
                               self.settings.adapt_steps, first_order=True)
        return {k: v.detach() for k, v in fast.items()}

    def adapt(self, stream: Stream) -> Params | None:
        """Adapt ``theta`` on the newest ``adapt_window`` steps; None when they hold no sequence (the stream's
        ``last`` is empty, e.g. right after a reset) or when the adapted parameters, or their loss on those steps,
        are not finite (refused: ``adapt_refused`` is set and ``refused_adaptations`` counts it). The result is what
        ``acting_params`` returns until the next adaptation or ``reset``; after a refusal that is ``theta``."""
        batch = stream.last(self.settings.adapt_window, self.settings.sequence_length)
        adapted = None if batch[1].shape[0] == 0 else self.adapt_on(batch)
        # Finite parameters can still be too large to predict anything (a rate that overshoots by 1e30 leaves
        # them finite and every prediction NaN): their loss on the steps they were adapted on must be finite too.
        self.adapt_refused = adapted is not None and not (finite(adapted) and math.isfinite(self.loss(adapted, batch)))
        if self.adapt_refused:
            self.refused_adaptations += 1
            adapted = None
        self.adapted = adapted
        return self.adapted

    def reset(self) -> None:
        """Forget ``theta*`` (a new episode: adapting on the last one's steps would be stale)."""
        self.adapted = None

    def acting_params(self) -> Params:
        """What the planner scores sequences with: ``theta*`` when adapting and adapted, else ``theta``."""
        if self.settings.adapt and self.adapted is not None:
            return self.adapted
        return {k: v.detach() for k, v in self.theta.items()}

    def loss(self, params: Params, batch: Batch) -> float:
        with torch.no_grad():
            return float(self.loss_fn(params, _to(batch, self.device)))

    def state_dict(self) -> dict[str, Any]:
        adapted = {} if self.adapted is None else {k: v.clone() for k, v in self.adapted.items()}
        return {"maml": self.maml.state_dict(), "adapted": adapted,
                "refused": {"total": self.refused_steps, "in_a_row": self.refused_in_a_row}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.maml.load_state_dict(state["maml"])
        self.adapted = ({k: v.to(self.device) for k, v in state["adapted"].items()} if state["adapted"] else None)
        refused = state.get("refused", {})  # absent from checkpoints written before steps were refused
        self.refused_steps, self.refused_in_a_row = int(refused.get("total", 0)), int(refused.get("in_a_row", 0))


def _to(batch: Batch, device: torch.device) -> Batch:
    return tuple(t.to(device) for t in batch)  # type: ignore[return-value]


def _tasks_to(tasks: TaskBatch, device: torch.device) -> TaskBatch:
    return TaskBatch(_to(tasks.support, device), _to(tasks.query, device), tasks.info)
