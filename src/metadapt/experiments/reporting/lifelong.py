"""What a lifelong run measured (seed 001): J_average(T), recovery after switches, adaptation's effect.

All functions take the per-step columns of a run's ``steps.csv`` as numpy arrays (``T``), so a sweep's report
and a single run's report read the same numbers.

- ``j_average``: ``J_average(T) = sum_{t<=T} r_t / T`` (Co-Reyes et al., Section 3), at every step.
- ``switch_steps``: the steps whose task differs from the step before (the agent is never told).
- ``recovery_steps``: for each switch at ``s`` with a positive pre-switch reward rate ``rho`` (the mean reward of
  the ``window`` steps before ``s``), the steps from ``s`` to the end of the first window of ``short`` consecutive
  steps after the switch whose mean reward is at least ``fraction * rho``: when the recovery can be seen. A sharp
  recovery after ``L`` steps of nothing reads ``L + fraction * short`` (16 steps of lag with the defaults). A
  switch whose next switch (or the end) comes before any such window is censored at that distance: it counts as
  the steps it had, and is flagged.
- ``adaptation_losses``: the reward-prediction cross-entropy of the next steps before and after each online
  adaptation, overall and in the ``after`` steps after each switch.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metadapt.errors import MetadaptError

# steps.csv of a lifelong run: one row per environment step (empty cells: not measured at that step).
# train_refused: optimizer steps refused at that step (a non-finite loss or theta); adapt_refused: 1 when the
# adaptation of that step was refused (non-finite theta*, the agent acted with theta).
COLUMNS = ("step", "reward", "rotation", "x", "episode", "explored", "plan_return", "predicted_reward", "train_loss",
           "ce_before", "ce_after", "train_refused", "adapt_refused")
# The columns every steps.csv has; a file written before the later ones were added reads them as NaN.
REQUIRED = COLUMNS[:11]


def read_steps(path: Path) -> dict[str, np.ndarray]:
    """``steps.csv`` as columns (``T`` each; empty cells are NaN).

    A file that is not one the job wrote (cut short by a full disk or a copy, garbage, rows missing) is refused in
    one line naming it: the job writes it whole (rows of every step from 0, each line ended) and atomically.
    """
    def bad(why: str) -> MetadaptError:
        return MetadaptError(f"{path} is not a readable steps.csv of a lifelong run ({why}): rerun the run or "
                             "resume it from its checkpoint")

    try:
        text = path.read_bytes().decode("utf-8")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise bad(str(exc)) from None
    if not rows:
        raise bad("it is empty")
    header, body = rows[0], rows[1:]
    if missing := [c for c in REQUIRED if c not in header]:
        raise bad(f"no column {', '.join(missing)}")
    if not text.endswith("\n"):
        raise bad("its last line is cut short")
    if not body:
        raise bad("it holds no step")
    if short := [i for i, r in enumerate(body) if len(r) != len(header)]:
        raise bad(f"row {short[0] + 1} has {len(body[short[0]])} cells, its header {len(header)}")
    at = {c: header.index(c) for c in COLUMNS if c in header}
    try:
        values = np.array([[float(r[i]) if r[i] != "" else math.nan for i in at.values()] for r in body],
                          dtype=np.float64)
    except ValueError as exc:
        raise bad(str(exc)) from None
    cols = {c: values[:, i] for i, c in enumerate(at)}
    if not np.array_equal(cols["step"], np.arange(len(body))):
        raise bad("its steps are not 0, 1, 2, ... one row each")
    return {c: cols.get(c, np.full(len(body), math.nan)) for c in COLUMNS}


def j_average(rewards: np.ndarray) -> np.ndarray:
    """``T``: the average reward of steps ``0..T`` (inclusive) at every ``T``."""
    r = np.asarray(rewards, dtype=np.float64)
    return np.cumsum(r) / np.arange(1, r.size + 1)


def switch_steps(tasks: np.ndarray) -> np.ndarray:
    """The steps ``s > 0`` whose task differs from step ``s - 1``'s."""
    t = np.asarray(tasks)
    return np.flatnonzero(t[1:] != t[:-1]) + 1


@dataclass(frozen=True)
class Recovery:
    """One switch: its step, the pre-switch reward rate, the steps to recover and whether it was censored."""

    step: int
    rate_before: float
    steps: int
    censored: bool


