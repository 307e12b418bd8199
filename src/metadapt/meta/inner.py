"""The inner adaptation of gradient-based meta-learning, for any functional model and any loss.

One function serves MAML's inner loop (supervised, GrBAL's windows, later
policy gradients), the online learners (TS, GS, DE, MOLe's M step) and the
evaluation of a meta-learned initialisation alike:

    theta_{i+1} = theta_i - rate * grad_theta loss(theta_i, batch)

``loss_fn(params, batch)`` is a pure function of a parameter dict and any
batch (a tensor or a tuple of tensors). Its value may be a scalar or one loss
per stacked task (``B``): the step differentiates the *sum*, so with a stacked
parameter dict (every tensor ``B x ...``) and a stacked batch each task gets the
gradient of its own loss, in one batched pass (the fast path of small models,
see ``models/regressor.py``). Inside ``torch.func.vmap`` the same function runs
one task per lane (the dynamics MLP's path).

Rates (``Rates``) are a number (the paper's fixed inner rate), or a dict of
tensors that broadcast against each parameter: shape ``()`` per tensor, the
parameter's own shape per entry (Meta-SGD, Li et al. 2017). A dict of tensors
that require grad is learned by the outer loop (the step is differentiable in
the rates).

Second order by default: the adapted parameters stay differentiable in the
starting ones through the inner gradients. ``first_order`` treats the inner
gradients as constants (FOMAML).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.func import grad_and_value

from metadapt.types import Params

Rates = float | Params
"""An inner rate: one number, or per-tensor (shape ``()``) / per-entry (parameter-shaped) tensors."""

LossFn = Callable[[Params, Any], torch.Tensor]
"""``loss_fn(params, batch) -> loss``: a scalar, or ``B`` losses of ``B`` stacked tasks."""

RATE_MODES = ("scalar", "tensor", "entry")


def _summed(loss_fn: LossFn) -> Callable[[Params, Any], tuple[torch.Tensor, torch.Tensor]]:
    def f(params: Params, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loss = loss_fn(params, batch)
        return loss.sum(), loss

    return f


def inner_adapt_with_loss(
    loss_fn: LossFn,
    params: Params,
    batch: Any,
    rates: Rates,
    steps: int = 1,
    first_order: bool = False,
) -> tuple[Params, torch.Tensor]:
    """``steps`` gradient steps on ``loss_fn(., batch)`` from ``params``.

    Returns the adapted parameters (a new dict; ``params`` is untouched) and
    the loss of the starting parameters, from the first step's own forward pass
    (``nan`` when ``steps`` is 0). Differentiable in ``params`` (unless
    ``first_order``) and in learned ``rates``.
    """
    if steps < 0:
        raise ValueError(f"inner steps must be >= 0, got {steps}")
    start = torch.full((), float("nan"))
    step = grad_and_value(_summed(loss_fn), has_aux=True)
    for i in range(steps):
        grads, (_, loss) = step(params, batch)
        if i == 0:
            start = loss
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        if isinstance(rates, dict):
            params = {k: p - rates[k] * grads[k] for k, p in params.items()}
        else:
            params = {k: p - rates * grads[k] for k, p in params.items()}
    return params, start


def inner_adapt(
    loss_fn: LossFn,
    params: Params,
    batch: Any,
    rates: Rates,
    steps: int = 1,
    first_order: bool = False,
) -> Params:
    """``inner_adapt_with_loss`` without the starting loss."""
    return inner_adapt_with_loss(loss_fn, params, batch, rates, steps, first_order)[0]


def init_rates(params: Params, mode: str, value: float) -> Rates:
    """Inner rates before meta-training: ``value`` as a number (``"scalar"``), one per tensor or one per entry.

    Raises:
        ValueError: an unknown mode or a rate that is not positive.
    """
    if mode not in RATE_MODES:
        raise ValueError(f"inner rate mode must be one of {', '.join(RATE_MODES)}, got {mode!r}")
    if not value > 0:
        raise ValueError(f"inner rate must be > 0, got {value}")
    if mode == "scalar":
        return float(value)
    if mode == "tensor":
        return {k: torch.full((), value, dtype=v.dtype, device=v.device) for k, v in params.items()}
    return {k: torch.full_like(v, value) for k, v in params.items()}


def frozen_names(names: Iterable[str], frozen: Sequence[str]) -> set[str]:
    """The parameter names (of ``names``) that start with one of the ``frozen`` prefixes.

    Raises:
        TypeError: ``frozen`` is a string (a sequence of one-letter prefixes, never what was meant).
        ValueError: a prefix that names no parameter, or prefixes that leave nothing to adapt.
    """
    if isinstance(frozen, str):
        raise TypeError(f"frozen must be a list of name prefixes, not the string {frozen!r}")
    names = list(names)
    for prefix in frozen:
        if not any(k.startswith(prefix) for k in names):
            raise ValueError(f"frozen prefix {prefix!r} names no parameter (parameters: {', '.join(names)})")
    out = {k for k in names if k.startswith(tuple(frozen))}
    if frozen and len(out) == len(names):
        raise ValueError(f"frozen prefixes {list(frozen)} leave no parameter for the inner loop to adapt")
    return out


def freeze_rates(rates: Rates, params: Params, frozen: Sequence[str]) -> Rates:
    """``rates`` with a zero rate for every tensor of ``params`` whose name starts with one of the ``frozen``
    prefixes: the inner steps do not change those tensors (their gradients are still computed, times zero), while
    the outer loop still learns them (the MAML code's batch-norm shifts, ``["norm."]``; ANIL adapts the head
    alone). One number becomes per-tensor rates (shape ``()``); without prefixes ``rates`` comes back as it is.

    Raises:
        TypeError, ValueError: as ``frozen_names``.
    """
    names = frozen_names(params, frozen)
    if not frozen:
        return rates
    if isinstance(rates, dict):
        return {k: torch.zeros_like(rates[k]) if k in names else rates[k] for k in params}
    return {k: torch.full((), 0.0 if k in names else float(rates), dtype=v.dtype, device=v.device)
            for k, v in params.items()}


def stack_params(params: Params, num: int) -> Params:
    """``num`` views of ``params`` with a leading task dimension (``B x ...``), differentiable into ``params``."""
    return {k: v.expand(num, *v.shape) for k, v in params.items()}
