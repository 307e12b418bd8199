"""Metrics of online adaptation: task recovery, effective components, forgetting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _comb2(n: np.ndarray | float) -> np.ndarray | float:
    return n * (n - 1) / 2.0


def adjusted_rand_index(labels_true: Sequence[int], labels_pred: Sequence[int]) -> float:
    """Adjusted Rand index (Hubert and Arabie, 1985) of two labelings of the same items.

    1 for identical partitions (whatever the label names), about 0 for
    independent ones. Two trivial partitions (one cluster each) score 1.
    """
    a, b = np.asarray(labels_true), np.asarray(labels_pred)
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in length: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 1.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)
    index = _comb2(table).sum()
    rows, cols = _comb2(table.sum(1)).sum(), _comb2(table.sum(0)).sum()
    expected = rows * cols / _comb2(a.size)
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def away_from_switches(task_ids: Sequence[int], margin: int) -> np.ndarray:
    """Mask of steps at least ``margin`` steps after the last task switch (and after the start)."""
    t = np.asarray(task_ids)
    mask = np.ones(t.size, dtype=bool)
    switches = np.flatnonzero(t[1:] != t[:-1]) + 1
    for s in (0, *switches):
        mask[s : s + margin] = False
    return mask


def effective_components(chosen: Sequence[int], min_fraction: float = 0.05) -> int:
    """Components chosen for at least ``min_fraction`` of the steps."""
    c = np.asarray(chosen)
    if c.size == 0:
        return 0
    _, counts = np.unique(c, return_counts=True)
    return int((counts >= min_fraction * c.size).sum())


def segments(task_ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of one task: ``(start, stop, task)`` with ``stop`` exclusive."""
    t = np.asarray(task_ids)
    if t.size == 0:
        return []
    bounds = [0, *(np.flatnonzero(t[1:] != t[:-1]) + 1).tolist(), t.size]
    return [(a, b, int(t[a])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# The scalar results of trial_analysis that sweeps tabulate (averaged over a run's trials).
ANALYSIS_FIELDS = ("task_recovery_ari", "effective_components", "components", "created_per_switch",
                   "first_500", "last_500", "upside_down", "forward_velocity")

# What a lifelong run (system: gcg) adds to a sweep's results.csv: its summary's numbers (see reporting/lifelong.py)
LIFELONG_FIELDS = ("j_average", "recovery_steps", "recovery_censored", "ce_before", "ce_after",
                   "ce_before_after_switch", "ce_after_after_switch", "ce_lower_share", "switches")

# MOLe's posterior over its components at every step: a trial's own file, ``step`` then one column per component.
POSTERIOR_FILE = "posterior.csv"
POSTERIOR_PREFIX = "component_"

# How the papers name the methods (learner types and method labels of sweeps -> the name in reports).
METHOD_NAMES = {"mole": "MOLe", "grbal": "GrBAL", "rebal": "ReBAL", "ts": "TS", "gs": "GS", "mb": "MB", "de": "DE",
                "static": "MB", "maml": "MAML", "mb_de": "MB+DE",
                "meta_gcg": "Meta-GCG", "gcg": "GCG", "gcg_adapt": "GCG + adaptation",
                "fomaml": "FO-MAML", "pretrained": "pretrained",
                "oracle": "oracle"}


def method_name(label: str) -> str:
    """``mole`` -> ``MOLe``: a learner type or a sweep's method label as the papers write it (others unchanged)."""
    return METHOD_NAMES.get(str(label).lower(), str(label))


# Per-step columns of a legged robot's trial (``metrics.csv``, from the env's ``info``): 1.0 on steps that
# end with the torso's up axis below the horizon, and the forward velocity (the crawler's along its heading).
UPSIDE_DOWN = "env/upside_down"
VELOCITY_COLUMNS = ("env/forward_velocity", "env/x_velocity")


def mean_analysis(analyses: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each of ``ANALYSIS_FIELDS`` averaged over trials (NaN where no trial has it)."""
    out = {}
    for key in ANALYSIS_FIELDS:
        values = [float(a[key]) for a in analyses if key in a]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


def _nanmean(x: np.ndarray) -> float:
    """The mean of the finite entries (a missing cell is NaN), NaN when there are none."""
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else float("nan")


def unpack_posterior(packed: Any) -> dict[int, float]:
    """MOLe's step-info ``posterior`` (``"id:p;id:p"``, or a mapping) -> ``{component id: probability}``."""
    if isinstance(packed, dict):
        return {int(k): float(v) for k, v in packed.items()}
    return {int(i): float(p) for i, p in (kv.split(":") for kv in str(packed).split(";") if kv)}


def trial_analysis(columns: dict[str, np.ndarray], window: int) -> dict[str, float | list[float]]:
    """What a trial's per-step log says about adaptation.

    Args:
        columns: ``metrics.csv`` columns (``reward``, ``task_id``; MOLe adds
            ``chosen``, ``components``, ``created``).
        window: K; steps within K of a switch are excluded from task recovery.

    Returns:
        ``segment_returns`` (reward summed over each run of one task),
        ``true_tasks``, ``switches``, ``first_500`` and ``last_500`` (returns of
        the first and last 500 steps spent in the first task: forgetting is their
        ratio); for legged robots ``upside_down`` (fraction of the steps that
        end upside down) and ``forward_velocity`` (mean, m/s), each also per
        segment (``segment_upside_down``, ``segment_velocity``); and for MOLe ``task_recovery_ari``, ``components``,
        ``effective_components``, ``created`` and ``created_per_switch``.
    """
    reward, tasks = np.asarray(columns["reward"], float), np.asarray(columns["task_id"]).astype(int)
    segs = segments(tasks)
    out: dict[str, float | list[float]] = {
        "segment_returns": [float(reward[a:b].sum()) for a, b, _ in segs],
        "true_tasks": float(np.unique(tasks).size),
        "switches": float(max(0, len(segs) - 1)),
    }
    if segs:
        first = np.flatnonzero(tasks == segs[0][2])
        if first.size >= 1000:
            out["first_500"] = float(reward[first[:500]].sum())
            out["last_500"] = float(reward[first[-500:]].sum())
    if UPSIDE_DOWN in columns:
        flipped = np.asarray(columns[UPSIDE_DOWN], float)
        out["upside_down"] = _nanmean(flipped)
        out["segment_upside_down"] = [_nanmean(flipped[a:b]) for a, b, _ in segs]
    velocity = next((c for c in VELOCITY_COLUMNS if c in columns), None)
    if velocity is not None:
        v = np.asarray(columns[velocity], float)
        out["forward_velocity"] = _nanmean(v)
        out["segment_velocity"] = [_nanmean(v[a:b]) for a, b, _ in segs]
    if "chosen" in columns:
        chosen = np.asarray(columns["chosen"]).astype(int)
        keep = away_from_switches(tasks, window)
        out["task_recovery_ari"] = adjusted_rand_index(tasks[keep], chosen[keep]) if keep.any() else float("nan")
        out["components"] = float(np.asarray(columns["components"])[-1])
        out["effective_components"] = float(effective_components(chosen))
        created = float(np.nansum(np.asarray(columns["created"], float)))
        out["created"] = created
        out["created_per_switch"] = created / out["switches"] if out["switches"] else float("nan")
    return out
