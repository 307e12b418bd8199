"""Environments registered with Gymnasium under ``metadapt/``, and their batched rewards."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from metadapt.errors import MetadaptError
from metadapt.types import RewardFn

_REGISTERED: dict[str, str] = {
    "metadapt/HalfCheetah-v0": "HalfCheetah-v5 with the forward velocity the reward needs in its observation",
}


def register_all() -> None:
    """Register every metadapt environment with Gymnasium (idempotent)."""
    entry_points = {"metadapt/HalfCheetah-v0": "metadapt.envs.halfcheetah:HalfCheetahEnv"}
    for env_id, entry in entry_points.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry, max_episode_steps=1000)


def registered() -> dict[str, str]:
    """Environment id -> one-line description."""
    return dict(_REGISTERED)


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` with errors turned into one readable line."""
    register_all()
    if env_id not in gym.registry:
        known = ", ".join(sorted(_REGISTERED))
        raise MetadaptError(f"unknown environment id '{env_id}' (metadapt environments: {known})")
    try:
        return gym.make(env_id, **kwargs)
    except TypeError as exc:
        raise MetadaptError(f"environment '{env_id}' rejected its keyword arguments: {exc}") from exc
    except gym.error.Error as exc:
        raise MetadaptError(f"environment '{env_id}' could not be made: {exc}") from exc


def get_reward_fn(env: gym.Env) -> RewardFn:
    """The batched ``reward_fn(obs, act, next_obs) -> N`` of a metadapt (or user) environment.

    Looks for a ``reward_fn`` attribute on the unwrapped environment.
    """
    fn = getattr(env.unwrapped, "reward_fn", None)
    if fn is None:
        name = env.spec.id if env.spec else type(env.unwrapped).__name__
        raise MetadaptError(f"environment '{name}' has no batched reward_fn(obs, act, next_obs)")
    return fn


register_all()

__all__ = ["get_reward_fn", "make_env", "register_all", "registered"]
