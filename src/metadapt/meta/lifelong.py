"""Lifelong meta-learning on the agent's own stream (seed 001, Algorithm 1): the learning half of Meta-GCG.

The agent acts, appends to its stream, and between steps this module

- trains the initial parameters ``theta``: Meta-GCG takes MAML outer steps on tasks that are windows of the
  stream (the first half adapted on, the second half scored; ``meta/outer.py``'s ``MAML`` over
  ``data/stream.py``'s ``window_tasks``); GCG takes plain Adam steps on sequences drawn from the whole stream
  (the same model, the same stream, no meta-learning);
- adapts: ``theta* = theta - alpha grad L(theta, newest steps)`` (``meta/inner.py``), what the agent acts with
  until the next adaptation. GCG and the oracle never adapt.

It knows nothing of images, mazes or planners: any functional model with ``loss(params, (frames, actions,
rewards))`` and any stream with ``window_tasks`` / ``sample_sequences`` / ``last`` will do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

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

    @property
    def theta(self) -> Params:
        """The trained initial parameters (leaves of the optimizer: do not modify)."""
        return self.maml.params

    def train_step(self, stream: Stream, generator: torch.Generator) -> float:
        """One optimizer step on data drawn from the stream with ``generator``; returns its loss.

        Meta-GCG: the MAML outer loss of ``meta_batch`` windows (query loss after ``inner_steps`` inner steps on
        the support half). GCG: the loss of ``meta_batch x batch`` sequences drawn uniformly from the stream,
        as many as Meta-GCG's outer loss scores (its query halves; the support halves only adapt).
        """
        s = self.settings
        if s.meta:
            tasks = stream.window_tasks(s.meta_batch, s.window, s.batch, s.sequence_length, generator,
                                        within_episode=s.within_episode)
            return self.maml.step(_tasks_to(tasks, self.device))
        batch = _to(stream.sample_sequences(0, len(stream), s.meta_batch * s.batch, s.sequence_length, generator),
                    self.device)
        loss = self.loss_fn(self.maml.params, batch)
        self.maml.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.maml.optimizer.step()
        return float(loss.detach())

    def adapt_on(self, batch: Batch, params: Params | None = None) -> Params:
        """``params`` (default ``theta``) after ``adapt_steps`` SGD steps on ``batch``, detached."""
        start = {k: v.detach() for k, v in (params or self.theta).items()}
        with torch.enable_grad():
            fast = inner_adapt(self.loss_fn, start, _to(batch, self.device), self.settings.inner_lr,
                               self.settings.adapt_steps, first_order=True)
        return {k: v.detach() for k, v in fast.items()}

    def adapt(self, stream: Stream) -> Params | None:
        """Adapt ``theta`` on the newest ``adapt_window`` steps; None when they hold no sequence (the stream's
        ``last`` is empty, e.g. right after a reset). The result is what ``acting_params`` returns until the next
        adaptation or ``reset``."""
        batch = stream.last(self.settings.adapt_window, self.settings.sequence_length)
        self.adapted = None if batch[1].shape[0] == 0 else self.adapt_on(batch)
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
        return {"maml": self.maml.state_dict(), "adapted": adapted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.maml.load_state_dict(state["maml"])
        self.adapted = ({k: v.to(self.device) for k, v in state["adapted"].items()} if state["adapted"] else None)


def _to(batch: Batch, device: torch.device) -> Batch:
    return tuple(t.to(device) for t in batch)  # type: ignore[return-value]


def _tasks_to(tasks: TaskBatch, device: torch.device) -> TaskBatch:
    return TaskBatch(_to(tasks.support, device), _to(tasks.query, device), tasks.info)
