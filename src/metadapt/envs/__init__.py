"""Environments registered with Gymnasium under ``metadapt/``, and their batched rewards.

``make_env`` makes any registered Gymnasium id, or a user's own environment
written ``module:id`` (Gymnasium's form: importing ``module`` registers
``id``; the folder holding it must be on ``PYTHONPATH``). Perturbation tasks
(``metadapt.envs.perturb``) are installed with ``make_env(id, perturbations=...)``.
A planner needs a batched reward ``reward_fn(obs, act, next_obs) -> N``: the
environment's own (``env.unwrapped.reward_fn``) or one named ``module:function``
(``load_reward_fn``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import gymnasium as gym

from metadapt.errors import ConfigError, MetadaptError
from metadapt.types import RewardFn

if TYPE_CHECKING:
    from metadapt.envs.base import TaskEnv

# id -> (entry point, default episode length; None: no TimeLimit, the environment ends its episodes itself)
REGISTRY: dict[str, tuple[str, int | None]] = {
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
    "metadapt/RotatingMaze-v0": ("metadapt.envs.rotating_maze:RotatingMazeEnv", None),
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


def _import(module: str, what: str) -> Any:
    """Import a user's ``module`` (one ``MetadaptError`` line naming it when that fails, whatever the reason)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MetadaptError(f"{what}: cannot import module '{module}' ({exc}; is the folder holding it on "
                            "PYTHONPATH?)") from None
    except Exception as exc:  # the user's module failed while importing: one line, not its traceback
        raise MetadaptError(f"{what}: importing module '{module}' failed ({type(exc).__name__}: {exc})") from None


def registered_id(env_id: str) -> str:
    """The Gymnasium id behind ``env_id``: itself, or for ``module:id`` the ``id`` that importing ``module``
    registered. One ``MetadaptError`` line for an unknown id, a module that cannot be imported, or a module
    that does not register its id."""
    register_all()
    if ":" not in env_id:
        if env_id not in gym.registry:
            raise MetadaptError(f"unknown environment id '{env_id}' (metadapt environments: {', '.join(REGISTRY)}; "
                                "your own: module:id, where importing module registers id)")
        return env_id
    module, _, name = env_id.partition(":")
    if not module or not name or ":" in name:
        raise MetadaptError(f"environment id '{env_id}' is not of the form module:id (e.g. mypkg.envs:MyEnv-v0)")
    _import(module, f"environment '{env_id}'")
    if name not in gym.registry:
        raise MetadaptError(f"environment '{env_id}': importing module '{module}' did not register '{name}' (the "
                            f"module must call gymnasium.register(id='{name}', entry_point=...) when imported)")
    return name


def make_env(env_id: str, perturbations: Mapping[str, Any] | None = None, **kwargs: Any) -> gym.Env:
    """``gym.make`` with errors turned into one readable line.

    ``env_id``: a registered id or ``module:id`` (``registered_id``).
    ``perturbations``: named tasks that edit the MuJoCo model
    (``metadapt.envs.perturb``), usable in the ``schedule`` and
    ``task_sampler`` keyword arguments like the environment's own tasks; they
    are checked against the model here, before the first step.
    """
    gym_id = registered_id(env_id)
    schedule = sampler = None
    if perturbations:  # the schedule may name them: parsed once they are installed
        schedule, sampler = kwargs.pop("schedule", None), kwargs.pop("task_sampler", None)
    try:
        env = gym.make(gym_id, **kwargs)
    except MetadaptError as exc:
        raise type(exc)(f"environment '{env_id}': {exc}") from None
    except (TypeError, ValueError) as exc:
        raise MetadaptError(f"environment '{env_id}' rejected its keyword arguments: {exc}") from exc
    except gym.error.Error as exc:
        raise MetadaptError(f"environment '{env_id}' could not be made: {exc}") from exc
    if not perturbations:
        return env
    from metadapt.envs.perturb import perturb

    try:
        return perturb(env, perturbations, schedule, sampler)
    except MetadaptError as exc:
        env.close()
        raise type(exc)(f"environment '{env_id}': {exc}") from None


def task_env(env: gym.Env) -> TaskEnv | None:
    """The layer of ``env`` that switches tasks (a metadapt ``TaskEnv``, or a ``PerturbedEnv`` wrapper around a
    user's environment), ``None`` when it has none. Its ``schedule``, ``task`` and ``next_task`` are the tasks'."""
    from metadapt.envs.base import TaskEnv

    layer: Any = env
    while not isinstance(layer, TaskEnv):
        if not isinstance(layer, gym.Wrapper):
            return None
        layer = layer.env
    return layer


def load_reward_fn(path: str, obs_dim: int | None = None, act_dim: int | None = None) -> RewardFn:
    """The batched reward ``module:function`` names: a module-level function, or a dotted path to any callable
    that needs no instance (``module:MyEnv.reward_fn`` for a ``@staticmethod``; a plain method would lack its
    ``self``).

    With ``obs_dim`` and ``act_dim`` it is tried once on a batch of two zero
    transitions (``2 x O, 2 x A, 2 x O``) and must return 2 rewards. One
    ``ConfigError`` line for a path that is malformed, cannot be imported, names
    nothing, names something not callable, or a function that fails that try.
    """
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ConfigError(f"reward function '{path}' is not of the form module:function")
    try:
        obj = _import(module, f"reward function '{path}'")
    except MetadaptError as exc:
        raise ConfigError(str(exc)) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"reward function '{path}': module '{module}' has no '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"reward function '{path}' is a {type(obj).__name__}, not a function "
                          "reward_fn(obs, act, next_obs) -> N")
    if obs_dim is not None and act_dim is not None:
        import torch

        obs, act = torch.zeros(2, obs_dim), torch.zeros(2, act_dim)
        try:
            out = obj(obs, act, obs)
        except Exception as exc:  # the user's function: one line naming it
            raise ConfigError(f"reward function '{path}' failed on a batch of 2 zero transitions (2 x {obs_dim}, "
                              f"2 x {act_dim}, 2 x {obs_dim}): {type(exc).__name__}: {exc}") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2,):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"reward function '{path}' must return a tensor of N rewards for N transitions: "
                              f"given 2 it returned {shape}")
    return obj


def get_reward_fn(env: gym.Env) -> RewardFn:
    """The batched ``reward_fn(obs, act, next_obs) -> N`` of a metadapt (or user) environment.

    Looks for a ``reward_fn`` attribute on the unwrapped environment.
    """
    fn = getattr(env.unwrapped, "reward_fn", None)
    if fn is None:
        name = env.spec.id if env.spec else type(env.unwrapped).__name__
        raise MetadaptError(f"environment '{name}' has no batched reward_fn(obs, act, next_obs) (give it one, or "
                            "name one in the config: env.reward_fn: module:function)")
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

__all__ = ["REGISTRY", "env_class", "get_objective", "get_reward_fn", "load_reward_fn", "make_env", "objectives",
           "register_all", "registered", "registered_id", "task_env"]
