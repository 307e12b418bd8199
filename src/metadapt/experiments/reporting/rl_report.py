"""``report.md`` of a meta-RL run: the held-out table (return after k inner steps), learning and adaptation curves.

Reads only the run directory's files (``config.yaml``, ``summary.json``,
``metrics.csv``, ``heldout.csv``, ``timing.json``), so ``metadapt report RUN``
rewrites it. A run directory may come from anyone: a file that is not what a
meta-RL run writes is one ``MetadaptError`` naming it. A held-out step on which
some task's adaptation diverged has no mean (``null`` in ``summary.json``): its
cell says on how many tasks it diverged.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from metadapt.errors import MetadaptError, one_line
from metadapt.experiments.configuration.config import load_config
from metadapt.experiments.reporting.report import fmt, numeric_columns, plt, read_csv, read_json, save_figure
from metadapt.types import UPSIDE_DOWN

NAMES = {"maml": "MAML-RL", "pretrained": "pretrained, fine-tuned", "random": "random init, fine-tuned",
         "oracle": "oracle (task observed)"}
STAGES = {"maml": "MAML-RL (after adaptation)", "pretrained": "pretrained", "oracle": "oracle"}


def _label(cfg: dict[str, Any]) -> str:
    m = cfg["meta"]
    kind = "Meta-SGD rates, " if m["learn_inner_lr"] else ""
    order = "first order" if m["first_order"] else "second order"
    return f"MAML-RL ({kind}{order}, {m['outer'].upper()} outer step)"


def _method(name: str, cfg: dict[str, Any]) -> str:
    return _label(cfg) if name == "maml" else NAMES.get(name, name)


def _cell(r: dict[str, Any] | None, tasks: int) -> str:
    """``mean ± half-width`` of one method and step; a step with a diverged task has no mean."""
    if r is None:
        return "-"
    if r["mean"] is None:
        return f"n/a (diverged on {r.get('nonfinite', '?')} of {tasks} tasks)"
    return f"{fmt(r['mean'], '.2f')} ± {fmt(r['ci95'], '.2f')}"


def results_table(summary: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    steps = list(range(summary["steps"] + 1))
    lines = ["| method | " + " | ".join(f"return after {s} step{'s' if s != 1 else ''}" for s in steps) + " |",
             "|---|" + "---:|" * len(steps)]
    for name, per in summary["methods"].items():
        cells = [_cell(per.get(str(s)), summary["tasks"]) for s in steps]
        lines.append(f"| {_method(name, cfg)} | {' | '.join(cells)} |")
    if any(UPSIDE_DOWN in r for per in summary["methods"].values() for r in per.values()):
        lines += ["", "Share of the held-out episodes' steps spent on the back (up axis below the horizon):",
                  "", "| method | " + " | ".join(f"after {s} step{'s' if s != 1 else ''}" for s in steps) + " |",
                  "|---|" + "---:|" * len(steps)]
        for name, per in summary["methods"].items():
            cells = [fmt(_number((per.get(str(s)) or {}).get(UPSIDE_DOWN)), ".1%") for s in steps]
            lines.append(f"| {_method(name, cfg)} | {' | '.join(cells)} |")
    return lines


def _number(value: Any) -> float:
    """A summary's number as a float (``null``, a diverged step: NaN, a gap in a plot)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def check_summary(summary: dict[str, Any], path: Path) -> None:
    """Refuse, in one line naming ``path``, a ``summary.json`` that is not a meta-RL run's."""
    def refuse(what: str) -> None:
        raise MetadaptError(f"{path} is not the summary of a meta-RL run ({what})")

    if not summary:
        refuse("missing or empty: finish the run with metadapt train --resume")
    kinds = {"steps": (int, "an integer"), "tasks": (int, "an integer"), "episodes": (int, "an integer"),
             "env_id": (str, "a string"), "methods": (dict, "a mapping")}
    for key, (kind, name) in kinds.items():
        if not isinstance(summary.get(key), kind) or isinstance(summary.get(key), bool):
            refuse(f"'{key}' missing or not {name}")
    for name, per in summary["methods"].items():
        if not isinstance(per, dict) or not per:
            refuse(f"method '{name}' holds no steps")
        for step, r in per.items():
            if not (isinstance(step, str) and step.isdigit() and isinstance(r, dict)):
                refuse(f"method '{name}' has an entry {step!r} that is not a step's result")
            for key in ("mean", "ci95", UPSIDE_DOWN):
                if r.get(key) is not None and not isinstance(r.get(key), int | float):
                    refuse(f"method '{name}' step {step}: '{key}' is not a number")


def _style(ax: Any, ylabel: str, legend_size: int = 8) -> None:
    """Label, legend and grid ``ax``."""
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)


def _finish(fig: Any, ax: Any, xlabel: str, ylabel: str, path: Path, legend_size: int = 8) -> Path:
    """Label, legend and grid ``ax`` (the bottom panel), then save ``fig`` to ``path``."""
    ax.set_xlabel(xlabel)
    _style(ax, ylabel, legend_size)
    save_figure(fig, path)
    return path


