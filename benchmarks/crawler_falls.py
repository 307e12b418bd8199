"""How often the crawler ends up on its back under aggressive random actions, per motor gear.

MPC picks actions near the bounds and holds them for several steps; a robot that
such actions throw on its back spends its trial there (docs/results.md,
"Crawler"). For every gear this script drives ``metadapt/Crawler-v0`` (righting
off, task ``normal``) with random actions held for ``--hold`` steps, drawn
uniformly in [-1, 1] and as bang-bang +-1, and prints the fraction of steps the
torso's up axis points below the horizon and the fraction of episodes that end
there. It also prints the forward speed of the best of a few open-loop tripod
gaits, so that a gear that cannot flip the robot is also seen to walk it, and
with ``--mpc-steps N`` the speed that random shooting reaches in N steps when
its model is the simulator itself (``--mpc-samples`` sequences of 10 steps
scored on copies of the state): what a perfect learned model would allow.

    python benchmarks/crawler_falls.py --gears 80 30 20 [--mpc-steps 100]

Last line: ``on_back_fraction_bang=<x>`` for the last gear (the shipped one by default).
"""

from __future__ import annotations

import argparse
import sys

import gymnasium as gym
import mujoco
import numpy as np

from metadapt.envs import make_env
from metadapt.errors import MetadaptError
from metadapt.experiments.jobs.rollout import Callback, Step, rollout


def _env(gear: float):
    env = make_env("metadapt/Crawler-v0", schedule={"type": "constant", "task": "normal"}, right_after=None)
    env.unwrapped.model.actuator_gear[:, 0] = gear
    return env


class _HeldRandom:
    """Random actions held for ``hold`` steps: uniform in [-1, 1] or bang-bang +-1 (``mode``)."""

    def __init__(self, mode: str, hold: int, rng: np.random.Generator) -> None:
        self.mode, self.hold, self.rng = mode, hold, rng
        self.reset()

    def reset(self) -> None:
        self.t, self.action = 0, np.zeros(12)

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.t % self.hold == 0:
            self.action = self.rng.uniform(-1, 1, 12) if self.mode == "uniform" else self.rng.choice([-1.0, 1.0], 12)
        self.t += 1
        return self.action


def on_back(gear: float, mode: str, episodes: int, steps: int, hold: int, seed: int) -> tuple[float, float]:
    """(fraction of steps, fraction of episode ends) with the torso's up axis below the horizon."""
    env, rng = _env(gear), np.random.default_rng(seed)
    back = ends = 0

    class Count(Callback):
        def on_step(self, step: Step) -> None:
            nonlocal back, ends
            back += step.info["torso_up"] < 0
            ends += step.done and step.info["torso_up"] < 0  # the episode's last step

    # Episodes of exactly `steps` steps, each from reset(seed + e) with the held actions restarted.
    rollout(env, _HeldRandom(mode, hold, rng), episodes * steps, lambda e: seed + e, episode_length=steps,
            callbacks=[Count()], reset_each_episode=True)
    return back / (episodes * steps), ends / episodes


class _Tripod:
    """Open-loop tripod gait: legs 0, 2, 4 against 1, 3, 5, hips and knees sinusoidal."""

    side = np.array([1, 1, 1, -1, -1, -1])
    group = np.array([0, np.pi, 0, np.pi, 0, np.pi])  # legs 0, 2, 4 in phase; 1, 3, 5 opposite

    def __init__(self, period: int, knee_lag: float) -> None:
        self.period, self.knee_lag, self.t = period, knee_lag, 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        phase = 2 * np.pi * self.t / self.period + self.group
        action = np.empty(12)
        action[0::2], action[1::2] = self.side * np.sin(phase), np.sin(phase + self.knee_lag)
        self.t += 1
        return action


class _StartX(Callback):
    """The torso's x position after the reset."""

    def __init__(self, env: gym.Env) -> None:
        self.env, self.x = env, 0.0

    def on_episode_start(self, episode: int, obs: object, info: dict) -> None:
        self.x = float(self.env.unwrapped.data.qpos[0])


