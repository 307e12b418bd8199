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
from metadapt.experiments.reporting.metrics import POSTERIOR_FILE, POSTERIOR_PREFIX, method_name, unpack_posterior


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
    """A ``posterior`` column of the packed form runs before ``posterior.csv`` wrote ("id:p;id:p") ->
    (component ids, ``T x C`` probabilities)."""
    parsed = [unpack_posterior(cell) for cell in column]
    ids = sorted({i for row in parsed for i in row})
    return ids, np.array([[row.get(i, 0.0) for i in ids] for row in parsed])


def read_posterior(trial_dir: Path, m: dict[str, np.ndarray]) -> tuple[list[int], np.ndarray] | None:
    """MOLe's posterior of a trial: (component ids, ``T x C`` probabilities) from ``posterior.csv`` (or the packed
    column of older runs' ``metrics.csv``); ``None`` for learners without one."""
    p = read_csv(trial_dir / POSTERIOR_FILE)
    if p:
        names = [k for k in p if k.startswith(POSTERIOR_PREFIX)]
        numeric_columns(p, trial_dir / POSTERIOR_FILE, ("step", *names))
        return [int(k[len(POSTERIOR_PREFIX):]) for k in names], np.stack([p[k] for k in names], axis=1)
    if "posterior" in m:
        return posterior_matrix(m["posterior"])
    return None


def switch_steps(m: dict[str, np.ndarray]) -> np.ndarray:
    """The steps at which the true task changes (``task_id`` differs from the step before)."""
    tasks = m["task_id"]
    return m["step"][np.flatnonzero(np.diff(tasks) != 0) + 1]


def mark_switches(ax: Any, m: dict[str, np.ndarray]) -> None:
    """Dotted vertical lines at the task switches, with one legend entry."""
    for i, s in enumerate(switch_steps(m)):
        ax.axvline(s, color="0.5", lw=0.8, ls=":", label="task switch" if i == 0 else None)


def plot_task_probabilities(m: dict[str, np.ndarray], posterior: tuple[list[int], np.ndarray], path: Path,
                            title: str = "") -> None:
    """Seed 000 Figure 2: the latent task probabilities over time, the true task shaded behind."""
    from matplotlib.patches import Patch

    ids, probs = posterior
    steps, tasks = m["step"], m["task_id"]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    switches = np.flatnonzero(np.diff(tasks) != 0) + 1
    bounds = [0, *switches.tolist(), len(tasks)]
    palette = plt.get_cmap("Pastel1")
    order = {t: i for i, t in enumerate(dict.fromkeys(tasks.tolist()))}
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        ax.axvspan(steps[a], steps[b - 1] + 1, color=palette(order[tasks[a]] % 9), alpha=0.6, lw=0)
    shown = [j for j in range(len(ids)) if probs[:, j].max() > 0.5] or list(range(len(ids)))
    handles = [ax.plot(steps, probs[:, j], lw=1, label=f"component {ids[j]}")[0] for j in shown[:10]]
    handles += [Patch(color=palette(i % 9), alpha=0.6, label=f"true task {int(t)}") for t, i in order.items()]
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("P(task)")
    ax.set_title(title or "latent task probabilities (true task shaded)")
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, path)


def smooth(x: np.ndarray, width: int = 25) -> np.ndarray:
    """Trailing mean over the last ``width`` steps (fewer at the start), the same length as ``x``.

    Causal: the value at step t uses steps t-width+1..t only, so a curve never moves before the event that
    moves it (a centred window made the model error rise before a task switch). Non-finite values count as
    the series' finite mean, so a log-scale figure has a finite point at every step.
    """
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return x
    finite = np.isfinite(x)
    filled = np.where(finite, x, x[finite].mean() if finite.any() else 0.0)
    sums = np.cumsum(filled)
    w = min(width, x.size)
    window_sums = sums - np.concatenate((np.zeros(w), sums[:-w]))
    return window_sums / np.minimum(np.arange(1, x.size + 1), w)


def plot_model_error(m: dict[str, np.ndarray], path: Path) -> None:
    """One-step error of the parameters planned with, and (TS) the window loss before and after adaptation."""
    fig, ax = plt.subplots(figsize=(9, 3.2))
    mark_switches(ax, m)
    ax.semilogy(m["step"], smooth(m["model_error"]), lw=1, label="one-step error of the planning parameters")
    if "window_loss_prior" in m and "window_loss_adapted" in m:
        ax.semilogy(m["step"], smooth(m["window_loss_prior"]), lw=1, label="window loss before adaptation")
        ax.semilogy(m["step"], smooth(m["window_loss_adapted"]), lw=1, label="window loss after adaptation")
    ax.set_xlabel("step")
    ax.set_ylabel("normalized MSE\n(mean of the last 25 steps)")
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
    # Meta-training: the validation loss of the prior before adapting is what shows what adaptation gains.
    before = m.get("val_loss_prior")
    meta = before is not None and before.dtype != object and bool(np.isfinite(before).any())
    header = "| iteration | env steps | return / 1000 steps | train loss | val loss |"
    header += " val loss before adaptation | reduction |" if meta else ""
    lines += ["## Model training", "",
              *(["Meta-training: the validation loss after adapting on the M past steps, and of the prior itself "
                 "before adapting (the K future steps of held-out trajectories).", ""] if meta else []),
              header + " epochs |", "|" + "---:|" * (7 if meta else 5) + "---:|"]
    for i in range(len(m["iteration"])):
        cells = [fmt(m["iteration"][i], ".0f"), fmt(m["env_steps"][i], ".0f"),
                 fmt(m["rollout_return_per_1000"][i], ".1f"), fmt(m["train_loss"][i], ".4f"),
                 fmt(m["val_loss"][i], ".4f")]
        if meta:
            assert before is not None
            gain = 1.0 - m["val_loss"][i] / before[i] if before[i] > 0 else float("nan")
            cells += [fmt(before[i], ".4f"), fmt(gain, ".0%")]
        lines.append("| " + " | ".join([*cells, fmt(m["epochs"][i], ".0f")]) + " |")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(m["env_steps"], m["rollout_return_per_1000"], "o-", label="collection")
    a.set_xlabel("environment steps")
    a.set_ylabel("collection return / 1000 steps")
    a.set_title("data collection (iteration 0 is random)")
    a.legend()
    b.semilogy(m["iteration"], m["train_loss"], "o-", label="train")
    b.semilogy(m["iteration"], m["val_loss"], "s-", label="validation (after adaptation)" if meta else "validation")
    if meta:
        assert before is not None
        b.semilogy(m["iteration"], before, "^--", label="validation before adaptation")
    b.set_xlabel("iteration")
    b.set_ylabel("normalized delta MSE")
    b.legend()
    save_figure(fig, run_dir / "training.png")
    lines += ["", "![training](training.png)", ""]


