"""How much of a prior's held-out error adaptation could remove, and how much its one step does (issue 4).

``metadapt bench adaptation`` reports the prior's K-step error before and after
its meta-trained step on M past steps. This script puts that step between two
references on the same windows (uniform-random-action episodes of the held-out
task, scored as the bench scores them):

- more inner steps with the prior's own rates (1 to ``--max-inner-steps``, or to the prior's own
  number of steps when that is larger: GrBAL's row);
- an *oracle*: the prior refitted (``fit_dynamics``) on ``--oracle-steps`` fresh
  random-action transitions of the held-out task itself (a different seed), the
  error a model of that task reaches when data is not the limit. With
  ``--oracle-task`` another task's transitions instead (a training task, or
  ``normal``): the same refit without the held-out task's dynamics, so the gap
  between the two oracles is the part of the error that is the task's, and the
  rest of what the oracle removes comes from fitting random-action states.

For a Meta-SGD prior it also prints the mean learned inner rate of the first
layer's weights per input column: the observations, then every action (by
actuator name). A held-out task that changes an actuator no training task
changed finds small rates on that actuator's column.

    python benchmarks/adaptation_headroom.py --env metadapt/HalfCheetahDisabledJoint-v0 --task joint_0 \\
        --prior runs/prior_hcd12

``--per-dim`` adds the three errors per observation dimension (which part of the
state the step fixes and which it leaves).

``--families`` asks which *kind* of adaptation could close the gap. For each
family of adaptable numbers (the action gains; a gain and a shift per input;
the first layer's bias; every bias; a gain and a shift per hidden unit, FiLM;
the last layer; everything) it fits only that family, from the prior, two ways:

- on the oracle's data: the most that family can express of the task
  (``family-task``), whatever the rule that sets it;
- on each window's M past steps, from GrBAL's adapted parameters, with an L2
  pull toward them (Adam, 40 steps; the best of three pulls on these very
  windows, an optimistic reference): what a fit of that family adds to the
  meta-trained step from the same 16 transitions (``family-shots``).

Last lines: ``grbal_reduction=<x>`` and ``oracle_reduction=<x>`` (fractions of
the prior's error removed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import mujoco
import numpy as np
import torch
import torch.nn.functional as F

from metadapt.cli import positive_int
from metadapt.envs import make_env, observation_version
from metadapt.errors import MetadaptError
from metadapt.experiments.benchmarks.adaptation import PastFuture, collect_random, sample_windows, window_error
from metadapt.meta.fit import fit_dynamics
from metadapt.meta.maml import InnerLR, adapt
from metadapt.meta.prior import Prior, load_prior
from metadapt.models.mlp import ACTION_GAIN
from metadapt.types import Params, Window


def mean_error(
    prior: Prior, windows: list[PastFuture], params_for: Callable[[tuple[torch.Tensor, ...]], Params]
) -> float:
    """Mean K-step error over ``windows`` of the parameters ``params_for(past)`` returns."""
    with torch.no_grad():
        return float(np.mean([window_error(prior.model, prior.model, params_for(p), f) for p, f in windows]))


def dim_errors(
    prior: Prior, windows: list[PastFuture], params_for: Callable[[tuple[torch.Tensor, ...]], Params]
) -> np.ndarray:
    """``O``: the K-step error of ``mean_error`` per observation dimension (its mean is ``mean_error``)."""
    out = []
    for past, (obs, act, nxt) in windows:
        with torch.no_grad():
            params = params_for(past)
            pred = prior.model.predict(params, obs, act)
            out.append((prior.model.target(obs, pred) - prior.model.target(obs, nxt)).pow(2).mean(0).numpy())
    return np.mean(out, 0)


def transitions(prior: Prior, trajs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``T x (O + A + O)`` trajectories -> all their ``N x O`` obs, ``N x A`` actions, ``N x O`` next obs."""
    data = torch.from_numpy(np.concatenate(trajs))
    o = prior.model.obs_dim
    return data[:, :o], data[:, o : data.shape[1] - o], data[:, data.shape[1] - o :]


def fine_tune(prior: Prior, trajs: list[np.ndarray], epochs: int, seed: int) -> Params:
    """The prior refitted (``fit_dynamics``: Adam 1e-3, batches of 512, no validation) on ``trajs``' transitions."""
    obs, act, nxt = transitions(prior, trajs)
    train = Window(obs, act, nxt, torch.zeros(len(obs)))
    empty = Window(obs[:0], act[:0], nxt[:0], torch.zeros(0))
    params, _, _ = fit_dynamics(prior.model, prior.params, train, empty, epochs=epochs, batch_size=512, lr=1e-3,
                                patience=epochs, generator=torch.Generator().manual_seed(seed))
    return params


FAMILY_PULLS = (0.01, 0.1, 1.0)


