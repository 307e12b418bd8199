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

Fault injection (issue 26): ``--inject-every N`` puts a NaN, +inf or -inf (in
turn) into one coordinate of the observation every N steps of the stream, from
step N/2 (``--inject-first``: not at an episode's first step, where the window
is empty anyway) (and into the next observation of the step before, which is the same
observation). Each learner runs on the injected stream; just before each fault
reaches it, a copy of it (and of its window) goes on along the clean stream for
reference: the same learner after the same history, without this fault. The
bar is no non-finite parameter, no crash, and its model error back to the
copy's within ``--recovery-steps`` (default 2K) of every injection: the mean
one-step error over the K steps from there is at most
``1 + --recovery-tolerance`` times the copy's over the same steps. Steps whose
observations are not finite have no model error and are left out. (A whole
clean run as the reference would cost a second pass and drift away from the
injected run for reasons other than the fault: a different MOLe component
created 4,000 steps earlier.) Per learner it prints the skipped windows, the
refused steps and the slowest recovery; ``unrecovered_injections=<n>`` comes
before the last line.

    python benchmarks/stability.py --steps 100000 --inject-every 5000
    python benchmarks/stability.py --steps 100000 --inject-every 5000 --learners rebal --rebal runs/rebal
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from metadapt.adapt.base import REFUSED, SKIPPED, OnlineLearner, window_is_finite
from metadapt.adapt.continual import ContinualLearner
from metadapt.adapt.mole import MOLeLearner
from metadapt.adapt.rebal import RecurrentLearner
from metadapt.adapt.static import StaticLearner
from metadapt.adapt.ts import KShotLearner
from metadapt.envs import make_env, observation_version
from metadapt.experiments.configuration.components import continual_lr
from metadapt.experiments.jobs.rollout import RandomPolicy, rollout
from metadapt.meta.checkpoint import load_model
from metadapt.meta.prior import load_prior
from metadapt.meta.rebal import load_recurrent
from metadapt.models.base import DynamicsModel
from metadapt.types import Params, Window

# name: (environment id, its shipped prior, the schedule of the stream)
ENVS: dict[str, tuple[str, str, str | dict]] = {
    "halfcheetah": ("metadapt/HalfCheetahMalfunction-v0", "builtin:halfcheetah_malfunction", "random_test"),
    "crawler": ("metadapt/Crawler-v0", "builtin:crawler",
                {"type": "random", "tasks": ["normal", "turn_left", "turn_right", "leg_0"], "min_len": 200,
                 "max_len": 600}),
}
ENV = ENVS["halfcheetah"][0]
LEARNERS = ("mb", "de", "ts", "gs", "mole", "rebal")
INJECTED = (math.nan, math.inf, -math.inf)


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


def inject_nonfinite(
    stream: Window, every: int, values: tuple[float, ...] = INJECTED, seed: int = 0, first: int | None = None,
) -> tuple[Window, list[int]]:
    """A copy of ``stream`` with a non-finite observation at steps ``first, first + every, ...`` (``first``
    defaults to ``every``); and those steps.

    At each such step ``t`` one coordinate (drawn from ``seed``) of ``obs[t]`` becomes the next of
    ``values`` in turn, and so does ``next_obs[t - 1]`` when step ``t - 1`` is of the same episode: the
    observation an agent sees after a step is the one it acts from at the next.
    """
    first = every if first is None else first
    if every < 1 or first < 1:
        raise ValueError(f"every and first must be >= 1, got {every} and {first}")
    obs, next_obs = stream.obs.clone(), stream.next_obs.clone()
    rng = np.random.default_rng(seed)
    steps = list(range(first, len(stream), every))
    episodes = stream.episode.tolist()
    for i, t in enumerate(steps):
        dim, value = int(rng.integers(obs.shape[-1])), values[i % len(values)]
        obs[t, dim] = value
        if episodes[t - 1] == episodes[t]:
            next_obs[t - 1, dim] = value
    return stream.replace(obs=obs, next_obs=next_obs), steps


def _finite_params(params: Params) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in params.values())


