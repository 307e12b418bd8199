"""Environments registered with Gymnasium under ``metadapt/``, and their batched rewards."""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

from metadapt.errors import MetadaptError
from metadapt.types import RewardFn

# id -> (entry point, default episode length)
REGISTRY: dict[str, tuple[str, int]] = {
    "metadapt/HalfCheetah-v0": ("metadapt.envs.halfcheetah:HalfCheetahEnv", 1000),
    "metadapt/HalfCheetahMalfunction-v0": ("metadapt.envs.halfcheetah_malfunction:HalfCheetahMalfunctionEnv", 1000),
    "metadapt/HalfCheetahDisabledJoint-v0": ("metadapt.envs.halfcheetah_disabled:HalfCheetahDisabledJointEnv", 1000),
    "metadapt/HalfCheetahTerrain-v0": ("metadapt.envs.halfcheetah_terrain:HalfCheetahTerrainEnv", 1000),
    "metadapt/HalfCheetahPier-v0": ("metadapt.envs.halfcheetah_pier:HalfCheetahPierEnv", 1000),
    "metadapt/AntCrippled-v0": ("metadapt.envs.ant_crippled:AntCrippledEnv", 1000),
    "metadapt/Crawler-v0": ("metadapt.envs.crawler:CrawlerEnv", 1000),
    "metadapt/PointNav-v0": ("metadapt.envs.point_nav:PointNavEnv", 100),
    "metadapt/HalfCheetahVel-v0": ("metadapt.envs.goal_locomotion:HalfCheetahVelEnv", 200),
    "metadapt/HalfCheetahDir-v0": ("metadapt.envs.goal_locomotion:HalfCheetahDirEnv", 200),
    "metadapt/AntDir-v0": ("metadapt.envs.goal_locomotion:AntDirEnv", 200),
}


# id -> its own batched vector env (``gym.make_vec(id, n, vectorization_mode="vector_entry_point")``)
VECTOR_ENTRY: dict[str, str] = {
    "metadapt/PointNav-v0": "metadapt.envs.point_nav:PointNavVectorEnv",
}


def register_all() -> None:
    """Register every metadapt environment with Gymnasium (idempotent)."""
    for env_id, (entry, steps) in REGISTRY.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry, max_episode_steps=steps,
                         vector_entry_point=VECTOR_ENTRY.get(env_id))


def env_class(env_id: str) -> type:
    """The class behind a registered metadapt id."""
    if env_id not in REGISTRY:
        raise MetadaptError(f"unknown environment id '{env_id}' (metadapt environments: {', '.join(REGISTRY)})")
    module, name = REGISTRY[env_id][0].split(":")
    return getattr(importlib.import_module(module), name)


def observation_version(env_id: str | None) -> int:
    """The version of a metadapt environment's observation layout (1 for ids outside metadapt's registry)."""
    return env_class(env_id).OBS_VERSION if env_id in REGISTRY else 1


def env_obs_version(env: gym.Env) -> int:
    """The observation-layout version of an environment instance (``OBS_VERSION``, 1 if it sets none)."""
    return int(getattr(env.unwrapped, "OBS_VERSION", 1))


def registered() -> dict[str, str]:
    """Environment id -> one-line description (the first line of its docstring)."""
    return {i: (env_class(i).__doc__ or "").strip().splitlines()[0] for i in REGISTRY}


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` with errors turned into one readable line."""
    register_all()
    if env_id not in gym.registry:
        raise MetadaptError(f"unknown environment id '{env_id}' (metadapt environments: {', '.join(REGISTRY)})")
    try:
        return gym.make(env_id, **kwargs)
    except MetadaptError as exc:
        raise type(exc)(f"environment '{env_id}': {exc}") from None
    except (TypeError, ValueError) as exc:
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


def objectives(env: gym.Env) -> tuple[str, ...]:
    """The planning objectives ``env`` offers: ``reward`` and the names in its ``OBJECTIVES``."""
    return ("reward", *getattr(env.unwrapped, "OBJECTIVES", {}))


def get_objective(env: gym.Env, name: str = "reward") -> RewardFn:
    """The batched planning objective ``name`` of ``env`` (``N x O, N x A, N x O -> N``, higher is better).

    ``reward`` is the environment's own batched reward (``get_reward_fn``); any
    other name is one of the environment's ``OBJECTIVES`` (the HalfCheetahs'
    ``authors``: the planning cost of the GrBAL and MOLe code). One
    ``MetadaptError`` line lists the choices when ``env`` has no such objective.
    """
    if name == "reward":
        return get_reward_fn(env)
    method = getattr(env.unwrapped, "OBJECTIVES", {}).get(name)
    if method is None:
        env_name = env.spec.id if env.spec else type(env.unwrapped).__name__
        raise MetadaptError(f"environment '{env_name}' has no planning objective '{name}' "
                            f"(it offers: {', '.join(objectives(env))})")
    return getattr(env.unwrapped, method)


register_all()

__all__ = ["REGISTRY", "env_class", "get_objective", "get_reward_fn", "make_env", "objectives", "register_all",
           "registered"]
