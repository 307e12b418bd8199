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
        """Statistics of raw ``N x O`` obs, ``N x A`` act and ``N x O`` next obs.

        Transitions with a non-finite number are left out (one would make every statistic NaN, and every
        parameter fitted under them); the replay buffer never holds any, so this only guards other callers.
        """
        finite = torch.isfinite(obs).all(-1) & torch.isfinite(act).all(-1) & torch.isfinite(next_obs).all(-1)
        if not bool(finite.all()):
            obs, act, next_obs = obs[finite], act[finite], next_obs[finite]
        if obs.shape[0] < 2:
            raise ValueError("normalizer needs at least 2 transitions with finite numbers")
        obs, act, next_obs = obs.double(), act.double(), next_obs.double()
        delta = next_obs - obs

        def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.mean(0).float(), x.std(0).clamp_min(_MIN_STD).float()

        (om, os_), (am, as_), (dm, ds) = stats(obs), stats(act), stats(delta)
        return Normalizer(om, os_, am, as_, dm, ds)

    # A dimension that never varied in the data (std at the floor) is one the environment sets, not the
    # physics: a command weight constant within every training episode. Dividing by its floored std turns
    # the first change of command (a task switch inside a trial) into an input or target of 1e6, which
    # wrecks a gradient step; such a dimension is read as 0 and its delta is neither predicted nor scored.
    @staticmethod
    def _inverse(std: torch.Tensor) -> torch.Tensor:
        return torch.where(std > 2 * _MIN_STD, 1.0 / std, torch.zeros_like(std))

    @property
    def obs_scale(self) -> torch.Tensor:
        """``O``: 1 / obs_std, 0 where the observation never varied."""
        return self._inverse(self.obs_std)

    @property
    def act_scale(self) -> torch.Tensor:
        """``A``: 1 / act_std, 0 where the action never varied."""
        return self._inverse(self.act_std)

    @property
    def delta_scale(self) -> torch.Tensor:
        """``O``: 1 / delta_std, 0 where the delta never varied (the normalized target is 0 there)."""
        return self._inverse(self.delta_std)

    @property
    def delta_gain(self) -> torch.Tensor:
        """``O``: delta_std, 0 where the delta never varied (the predicted delta is delta_mean there)."""
        return torch.where(self.delta_std > 2 * _MIN_STD, self.delta_std, torch.zeros_like(self.delta_std))

    def normalize_inputs(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """``... x O`` obs and ``... x A`` act -> ``... x (O + A)`` network input."""
        return torch.cat([(obs - self.obs_mean) * self.obs_scale, (act - self.act_mean) * self.act_scale], dim=-1)

    def target(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """``... x O``: the normalized delta a network is trained to output."""
        return (next_obs - obs - self.delta_mean) * self.delta_scale

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).clone() for k in self.__dataclass_fields__}

    @staticmethod
    def from_state_dict(state: dict[str, torch.Tensor]) -> Normalizer:
        missing = set(Normalizer.__dataclass_fields__) - set(state)
        if missing:
            raise KeyError(f"normalizer state lacks {sorted(missing)}")
        return Normalizer(**{k: state[k].float() for k in Normalizer.__dataclass_fields__})

    def is_finite(self) -> bool:
        """Whether every statistic is finite."""
        return all(bool(torch.isfinite(getattr(self, k)).all()) for k in self.__dataclass_fields__)

    def to(self, device: torch.device | str) -> Normalizer:
        return Normalizer(**{k: getattr(self, k).to(device) for k in self.__dataclass_fields__})