def _posture(m: dict[str, np.ndarray]) -> np.ndarray | None:
    """``metrics.csv``'s ``upside_down`` column, or ``None`` where no step recorded it (no posture, or a run
    checkpointed before it was recorded)."""
    back = m.get("upside_down")
    return back if back is not None and back.dtype != object and bool(np.isfinite(back).any()) else None


TAIL = 10  # the last meta-iterations whose posture the report quotes


def plot_learning(run_dir: Path) -> Path | None:
    m = _metrics(run_dir)
    if not m:
        return None
    # a robot with a posture gets a second panel: the share of the sampled steps spent on its back (a return
    # earned on the back, or a run stuck there, shows while it trains)
    back = _posture(m)
    fig, axes = plt.subplots(1 if back is None else 2, 1, figsize=(7, 3.4 if back is None else 5.6), sharex=True,
                             squeeze=False)
    ax = axes[0, 0]
    for stage in dict.fromkeys(m["stage"].tolist()):
        sel = m["stage"] == stage
        (line,) = ax.plot(m["iteration"][sel], m["return_post"][sel], lw=1.2, label=STAGES.get(stage, stage))
        if stage == "maml":
            ax.plot(m["iteration"][sel], m["return_pre"][sel], lw=1, ls="--", label="MAML-RL (before adaptation)")
        if back is not None:  # each stage in its colour of the panel above
            axes[1, 0].plot(m["iteration"][sel], back[sel], lw=1.2, color=line.get_color(),
                            label=STAGES.get(stage, stage))
    returns = "mean return of the sampled episodes"
    if back is None:
        return _finish(fig, ax, "meta-iteration", returns, run_dir / "learning.png")
    _style(ax, returns)
    axes[1, 0].set_ylim(-0.02, 1.02)
    return _finish(fig, axes[1, 0], "meta-iteration", "share of steps on its back", run_dir / "learning.png")


def plot_heldout(run_dir: Path) -> tuple[Path, list[str]] | None:
    """``heldout.png`` and a table from ``heldout.csv`` (``eval.curve_every``): each stage's held-out return before
    and after its last curve step, against the environment steps of its training."""
    path = run_dir / "heldout.csv"
    c = _read_table(path)
    if not c:
        return None
    numeric_columns(c, path, ("iteration", "env_steps", "return_0", "ci95_0"))
    if "stage" not in c:
        raise MetadaptError(f"{path} is not a held-out curve written by metadapt (column stage missing)")
    steps = [int(k.split("_")[1]) for k in c if k.startswith("return_") and k.split("_")[1].isdigit()]
    last = max(steps)
    numeric_columns(c, path, (f"return_{last}", f"ci95_{last}"))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    table = ["| stage | iteration | environment steps | before adapting | " + f"after {last} step"
             + ("s" if last != 1 else "") + " |", "|---|---:|---:|---:|---:|"]
    for stage in dict.fromkeys(c["stage"].tolist()):
        sel = c["stage"] == stage
        x = c["env_steps"][sel]
        line = ax.errorbar(x, c[f"return_{last}"][sel], yerr=c[f"ci95_{last}"][sel], marker="o", ms=3, capsize=2,
                           label=f"{STAGES.get(stage, stage).split(' (')[0]}, after {last} step(s)")
        if last:
            ax.plot(x, c["return_0"][sel], ls="--", lw=1, color=line[0].get_color(), label=f"{stage}, before")
        for i in np.flatnonzero(sel):
            # a blank mean (NaN here) is a point on which a task's adaptation diverged
            table.append(f"| {stage} | {fmt(c['iteration'][i], '.0f')} | {fmt(c['env_steps'][i], ',.0f')} | "
                         f"{_curve_cell(c, 0, i)} | {_curve_cell(c, last, i)} |")
    return _finish(fig, ax, "environment steps of meta-training", "held-out return (95% interval)",
                   run_dir / "heldout.png", legend_size=7), table


def _curve_cell(c: dict[str, np.ndarray], k: int, i: int) -> str:
    mean = c[f"return_{k}"][i]
    return f"{fmt(mean, '.2f')} ± {fmt(c[f'ci95_{k}'][i], '.2f')}" if np.isfinite(mean) else "n/a (diverged)"


def _read_table(path: Path) -> dict[str, np.ndarray]:
    """``read_csv`` of a file metadapt wrote whole (atomically): a row with fewer or more cells than the header is
    a damaged or truncated file, refused in one line, rather than read as blank cells (which mean a diverged
    point)."""
    if path.is_file():
        try:
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise MetadaptError(f"{path} cannot be read as CSV ({one_line(exc)})") from None
        for i, row in enumerate(rows[1:], start=2):
            if len(row) != len(rows[0]):
                raise MetadaptError(f"{path} is truncated or damaged: line {i} has {len(row)} cells, its header "
                                    f"{len(rows[0])}")
    return read_csv(path)


