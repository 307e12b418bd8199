"""Does bfloat16 planning change what the agent does? (issue 6's agreement check)

Runs a trained MB model's agent (random shooting, float32) on HalfCheetah to
collect ``--problems`` real states; at each, draws one candidate set (N x H x A),
scores it with the float32 and the bfloat16 rollout, and ranks the sequence the
bfloat16 planner would pick under the float32 model. Prints the fraction of
problems where that rank is in the top 1%, and the last line
``bf16_top1pct_fraction=<x>``.

    python benchmarks/bf16_agreement.py --model runs/bar/mb_s0/model.pt
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

from metadapt.adapt.static import StaticLearner
from metadapt.agent import MPCAgent
from metadapt.envs import get_reward_fn, make_env
from metadapt.experiments.jobs.rollout import rollout
from metadapt.meta.checkpoint import load_model
from metadapt.models.rollout import rollout_returns
from metadapt.planning import RandomShooting


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an MB model.pt trained on metadapt/HalfCheetah-v0")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, params = load_model(args.model)
    env = make_env("metadapt/HalfCheetah-v0", max_episode_steps=10 * args.problems)
    reward_fn = get_reward_fn(env)
    space = env.action_space
    assert isinstance(space, gym.spaces.Box)
    low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)
    planner = RandomShooting(low, high, horizon=args.horizon, num_samples=args.num_samples, seed=args.seed)
    agent = MPCAgent(model, StaticLearner(params), planner, reward_fn)
    f32, bf16 = model.fold(params, torch.float32), model.fold(params, torch.bfloat16)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ranks: list[int] = []

    class Ranked:
        """The agent, ranking at every state the bf16 pick of one candidate set under the float32 model."""

        def act(self, obs: np.ndarray) -> np.ndarray:
            state = torch.as_tensor(obs, dtype=torch.float32)
            cands = low + (high - low) * torch.rand(args.num_samples, args.horizon, low.numel(), generator=gen)
            with torch.no_grad():
                r32 = rollout_returns(f32, state, cands, reward_fn)
                r16 = rollout_returns(bf16, state, cands, reward_fn)
            pick = int(torch.argmax(r16))
            ranks.append(int((r32 > r32[pick]).sum()))  # 0 = the float32 best
            return agent.act(obs)

        def reset(self) -> None:
            agent.reset()

        def new_episode(self) -> None:
            agent.new_episode()

        def observe(self, obs: np.ndarray, act: np.ndarray, nxt: np.ndarray, reward: float, done: bool) -> dict:
            return agent.observe(obs, act, nxt, reward, done)

    rollout(env, Ranked(), args.problems, args.seed)
    ranks_arr = np.array(ranks)
    top = float((ranks_arr < max(1, args.num_samples // 100)).mean())
    print(f"problems={len(ranks)}  median rank of the bf16 pick under float32={np.median(ranks_arr):.0f} "
          f"(of {args.num_samples})  same pick={float((ranks_arr == 0).mean()):.2f}")
    print(f"bf16_top1pct_fraction={top:.3f}")
    return top


if __name__ == "__main__":
    main()
