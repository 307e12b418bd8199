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
state the step fixes and which it leaves). Last lines: ``grbal_reduction=<x>``
and ``oracle_reduction=<x>`` (fractions of the prior's error removed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import mujoco
import numpy as np
import torch

from metadapt.cli import positive_int
from metadapt.envs import make_env
from metadapt.errors import MetadaptError
from metadapt.experiments.adaptation import Window, collect_random, sample_windows, window_error
from metadapt.meta.fit import fit_dynamics
from metadapt.meta.maml import InnerLR, adapt
from metadapt.meta.prior import Prior, load_prior
from metadapt.types import Params, Transitions


def mean_error(prior: Prior, windows: list[Window], params_for: Callable[[tuple[torch.Tensor, ...]], Params]) -> float:
    """Mean K-step error over ``windows`` of the parameters ``params_for(past)`` returns."""
    with torch.no_grad():
        return float(np.mean([window_error(prior.model, prior.model, params_for(p), f) for p, f in windows]))


def dim_errors(
    prior: Prior, windows: list[Window], params_for: Callable[[tuple[torch.Tensor, ...]], Params]
) -> np.ndarray:
    """``O``: the K-step error of ``mean_error`` per observation dimension (its mean is ``mean_error``)."""
    out = []
    for past, (obs, act, nxt) in windows:
        with torch.no_grad():
            params = params_for(past)
            pred = prior.model.predict(params, obs, act)
            out.append((prior.model.target(obs, pred) - prior.model.target(obs, nxt)).pow(2).mean(0).numpy())
    return np.mean(out, 0)


def fine_tune(prior: Prior, trajs: list[np.ndarray], epochs: int, seed: int) -> Params:
    """The prior refitted (``fit_dynamics``: Adam 1e-3, batches of 512, no validation) on ``trajs``' transitions."""
    data = torch.from_numpy(np.concatenate(trajs))
    o = prior.model.obs_dim
    obs, act, nxt = data[:, :o], data[:, o : data.shape[1] - o], data[:, data.shape[1] - o :]
    train = Transitions(obs, act, nxt, torch.zeros(len(data)))
    empty = Transitions(obs[:0], act[:0], nxt[:0], torch.zeros(0))
    params, _, _ = fit_dynamics(prior.model, prior.params, train, empty, epochs=epochs, batch_size=512, lr=1e-3,
                                patience=epochs, generator=torch.Generator().manual_seed(seed))
    return params


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
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        prior = load_prior(args.prior, env_id=args.env)
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
    for name, rate in column_rates(prior, args.env, args.task):
        print(f"learned rate, first layer, {name:<20}{rate:>10.4f}")
    print(f"grbal_reduction={1 - grbal / base:.3f}")
    print(f"oracle_reduction={1 - oracle / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
