"""``report.md`` with tables and PNG figures for a run directory."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from metadapt.errors import MetadaptError, one_line
from metadapt.experiments.configuration.files import read_yaml_file


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """Columns of a CSV: float arrays, or string arrays for text columns (empty dict if missing).

    A run directory may come from anyone: a file that cannot be read as CSV is one ``MetadaptError`` naming it.
    """
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MetadaptError(f"{path} cannot be read as CSV ({one_line(exc)})") from None
    if not rows:
        return {}
    out = {}
    for k in rows[0]:
        if not isinstance(k, str):
            continue  # cells beyond the header
        try:
            out[k] = np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows])
        except (ValueError, TypeError):
            out[k] = np.array([r[k] for r in rows], dtype=object)
    return out


def numeric_columns(m: dict[str, np.ndarray], path: Path, names: tuple[str, ...]) -> None:
    """Refuse, in one line naming the file, metrics without these numeric columns."""
    bad = [n for n in names if n not in m or m[n].dtype == object]
    if bad:
        raise MetadaptError(f"{path} is not a metrics file written by metadapt (column {', '.join(bad)} missing or "
                            "not numeric)")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object written by metadapt (empty if missing); anything else is one ``MetadaptError`` naming it."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MetadaptError(f"{path} cannot be read as JSON ({one_line(exc)})") from None
    if not isinstance(value, dict):
        raise MetadaptError(f"{path} does not hold a JSON object")
    return value


def fmt(value: Any, spec: str) -> str:
    """A number formatted with ``spec``; ``n/a`` for null (a non-finite result) or anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a"
    return format(value, spec) if math.isfinite(value) else "n/a"


def posterior_matrix(column: np.ndarray) -> tuple[list[int], np.ndarray]:
    """MOLe's ``posterior`` column ("id:p;id:p") -> (component ids, ``T x C`` probabilities)."""
    parsed = [dict((int(i), float(p)) for i, p in (kv.split(":") for kv in str(cell).split(";"))) for cell in column]
    ids = sorted({i for row in parsed for i in row})
    return ids, np.array([[row.get(i, 0.0) for i in ids] for row in parsed])