def _feed(
    learner: OnlineLearner, model: DynamicsModel, history: deque[Window], stream: Window, episodes: list[int], t: int,
) -> tuple[float, bool, dict[str, float]]:
    """Step ``t`` of ``stream`` as the agent gives it: the one-step error (mean square, normalized) of the
    parameters the learner would plan with (NaN when the step's observations are not finite), then the window
    of the latest steps of the episode to ``learner.observe``. Returns the error, whether everything checked was
    finite, and the learner's logged numbers. Logged numbers of a skipped window (its losses) are not checked:
    they are NaN by definition."""
    if t and episodes[t] != episodes[t - 1]:
        history.clear()
    step = stream[t : t + 1]
    ok, err = True, math.nan
    if window_is_finite(step):
        with torch.no_grad():
            delta = model.predict_normalized_delta(learner.params(), step.obs, step.act) - model.target(
                step.obs, step.next_obs)
        ok = bool(torch.isfinite(delta).all())
        err = float(delta.pow(2).mean())
    history.append(step)
    metrics = learner.observe(Window.cat(history)).metrics
    if not metrics.get(SKIPPED, 0.0):
        ok &= all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    return err, ok, metrics


def run_learner(
    learner: OnlineLearner, model: DynamicsModel, stream: Window, window: int, check_every: int,
    progress_every: int = 10_000, errors: list[float] | None = None, clean: Window | None = None,
    forks: Mapping[int, int] | None = None, reference: list[float] | None = None,
) -> dict[str, float]:
    """Feed ``stream`` (``T`` steps) to ``learner``; counts the steps where anything it produced was not finite.

    ``model`` scores the parameters the learner would plan with (its ``predict_normalized_delta`` and
    ``target``). A step whose observations are not finite has no model error: it is not checked, and
    ``errors`` (when given) gets NaN for it; ``skipped_steps`` and ``refused_steps`` add up the learner's
    ``skipped_nonfinite`` and ``step_refused``.

    ``forks`` ``{s: n}``: before step ``s``, a copy of the learner and its window history goes on for ``n`` steps
    of ``clean`` (the same stream without the faults) instead; their errors are written into ``reference``
    (``T`` entries) at those steps. The copy never touches the learner fed ``stream``.
    """
    history: deque[Window] = deque(maxlen=window)
    episodes = stream.episode.tolist()
    forks = forks or {}
    if forks and (clean is None or reference is None or len(clean) != len(stream) or len(reference) != len(stream)):
        raise ValueError("forks need a clean stream and a reference list as long as the stream")
    learner.reset()
    bad_steps, refused, skipped, worst_err, start = 0, 0, 0, 0.0, time.perf_counter()
    for t in range(len(stream)):
        if t in forks:
            twin, twin_history = copy.deepcopy((learner, history))
            for u in range(t, min(t + forks[t], len(stream))):
                reference[u] = _feed(twin, model, twin_history, clean, episodes, u)[0]  # type: ignore[index]
        err, ok, metrics = _feed(learner, model, history, stream, episodes, t)
        worst_err = max(worst_err, err) if math.isfinite(err) else worst_err
        if errors is not None:
            errors.append(err)
        refused += int(metrics.get(REFUSED, 0.0))
        skipped += int(metrics.get(SKIPPED, 0.0))
        if (t + 1) % check_every == 0 or t + 1 == len(stream):
            ok &= _finite_params(learner.params())
            if isinstance(learner, MOLeLearner):
                ok &= _finite_params(learner.stack) and bool(torch.isfinite(learner.counts).all())
        bad_steps += not ok
        if (t + 1) % progress_every == 0:
            print(f"  {t + 1} steps, {bad_steps} non-finite, {time.perf_counter() - start:.0f} s", file=sys.stderr,
                  flush=True)
    out = {"steps": float(len(stream)), "non_finite_steps": float(bad_steps), "refused_steps": float(refused),
           "skipped_steps": float(skipped), "largest_one_step_error": worst_err, "seconds": time.perf_counter() - start}
    if isinstance(learner, MOLeLearner):
        out["components"] = float(learner.num_components)
    return out


def recovery_steps(
    errors: list[float], reference: list[float], start: int, end: int, window: int, tolerance: float
) -> int | None:
    """Steps after ``start`` until the learner's model error is back to the reference's (``None``: never
    before ``end``): the first ``r`` from which the mean of ``errors`` over ``window`` steps is at most
    ``1 + tolerance`` times the mean of ``reference`` over the same steps (steps without an error in either,
    NaN, left out of both)."""
    err, ref = np.asarray(errors, dtype=float), np.asarray(reference, dtype=float)
    for r in range(start, max(start, end - window) + 1):
        sl = slice(r, min(r + window, end))
        keep = np.isfinite(err[sl]) & np.isfinite(ref[sl])
        if not keep.any():
            continue
        if err[sl][keep].mean() <= (1 + tolerance) * ref[sl][keep].mean():
            return r - start
    return None


