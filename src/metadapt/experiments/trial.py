"""The online trial loop: an agent acts for T steps and every step is logged."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from metadapt.agent import MPCAgent
from metadapt.errors import MetadaptError
from metadapt.experiments.metrics import trial_analysis
from metadapt.experiments.progress import Reporter
from metadapt.experiments.video import TrialVideo

BASE_FIELDS = ("step", "episode", "reward", "return", "task_id", "plan_ms", "learner_ms", "nonfinite")


@dataclass(frozen=True)
class TrialResult:
    """Summary of one trial; per-step data is in ``metrics.csv``."""

    steps: int
    episodes: int
    total_return: float
    episode_returns: list[float]
    mean_plan_ms: float
    mean_model_error: float
    nonfinite_returns: int
    analysis: dict[str, Any]  # metrics.trial_analysis: segment returns, task recovery, components


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
    columns: positions, velocities, reward terms) and
    ``summary.json`` into ``out_dir``; with ``tensorboard``, also every numeric
    per-step column as TensorBoard scalars in ``out_dir/tb``; with ``video``
    (``env`` made with ``render_mode="rgb_array"``), ``out_dir/trial.mp4`` with
    the true task and the learner's chosen component on every frame.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reporter = reporter or Reporter()
    agent.reset()
    obs, info = env.reset(seed=seed)
    episode, ep_return, total = 0, 0.0, 0.0
    episode_returns: list[float] = []
    plan_ms: list[float] = []
    errors: list[float] = []
    nonfinite = 0
    # The columns trial_analysis reads, kept in memory rather than re-read from the CSV.
    columns: dict[str, list[float]] = {"reward": [], "task_id": [], "chosen": [], "components": [], "created": []}
    tb = _tensorboard_writer(out / "tb") if tensorboard else None
    movie = TrialVideo(out / "trial.mp4") if video else None
    reporter.start(label, label, steps)
    writer: csv.DictWriter[str] | None = None
    env_keys: list[str] | None = None
    with open(out / "metrics.csv", "w", newline="") as f:
        for step in range(steps):
            t0 = time.perf_counter()
            action = agent.act(obs)
            t1 = time.perf_counter()
            next_obs, reward, terminated, truncated, info = env.step(action)
            t2 = time.perf_counter()
            learner_metrics = agent.observe(obs, action, next_obs)
            t3 = time.perf_counter()
            plan = agent.last_plan
            bad = plan.nonfinite if plan is not None else 0
            nonfinite += bad
            ep_return += float(reward)
            total += float(reward)
            plan_ms.append((t1 - t0) * 1e3)
            if "model_error" in learner_metrics:
                errors.append(learner_metrics["model_error"])
            row: dict[str, Any] = {
                "step": step, "episode": episode, "reward": float(reward), "return": total,
                "task_id": int(info.get("task_id", 0)), "plan_ms": plan_ms[-1], "learner_ms": (t3 - t2) * 1e3,
                "nonfinite": bad, **learner_metrics,
            }
            if env_keys is None:
                env_keys = [k for k, v in info.items() if k != "task_id" and _is_number(v)]
            # A key missing from a later step's info is left empty rather than failing the trial.
            row.update({f"env/{k}": float(info[k]) if k in info else "" for k in env_keys})
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="raise")
                writer.writeheader()
            writer.writerow(row)
            if movie is not None:
                movie.add(env.render(), _caption(step, total, info, learner_metrics))
            if tb is not None:
                for key, value in row.items():
                    if key != "step" and isinstance(value, int | float):
                        tb.add_scalar(key, value, step)
            for key, values in columns.items():
                if key in row:
                    values.append(float(row[key]))
            reporter.advance(label, ret=total)
            obs = next_obs
            if terminated or truncated:
                episode_returns.append(ep_return)
                ep_return = 0.0
                episode += 1
                obs, info = env.reset()
                agent.new_episode()
        if ep_return != 0.0 or not episode_returns:
            episode_returns.append(ep_return)
    if tb is not None:
        tb.close()
    if movie is not None:
        movie.close()
    logged = {k: np.asarray(v) for k, v in columns.items() if len(v) == steps}
    result = TrialResult(
        steps=steps, episodes=len(episode_returns), total_return=total, episode_returns=episode_returns,
        mean_plan_ms=float(np.mean(plan_ms)), mean_model_error=float(np.mean(errors)) if errors else float("nan"),
        nonfinite_returns=nonfinite, analysis=trial_analysis(logged, agent.window),
    )
    (out / "summary.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def _tensorboard_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MetadaptError("logging.tensorboard needs TensorBoard: pip install 'metadapt[tensorboard]'") from None
    return SummaryWriter(str(path))


def _caption(step: int, total: float, info: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    lines = [f"step {step}   return {total:.1f}", f"true task: {info.get('task', info.get('task_id', '?'))}"]
    if "chosen" in metrics:
        lines.append(f"chosen component: {int(metrics['chosen'])} of {int(metrics['components'])}")
    return lines