def extras(prior: Prior) -> Params:
    """The probes' extra numbers at their neutral values: a gain and a shift per input (``O + A``) and per
    hidden unit of every layer (FiLM)."""
    m = prior.model
    d = m.obs_dim + m.act_dim
    out = {"in_gain": torch.ones(d), "in_shift": torch.zeros(d)}
    for i, h in enumerate(m.hidden):
        out[f"film_gain.{i}"], out[f"film_shift.{i}"] = torch.ones(h), torch.zeros(h)
    return out


def probe_delta(prior: Prior, params: Params, extra: Params, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """``MLPDynamics.predict_normalized_delta`` with ``extras`` applied (``... x O``); at their neutral
    values the same numbers."""
    m = prior.model
    x = m.normalizer.normalize_inputs(obs, act) * extra["in_gain"] + extra["in_shift"]
    if m.action_gain:
        x = m.gained_inputs(x, params[ACTION_GAIN])
    last = len(m.hidden)
    for i in range(last):
        h = F.linear(x, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"])
        x = m.net.act(h * extra[f"film_gain.{i}"] + extra[f"film_shift.{i}"])
    return F.linear(x, params[f"layers.{last}.weight"], params[f"layers.{last}.bias"])


def families(prior: Prior) -> dict[str, list[str]]:
    """Family name -> the prior's parameters and ``extras`` it adapts (the others stay fixed)."""
    last = len(prior.model.hidden)
    film = [f"film_{kind}.{i}" for kind in ("gain", "shift") for i in range(last)]
    out = {"action gains": [ACTION_GAIN]} if prior.model.action_gain else {}
    return out | {
        "input gain + shift": ["in_gain", "in_shift"],
        "first layer's bias": ["layers.0.bias"],
        "every bias": [f"layers.{i}.bias" for i in range(last + 1)],
        "hidden gain + shift (FiLM)": film,
        "last layer": [f"layers.{last}.weight", f"layers.{last}.bias"],
        "everything": list(prior.params),
    }


def _fit_family(prior: Prior, params: Params, keys: list[str], data: tuple[torch.Tensor, ...], steps: int,
                lr: float, pull: float, batch: int | None, generator: torch.Generator) -> tuple[Params, Params]:
    """Adam on ``keys`` only (of ``params`` and ``extras``) for ``steps`` steps on ``data``'s normalized-delta
    MSE plus ``pull`` times the squared distance from the start; minibatches of ``batch`` rows if given."""
    neutral = extras(prior)
    start = {**params, **neutral}

    def split(cur: Params) -> tuple[Params, Params]:
        return {k: cur[k] for k in params}, {k: cur[k] for k in neutral}

    free = {k: start[k].detach().clone().requires_grad_() for k in keys}
    opt = torch.optim.Adam(list(free.values()), lr=lr)
    obs, act, nxt = data
    for _ in range(steps):
        rows = slice(None) if batch is None else torch.randint(len(obs), (batch,), generator=generator)
        pred = probe_delta(prior, *split({**start, **free}), obs[rows], act[rows])
        loss = (pred - prior.model.target(obs[rows], nxt[rows])).pow(2).mean()
        if pull:
            loss = loss + pull * sum((free[k] - start[k]).pow(2).sum() for k in keys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return split({**start, **{k: v.detach() for k, v in free.items()}})


def family_errors(prior: Prior, windows: list[PastFuture], trajs: list[np.ndarray], steps: int,
                  seed: int) -> list[tuple[str, float, float]]:
    """Per family: (name, error fitted on ``trajs``, best error fitted on each window's past from GrBAL)."""
    task_data = transitions(prior, trajs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # GrBAL's parameters per window, the start of every 16-shot fit
        adapted = [adapt(prior.model, prior.params, *past, prior.inner_lr, prior.inner_steps, first_order=True)
                   for past, _ in windows]

    def score(fitted: Callable[[int], tuple[Params, Params]]) -> float:
        """Mean K-step error of ``fitted(i)`` (parameters and extras) on window ``i``'s future."""
        errs = []
        for i, (_, (obs, act, nxt)) in enumerate(windows):
            p, e = fitted(i)
            with torch.no_grad():
                errs.append(float((probe_delta(prior, p, e, obs, act) - prior.model.target(obs, nxt)).pow(2).mean()))
        return float(np.mean(errs))

    out = []
    for name, keys in families(prior).items():
        lr = 1e-3 if name in ("last layer", "everything") else 3e-3
        task_fit = _fit_family(prior, prior.params, keys, task_data, steps, lr, 0.0, 512, gen)
        task_err = score(lambda i, f=task_fit: f)
        shots = min(score(lambda i, k=keys, c=pull: _fit_family(prior, adapted[i], k, windows[i][0], 40, 1e-2, c,
                                                                 None, gen))
                    for pull in FAMILY_PULLS)
        out.append((name, task_err, shots))
    return out


def column_rates(prior: Prior, env_id: str, task: str) -> list[tuple[str, float]]:
    """Mean |learned rate| of the first layer's weight per input column group (Meta-SGD priors only)."""
    lr: InnerLR = prior.inner_lr
    if not isinstance(lr, dict):
        return []
    w = lr["layers.0.weight"].abs()
    o = prior.model.obs_dim
    env = make_env(env_id, schedule=task)
    model = env.unwrapped.model
    names = [  # the actuator's name, else the joint it drives (Ant's motors are unnamed)
        mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, i)
        or mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, int(model.actuator_trnid[i, 0])) or f"action {i}"
        for i in range(model.nu)
    ]
    env.close()
    return [("observations", float(w[:, :o].mean()))] + [(n, float(w[:, o + i].mean())) for i, n in enumerate(names)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", required=True)
    ap.add_argument("--task", required=True, help="the held-out task")
    ap.add_argument("--prior", required=True, help="prior.pt, a run directory or builtin:<name>")
    ap.add_argument("--steps", type=positive_int, default=4000, help="random-action steps scored")
    ap.add_argument("--episode-length", type=positive_int, default=188)
    ap.add_argument("--windows", type=positive_int, default=400)
    ap.add_argument("--max-inner-steps", type=positive_int, default=5,
                    help="inner steps scored, 1 to this (at least the prior's own)")
    ap.add_argument("--oracle-steps", type=positive_int, default=20000,
                    help="random-action steps of --oracle-task the oracle is fitted on")
    ap.add_argument("--oracle-epochs", type=positive_int, default=80, help="passes over the oracle's data")
    ap.add_argument("--oracle-task", default=None, help="the task the oracle's data come from (default: --task)")
    ap.add_argument("--per-dim", action="store_true", help="also the error per observation dimension")
    ap.add_argument("--families", action="store_true",
                    help="also fit each family of adaptable numbers alone (oracle's data; each window's past)")
    ap.add_argument("--family-steps", type=positive_int, default=1500,
                    help="Adam steps (batches of 512) of each family's fit on the oracle's data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        prior = load_prior(args.prior, env_id=args.env, obs_version=observation_version(args.env))
        test = collect_random(args.env, args.task, args.steps, args.episode_length, args.seed)
        windows = sample_windows(test, prior.model.obs_dim, prior.past, prior.future, args.windows, args.seed + 1)
        oracle_task = args.task if args.oracle_task is None else args.oracle_task
        train = collect_random(args.env, oracle_task, args.oracle_steps, args.episode_length, args.seed + 1000)
    except (MetadaptError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = mean_error(prior, windows, lambda past: prior.params)
    print(f"{args.env} {args.task}: M={prior.past} K={prior.future}, {len(windows)} windows, seed {args.seed}")
    print(f"{'prior, not adapted':<34}{base:>10.4f}")
    grbal = base
    for steps in range(1, max(args.max_inner_steps, prior.inner_steps) + 1):
        err = mean_error(prior, windows, lambda past, s=steps: adapt(
            prior.model, prior.params, *past, prior.inner_lr, s, first_order=True))
        grbal = err if steps == prior.inner_steps else grbal
        print(f"{f'adapted, {steps} inner step(s)':<34}{err:>10.4f}{1 - err / base:>10.1%}")
    oracle_params = fine_tune(prior, train, args.oracle_epochs, args.seed)
    oracle = mean_error(prior, windows, lambda past: oracle_params)
    print(f"{f'oracle ({args.oracle_steps} steps of {oracle_task})':<34}{oracle:>10.4f}{1 - oracle / base:>10.1%}")
    if args.per_dim:
        rows = {"prior": lambda past: prior.params,
                "GrBAL": lambda past: adapt(prior.model, prior.params, *past, prior.inner_lr, prior.inner_steps,
                                            first_order=True),
                "oracle": lambda past: oracle_params}
        table = {k: dim_errors(prior, windows, f) for k, f in rows.items()}
        print("per observation dimension: " + "  ".join(f"{k:>8}" for k in table))
        for i in range(prior.model.obs_dim):
            print(f"obs[{i}]".ljust(26) + "  ".join(f"{v[i]:>8.4f}" for v in table.values()))
    if args.families:
        print(f"{'family alone':<30}{'fit on task':>12}{'':>8}{'GrBAL + 16-shot fit':>21}")
        for name, task_err, shots in family_errors(prior, windows, train, args.family_steps, args.seed):
            print(f"{name:<30}{task_err:>12.4f}{1 - task_err / base:>8.1%}{shots:>13.4f}{1 - shots / base:>8.1%}")
    for name, rate in column_rates(prior, args.env, args.task):
        print(f"learned rate, first layer, {name:<20}{rate:>10.4f}")
    print(f"grbal_reduction={1 - grbal / base:.3f}")
    print(f"oracle_reduction={1 - oracle / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
