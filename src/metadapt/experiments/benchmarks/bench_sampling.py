"""``metadapt bench sampling``: how close the meta-RL sampler comes to the raw simulator, measured in one run.

Three measurements (HalfCheetah by default, Gymnasium's async vector env on
every core):

- raw: random actions stepped through the vector env, no policy, no recording;
- sampler: ``rl.sampler.sample_episodes`` collecting a meta-batch (tasks x
  episodes) with the 100-100 Gaussian policy acting, every step recorded;
- one TRPO meta-iteration of MAML-RL (sampling before and after the inner
  step, the outer step), with its share spent sampling.

Raw and sampler runs alternate ``repeats`` times on a vector env of one
sub-environment per core and on one of two per core (``sizes``; with two per
core the policy acts for twice the sub-environments per forward pass, and the
raw loop's processes overlap their pipe waits). The best of each is kept (the
machine is shared), and the last line is ``sampling_fraction_of_sim=<the
sampler's best steps per second / the raw simulator's best>``, each at the size
it runs best at.
"""

from __future__ import annotations

import os
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metadapt.envs import make_env
from metadapt.models.policy import GaussianMLPPolicy
from metadapt.rl.maml_rl import MAMLRL, MAMLRLSettings
from metadapt.rl.sampler import Episodes, make_vector_env, sample_episodes, sample_tasks
from metadapt.types import Params


def _raw_steps_per_second(envs: gym.vector.VectorEnv, steps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    space = envs.action_space
    envs.reset(seed=seed)
    actions = rng.uniform(space.low, space.high, size=(steps, *space.shape)).astype(space.dtype)
    began = time.perf_counter()
    for t in range(steps):
        envs.step(actions[t])
    return steps * envs.num_envs / (time.perf_counter() - began)


def _alternate(envs: gym.vector.VectorEnv, policy: GaussianMLPPolicy, params: Params, task_list: list[Any],
               episodes: int, horizon: int, repeats: int, seed: int) -> tuple[float, float]:
    """The best raw and sampler steps per second of ``repeats`` alternating runs on ``envs``."""
    n, total = envs.num_envs, len(task_list) * episodes * horizon
    raw, sampled = [], []
    for r in range(repeats):
        raw.append(_raw_steps_per_second(envs, max(1, total // n), seed + r))
        began = time.perf_counter()
        episodes_ = sample_episodes(envs, policy, params, task_list, episodes, horizon, seed + r)
        sampled.append(episodes_.steps() / (time.perf_counter() - began))
        print(f"  repeat {r}: raw {raw[-1]:,.0f} steps/s, sampler {sampled[-1]:,.0f} steps/s", flush=True)
    return max(raw), max(sampled)


def bench_sampling(env_id: str = "metadapt/HalfCheetahDir-v0", num_envs: int | None = None, mode: str = "async",
                   tasks: int = 4, episodes: int = 4, horizon: int = 200, repeats: int = 3, seed: int = 0,
                   sizes: tuple[int, ...] | None = None) -> float:
    """Print the three measurements; returns the sampler's fraction of the raw simulator's speed.

    ``sizes``: the vector env sizes measured (default: one and two sub-environments per core, or ``num_envs``
    alone when given)."""
    cores = max(1, min(os.cpu_count() or 1, 8))
    sizes = sizes or ((num_envs,) if num_envs else (cores, 2 * cores))
    probe = make_env(env_id)
    obs_dim = int(np.prod(probe.observation_space.shape))
    act_dim = int(np.prod(probe.action_space.shape))
    policy = GaussianMLPPolicy(obs_dim, act_dim, (100, 100))
    params = policy.init_params(torch.Generator().manual_seed(seed))
    task_list = sample_tasks(probe, tasks, np.random.default_rng(seed))
    total = tasks * episodes * horizon
    print(f"{env_id}: {mode} vector envs of {' and '.join(map(str, sizes))} sub-environments; {tasks} tasks x "
          f"{episodes} episodes x {horizon} steps ({total:,} steps); torch threads {torch.get_num_threads()}",
          flush=True)
    best: dict[int, tuple[float, float]] = {}
    envs = None
    try:
        for n in sizes:
            print(f"vector env of {n}:", flush=True)
            envs = make_vector_env(env_id, n, mode)
            best[n] = _alternate(envs, policy, params, task_list, episodes, horizon, repeats, seed)
            if n != sizes[-1]:
                envs.close()
        assert envs is not None
        learner = MAMLRL(policy, params, MAMLRLSettings())

        def sample(p: Params, t: Any, s: int) -> Episodes:
            return sample_episodes(envs, policy, p, t, episodes, horizon, s)

        t0 = time.perf_counter()
        rollouts = learner.sample(sample, task_list, seed)
        t1 = time.perf_counter()
        learner.outer_step(rollouts)
        t2 = time.perf_counter()
    finally:
        if envs is not None:
            envs.close()
        probe.close()
    raw_n = max(best, key=lambda n: best[n][0])
    sampler_n = max(best, key=lambda n: best[n][1])
    fraction = best[sampler_n][1] / best[raw_n][0]
    print(f"raw simulator: {best[raw_n][0]:,.0f} steps/s (vector env of {raw_n}); sampler with the policy: "
          f"{best[sampler_n][1]:,.0f} steps/s (vector env of {sampler_n})")
    print(f"one TRPO meta-iteration ({tasks} tasks x {episodes} episodes, before and after one inner step, "
          f"vector env of {sizes[-1]}): "
          f"{t2 - t0:.2f} s, {100 * (t1 - t0) / (t2 - t0):.0f}% sampling")
    print(f"sampling_fraction_of_sim={fraction:.3f}")
    return fraction
