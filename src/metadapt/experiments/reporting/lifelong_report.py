"""``report.md`` of a lifelong run (``system: gcg``): J_average(T) with the switches, recovery, adaptation.

Reads only the run directory (``config.yaml``, ``steps.csv``, ``summary.json``), so ``metadapt report RUN``
rewrites it; ``lifelong_figure`` also draws several runs on one axis for a sweep's report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from metadapt.errors import MetadaptError
from metadapt.experiments.configuration.gcg_schema import ADAPTING
from metadapt.experiments.reporting.lifelong import j_average, read_steps, summarize_run, switch_steps
from metadapt.experiments.reporting.report import plt, save_figure, smooth

METHOD_LABELS = {"meta_gcg": "Meta-GCG", "gcg": "GCG", "gcg_adapt": "GCG + adaptation",
                 "oracle": "oracle (rotation told)"}


def _read(run_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    if not (run_dir / "steps.csv").is_file():
        raise MetadaptError(f"{run_dir} has no steps.csv (not a gcg run, or it has not reached a checkpoint)")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return cfg, read_steps(run_dir / "steps.csv"), _summary(run_dir / "summary.json")


def _summary(path: Path) -> dict[str, Any]:
    """``summary.json`` (empty for a run that has not finished: it is written at the end), refused in one line
    naming it when it is not a JSON object (cut short, garbage)."""
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadaptError(f"{path} is not readable JSON ({exc}): delete it and resume the run, or rerun it") from None
    if not isinstance(summary, dict):
        raise MetadaptError(f"{path} holds a {type(summary).__name__}, not a run's summary (a JSON object): delete "
                            "it and resume the run, or rerun it")
    return summary


def lifelong_figure(curves: dict[str, list[np.ndarray]], switches: np.ndarray, path: Path,
                    title: str = "") -> Path:
    """J_average(T) per method (the mean over runs, a band of their min and max), switches as dotted lines.

    ``curves``: method label -> per-run reward columns (``T`` each; cut to the shortest).
    """
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for label, runs in curves.items():
        n = min(r.size for r in runs)
        js = np.stack([j_average(r[:n]) for r in runs])
        steps = np.arange(1, n + 1)
        line, = ax.plot(steps, js.mean(0), lw=1.4, label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(steps, js.min(0), js.max(0), color=line.get_color(), alpha=0.15, lw=0)
    for i, s in enumerate(switches.tolist()):
        ax.axvline(s, color="0.5", lw=0.7, ls=":", label="rotation switch" if i == 0 else None)
    ax.set_xlabel("environment step T")
    ax.set_ylabel("J_average(T): mean reward so far")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return path


def _adaptation_figure(cols: dict[str, np.ndarray], switches: np.ndarray, path: Path) -> Path | None:
    ok = np.isfinite(cols["ce_before"]) & np.isfinite(cols["ce_after"])
    if not ok.any():
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    steps = cols["step"][ok]
    k = max(1, int(ok.sum()) // 50)  # a causal trailing mean keeps the curve readable without looking ahead
    ax.plot(steps, smooth(cols["ce_before"][ok], k), lw=1.1, label="before adapting (theta)")
    ax.plot(steps, smooth(cols["ce_after"][ok], k), lw=1.1, label="after adapting on the last steps")
    for i, s in enumerate(switches.tolist()):
        ax.axvline(s, color="0.5", lw=0.7, ls=":", label="rotation switch" if i == 0 else None)
    ax.set_xlabel("environment step")
    ax.set_ylabel("reward cross-entropy, next steps")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return path


def _number(x: Any) -> float:
    """``x`` as a float; NaN for what is none (a summary read from disk may hold anything)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _fmt(x: Any, digits: int = 4) -> str:
    v = _number(x)
    return "-" if not np.isfinite(v) else f"{v:.{digits}f}"


