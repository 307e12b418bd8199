"""Simulation speed of every environment against its unperturbed robot, measured side by side.

Each environment runs 1,000 random-action steps on a test schedule that switches
tasks (so switching is timed too); its unperturbed robot runs the same number of
steps in the same round. Rounds are interleaved; the times shown are the best of ``--repeats`` and the
ratio is the median of the per-round ratios, which is what survives a noisy
shared machine. Prints seconds per 1,000 steps, the ratio to the unperturbed
robot, and ``max_slowdown=<x>`` last.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/envs.py --repeats 5
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

from metadapt.envs import make_env
from metadapt.experiments.jobs.rollout import Callback, rollout

# env id, its schedule for timing, its unperturbed robot (id, kwargs)
CASES = [
    ("metadapt/HalfCheetahMalfunction-v0", "alternating_100", ("metadapt/HalfCheetah-v0", {})),
    ("metadapt/HalfCheetahDisabledJoint-v0", {"type": "alternating", "tasks": ["normal", "joint_0"], "period": 100},
     ("metadapt/HalfCheetah-v0", {})),
    ("metadapt/HalfCheetahTerrain-v0", {"type": "alternating", "tasks": ["basin", "hill", "gentle", "steep"],
                                        "period": 250}, ("metadapt/HalfCheetah-v0", {})),
    ("metadapt/HalfCheetahPier-v0", {"type": "alternating", "tasks": ["bouncy", "stiff"], "period": 250},
     ("metadapt/HalfCheetah-v0", {})),
    # The pier simulates five more bodies than the plain cheetah; against itself, only the damping changes.
    ("metadapt/HalfCheetahPier-v0", {"type": "alternating", "tasks": ["bouncy", "stiff"], "period": 250},
     ("metadapt/HalfCheetahPier-v0", {"schedule": "calm"})),
    ("metadapt/AntCrippled-v0", {"type": "alternating", "tasks": ["normal", "leg_3"], "period": 100},
     ("Ant-v5", {"include_cfrc_ext_in_observation": False})),
    ("metadapt/Crawler-v0", {"type": "alternating", "tasks": ["normal", "leg_0", "turn_left"], "period": 100},
     ("metadapt/Crawler-v0", {"schedule": "normal"})),
]


class _Replay:
    """Plays pre-drawn actions in order."""

    def __init__(self, actions: np.ndarray) -> None:
        self.actions = iter(actions)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return next(self.actions)


def rollout_seconds(env: gym.Env, steps: int, seed: int) -> float:
    """CPU seconds of ``steps`` random-action steps (resets included, as a trial would)."""
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, *env.action_space.shape)).astype(np.float32)
    start = [0.0]

    class Clock(Callback):
        def on_episode_start(self, episode: int, obs: object, info: dict) -> None:
            if episode == 0:  # timed from after the first reset
                # CPU time of this process: less sensitive to other jobs on a shared machine
                start[0] = time.process_time()

    rollout(env, _Replay(actions), steps, seed, callbacks=[Clock()])
    return time.process_time() - start[0]


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args(argv)
    worst = 0.0
    print(f"{'environment':<38}{'s/1000 steps':>13}{'robot s/1000':>14}{'ratio':>8}   unperturbed robot")
    for env_id, schedule, (base_id, base_kwargs) in CASES:
        env = make_env(env_id, schedule=schedule, max_episode_steps=10 * args.steps)
        base = make_env(base_id, max_episode_steps=10 * args.steps, **base_kwargs)
        ours, theirs = [], []
        for r in range(args.repeats):
            ours.append(rollout_seconds(env, args.steps, r))
            theirs.append(rollout_seconds(base, args.steps, r))
        t, b = min(ours) * 1000 / args.steps, min(theirs) * 1000 / args.steps
        # Each round's two runs are adjacent in time and see the same load: the median of per-round
        # ratios is steadier than the ratio of the minima on a busy machine.
        ratio = float(np.median(np.array(ours) / np.array(theirs)))
        worst = max(worst, ratio)
        label = base_id + (f" {base_kwargs}" if base_kwargs else "")
        print(f"{env_id:<38}{t:>13.3f}{b:>14.3f}{ratio:>8.2f}   {label}")
    print(f"max_slowdown={worst:.2f}")
    return worst


if __name__ == "__main__":
    main()
