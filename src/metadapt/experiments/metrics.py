"""Metrics of online adaptation: task recovery, effective components, forgetting."""

from __future__ import annotations

from collections.abc import Sequence

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