def _trial_section(run_dir: Path, lines: list[str]) -> None:
    trials = sorted(p for p in run_dir.glob("trial_*") if (p / "metrics.csv").is_file())
    if not trials and _is_trial(run_dir):
        trials = [run_dir]  # ``metadapt report runs/x/trial_0``: the one trial
    if not trials:
        return
    lines += ["## Trials", "", "Upside down: the share of steps that end with the torso's up axis below the horizon "
              "(legged robots); velocity: the mean forward velocity (m/s).", "",
              "| trial | steps | return | upside down | velocity | mean plan ms | mean model error | "
              "non-finite returns |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    task_figures: list[str] = []
    adaptation: list[str] = []
    videos: list[str] = []
    for i, t in enumerate(trials):
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
            if i == 0:
                mark_switches(ax, m)
        if _analysis(s, "components") is not None:
            cells = [fmt(_analysis(s, k), f) for k, f in (
                ("task_recovery_ari", ".3f"), ("components", ".0f"), ("effective_components", ".0f"),
                ("created", ".0f"), ("created_per_switch", ".2f"), ("switches", ".0f"))]
            adaptation.append("| " + " | ".join([t.name, *cells]) + " |")
        posterior = read_posterior(t, m) if m else None
        if posterior is not None:
            plot_task_probabilities(m, posterior, run_dir / f"{t.name}_tasks.png")
            task_figures.append(f"![task probabilities of {t.name}]({t.name}_tasks.png)")
        if "model_error" in m and m["model_error"].dtype != object:
            plot_model_error(m, run_dir / f"{t.name}_model_error.png")
            task_figures.append(f"![model error of {t.name}]({t.name}_model_error.png)")
        if (t / "trial.mp4").is_file():
            link = (t / "trial.mp4").relative_to(run_dir).as_posix()
            videos.append(f"[{link}]({link})")
    ax.set_xlabel("step")
    ax.set_ylabel("cumulative reward")
    ax.legend()
    save_figure(fig, run_dir / "trials.png")
    lines += ["", "![trials](trials.png)", ""]
    if adaptation:
        lines += ["### Adaptation (MOLe)", "",
                  "Task recovery: the adjusted Rand index of the chosen component against the true task (1: the "
                  "components are the tasks; steps within K of a switch left out); effective components: chosen "
                  "for at least 5% of the steps.", "",
                  "| trial | task recovery | components | effective | created | created per switch | switches |",
                  "|---|---:|---:|---:|---:|---:|---:|", *adaptation, ""]
    lines += [*task_figures, ""]
    if videos:
        lines += ["Videos (the camera follows the robot; each frame shows the true task and the chosen component): "
                  + ", ".join(videos), ""]
    s = read_json(run_dir / "summary.json")
    if "mean_return" in s:  # a run's summary (a trial folder's own summary.json has no mean over trials)
        returns = s.get("returns")
        count = len(returns) if isinstance(returns, list) else "?"
        lines += [f"Mean return over {count} trial(s): **{fmt(s.get('mean_return'), '.1f')}** "
                  f"(std {fmt(s.get('std_return'), '.1f')}).", ""]


def _is_trial(folder: Path) -> bool:
    """A trial's own folder (``metrics.csv`` with a ``return`` column per step, no training run's ``iteration``)."""
    path = folder / "metrics.csv"
    if not path.is_file():
        return False
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    return "return" in header and "step" in header and "iteration" not in header


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
        objective = _key(cfg, "planner", "objective")
        objective = "reward" if objective == "?" else objective  # runs from before planner.objective existed
        lines += [
            f"- environment: `{_key(cfg, 'env', 'id')}`, seed {_key(cfg, 'seed')}",
            f"- model: MLP {_key(cfg, 'model', 'hidden')} {_key(cfg, 'model', 'activation')}",
            f"- planner: {_key(cfg, 'planner', 'type')} (N={_key(cfg, 'planner', 'num_samples')}, "
            f"H={_key(cfg, 'planner', 'horizon')}, {_key(cfg, 'planner', 'dtype')})",
            f"- learner: {method_name(_key(cfg, 'learner', 'type'))} (`learner.type={_key(cfg, 'learner', 'type')}`)",
            f"- planner objective: {objective} (returns are the environment's reward)",
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
