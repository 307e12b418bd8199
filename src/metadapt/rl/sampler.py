"""Sampling episodes of many tasks at once through a Gymnasium vector environment.

One call collects ``E`` episodes of ``H`` steps for each of ``B`` tasks
(``B x E x H`` tensors, ``Episodes``). The environments are any
``gymnasium.vector.VectorEnv``: a native batched one (2D navigation steps all
its points as one array operation), or MuJoCo tasks through
``gymnasium.vector.SyncVectorEnv`` / ``AsyncVectorEnv`` (``make_vector_env``).
No process pool of our own: Gymnasium's async vector env is the parallel path.

Each sub-environment is given its task with ``envs.set_attr("next_task", ...)``
(``metadapt.envs.base.TaskEnv.next_task``: the task of every later reset), then
all are reset with consecutive seeds. Per-task policy parameters (a stacked
dict, ``B x ...``) act on their own task's sub-environments in one batched
forward pass: the ``B * E`` episodes are laid out task-major over the vector
env in rounds, whole tasks per round when the vector env holds a multiple of
``E`` sub-environments, one task's episodes per round when ``E`` is a multiple
of its size.

Continuous actions are in normalised units: the policy's action ``a`` is
clipped to ``[-1, 1]`` and mapped onto the Box's bounds before ``step``
(``to_env_action``; rllab's ``normalize``, which every MAML-RL environment of
the original was wrapped in), so a standard deviation of 1 spans the action
range whatever its scale. Log-probabilities are of the unmapped action. With
``normalize_actions=False`` the action is only clipped to the bounds.

An episode that terminates early has ``mask`` 0 after its last step;
whatever the vector env does after that (auto-reset) is never recorded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metadapt.models.policy import Policy
from metadapt.types import Params

VECTOR_MODES = ("auto", "sync", "async")


@dataclass
class Episodes:
    """``B`` tasks x ``E`` episodes x ``H`` steps of experience.

    ``obs``: ``B x E x H x O`` (the state each action was taken in); ``act``:
    ``B x E x H x A`` (continuous, unclipped) or ``B x E x H`` (discrete
    indices); ``reward`` and ``mask``: ``B x E x H`` (mask 1 on steps taken).
    ``tasks``: the ``B`` task specs. ``info``: ``{key: B x E x H}`` floats of the
    step infos ``sample_episodes`` was asked to record, e.g. ``upside_down`` to see
    how a return was earned (NaN where a step's info lacked the key and on steps
    not taken). Read from the vector env's top-level infos, Gymnasium's default
    next-step autoreset; a same-step autoreset env moves the last step's info
    into ``final_info``, which is not read.
    """

    obs: torch.Tensor
    act: torch.Tensor
    reward: torch.Tensor
    mask: torch.Tensor
    tasks: list[Any]
    info: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return int(self.obs.shape[0])

    def returns(self) -> torch.Tensor:
        """``B x E`` undiscounted episode returns."""
        return (self.reward * self.mask).sum(-1)

    def mean_return(self) -> float:
        return float(self.returns().mean())

    def steps(self) -> int:
        return int(self.mask.sum())

    def info_mean(self, key: str, rows: torch.Tensor | None = None) -> float | None:
        """The mean of a recorded info over the steps taken (of the tasks ``rows``, a ``B`` bool mask; all
        tasks when ``None``); ``None`` when the key was not recorded or no step reported it."""
        if key not in self.info:
            return None
        values, mask = self.info[key], self.mask
        if rows is not None:
            values, mask = values[rows], mask[rows]
        seen = (mask > 0) & torch.isfinite(values)
        return float(values[seen].double().mean()) if bool(seen.any()) else None


def make_vector_env(env_id: str, num_envs: int, mode: str = "auto", kwargs: Mapping[str, Any] | None = None,
                    ) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_id`` as one vector env.

    ``mode``: ``"sync"`` or ``"async"`` (Gymnasium's vector envs over
    ``gym.make``), or ``"auto"``: the environment's own batched vector env
    when it registers one (``vector_entry_point``), else sync.
    """
    if mode not in VECTOR_MODES:
        raise ValueError(f"vector mode must be one of {', '.join(VECTOR_MODES)}, got {mode!r}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    kwargs = dict(kwargs or {})
    if mode == "auto":
        spec = gym.spec(env_id)
        mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, **kwargs)


