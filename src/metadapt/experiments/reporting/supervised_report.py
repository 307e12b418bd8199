"""``report.md`` of a few-shot supervised meta-learning run: the held-out table, training curves and fits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metadapt.errors import MetadaptError, one_line
from metadapt.experiments.reporting.report import plt, read_csv, read_json, save_figure
from metadapt.meta.inner import Rates
from metadapt.types import Params

NAMES = {"maml": "MAML", "pretrained": "pretrained, fine-tuned", "nearest_neighbour": "nearest neighbour (pixels)"}


def _method_label(cfg: dict[str, Any]) -> str:
    m = cfg["meta"]
    if m["learn_inner_lr"]:
        return "Meta-SGD" if m["inner_lr_per"] == "entry" else "MAML, learned per-tensor rates"
    return "first-order MAML" if m["first_order"] else "MAML (second order)"


def _cell(r: dict[str, Any] | None, metric: str, tasks: int) -> str:
    if r is None:
        return "-"
    if r["mean"] is None:
        return f"diverged on {r.get('nonfinite', '?')} of {tasks} tasks"
    half = r["ci95"] if r["ci95"] is not None else float("nan")
    if metric == "accuracy":
        return f"{100 * r['mean']:.2f} ± {100 * half:.2f}%"
    return f"{r['mean']:.3f} ± {half:.3f}"


def results_table(summary: dict[str, Any], label: str) -> list[str]:
    """Markdown rows: one per method, one column per number of inner steps (mean ± 95% half-width)."""
    steps = sorted({int(s) for per in summary["methods"].values() for s in per}, key=int)
    metric = summary["metric"]
    cols = [f"{metric} after {s} step{'s' if s != 1 else ''}" for s in steps]
    head = f"| method | {' | '.join(cols)} |"
    lines = [head, "|---|" + "---:|" * len(steps)]
    for name, per in summary["methods"].items():
        cells = []
        for s in steps:
            cells.append(_cell(per.get(str(s)), metric, summary["tasks"]))
        title = label if name == "maml" else NAMES.get(name, name)
        lines.append(f"| {title} | {' | '.join(cells)} |")
    return lines


def plot_training(run_dir: Path) -> Path | None:
    m = read_csv(run_dir / "metrics.csv")
    if not m:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for stage in dict.fromkeys(m["stage"].tolist()):
        sel = m["stage"] == stage
        ax.plot(m["iteration"][sel], m["loss"][sel], lw=1, label=stage)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (after adaptation for meta)")
    ax.legend()
    path = run_dir / "training.png"
    save_figure(fig, path)
    return path


def plot_sinusoid_fits(run_dir: Path, cfg: dict[str, Any], model: Any, params: Params, rates: Rates,
                       baseline: Params | None, baseline_rates: Rates | None) -> Path:
    """The MAML paper's Figure 2: a held-out task, its K points, and the fits after 0, 1 and 10 steps."""
    from metadapt.data.sinusoid import SinusoidTasks
    from metadapt.experiments.jobs.supervised import EVAL_STREAM, adapt_one

    gen = torch.Generator().manual_seed(cfg["seed"] + EVAL_STREAM + 1)
    task = SinusoidTasks(cfg["task"]["shots"], 1).sample(1, gen)
    support = (task.support[0][0].cpu(), task.support[1][0].cpu())
    amp, phase = float(task.info["amplitude"][0]), float(task.info["phase"][0])
    x = torch.linspace(-5, 5, 200).unsqueeze(-1)
    methods = [("MAML", params, rates)]
    if baseline is not None:
        methods.append(("pretrained", baseline, baseline_rates))
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 3.6), squeeze=False)
    for ax, (name, p, r) in zip(axes[0], methods, strict=True):
        p = {k: v.cpu() for k, v in p.items()}
        r = {k: v.cpu() for k, v in r.items()} if isinstance(r, dict) else r
        ax.plot(x, SinusoidTasks.curve(amp, phase, x), color="black", lw=2, label="ground truth")
        for steps, style in ((0, ":"), (1, "--"), (10, "-")):
            fast = adapt_one(model, p, support, r, steps)
            with torch.no_grad():
                label = f"after {steps} step{'s' if steps != 1 else ''}"
                ax.plot(x, model.forward(fast, x), style, lw=1.4, label=label)
        ax.scatter(support[0], support[1], marker="^", color="tab:purple", zorder=5,
                   label=f"{cfg['task']['shots']} points used for the gradient")
        ax.set_title(f"{name}, K = {cfg['task']['shots']}")
        ax.set_ylim(-5.5, 5.5)
        ax.legend(fontsize=7, loc="lower right")
    path = run_dir / "fits.png"
    save_figure(fig, path)
    return path


def write_supervised_report(run_dir: Path, cfg: dict[str, Any], problem: Any, params: Params, rates: Rates,
                            baseline: Params | None) -> Path:
    """``report.md`` from ``summary.json``, ``metrics.csv`` and the parameters."""
    try:
        return _write(run_dir, cfg, problem, params, rates, baseline, read_json(run_dir / "summary.json"))
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        # summary.json and metrics.csv were read as JSON and CSV; their contents may still not be metadapt's
        raise MetadaptError(f"cannot write the report of {run_dir}: a file in it is not what metadapt writes "
                            f"({type(exc).__name__}: {one_line(exc)})") from exc


def _frozen_note(frozen: list[str]) -> str:
    return f" (leaving {', '.join(f'`{p}*`' for p in frozen)} as meta-learned)" if frozen else ""


def _write(run_dir: Path, cfg: dict[str, Any], problem: Any, params: Params, rates: Rates,
           baseline: Params | None, summary: dict[str, Any]) -> Path:
    from metadapt.experiments.jobs.supervised import finetune_rates

    label = _method_label(cfg)
    t, m = cfg["task"], cfg["meta"]
    what = (f"sinusoid regression, K = {t['shots']}" if t["type"] == "sinusoid"
            else f"{t['ways']}-way {t['shots']}-shot classification")
    lines = [f"# {cfg['name']}: {label} on {what}", "",
             f"{m['iterations']} meta-iterations of {m['meta_batch']} tasks, {m['inner_steps']} inner step(s) at "
             f"rate {m['inner_lr']}{_frozen_note(m['inner_frozen'])}, Adam {m['outer_lr']}; seed {cfg['seed']}. "
             f"Held-out: {summary['tasks']} tasks "
             "never drawn in training, the same for every method; mean ± 95% interval (1.96 standard errors).", "",
             *results_table(summary, label), ""]
    if (fig := plot_training(run_dir)) is not None:
        lines += [f"![training]({fig.name})", ""]
    if t["type"] == "sinusoid":
        fig = plot_sinusoid_fits(run_dir, cfg, problem.model, params, rates, baseline,
                                 None if baseline is None else finetune_rates(cfg, baseline))
        lines += ["A held-out task: the true curve, the K points adapted on, and each network after 0, 1 and 10 "
                  "gradient steps (the MAML paper's Figure 2).", "", f"![fits]({fig.name})", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path

