"""Normalization statistics, always recomputed from all raw data seen so far.

The buffer stores raw transitions; a ``Normalizer`` is a cheap summary derived
from them. Nothing is ever stored pre-normalized, so statistics never go stale
(a trap of the original GrBAL code, where old data kept stale statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MIN_STD = 1e-6


@dataclass(frozen=True)
class Normalizer:
    """Mean and standard deviation of observations, actions and state deltas.

    Every field is a 1-D tensor: ``O`` for obs and delta, ``A`` for act.
    """

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    act_mean: torch.Tensor
    act_std: torch.Tensor
    delta_mean: torch.Tensor
    delta_std: torch.Tensor

    @staticmethod
    def identity(obs_dim: int, act_dim: int) -> Normalizer:
        zo, za = torch.zeros(obs_dim), torch.zeros(act_dim)
        return Normalizer(zo, torch.ones(obs_dim), za, torch.ones(act_dim), zo.clone(), torch.ones(obs_dim))

    @staticmethod
    def from_data(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> Normalizer:
        """Statistics of raw ``N x O`` obs, ``N x A`` act and ``N x O`` next obs."""
        if obs.shape[0] < 2:
            raise ValueError("normalizer needs at least 2 transitions")
        obs, act, next_obs = obs.double(), act.double(), next_obs.double()
        delta = next_obs - obs

        def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.mean(0).float(), x.std(0).clamp_min(_MIN_STD).float()

        (om, os_), (am, as_), (dm, ds) = stats(obs), stats(act), stats(delta)
        return Normalizer(om, os_, am, as_, dm, ds)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).clone() for k in self.__dataclass_fields__}

    @staticmethod
    def from_state_dict(state: dict[str, torch.Tensor]) -> Normalizer:
        missing = set(Normalizer.__dataclass_fields__) - set(state)
        if missing:
            raise KeyError(f"normalizer state lacks {sorted(missing)}")
        return Normalizer(**{k: state[k].float() for k in Normalizer.__dataclass_fields__})

    def to(self, device: torch.device | str) -> Normalizer:
        return Normalizer(**{k: getattr(self, k).to(device) for k in self.__dataclass_fields__})
