"""Supervised fitting of a dynamics model with a held-out split and early stopping.

Every fit here, GrBAL's (``maml.py``) and ReBAL's (``rebal.py``) follow the same
two rules about non-finite numbers: a validation loss that is not finite never
becomes the best (``improves``), and a training loss that is not finite stops
the fit before its step is taken (the fit *diverged*): the best parameters so far
are returned with the epoch of the divergence in the result, and the caller
decides whether they are good enough to go on with (``FitDiverged``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from metadapt.errors import MetadaptError
from metadapt.meta.checkpoint import nonfinite_tensors
from metadapt.models.base import DynamicsModel
from metadapt.types import Params, Window


class FitDiverged(MetadaptError):
    """A fit's training loss went non-finite before it produced parameters worth keeping (lower the rate)."""


@dataclass(frozen=True)
class FitResult:
    """``train_loss``/``val_loss`` are normalized-delta MSEs of the returned (best) parameters.

    ``diverged``: the epoch whose training loss was not finite, where the fit stopped (0: it did not).
    """

    epochs: int
    best_epoch: int
    train_loss: float
    val_loss: float
    diverged: int = 0


def improves(loss: float, best: float, validated: bool) -> bool:
    """Whether an epoch's validation ``loss`` makes its parameters the new best over ``best``.

    Without validation data (``validated`` False: every loss is NaN) the latest parameters are kept. With it,
    a loss that is not finite never wins, and any finite loss beats a best that is not finite.
    """
    if not validated:
        return True
    return math.isfinite(loss) and (not math.isfinite(best) or loss < best)


def finite(params: Params) -> bool:
    """Whether every entry of ``params`` is finite (checked before parameters become a fit's best)."""
    return not nonfinite_tensors(params)


def evaluate_loss(model: DynamicsModel, params: Params, data: Window, batch_size: int = 4096) -> float:
    """Mean normalized-delta MSE over ``data`` (``nan`` if empty)."""
    if len(data) == 0:
        return math.nan
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            sl = slice(i, i + batch_size)
            n = data.obs[sl].shape[0]
            total += float(model.transition_loss(params, data.obs[sl], data.act[sl], data.next_obs[sl])) * n
    return total / len(data)


def fit_dynamics(
    model: DynamicsModel,
    params: Params,
    train: Window,
    val: Window,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    patience: int,
    generator: torch.Generator,
    optimizer_state: dict[str, Any] | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> tuple[Params, dict[str, Any], FitResult]:
    """Adam on the normalized-delta MSE; keeps the parameters with the best validation loss.

    Training stops after ``patience`` epochs without a validation improvement
    (never, if ``val`` is empty), or at the first batch whose loss is not finite
    (``FitResult.diverged``; that batch takes no step). ``optimizer_state``
    continues Adam's moments across calls (one call per data-collection iteration).

    Returns:
        The best parameters (detached), the optimizer state (after a divergence: the state of the best
        parameters), and a summary.
    """
    if len(train) == 0:
        raise ValueError("no training transitions")
    device = next(iter(params.values())).device  # training runs where the parameters live
    train, val = train.to(device), val.to(device)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(list(leaves.values()), lr=lr)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
        for group in opt.param_groups:
            group["lr"] = lr
    best = {k: v.detach().clone() for k, v in leaves.items()}
    best_opt = copy.deepcopy(opt.state_dict())  # what a diverged fit hands on with the best parameters
    validated = len(val) > 0
    best_val, best_epoch, since_best = evaluate_loss(model, best, val), 0, 0
    n = len(train)
    epoch, diverged = 0, 0
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=generator)
        running, count = 0.0, 0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = model.transition_loss(leaves, train.obs[idx], train.act[idx], train.next_obs[idx])
            value = loss.item()
            if not math.isfinite(value):  # its gradient would make every parameter and Adam moment NaN
                diverged = epoch
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += value * idx.numel()
            count += idx.numel()
        if diverged:
            break
        val_loss = evaluate_loss(model, leaves, val)
        if on_epoch is not None:
            on_epoch(epoch, running / count, val_loss)
        if improves(val_loss, best_val, validated) and finite(leaves):
            best = {k: v.detach().clone() for k, v in leaves.items()}
            best_val, best_epoch, since_best = val_loss, epoch, 0
            best_opt = copy.deepcopy(opt.state_dict())
        else:
            since_best += 1
            if since_best >= patience:
                break
    result = FitResult(epoch, best_epoch, evaluate_loss(model, best, train), best_val, diverged)
    return best, best_opt if diverged else opt.state_dict(), result
