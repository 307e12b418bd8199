"""Types shared across metadapt.

``Params`` is the currency between models, learners and planners: a flat dict
from parameter name to tensor, usable with ``torch.func.functional_call``. A
mixture of K models is the same dict with a leading K dimension on every tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
