"""``metadapt bench sampling``: how close the meta-RL sampler comes to the raw simulator, measured in one run.

Three measurements on the same vector env (HalfCheetah by default, Gymnasium's
async vector env with one process per core):

- raw: random actions stepped through the vector env, no policy, no recording;
- sampler: ``rl.sampler.sample_episodes`` collecting a meta-batch (tasks x
  episodes) with the 100-100 Gaussian policy acting, every step recorded;
- one TRPO meta-iteration of MAML-RL (sampling before and after the inner
  step, the outer step), with its share spent sampling.

Raw and sampler runs alternate ``repeats`` times and the best of each is
kept (the machine is shared). The last line is
``sampling_fraction_of_sim=<sampler steps per second / raw steps per second>``.
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


def bench_sampling(env_id: str = "metadapt/HalfCheetahDir-v0", num_envs: int | None = None, mode: str = "async",
                   tasks: int = 4, episodes: int = 4, horizon: int = 200, repeats: int = 3, seed: int = 0) -> float:
    """Print the three measurements; returns the sampler's fraction of the raw simulator's speed."""
    n = num_envs or max(1, min(os.cpu_count() or 1, 8))
    envs = make_vector_env(env_id, n, mode)
    probe = make_env(env_id)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(envs.single_action_space.shape))
    policy = GaussianMLPPolicy(obs_dim, act_dim, (100, 100))
    params = policy.init_params(torch.Generator().manual_seed(seed))
    task_list = sample_tasks(probe, tasks, np.random.default_rng(seed))
    total = tasks * episodes * horizon
    print(f"{env_id}: {mode} vector env of {n}, {tasks} tasks x {episodes} episodes x {horizon} steps "
          f"({total:,} steps), torch threads {torch.get_num_threads()}", flush=True)
    raw, sampled = [], []
    try:
        for r in range(repeats):
            raw.append(_raw_steps_per_second(envs, total // n, seed + r))
            began = time.perf_counter()
            episodes_ = sample_episodes(envs, policy, params, task_list, episodes, horizon, seed + r)
            sampled.append(episodes_.steps() / (time.perf_counter() - began))
            print(f"repeat {r}: raw {raw[-1]:,.0f} steps/s, sampler {sampled[-1]:,.0f} steps/s", flush=True)
        learner = MAMLRL(policy, params, MAMLRLSettings())

        def sample(p: Params, t: Any, s: int) -> Episodes:
            return sample_episodes(envs, policy, p, t, episodes, horizon, s)

        t0 = time.perf_counter()
        rollouts = learner.sample(sample, task_list, seed)
        t1 = time.perf_counter()
        learner.outer_step(rollouts)
        t2 = time.perf_counter()
    finally:
        envs.close()
        probe.close()
    fraction = max(sampled) / max(raw)
    print(f"raw simulator: {max(raw):,.0f} steps/s; sampler with the policy: {max(sampled):,.0f} steps/s")
    print(f"one TRPO meta-iteration ({tasks} tasks x {episodes} episodes, before and after one inner step): "
          f"{t2 - t0:.2f} s, {100 * (t1 - t0) / (t2 - t0):.0f}% sampling")
    print(f"sampling_fraction_of_sim={fraction:.3f}")
    return fraction