def to_env_action(act: np.ndarray, low: np.ndarray, high: np.ndarray, normalize: bool = True) -> np.ndarray:
    """A policy's ``... x A`` action as the env takes it: ``[-1, 1]`` mapped onto ``[low, high]`` (clipped
    first), or, without ``normalize``, clipped to the bounds."""
    if normalize:
        return low + (np.clip(act, -1.0, 1.0) + 1.0) * 0.5 * (high - low)
    return np.clip(act, low, high)


def _info_column(infos: Mapping[str, Any], key: str, n: int) -> np.ndarray:
    """``n`` floats of ``key`` from a vector env's step infos (NaN for sub-environments that did not report it:
    Gymnasium marks those that did in ``infos["_" + key]``)."""
    out = np.full(n, np.nan)
    if key in infos:
        values = np.asarray(infos[key], dtype=np.float64).reshape(n)
        present = np.asarray(infos.get("_" + key, np.ones(n, dtype=bool)), dtype=bool).reshape(n)
        out[present] = values[present]
    return out


def _rounds(num_tasks: int, per_task: int, num_envs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(task index, episode index) of each sub-environment, round by round (``n`` each; the last round's
    spare sub-environments repeat its last episode and are discarded)."""
    total = num_tasks * per_task
    flat = np.arange(total)
    out = []
    for start in range(0, total, num_envs):
        ids = flat[start:start + num_envs]
        ids = np.concatenate([ids, np.full(num_envs - len(ids), ids[-1])])
        out.append((ids // per_task, ids % per_task))
    return out


def _policy_view(params: Params, tasks: np.ndarray, per_task: int) -> tuple[Params, tuple[int, ...]]:
    """The parameters acting on one round's sub-environments, and how to shape their observations.

    Returns (params, lead shape) such that ``obs.reshape(*lead, O)`` lines
    the sub-environments up with the parameters: stacked ``b x ...`` with
    ``b x k`` observations when the round holds whole tasks, one task's
    parameters for one task's episodes, or one row per sub-environment.
    """
    if not _stacked(params):
        return params, (len(tasks),)
    n = len(tasks)
    first = int(tasks[0])
    if np.all(tasks == first):
        return {k: v[first] for k, v in params.items()}, (n,)
    if n % per_task == 0 and np.array_equal(tasks, np.repeat(tasks[::per_task], per_task)):
        idx = torch.as_tensor(tasks[::per_task].copy())
        return {k: v[idx] for k, v in params.items()}, (n // per_task, per_task)
    idx = torch.as_tensor(tasks.copy())
    return {k: v[idx] for k, v in params.items()}, (n, 1)


def _stacked(params: Params) -> bool:
    return params["layers.0.weight"].dim() == 3


def sample_episodes(
    envs: gym.vector.VectorEnv,
    policy: Policy,
    params: Params,
    tasks: Sequence[Any],
    episodes_per_task: int,
    horizon: int,
    seed: int,
    deterministic: bool = False,
    normalize_actions: bool = True,
    info_keys: Sequence[str] = (),
) -> Episodes:
    """``E`` episodes of ``H`` steps of each task (``B x E x H``, see ``Episodes``).

    Args:
        envs: the vector env (any size; see the module docstring for the layout).
        policy: acts with ``params``: one dict for every task, or stacked
            ``B x ...`` (task ``b`` acts with row ``b``, e.g. adapted parameters).
        tasks: ``B`` task specs (catalog names or parameter mappings).
        episodes_per_task: ``E``.
        horizon: ``H``, steps per episode (episodes ending earlier are masked).
        seed: sub-environment resets use consecutive seeds from here, and the
            policy's action noise a generator seeded with it.
        deterministic: act with the policy's mode instead of sampling.
        normalize_actions: Box actions in ``[-1, 1]`` units (see the module docstring).
        info_keys: step-info keys to record as ``Episodes.info`` (numbers, e.g. ``upside_down``).
    """
    if episodes_per_task < 1 or horizon < 1:
        raise ValueError(f"episodes_per_task and horizon must be >= 1, got {episodes_per_task}, {horizon}")
    num_tasks, n = len(tasks), envs.num_envs
    if _stacked(params) and (rows := next(iter(params.values())).shape[0]) != num_tasks:
        raise ValueError(f"stacked parameters for {rows} tasks, {num_tasks} tasks given")
    space = envs.single_action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    low = high = None
    if isinstance(space, gym.spaces.Box):
        low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    device = next(iter(params.values())).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    shape = (num_tasks, episodes_per_task, horizon)
    obs_out = torch.zeros(*shape, obs_dim)
    act_out = torch.zeros(shape, dtype=torch.long) if discrete else torch.zeros(*shape, policy.act_dim)
    rew_out, mask_out = torch.zeros(shape), torch.zeros(shape)
    info_out = {key: torch.full(shape, math.nan) for key in info_keys}
    # Each round is recorded step-major into these (``H x n x ...``; every row a round reads it has written) and
    # scattered into the outputs once: an advanced-index write per step and array was a fifth of the sampler's
    # time at rllab's cheetah period.
    obs_buf = torch.zeros(horizon, n, *obs_out.shape[3:], dtype=obs_out.dtype)
    act_buf = torch.zeros(horizon, n, *act_out.shape[3:], dtype=act_out.dtype)
    rew_buf, live_buf = torch.zeros(horizon, n), torch.zeros(horizon, n)
    info_buf = {key: torch.zeros(horizon, n) for key in info_keys}
    for r, (task_idx, ep_idx) in enumerate(_rounds(num_tasks, episodes_per_task, n)):
        envs.set_attr("next_task", [tasks[int(b)] for b in task_idx])
        obs, _ = envs.reset(seed=int(seed) + r * n)
        view, lead = _policy_view(params, task_idx, episodes_per_task)
        alive = np.ones(n, dtype=bool)
        keep = np.ones(n, dtype=bool)
        keep[min(n, num_tasks * episodes_per_task - r * n):] = False  # the last round's spare envs
        ti, ei = torch.as_tensor(task_idx[keep]), torch.as_tensor(ep_idx[keep])
        taken = 0
        for t in range(horizon):
            o = torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(n, obs_dim), device=device)
            with torch.no_grad():
                shaped = o.reshape(*lead, obs_dim)
                a = policy.mode(view, shaped) if deterministic else policy.sample(view, shaped, gen)
                a = a.reshape(n) if discrete else a.reshape(n, -1)
            act_np = a.cpu().numpy()
            obs_buf[t], act_buf[t] = o.cpu(), torch.from_numpy(act_np)
            if low is not None:
                act_np = to_env_action(act_np, low, high, normalize_actions)
            obs, reward, terminated, truncated, infos = envs.step(act_np)
            live = torch.from_numpy(alive.astype(np.float32))
            live_buf[t] = live
            rew_buf[t] = torch.as_tensor(np.asarray(reward, dtype=np.float32)) * live
            for key, buf in info_buf.items():
                column = _info_column(infos, key, n)
                column[~alive] = np.nan  # an ended episode's sub-environment has begun the next one
                buf[t] = torch.from_numpy(column)
            alive &= ~(np.asarray(terminated) | np.asarray(truncated))
            taken = t + 1
            if not alive.any():
                break
        k = torch.from_numpy(np.flatnonzero(keep))
        obs_out[ti, ei, :taken] = obs_buf[:taken, k].transpose(0, 1)
        act_out[ti, ei, :taken] = act_buf[:taken, k].transpose(0, 1)
        rew_out[ti, ei, :taken] = rew_buf[:taken, k].T
        mask_out[ti, ei, :taken] = live_buf[:taken, k].T
        for key, out in info_out.items():
            out[ti, ei, :taken] = info_buf[key][:taken, k].T
    return Episodes(obs_out.to(device), act_out.to(device), rew_out.to(device), mask_out.to(device), list(tasks),
                    {key: out.to(device) for key, out in info_out.items()})


def sample_tasks(env: gym.Env, num: int, rng: np.random.Generator, split: str = "train") -> list[Mapping[str, Any]]:
    """``num`` task parameter mappings from a metadapt environment's train or test distribution."""
    base = env.unwrapped
    draw = base.sample_train_task if split == "train" else base.sample_test_task
    return [dict(draw(rng).params) for _ in range(num)]