def write_lifelong_report(run_dir: Path) -> Path:
    cfg, cols, summary = _read(run_dir)
    summary = {**summary, **summarize_run(run_dir)}  # the metrics as defined now
    method = cfg.get("method", "meta_gcg")
    label = METHOD_LABELS.get(method, method)
    switches = switch_steps(cols["rotation"])
    lifelong_figure({label: [cols["reward"]]}, switches, run_dir / "j_average.png")
    adapt_fig = _adaptation_figure(cols, switches, run_dir / "adaptation.png")
    kw = cfg["env"]["kwargs"]
    m = cfg["meta"]
    lines = [
        f"# {label} on {cfg['env']['id']} ({kw.get('mode', 'episodic')}), seed {cfg['seed']}",
        "",
        f"{int(cols['step'].size)} of {cfg['env']['steps']} steps; model preset `{cfg['model']['preset']}`; "
        f"CEM {cfg['planner']['samples']} x {cfg['planner']['iterations']} rounds, horizon "
        f"{cfg['planner']['horizon']}; training every {m['train_every']} step(s) from step "
        f"{m['start'] or m['window']}: "
        + (f"MAML on windows of {m['window']} (meta-batch {m['meta_batch']}, batch {m['batch']}, "
           f"{m['inner_steps']} inner steps at {m['inner_lr']}, {'first' if m['first_order'] else 'second'} order)"
           if method == "meta_gcg" else f"Adam on {m['meta_batch'] * m['batch']} sequences of the stream")
        + (f", adapted every {cfg['adapt']['every']} steps on the last {cfg['adapt']['window']}"
           if method in ADAPTING else ", never adapted")
        + ("; actions un-rotated with the true rotation" if method == "oracle" else "") + ".",
        "",
        "| J_average at the end | total reward | switches | mean steps to recover (censored share) | "
        "CE before → after adapting | in the steps after switches | share of adaptations that lowered it |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {_fmt(summary.get('j_average', np.mean(cols['reward'])))} | {_fmt(np.sum(cols['reward']), 0)} | "
        f"{switches.size} | {_fmt(summary.get('recovery_steps'), 1)} ({_fmt(summary.get('recovery_censored'), 2)}) | "
        f"{_fmt(summary.get('ce_before'))} → {_fmt(summary.get('ce_after'))} | "
        f"{_fmt(summary.get('ce_before_after_switch'))} → {_fmt(summary.get('ce_after_after_switch'))} | "
        f"{_fmt(summary.get('ce_lower_share'), 2)} |",
        "",
        "Recovery: the steps from a switch to the end of the first window of "
        f"{cfg['eval'].get('recovery_window', 20)} steps after it whose mean reward is back to "
        f"{cfg['eval']['recovery_fraction']:.0%} of the mean of the {cfg['eval']['rate_window']} steps before it "
        "(censored: the next switch came first). CE: the reward-prediction cross-entropy of the next "
        f"{cfg['adapt']['every']} steps, of theta and of theta adapted on the {cfg['adapt']['window']} steps "
        "before them" + ("" if method in ADAPTING else f" (scored only: {label} acts with theta)") + ".",
        "",
        "![J_average](j_average.png)",
    ]
    if adapt_fig is not None:
        lines += ["", "![adaptation](adaptation.png)"]
    if (run_dir / "video.mp4").is_file():
        lines += ["", "Video of the last steps, true rotation and predicted return drawn on: [video.mp4](video.mp4)"]
    refused = {c: float(np.nansum(cols[c])) for c in ("train_refused", "adapt_refused")}
    if any(refused.values()):
        lines += ["", f"Non-finite numbers: {refused['train_refused']:.0f} optimizer steps were refused (a "
                  "non-finite loss, or parameters it would have made non-finite: theta went on from before them) and "
                  f"{refused['adapt_refused']:.0f} adaptations (non-finite adapted parameters: the agent acted with "
                  "theta instead); `train_refused` and `adapt_refused` in steps.csv say when."]
    if (speed := _number(summary.get("steps_per_second"))) > 0 and np.isfinite(speed):  # none in a resumed end
        lines += ["", f"Speed: {speed:.1f} steps/s in its last session."]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
