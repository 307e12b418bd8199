"""The online trial: an agent acts for T steps (``rollout.rollout``) and every step is logged."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from metadapt.agent import MPCAgent
from metadapt.experiments.configuration.files import write_json
from metadapt.experiments.jobs.rollout import Callback, EpisodeEnd, Step, rollout
from metadapt.experiments.reporting.metrics import (
    POSTERIOR_FILE,
    POSTERIOR_PREFIX,
    UPSIDE_DOWN,
    VELOCITY_COLUMNS,
    trial_analysis,
    unpack_posterior,
)
from metadapt.experiments.reporting.progress import Reporter, tensorboard_writer
from metadapt.experiments.reporting.video import TrialVideo

BASE_FIELDS = ("step", "episode", "reward", "return", "task_id", "plan_ms", "learner_ms", "nonfinite")
# MOLe's posterior over its components: a step-info entry, written to its own file with a column per component.
POSTERIOR = "posterior"


@dataclass(frozen=True)
class TrialResult:
    """Summary of one trial; per-step data is in ``metrics.csv``.

    ``nonfinite_returns`` counts the planned sequences whose return was not finite; ``nonfinite_observations``
    the steps whose observation or next observation held a NaN or an infinity (the learners skip the windows
    that hold them; ``mean_model_error`` leaves them out: they have no model error).
    """

    steps: int
    episodes: int
    total_return: float
    episode_returns: list[float]
    mean_plan_ms: float
    mean_model_error: float
    nonfinite_returns: int
    analysis: dict[str, Any]  # metrics.trial_analysis: segment returns, task recovery, components
    nonfinite_observations: int = 0


def run_trial(
    env: gym.Env,
    agent: MPCAgent,
    steps: int,
    seed: int,
    out_dir: str | Path,
    reporter: Reporter | None = None,
    label: str = "trial",
    tensorboard: bool = False,
    video: bool = False,
) -> TrialResult:
    """Run ``agent`` for ``steps`` steps, resetting the env when an episode ends.

    The learner is reset once, at the start: adaptation carries across
    episodes of the same trial. Writes ``metrics.csv`` (one row per step, with
    the environment's numeric ``info`` entries of the first step as ``env/<key>``
    columns: positions, velocities, reward terms), ``summary.json`` and, for
    MOLe, ``posterior.csv`` (every component's posterior at every step) into
    ``out_dir``; with ``tensorboard``, also every numeric
    per-step column as TensorBoard scalars in ``out_dir/tb``; with ``video``
    (``env`` made with ``render_mode="rgb_array"``), ``out_dir/trial.mp4`` with
    the true task and the learner's chosen component on every frame.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reporter = reporter or Reporter()
    tb = tensorboard_writer(out / "tb") if tensorboard else None
    movie = TrialVideo(out / "trial.mp4") if video else None
    reporter.start(label, label, steps)
    with open(out / "metrics.csv", "w", newline="") as f:
        log = _TrialLog(f, env, agent, reporter, label, tb, movie)
        rollout(env, agent, steps, seed, callbacks=[log])
    if log.posteriors:
        write_posterior(out / POSTERIOR_FILE, log.posteriors)
    if tb is not None:
        tb.close()
    if movie is not None:
        movie.close()
    logged = {k: np.asarray(v) for k, v in log.columns.items() if len(v) == steps}
    result = TrialResult(
        steps=steps, episodes=len(log.episode_returns), total_return=log.total, episode_returns=log.episode_returns,
        mean_plan_ms=float(np.mean(log.plan_ms)),
        mean_model_error=float(np.mean(log.errors)) if log.errors else float("nan"),
        nonfinite_returns=log.nonfinite, analysis=trial_analysis(logged, agent.window),
        nonfinite_observations=log.nonfinite_observations,
    )
    write_json(out / "summary.json", asdict(result))  # strict JSON: a NaN mean is written as null
    return result


class _TrialLog(Callback):
    """The trial's record of every step: ``metrics.csv`` rows, TensorBoard scalars, video frames, progress."""

    def __init__(self, f: Any, env: gym.Env, agent: MPCAgent, reporter: Reporter, label: str, tb: Any,
                 movie: TrialVideo | None) -> None:
        self.f, self.env, self.agent, self.reporter, self.label, self.tb, self.movie = \
            f, env, agent, reporter, label, tb, movie
        self.total = 0.0
        self.episode_returns: list[float] = []
        self.plan_ms: list[float] = []
        self.errors: list[float] = []
        self.nonfinite = 0
        self.nonfinite_observations = 0
        # The columns trial_analysis reads, kept in memory rather than re-read from the CSV.
        self.columns: dict[str, list[float]] = {
            k: [] for k in ("reward", "task_id", "chosen", "components", "created", UPSIDE_DOWN, *VELOCITY_COLUMNS)}
        self.posteriors: list[tuple[int, dict[int, float]]] = []
        self.writer: csv.DictWriter[str] | None = None
        self.env_keys: list[str] | None = None

    def on_step(self, s: Step) -> None:
        learner_metrics, info = s.metrics, s.info
        plan = self.agent.last_plan
        bad = plan.nonfinite if plan is not None else 0
        self.nonfinite += bad
        self.total += s.reward
        self.plan_ms.append(s.act_seconds * 1e3)
        if not (_finite(s.obs) and _finite(s.next_obs)):
            self.nonfinite_observations += 1
        elif "model_error" in learner_metrics:
            self.errors.append(learner_metrics["model_error"])
        packed = learner_metrics.get(POSTERIOR)
        if packed is not None:  # MOLe: its own file, one column per component (posterior.csv)
            learner_metrics = {k: v for k, v in learner_metrics.items() if k != POSTERIOR}
            self.posteriors.append((s.t, unpack_posterior(packed)))
        row: dict[str, Any] = {
            "step": s.t, "episode": s.episode, "reward": s.reward, "return": self.total,
            "task_id": int(info.get("task_id", 0)), "plan_ms": self.plan_ms[-1], "learner_ms": s.observe_seconds * 1e3,
            "nonfinite": bad, **learner_metrics,
        }
        if self.env_keys is None:
            self.env_keys = [k for k, v in info.items() if k != "task_id" and _is_number(v)]
        # A key missing from a later step's info is left empty rather than failing the trial.
        row.update({f"env/{k}": float(info[k]) if k in info else "" for k in self.env_keys})
        if self.writer is None:
            self.writer = csv.DictWriter(self.f, fieldnames=list(row), extrasaction="raise")
            self.writer.writeheader()
        self.writer.writerow(row)
        if self.movie is not None:
            self.movie.add(self.env.render(), _caption(s.t, self.total, info, learner_metrics))
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self.tb.add_scalar(key, value, s.t)
        for key, values in self.columns.items():
            if key in row:
                values.append(float(row[key]) if row[key] != "" else float("nan"))
        self.reporter.advance(self.label, ret=self.total)

    def on_episode_end(self, end: EpisodeEnd) -> None:
        # An unfinished last episode counts unless its return is exactly 0 after finished ones.
        if end.done or end.total_return != 0.0 or not self.episode_returns:
            self.episode_returns.append(end.total_return)


def write_posterior(path: Path, posteriors: list[tuple[int, dict[int, float]]]) -> None:
    """``posterior.csv``: a row per step, ``step`` then ``component_<id>`` for every component the trial ever had
    (0 before it was created and after it was merged away)."""
    ids = sorted({i for _, p in posteriors for i in p})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *(f"{POSTERIOR_PREFIX}{i}" for i in ids)])
        for step, p in posteriors:
            w.writerow([step, *(repr(p.get(i, 0.0)) for i in ids)])


def _finite(observation: Any) -> bool:
    """Whether every number of an observation (an array) is finite."""
    return bool(np.isfinite(np.asarray(observation, dtype=np.float64)).all())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def _caption(step: int, total: float, info: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    lines = [f"step {step}   return {total:.1f}", f"true task: {info.get('task', info.get('task_id', '?'))}"]
    if "chosen" in metrics:
        lines.append(f"chosen component: {int(metrics['chosen'])} of {int(metrics['components'])}")
    return lines
