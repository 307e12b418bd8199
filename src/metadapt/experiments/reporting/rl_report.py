"""``report.md`` of a meta-RL run: the held-out table (return after k inner steps), learning and adaptation curves.

Reads only the run directory's files (``config.yaml``, ``summary.json``,
``metrics.csv``, ``timing.json``), so ``metadapt report RUN`` rewrites it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from metadapt.errors import MetadaptError
from metadapt.experiments.reporting.report import plt, read_csv, save_figure

NAMES = {"maml": "MAML-RL", "pretrained": "pretrained, fine-tuned", "random": "random init, fine-tuned",
         "oracle": "oracle (task observed)"}
STAGES = {"maml": "MAML-RL (after adaptation)", "pretrained": "pretrained", "oracle": "oracle"}


def _label(cfg: dict[str, Any]) -> str:
    m = cfg["meta"]
    kind = "Meta-SGD rates, " if m["learn_inner_lr"] else ""
    order = "first order" if m["first_order"] else "second order"
    return f"MAML-RL ({kind}{order}, {m['outer'].upper()} outer step)"


def results_table(summary: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    steps = list(range(summary["steps"] + 1))
    lines = ["| method | " + " | ".join(f"return after {s} step{'s' if s != 1 else ''}" for s in steps) + " |",
             "|---|" + "---:|" * len(steps)]
    for name, per in summary["methods"].items():
        cells = [f"{per[str(s)]['mean']:.2f} ± {per[str(s)]['ci95']:.2f}" if str(s) in per else "-" for s in steps]
        lines.append(f"| {_label(cfg) if name == 'maml' else NAMES.get(name, name)} | {' | '.join(cells)} |")
    return lines


def _finish(fig: Any, ax: Any, xlabel: str, ylabel: str, path: Path, legend_size: int = 8) -> Path:
    """Label, legend and grid ``ax``, then save ``fig`` to ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return path


def plot_learning(run_dir: Path) -> Path | None:
    m = read_csv(run_dir / "metrics.csv")
    if not m:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for stage in dict.fromkeys(m["stage"].tolist()):
        sel = m["stage"] == stage
        ax.plot(m["iteration"][sel], m["return_post"][sel], lw=1.2, label=STAGES.get(stage, stage))
        if stage == "maml":
            ax.plot(m["iteration"][sel], m["return_pre"][sel], lw=1, ls="--", label="MAML-RL (before adaptation)")
    return _finish(fig, ax, "meta-iteration", "mean return of the sampled episodes", run_dir / "learning.png")


def plot_heldout(run_dir: Path) -> tuple[Path, list[str]] | None:
    """``heldout.png`` and a table from ``heldout.csv`` (``eval.curve_every``): each stage's held-out return before
    and after its last curve step, against the environment steps of its training."""
    c = read_csv(run_dir / "heldout.csv")
    if not c:
        return None
    last = max(int(k.split("_")[1]) for k in c if k.startswith("return_"))
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
            table.append(f"| {stage} | {int(c['iteration'][i])} | {int(c['env_steps'][i]):,} | "
                         f"{c['return_0'][i]:.2f} ± {c['ci95_0'][i]:.2f} | "
                         f"{c[f'return_{last}'][i]:.2f} ± {c[f'ci95_{last}'][i]:.2f} |")
    return _finish(fig, ax, "environment steps of meta-training", "held-out return (95% interval)",
                   run_dir / "heldout.png", legend_size=7), table


def plot_adaptation(run_dir: Path, summary: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, per in summary["methods"].items():
        steps = sorted(int(s) for s in per)
        mean = np.array([per[str(s)]["mean"] for s in steps])
        ci = np.array([per[str(s)]["ci95"] for s in steps])
        ax.errorbar(steps, mean, yerr=ci, marker="o", capsize=3, label=NAMES.get(name, name))
    ax.set_xticks(range(summary["steps"] + 1))
    return _finish(fig, ax, "policy-gradient steps on the held-out task", "mean return (95% interval over tasks)",
                   run_dir / "adaptation.png")


def write_rl_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise MetadaptError(f"{run_dir} has no readable config.yaml and summary.json of a meta-RL run ({exc})") \
            from None
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
    if timing_path.is_file():
        timing = json.loads(timing_path.read_text())
        lines += ["| stage | iterations | sampling (s) | updates (s) | sampling share |", "|---|---:|---:|---:|---:|"]
        for stage, t in timing.items():
            lines.append(f"| {stage} | {t['iterations']} | {t['sample_s']:.1f} | {t['update_s']:.1f} | "
                         f"{t['sampling_share']} |")
        lines.append("")
    m = read_csv(run_dir / "metrics.csv")
    if m:
        last = {stage: int(m["env_steps"][m["stage"] == stage][-1]) for stage in dict.fromkeys(m["stage"].tolist())}
        lines += ["Environment steps of meta-training: " + ", ".join(f"{k} {v:,}" for k, v in last.items()), ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
