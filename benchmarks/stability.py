"""Numerical stability of the online learners over a long stream (issue 7: no NaN or inf in 100,000 steps).

One stream of real HalfCheetah-malfunction transitions (MuJoCo, uniform random
actions, episodes of ``--episode-length`` steps, the task switching at random
every 200-600 steps among "normal" and the three test malfunctions) is fed to
each learner exactly as ``MPCAgent`` feeds it: every step the window of the K
latest transitions of the episode. Random actions are the hard case: the
cheetah ends up on its back, far from the data the models were trained on, and
one-step errors reach hundreds of normalized units.

Every step checks that the learner's logged numbers and the one-step prediction
error of the parameters it would plan with are finite; every ``--check-every``
steps (and at the end) that every parameter tensor is. It prints one line per
learner and ends with ``non_finite_steps=<n>`` over all of them (0 passes).

    python benchmarks/stability.py --steps 100000 --mb runs/mb_halfcheetah_malfunction
    python benchmarks/stability.py --env crawler --steps 100000

``--env crawler`` streams the crawler with its command switching too (straight,
left, right, leg 0 crippled): its observation carries command weights that no
training episode ever changed, the case that once made one GS step diverge.

MOLe runs with ``--mole-cap`` components at most (the documented cap, least-used
component removed): the literal algorithm creates about 6 components per task
switch (docs/results.md), so 250 switches would hold some 1,500 networks.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from metadapt.adapt.base import OnlineLearner
from metadapt.adapt.continual import ContinualLearner
from metadapt.adapt.mole import MOLeLearner
from metadapt.adapt.static import StaticLearner
from metadapt.adapt.ts import KShotLearner
from metadapt.envs import make_env, observation_version
from metadapt.experiments.configuration.components import continual_lr
from metadapt.experiments.jobs.rollout import RandomPolicy, rollout
from metadapt.meta.checkpoint import load_model
from metadapt.meta.prior import load_prior
from metadapt.models.mlp import MLPDynamics
from metadapt.types import Params, Window

# name: (environment id, its shipped prior, the schedule of the stream)
ENVS: dict[str, tuple[str, str, str | dict]] = {
    "halfcheetah": ("metadapt/HalfCheetahMalfunction-v0", "builtin:halfcheetah_malfunction", "random_test"),
    "crawler": ("metadapt/Crawler-v0", "builtin:crawler",
                {"type": "random", "tasks": ["normal", "turn_left", "turn_right", "leg_0"], "min_len": 200,
                 "max_len": 600}),
}
ENV = ENVS["halfcheetah"][0]


def collect_stream(
    steps: int, episode_length: int, seed: int, env_id: str = ENV, schedule: str | dict = "random_test"
) -> Window:
    """``T`` random-action steps of one non-stationary trial as one window (episode indices included)."""
    env = make_env(env_id, schedule=schedule, max_episode_steps=episode_length)
    rng = np.random.default_rng(seed)
    steps_seen: list[Window] = []
    rollout(env, RandomPolicy(env.action_space, seed), steps, lambda episode: int(rng.integers(2**31)),
            callbacks=[lambda step: steps_seen.append(step.transition())])
    env.close()
    return Window.cat(steps_seen)


def _finite_params(params: Params) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in params.values())


def run_learner(
    learner: OnlineLearner, model: MLPDynamics, stream: Window, window: int, check_every: int,
    progress_every: int = 10_000,
) -> dict[str, float]:
    """Feed ``stream`` to ``learner``; counts the steps where anything it produced was not finite."""
    history: deque[Window] = deque(maxlen=window)
    episodes = stream.episode.tolist()
    learner.reset()
    bad_steps, refused, worst_err, start = 0, 0, 0.0, time.perf_counter()
    for t in range(len(stream)):
        if t and episodes[t] != episodes[t - 1]:
            history.clear()
        step = stream[t : t + 1]
        params = learner.params()
        with torch.no_grad():
            err = model.predict_normalized_delta(params, step.obs, step.act) - model.target(step.obs, step.next_obs)
        ok = bool(torch.isfinite(err).all())
        worst_err = max(worst_err, float(err.pow(2).mean()))
        history.append(step)
        info = learner.observe(Window.cat(history))
        ok &= all(math.isfinite(v) for v in info.metrics.values() if isinstance(v, float))
        refused += int(info.metrics.get("step_refused", 0.0))
        if (t + 1) % check_every == 0 or t + 1 == len(stream):
            ok &= _finite_params(learner.params())
            if isinstance(learner, MOLeLearner):
                ok &= _finite_params(learner.stack) and bool(torch.isfinite(learner.counts).all())
        bad_steps += not ok
        if (t + 1) % progress_every == 0:
            print(f"  {t + 1} steps, {bad_steps} non-finite, {time.perf_counter() - start:.0f} s", file=sys.stderr,
                  flush=True)
    out = {"steps": float(len(stream)), "non_finite_steps": float(bad_steps), "refused_steps": float(refused),
           "largest_one_step_error": worst_err, "seconds": time.perf_counter() - start}
    if isinstance(learner, MOLeLearner):
        out["components"] = float(learner.num_components)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--episode-length", type=int, default=1000)
    parser.add_argument("--env", choices=sorted(ENVS), default="halfcheetah")
    parser.add_argument("--prior", default=None, help="default: the environment's shipped prior")
    parser.add_argument("--mb", default=None, help="MB model for MB and DE (default: the prior's parameters)")
    parser.add_argument("--learners", nargs="+", default=["mb", "de", "ts", "gs", "mole"],
                        choices=["mb", "de", "ts", "gs", "mole"])
    parser.add_argument("--mole-cap", type=int, default=20)
    parser.add_argument("--check-every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    env_id, builtin, schedule = ENVS[args.env]
    prior = load_prior(args.prior or builtin, env_id=env_id, obs_version=observation_version(env_id))
    mb_path = Path(args.mb) / "model.pt" if args.mb and Path(args.mb).is_dir() else args.mb
    mb = load_model(mb_path, env_id, observation_version(env_id)) if mb_path else (prior.model, prior.params)
    mb_model, mb_params = mb
    lr = continual_lr(None, prior.inner_lr)
    start = time.perf_counter()
    stream = collect_stream(args.steps, args.episode_length, args.seed, env_id, schedule)
    print(f"stream: {len(stream)} steps of {env_id} (random actions, schedule {schedule}) in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    makers = {
        "mb": lambda: (StaticLearner(mb_params), mb_model),
        "de": lambda: (ContinualLearner(mb_model, mb_params, 0.01), mb_model),
        "ts": lambda: (KShotLearner(prior.model, prior.params, prior.inner_lr, prior.inner_steps), prior.model),
        "gs": lambda: (ContinualLearner(prior.model, prior.params, lr), prior.model),
        "mole": lambda: (MOLeLearner(prior.model, prior.params, lr, max_components=args.mole_cap,
                                     new_lr=prior.inner_lr), prior.model),
    }
    total = 0
    for name in args.learners:
        learner, model = makers[name]()
        res = run_learner(learner, model, stream, prior.future, args.check_every)
        total += int(res["non_finite_steps"])
        print(f"{name:<5} " + "  ".join(f"{k}={v:.6g}" for k, v in res.items()), flush=True)
    print(f"non_finite_steps={total}")
    return 0 if total == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
