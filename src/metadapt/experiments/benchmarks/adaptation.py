"""Model adaptation on held-out tasks (seed 004: "model prediction errors are reduced after adaptation").

For one environment and one held-out task, trajectories are collected with
uniform random actions (the same data for every model), cut into windows of
``M`` past and ``K`` future steps, and the K-step prediction error (mean
normalized-delta MSE of the K future transitions, in the prior's
normalization, so all four numbers are on one scale) is reported for:

- MB: the model trained without meta-learning, not adapted;
- MB+DE: the same model after one gradient step on the M past steps;
- prior: the meta-trained prior before adaptation;
- GrBAL: the prior after its meta-trained adaptation on the M past steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metadapt.envs import make_env
from metadapt.experiments.jobs.rollout import RandomPolicy, Step, rollout
from metadapt.meta.maml import adapt
from metadapt.meta.prior import Prior
from metadapt.models.base import DynamicsModel
from metadapt.types import Params


@dataclass(frozen=True)
class AdaptationErrors:
    env_id: str
    task: str
    windows: int
    mb: float
    mb_de: float
    prior: float
    grbal: float

    @property
    def reduction(self) -> float:
        """1 - GrBAL / prior: the fraction of the prior's error that adaptation removes."""
        return 1.0 - self.grbal / self.prior


def collect_random(env_id: str, task: str, steps: int, episode_length: int, seed: int) -> list[np.ndarray]:
    """Random-action trajectories on ``task`` as ``T x (O + A + O)`` arrays (obs, act, next_obs).

    One ``rollout`` of ``RandomPolicy(seed)`` for ``steps`` steps, every episode reset with a seed drawn from
    ``numpy.random.default_rng(seed)``; an episode ends after ``episode_length`` steps or when the
    environment ends it.
    """
    env = make_env(env_id, schedule=task, max_episode_steps=episode_length)
    rng = np.random.default_rng(seed)
    episodes: list[list[np.ndarray]] = [[]]

    def record(step: Step) -> None:
        episodes[-1].append(np.concatenate([step.obs, step.action, step.next_obs]))
        if step.done:
            episodes.append([])

    rollout(env, RandomPolicy(env.action_space, seed), steps, lambda episode: int(rng.integers(2**31)),
            episode_length=episode_length, callbacks=[record], reset_each_episode=True)
    env.close()
    return [np.array(rows, dtype=np.float32) for rows in episodes if rows]


PastFuture = tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]
"""A window cut in two: ``(past, future)``, each ``(obs, act, next_obs)``."""


def sample_windows(trajs: list[np.ndarray], obs_dim: int, m: int, k: int, windows: int, seed: int) -> list[PastFuture]:
    """``windows`` random windows of ``T x (O + A + O)`` trajectories, drawn with ``seed``.

    Each is ``(past, future)``: ``(M x O, M x A, M x O)`` and ``(K x O, K x A, K x O)`` (obs, act, next_obs).
    """
    trajs = [t for t in trajs if len(t) >= m + k]
    if not trajs:
        raise ValueError(f"no trajectory reached M + K = {m + k} steps")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(windows):
        traj = trajs[int(rng.integers(len(trajs)))]
        s = int(rng.integers(len(traj) - m - k + 1))
        w = torch.from_numpy(traj[s : s + m + k])
        obs, act, nxt = w[:, :obs_dim], w[:, obs_dim : w.shape[1] - obs_dim], w[:, w.shape[1] - obs_dim :]
        out.append(((obs[:m], act[:m], nxt[:m]), (obs[m:], act[m:], nxt[m:])))
    return out


def window_error(scorer: DynamicsModel, predictor: DynamicsModel, params: Params, f: tuple[torch.Tensor, ...]) -> float:
    """K-step error of ``predictor`` scored in ``scorer``'s normalization."""
    obs, act, nxt = f
    with torch.no_grad():
        pred = predictor.predict(params, obs, act)
        err = scorer.target(obs, pred) - scorer.target(obs, nxt)
    return float(err.pow(2).mean())


def adaptation_errors(
    env_id: str, task: str, mb: tuple[DynamicsModel, Params], prior: Prior, *, steps: int = 4000,
    episode_length: int = 500, windows: int = 400, de_lr: float = 0.01, seed: int = 0,
) -> AdaptationErrors:
    """Mean K-step error over ``windows`` random windows of held-out-task trajectories."""
    trajs = collect_random(env_id, task, steps, episode_length, seed)
    try:
        sampled = sample_windows(trajs, prior.model.obs_dim, prior.past, prior.future, windows, seed + 1)
    except ValueError as exc:
        raise ValueError(f"{env_id} on {task}: {exc}") from exc
    mb_model, mb_params = mb
    sums = np.zeros(4)
    for past, future in sampled:
        with torch.no_grad():
            de = adapt(mb_model, mb_params, *past, de_lr, 1, first_order=True)
            grbal = adapt(prior.model, prior.params, *past, prior.inner_lr, prior.inner_steps, first_order=True)
        sums += [
            window_error(prior.model, mb_model, mb_params, future),
            window_error(prior.model, mb_model, de, future),
            window_error(prior.model, prior.model, prior.params, future),
            window_error(prior.model, prior.model, grbal, future),
        ]
    mean = sums / windows
    return AdaptationErrors(env_id, task, windows, *map(float, mean))


def format_table(rows: list[AdaptationErrors]) -> str:
    lines = [f"{'environment':<38}{'task':<16}{'MB':>10}{'MB+DE':>10}{'prior':>10}{'GrBAL':>10}{'reduction':>11}"]
    for r in rows:
        lines.append(f"{r.env_id:<38}{r.task:<16}{r.mb:>10.4f}{r.mb_de:>10.4f}{r.prior:>10.4f}{r.grbal:>10.4f}"
                     f"{r.reduction:>10.1%}")
    lines.append(f"min_adaptation_error_reduction={min(r.reduction for r in rows):.3f}")
    return "\n".join(lines)
