"""The shipped environments: exact batched rewards, Gymnasium compliance, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from metadapt.envs import get_reward_fn, make_env, registered
from metadapt.errors import MetadaptError

# Their rewards read a task hidden from the observation (goal, velocity, direction), so one reward_fn call cannot
# score a rollout whose task changes; tests/test_rl_envs.py checks them task by task.
TASK_REWARD_IDS = {"metadapt/PointNav-v0", "metadapt/HalfCheetahVel-v0", "metadapt/HalfCheetahDir-v0",
                   "metadapt/AntDir-v0"}
# Image environments whose reward is not a function of the observations: the model predicts it (Meta-GCG).
NO_REWARD_FN_IDS = {"metadapt/RotatingMaze-v0"}


@pytest.mark.parametrize("env_id", sorted(set(registered()) - TASK_REWARD_IDS - NO_REWARD_FN_IDS))
def test_batched_reward_reproduces_step_rewards(env_id):
    # Tasks switch every 30-80 steps, so the rewards of every kind of task (and of the switches) are checked.
    env = make_env(env_id, schedule={"type": "random", "min_len": 30, "max_len": 80})
    reward_fn = get_reward_fn(env)
    rng = np.random.default_rng(0)
    obs_l, act_l, next_l, rew_l = [], [], [], []
    obs, _ = env.reset(seed=0)
    for t in range(400):
        # random actions, then a smooth gait-like signal that drives the robot fast
        dim = env.action_space.shape[0]
        act = rng.uniform(-1, 1, dim) if t < 200 else np.sin(0.3 * t + np.arange(dim))
        act = act.astype(np.float32)
        nxt, r, term, trunc, info = env.step(act)
        assert "task_id" in info and "task" in info
        obs_l.append(obs), act_l.append(act), next_l.append(nxt), rew_l.append(r)
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
    pred = reward_fn(torch.tensor(np.array(obs_l)), torch.tensor(np.array(act_l)), torch.tensor(np.array(next_l)))
    np.testing.assert_allclose(pred.numpy(), np.array(rew_l), atol=1e-5, rtol=0)
    # float32 inputs, as the planner uses them, stay close too
    pred32 = reward_fn(torch.tensor(np.array(obs_l)).float(), torch.tensor(np.array(act_l)),
                       torch.tensor(np.array(next_l)).float())
    np.testing.assert_allclose(pred32.numpy(), np.array(rew_l), atol=1e-4, rtol=0)


@pytest.mark.parametrize("env_id", sorted(registered()))
def test_passes_gymnasium_env_checker(env_id):
    check_env(make_env(env_id).unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", sorted(registered()))
def test_deterministic_for_a_seed(env_id):
    def roll(seed: int) -> np.ndarray:
        env = make_env(env_id)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for _ in range(50):
            obs, *_ = env.step(env.action_space.sample())
            out.append(obs)
        return np.array(out)

    np.testing.assert_array_equal(roll(3), roll(3))
    assert not np.array_equal(roll(3), roll(4))


def test_halfcheetah_matches_gymnasium_v5_physics():
    import gymnasium as gym

    ours, theirs = make_env("metadapt/HalfCheetah-v0"), gym.make("HalfCheetah-v5")
    a, _ = ours.reset(seed=1)
    b, _ = theirs.reset(seed=1)
    np.testing.assert_array_equal(a[:17], b)
    rng = np.random.default_rng(1)
    for _ in range(100):
        u = rng.uniform(-1, 1, 6)
        a, ra, *_ = ours.step(u)
        b, rb, *_ = theirs.step(u)
    np.testing.assert_allclose(a[:17], b, atol=1e-9)
    assert abs(ra - rb) < 1e-9


def test_unknown_env_id_is_a_clear_error():
    with pytest.raises(MetadaptError, match="unknown environment id 'metadapt/Nope-v0'"):
        make_env("metadapt/Nope-v0")
