"""Types shared across metadapt.

``Params`` is the currency between models, learners and planners: a flat dict
from parameter name to tensor, usable with ``torch.func.functional_call``. A
mixture of K models is the same dict with a leading K dimension on every tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

Params = dict[str, torch.Tensor]

RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``reward_fn(obs, act, next_obs) -> reward``: ``N x O, N x A, N x O -> N``."""

Objective = Callable[[torch.Tensor], torch.Tensor]
"""What a planner maximises: action sequences ``N x H x A`` -> returns ``N``."""


@dataclass(frozen=True)
class Transitions:
    """A batch of transitions; every tensor has leading dimension ``N``.

    ``obs``/``next_obs`` are ``N x O``, ``act`` is ``N x A``, ``reward`` is ``N``.
    """

    obs: torch.Tensor
    act: torch.Tensor
    next_obs: torch.Tensor
    reward: torch.Tensor

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def to(self, device: torch.device | str) -> Transitions:
        return Transitions(self.obs.to(device), self.act.to(device), self.next_obs.to(device), self.reward.to(device))


@dataclass(frozen=True)
class TaskBatch:
    """``B`` tasks of a meta-batch: what the inner loop adapts on and what the outer loss scores.

    ``support`` and ``query`` are batches of the model's loss (a tensor or a
    tuple of tensors) with a leading task dimension ``B``: for regression
    ``(x, y)`` as ``B x K x 1``; for N-way K-shot episodes images ``B x NK x C x
    H x W`` with labels ``B x NK``; for dynamics windows ``(obs, act, next_obs)``
    as ``B x M x ...`` (support) and ``B x K x ...`` (query). ``info`` carries
    what generated the tasks (amplitudes, classes, window starts) for reports;
    no learner reads it.
    """

    support: Any
    query: Any
    info: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        first = self.support[0] if isinstance(self.support, tuple | list) else self.support
        return int(first.shape[0])


class TaskSampler(Protocol):
    """Draws meta-batches of tasks: trajectory windows, regression tasks, N-way K-shot episodes, rollouts."""

    def sample(self, num_tasks: int, generator: torch.Generator, split: str = "train") -> TaskBatch:
        """``num_tasks`` tasks of ``split`` (``"train"``, ``"val"`` or ``"test"``) drawn with ``generator``."""
        ...