def fault_injection(
    make: Callable[[], OnlineLearner], model: DynamicsModel, stream: Window, window: int, every: int,
    check_every: int, recovery: int, tolerance: float = 0.5, seed: int = 0, progress_every: int = 10_000,
    first: int | None = None,
) -> dict[str, float]:
    """``run_learner`` on ``stream`` with a non-finite observation every ``every`` steps from ``first``
    (``inject_nonfinite``); adds the injections, the slowest recovery in steps (``recovery_steps``; ``inf`` for
    one not back within twice ``recovery``) and ``unrecovered``, the injections not recovered within ``recovery``
    steps.

    The reference of each injection at step ``t`` is the same learner, copied just before the fault reaches it
    (step ``t - 1``, whose next observation is the bad one), going on along the clean stream: the error it
    would have had without this fault, after the same history (earlier faults included).
    """
    injected, steps = inject_nonfinite(stream, every, seed=seed, first=first)
    span = 2 * recovery + window + 1
    errors: list[float] = []
    reference = [math.nan] * len(stream)
    out = run_learner(make(), model, injected, window, check_every, progress_every, errors, clean=stream,
                      forks={t - 1: span for t in steps}, reference=reference)
    slowest, unrecovered = 0.0, 0
    for i, t in enumerate(steps):
        end = min(steps[i + 1] if i + 1 < len(steps) else len(stream), t - 1 + span)
        r = recovery_steps(errors, reference, t, end, window, tolerance)
        slowest = max(slowest, math.inf if r is None else float(r))
        unrecovered += r is None or r > recovery
    return {**out, "injections": float(len(steps)), "slowest_recovery": slowest, "unrecovered": float(unrecovered)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--episode-length", type=int, default=1000)
    parser.add_argument("--env", choices=sorted(ENVS), default="halfcheetah")
    parser.add_argument("--prior", default=None, help="default: the environment's shipped prior")
    parser.add_argument("--mb", default=None, help="MB model for MB and DE (default: the prior's parameters)")
    parser.add_argument("--learners", nargs="+", default=["mb", "de", "ts", "gs", "mole"], choices=LEARNERS)
    parser.add_argument("--rebal", default=None, help="ReBAL model (rebal.pt or its run directory) for 'rebal'")
    parser.add_argument("--mole-cap", type=int, default=20)
    parser.add_argument("--check-every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inject-every", type=int, default=0,
                        help="a NaN/inf observation every N steps, recovery checked against a clean copy (0: none)")
    parser.add_argument("--inject-first", type=int, default=None,
                        help="the step of the first fault (default: N/2, mid-episode for 1,000-step episodes)")
    parser.add_argument("--recovery-steps", type=int, default=None, help="the recovery bar (default 2K)")
    parser.add_argument("--recovery-tolerance", type=float, default=0.5)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if "rebal" in args.learners and args.rebal is None:
        parser.error("--learners rebal needs --rebal (a ReBAL model: rebal.pt or its run directory)")

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
    rebal = load_recurrent(args.rebal, env_id, observation_version(env_id)) if args.rebal else None
    learners: dict[str, tuple[Callable[[], OnlineLearner], DynamicsModel]] = {
        "mb": (lambda: StaticLearner(mb_params), mb_model),
        "de": (lambda: ContinualLearner(mb_model, mb_params, 0.01), mb_model),
        "ts": (lambda: KShotLearner(prior.model, prior.params, prior.inner_lr, prior.inner_steps), prior.model),
        "gs": (lambda: ContinualLearner(prior.model, prior.params, lr), prior.model),
        "mole": (lambda: MOLeLearner(prior.model, prior.params, lr, max_components=args.mole_cap,
                                     new_lr=prior.inner_lr), prior.model),
    }
    if rebal is not None:
        learners["rebal"] = (lambda: RecurrentLearner(*rebal), rebal[0].planning_model())
    recovery = 2 * prior.future if args.recovery_steps is None else args.recovery_steps
    total, unrecovered = 0, 0
    for name in args.learners:
        make, model = learners[name]
        if args.inject_every:
            res = fault_injection(make, model, stream, prior.future, args.inject_every, args.check_every, recovery,
                                  args.recovery_tolerance, args.seed,
                                  first=args.inject_first or max(1, args.inject_every // 2))
            unrecovered += int(res["unrecovered"])
        else:
            res = run_learner(make(), model, stream, prior.future, args.check_every)
        total += int(res["non_finite_steps"])
        print(f"{name:<5} " + "  ".join(f"{k}={v:.6g}" for k, v in res.items()), flush=True)
    if args.inject_every:
        print(f"unrecovered_injections={unrecovered} (bar: {recovery} steps)")
    print(f"non_finite_steps={total}")
    return 0 if total == 0 and unrecovered == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