def plot_task_probabilities(m: dict[str, np.ndarray], path: Path, title: str = "") -> None:
    """Seed 000 Figure 2: the latent task probabilities over time, the true task shaded behind."""
    ids, probs = posterior_matrix(m["posterior"])
    steps, tasks = m["step"], m["task_id"]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    switches = np.flatnonzero(np.diff(tasks) != 0) + 1
    bounds = [0, *switches.tolist(), len(tasks)]
    palette = plt.get_cmap("Pastel1")
    order = {t: i for i, t in enumerate(dict.fromkeys(tasks.tolist()))}
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        ax.axvspan(steps[a], steps[b - 1] + 1, color=palette(order[tasks[a]] % 9), alpha=0.6, lw=0)
    shown = [j for j in range(len(ids)) if probs[:, j].max() > 0.5] or list(range(len(ids)))
    for j in shown:
        ax.plot(steps, probs[:, j], lw=1, label=f"component {ids[j]}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("P(task)")
    ax.set_title(title or "latent task probabilities (true task shaded)")
    if len(shown) <= 10:
        ax.legend(fontsize=7, loc="upper right")
    save_figure(fig, path)


def smooth(x: np.ndarray, width: int = 25) -> np.ndarray:
    """Running mean over ``width`` steps, the same length as ``x`` (non-finite values count as the mean)."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return x
    finite = np.isfinite(x)
    filled = np.where(finite, x, x[finite].mean() if finite.any() else 0.0)
    w = min(width, x.size)
    return np.convolve(filled, np.ones(w) / w, mode="same")[: x.size]


def plot_model_error(m: dict[str, np.ndarray], path: Path) -> None:
    """One-step error of the parameters planned with, and (TS) the window loss before and after adaptation."""
    fig, ax = plt.subplots(figsize=(9, 3.2))
    tasks = m["task_id"]
    for s in np.flatnonzero(np.diff(tasks) != 0) + 1:
        ax.axvline(m["step"][s], color="0.6", lw=0.8, ls=":")
    ax.semilogy(m["step"], smooth(m["model_error"]), lw=1, label="one-step error of the planning parameters")
    if "window_loss_prior" in m and "window_loss_adapted" in m:
        ax.semilogy(m["step"], smooth(m["window_loss_prior"]), lw=1, label="window loss before adaptation")
        ax.semilogy(m["step"], smooth(m["window_loss_adapted"]), lw=1, label="window loss after adaptation")
    ax.set_xlabel("step (dotted: task switches)")
    ax.set_ylabel("normalized MSE (25-step mean)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _train_section(run_dir: Path, lines: list[str]) -> None:
    train_dir = run_dir / "train" if (run_dir / "train").is_dir() else run_dir
    m = read_csv(train_dir / "metrics.csv")
    if not m or "iteration" not in m:
        return
    numeric_columns(m, train_dir / "metrics.csv",
                    ("iteration", "env_steps", "rollout_return_per_1000", "train_loss", "val_loss", "epochs"))
    lines += ["## Model training", "",
              "| iteration | env steps | return / 1000 steps | train loss | val loss | epochs |",
              "|---:|---:|---:|---:|---:|---:|"]
    for i in range(len(m["iteration"])):
        lines.append(
            f"| {fmt(m['iteration'][i], '.0f')} | {fmt(m['env_steps'][i], '.0f')} | "
            f"{fmt(m['rollout_return_per_1000'][i], '.1f')} | {fmt(m['train_loss'][i], '.4f')} | "
            f"{fmt(m['val_loss'][i], '.4f')} | {fmt(m['epochs'][i], '.0f')} |"
        )
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(m["env_steps"], m["rollout_return_per_1000"], "o-")
    a.set_xlabel("environment steps")
    a.set_ylabel("collection return / 1000 steps")
    a.set_title("data collection (iteration 0 is random)")
    b.semilogy(m["iteration"], m["train_loss"], "o-", label="train")
    b.semilogy(m["iteration"], m["val_loss"], "s-", label="validation")
    b.set_xlabel("iteration")
    b.set_ylabel("normalized delta MSE")
    b.legend()
    save_figure(fig, run_dir / "training.png")
    lines += ["", "![training](training.png)", ""]


def _trial_section(run_dir: Path, lines: list[str]) -> None:
    trials = sorted(p for p in run_dir.glob("trial_*") if (p / "metrics.csv").is_file())
    if not trials:
        return
    lines += ["## Trials", "", "Upside down: the share of steps that end with the torso's up axis below the horizon "
              "(legged robots); velocity: the mean forward velocity (m/s).", "",
              "| trial | steps | return | upside down | velocity | mean plan ms | mean model error | "
              "non-finite returns |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    task_figures: list[str] = []
    for t in trials:
        s = read_json(t / "summary.json")
        m = read_csv(t / "metrics.csv")
        if m:
            numeric_columns(m, t / "metrics.csv", ("step", "return", "task_id"))
        lines.append(
            f"| {t.name} | {fmt(s.get('steps', len(m.get('step', []))), '.0f')} | "
            f"{fmt(s.get('total_return'), '.1f')} | {fmt(_analysis(s, 'upside_down'), '.1%')} | "
            f"{fmt(_analysis(s, 'forward_velocity'), '.2f')} | {fmt(s.get('mean_plan_ms'), '.1f')} | "
            f"{fmt(s.get('mean_model_error'), '.4f')} | {fmt(s.get('nonfinite_returns', 0), '.0f')} |"
        )
        if m:
            ax.plot(m["step"], m["return"], label=t.name)
        if "posterior" in m:
            plot_task_probabilities(m, run_dir / f"{t.name}_tasks.png")
            task_figures.append(f"![task probabilities of {t.name}]({t.name}_tasks.png)")
        if "model_error" in m and m["model_error"].dtype != object:
            plot_model_error(m, run_dir / f"{t.name}_model_error.png")
            task_figures.append(f"![model error of {t.name}]({t.name}_model_error.png)")
    ax.set_xlabel("step")
    ax.set_ylabel("cumulative reward")
    ax.legend()
    save_figure(fig, run_dir / "trials.png")
    lines += ["", "![trials](trials.png)", "", *task_figures, ""]
    s = read_json(run_dir / "summary.json")
    if s:
        returns = s.get("returns")
        count = len(returns) if isinstance(returns, list) else "?"
        lines += [f"Mean return over {count} trial(s): **{fmt(s.get('mean_return'), '.1f')}** "
                  f"(std {fmt(s.get('std_return'), '.1f')}).", ""]


def _analysis(summary: dict[str, Any], name: str) -> Any:
    """A trial summary's ``analysis[name]``, or None (``fmt`` writes n/a) where the trial has none."""
    analysis = summary.get("analysis")
    return analysis.get(name) if isinstance(analysis, dict) else None


def _key(cfg: Any, *path: str) -> Any:
    """``cfg[path[0]][path[1]]...``, or ``?`` where the file lacks it (the header only describes the run)."""
    for part in path:
        if not isinstance(cfg, dict) or part not in cfg:
            return "?"
        cfg = cfg[part]
    return cfg


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` (and its figures) summarising training and trials in ``run_dir``.

    A directory with nothing to report, or whose files are not what metadapt writes, is one ``MetadaptError``.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    cfg = read_yaml_file(cfg_path, "config file") if cfg_path.is_file() else {}
    has_metrics = any(p.is_file() for p in (run_dir / "metrics.csv", run_dir / "train" / "metrics.csv")) or any(
        (p / "metrics.csv").is_file() for p in run_dir.glob("trial_*"))
    if not cfg and not has_metrics:
        raise MetadaptError(f"{run_dir} holds no run to report (no config.yaml, metrics.csv or trial_*/metrics.csv)")
    if not isinstance(cfg, dict):
        raise MetadaptError(f"{cfg_path} does not hold a config (a mapping of sections)")
    lines = [f"# metadapt report: {one_line(_key(cfg, 'name') if 'name' in cfg else run_dir.name)}", ""]
    if cfg:
        lines += [
            f"- environment: `{_key(cfg, 'env', 'id')}`, seed {_key(cfg, 'seed')}",
            f"- model: MLP {_key(cfg, 'model', 'hidden')} {_key(cfg, 'model', 'activation')}",
            f"- planner: {_key(cfg, 'planner', 'type')} (N={_key(cfg, 'planner', 'num_samples')}, "
            f"H={_key(cfg, 'planner', 'horizon')}, {_key(cfg, 'planner', 'dtype')})",
            f"- learner: {_key(cfg, 'learner', 'type')}",
            "- full configuration: [config.yaml](config.yaml)",
            "",
        ]
        lines = [one_line(line, 1000) if line else line for line in lines]
    try:
        _train_section(run_dir, lines)
        _trial_section(run_dir, lines)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        # The files were read and their columns checked; anything else amiss is still a file's, not metadapt's.
        raise MetadaptError(f"cannot write the report of {run_dir}: a file in it is not what metadapt writes "
                            f"({type(exc).__name__}: {one_line(exc)})") from exc
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