def best_gait_speed(gear: float, steps: int = 300) -> float:
    """Forward speed (m/s) of the best tripod gait: legs 0, 2, 4 against 1, 3, 5, hips and knees sinusoidal."""
    env, best = _env(gear), -np.inf
    for period in (4, 6, 8, 10, 14):
        for knee_lag in (0.5 * np.pi, -0.5 * np.pi):
            x0 = _StartX(env)
            rollout(env, _Tripod(period, knee_lag), steps, 0, reset_on_done=False, callbacks=[x0])
            best = max(best, (env.unwrapped.data.qpos[0] - x0.x) / (steps * env.unwrapped.dt))
    return float(best)


class _SimulatorMPC:
    """Random shooting whose candidates are scored on copies of the simulator's state (no model error)."""

    def __init__(self, env: gym.Env, samples: int, horizon: int, rng: np.random.Generator) -> None:
        self.u, self.samples, self.horizon, self.rng = env.unwrapped, samples, horizon, rng
        self.scratch = mujoco.MjData(self.u.model)

    def act(self, obs: np.ndarray) -> np.ndarray:
        u, scratch = self.u, self.scratch
        plans = self.rng.uniform(-1, 1, (self.samples, self.horizon, 12))
        scores = np.empty(self.samples)
        for i, plan in enumerate(plans):
            scratch.qpos[:], scratch.qvel[:] = u.data.qpos, u.data.qvel
            start = float(scratch.qpos[0])
            for a in plan:
                scratch.ctrl[:] = a
                mujoco.mj_step(u.model, scratch, nstep=u.frame_skip)
            # the environment's reward for walking straight, summed over the horizon
            scores[i] = (scratch.qpos[0] - start) / u.dt - u._ctrl_cost_weight * float(np.square(plan).sum())
        return plans[int(np.argmax(scores)), 0]


def perfect_model_mpc_speed(gear: float, steps: int, samples: int, horizon: int = 10, seed: int = 0) -> float:
    """Forward speed (m/s) of random shooting that scores its candidates on the simulator (no model error)."""
    env, rng = _env(gear), np.random.default_rng(seed)
    x0 = _StartX(env)
    rollout(env, _SimulatorMPC(env, samples, horizon, rng), steps, seed, reset_on_done=False, callbacks=[x0])
    return (float(env.unwrapped.data.qpos[0]) - x0.x) / (steps * env.unwrapped.dt)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gears", type=float, nargs="+", default=[80.0, 30.0])
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--hold", type=int, default=4, help="steps each random action is held")
    p.add_argument("--mpc-steps", type=int, default=0, help="steps of random shooting on the simulator (0: off)")
    p.add_argument("--mpc-samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.episodes < 1 or a.steps < 1 or a.hold < 1 or a.mpc_samples < 1 or a.mpc_steps < 0 or \
            any(g <= 0 for g in a.gears):
        print("error: --episodes, --steps, --hold, --mpc-samples and every --gears must be positive", file=sys.stderr)
        return 2
    print(f"{'gear':>6} {'on back, uniform':>17} {'ends on back':>13} {'on back, +-1':>13} {'ends on back':>13}"
          f" {'best gait m/s':>14}" + (f" {'MPC, perfect model m/s':>23}" if a.mpc_steps else ""))
    bang = float("nan")
    try:
        for gear in a.gears:
            uniform = on_back(gear, "uniform", a.episodes, a.steps, a.hold, a.seed)
            bang_bang = on_back(gear, "bang", a.episodes, a.steps, a.hold, a.seed)
            bang = bang_bang[0]
            mpc = f" {perfect_model_mpc_speed(gear, a.mpc_steps, a.mpc_samples, seed=a.seed):23.3f}" \
                if a.mpc_steps else ""
            print(f"{gear:6.0f} {uniform[0]:17.3f} {uniform[1]:13.2f} {bang_bang[0]:13.3f} {bang_bang[1]:13.2f}"
                  f" {best_gait_speed(gear):14.3f}{mpc}", flush=True)
    except MetadaptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"on_back_fraction_bang={bang:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