def _metrics(run_dir: Path) -> dict[str, np.ndarray]:
    """``metrics.csv``'s columns (empty when there is none: a run evaluated from a checkpoint)."""
    path = run_dir / "metrics.csv"
    m = _read_table(path)
    if m:
        numeric_columns(m, path, ("iteration", "return_pre", "return_post", "env_steps"))
        if "stage" not in m:
            raise MetadaptError(f"{path} is not a metrics file written by metadapt (column stage missing)")
    return m


def plot_adaptation(run_dir: Path, summary: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, per in summary["methods"].items():
        steps = sorted(int(s) for s in per)
        mean = np.array([_number(per[str(s)]["mean"]) for s in steps])
        ci = np.array([_number(per[str(s)]["ci95"]) for s in steps])
        ax.errorbar(steps, mean, yerr=ci, marker="o", capsize=3, label=NAMES.get(name, name))
    ax.set_xticks(range(summary["steps"] + 1))
    return _finish(fig, ax, "policy-gradient steps on the held-out task", "mean return (95% interval over tasks)",
                   run_dir / "adaptation.png")


def write_rl_report(run_dir: str | Path) -> Path:
    """``report.md`` (and its figures) of a meta-RL run directory from its files."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")  # validated and resolved: every key the report reads is there
    summary = read_json(run_dir / "summary.json")
    check_summary(summary, run_dir / "summary.json")
    try:
        return _write(run_dir, cfg, summary)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        # what was checked above was read as JSON and CSV; the rest may still not be metadapt's
        raise MetadaptError(f"cannot write the report of {run_dir}: a file in it is not what metadapt writes "
                            f"({type(exc).__name__}: {one_line(exc)})") from exc


def _write(run_dir: Path, cfg: dict[str, Any], summary: dict[str, Any]) -> Path:
    lines = [f"# {cfg['name']}: meta-RL on {summary['env_id']}", "",
             f"{summary['tasks']} held-out tasks from the test distribution, {summary['episodes']} episodes per "
             "task and step; each step is one policy-gradient step on the previous step's episodes, as in "
             "the original's evaluation"
             + (f" (steps after the first at {summary['later_lr_scale']:g} x the first's rate)"
                if summary.get("later_lr_scale", 1.0) != 1.0 else "")
             + ". Intervals: 1.96 standard errors over tasks.", ""]
    lines += results_table(summary, cfg)
    lines += ["", "![return after k steps](adaptation.png)", ""]
    if (run_dir / "adaptation.mp4").is_file():
        lines += ["Video of the adapted policy on a held-out task after each step: "
                  "[adaptation.mp4](adaptation.mp4)", ""]
    plot_adaptation(run_dir, summary)
    if plot_learning(run_dir) is not None:
        lines += ["## Training", "", "![learning curves](learning.png)", ""]
    heldout = plot_heldout(run_dir)
    if heldout is not None:
        lines += ["## Held-out return during training", "",
                  "The first held-out tasks of the evaluation, evaluated every `eval.curve_every` meta-iterations "
                  "(intervals over tasks):", "", *heldout[1], "", "![held-out return](heldout.png)", ""]
    timing_path = run_dir / "timing.json"
    timing = read_json(timing_path)
    if not all(isinstance(t, dict) for t in timing.values()):
        raise MetadaptError(f"{timing_path} is not the timing of a meta-RL run (a stage's entry is not a mapping)")
    if timing:
        lines += ["| stage | iterations | sampling (s) | updates (s) | sampling share |", "|---|---:|---:|---:|---:|"]
        for stage, t in timing.items():
            lines.append(f"| {stage} | {fmt(t.get('iterations'), 'd')} | {fmt(t.get('sample_s'), '.1f')} | "
                         f"{fmt(t.get('update_s'), '.1f')} | {fmt(t.get('sampling_share'), '.4g')} |")
        lines.append("")
    m = _metrics(run_dir)
    if m:
        stages = list(dict.fromkeys(m["stage"].tolist()))
        last = {stage: fmt(m["env_steps"][m["stage"] == stage][-1], ",.0f") for stage in stages}
        lines += ["Environment steps of meta-training: " + ", ".join(f"{k} {v}" for k, v in last.items()), ""]
        back = _posture(m)
        if back is not None:
            tail = {stage: back[m["stage"] == stage][-TAIL:] for stage in stages}
            lines += [f"Share of the sampled steps spent on the back, mean of each stage's last {TAIL} iterations: "
                      + ", ".join(f"{k} {fmt(float(np.nanmean(v)) if np.isfinite(v).any() else None, '.1%')}"
                                  for k, v in tail.items()), ""]
        if "refused" in m and m["refused"].dtype != object and np.nansum(m["refused"]) > 0:
            counts = {stage: int(np.nansum(m["refused"][m["stage"] == stage])) for stage in stages}
            lines += ["Meta-iterations refused (their step gave a NaN or an infinity; the policy stayed as it was): "
                      + ", ".join(f"{k} {v}" for k, v in counts.items() if v), ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