def recovery_steps(rewards: np.ndarray, switches: np.ndarray, window: int = 200, fraction: float = 0.8,
                   short: int = 20) -> list[Recovery]:
    """Each switch's recovery (see the module docstring); switches with a pre-switch rate <= 0 are skipped
    (there is nothing to recover to), as are switches with fewer than ``window`` steps before them."""
    r = np.asarray(rewards, dtype=np.float64)
    csum = np.concatenate([[0.0], np.cumsum(r)])
    ends = [*switches[1:].tolist(), r.size] if switches.size else []
    out = []
    for s, end in zip(switches.tolist(), ends, strict=True):
        if s < window:
            continue
        rate = (csum[s] - csum[s - window]) / window
        if rate <= 0:
            continue
        starts = np.arange(s, end - short + 1)  # windows [a, a + short) inside this task's stretch
        means = (csum[starts + short] - csum[starts]) / short
        hit = np.flatnonzero(means >= fraction * rate)
        if hit.size:
            out.append(Recovery(s, float(rate), int(starts[hit[0]] + short - s), False))
        else:
            out.append(Recovery(s, float(rate), end - s, True))
    return out


def adaptation_losses(steps: np.ndarray, before: np.ndarray, after: np.ndarray, switches: np.ndarray,
                      after_switch: int = 200) -> dict[str, float]:
    """Mean cross-entropy before / after adaptation, over the stream and within ``after_switch`` steps after a
    switch (rows where both are finite; NaN when there are none)."""
    ok = np.isfinite(before) & np.isfinite(after)
    near = np.zeros_like(ok)
    for s in switches.tolist():
        near |= (steps >= s) & (steps < s + after_switch)
    out = {}
    for name, mask in (("", ok), ("_after_switch", ok & near)):
        out[f"ce_before{name}"] = float(before[mask].mean()) if mask.any() else math.nan
        out[f"ce_after{name}"] = float(after[mask].mean()) if mask.any() else math.nan
        out[f"ce_lower_share{name}"] = float((after[mask] < before[mask]).mean()) if mask.any() else math.nan
    return out


def summarize(rewards: np.ndarray, tasks: np.ndarray, steps: np.ndarray, ce_before: np.ndarray,
              ce_after: np.ndarray, window: int = 200, fraction: float = 0.8,
              after_switch: int = 200, short: int = 20) -> dict[str, float]:
    """The run's numbers: ``j_average`` at the end (also ``mean_return``, what sweeps aggregate), the mean
    recovery and its censored share, the switch count and the adaptation losses."""
    switches = switch_steps(tasks)
    rec = recovery_steps(rewards, switches, window, fraction, short)
    j = j_average(rewards)
    out = {
        "mean_return": float(j[-1]) if j.size else math.nan,
        "j_average": float(j[-1]) if j.size else math.nan,
        "total_reward": float(np.sum(rewards)),
        "switches": float(switches.size),
        "recovery_steps": float(np.mean([x.steps for x in rec])) if rec else math.nan,
        "recovery_censored": float(np.mean([x.censored for x in rec])) if rec else math.nan,
        "recoveries": float(len(rec)),
    }
    out.update(adaptation_losses(steps, ce_before, ce_after, switches, after_switch))
    return out


def summarize_run(run_dir: Path) -> dict[str, float]:
    """``summarize`` of a run directory's ``steps.csv`` with its config's ``eval`` settings (defaults for settings
    added after the run was written), so a report always uses the current definitions of the metrics."""
    from metadapt.experiments.configuration.files import read_yaml_file

    path = run_dir / "config.yaml"
    cfg = read_yaml_file(path, "run config")
    e = cfg.get("eval", {}) if isinstance(cfg, dict) else None
    try:
        if not isinstance(e, dict):
            raise TypeError("no eval section")
        settings = (int(e.get("rate_window", 200)), float(e.get("recovery_fraction", 0.8)),
                    int(e.get("after_switch", 200)), int(e.get("recovery_window", 20)))
    except (TypeError, ValueError) as exc:
        raise MetadaptError(f"{path} is not the config of a lifelong run ({exc})") from None
    c = read_steps(run_dir / "steps.csv")
    return summarize(c["reward"], c["rotation"], c["step"], c["ce_before"], c["ce_after"], *settings)
