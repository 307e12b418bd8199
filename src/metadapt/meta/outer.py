"""The MAML outer loop over any task sampler (Finn et al. 2017; seed 003, "MAML").

The outer loss of a meta-batch is the mean over its tasks of the query loss
after ``inner_adapt`` on the support set. The loop knows nothing of what a task
is: trajectory windows, regression tasks, N-way K-shot episodes and policy
rollouts all arrive as a ``TaskBatch``. A model that accepts stacked parameters
(``stacked = True``, see ``models/base.py``) adapts the whole meta-batch in one
batched pass; any other model runs one ``torch.func.vmap`` lane per task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.func import vmap

from metadapt.meta.inner import LossFn, Rates, freeze_rates, frozen_names, inner_adapt, stack_params
from metadapt.types import Params, TaskBatch


def maml_task_losses(
    loss_fn: LossFn,
    params: Params,
    tasks: TaskBatch,
    rates: Rates,
    steps: int = 1,
    first_order: bool = False,
    stacked: bool = False,
) -> torch.Tensor:
    """``B`` query losses after ``steps`` inner steps on each task's support set (``steps = 0``: unadapted)."""
    if stacked:
        fast = stack_params(params, tasks.num_tasks)
        if steps:
            fast = inner_adapt(loss_fn, fast, tasks.support, rates, steps, first_order)
        return loss_fn(fast, tasks.query)

    def one(support: Any, query: Any) -> torch.Tensor:
        fast = inner_adapt(loss_fn, params, support, rates, steps, first_order) if steps else params
        return loss_fn(fast, query)

    return vmap(one)(tasks.support, tasks.query)


def maml_loss(
    loss_fn: LossFn,
    params: Params,
    tasks: TaskBatch,
    rates: Rates,
    steps: int = 1,
    first_order: bool = False,
    stacked: bool = False,
) -> torch.Tensor:
    """The outer loss: the mean of ``maml_task_losses`` over the meta-batch (a scalar)."""
    return maml_task_losses(loss_fn, params, tasks, rates, steps, first_order, stacked).mean()


class MAML:
    """Adam on the MAML outer loss, with the inner rates learned alongside when asked (Meta-SGD).

    Args:
        loss_fn: the model's loss, ``loss_fn(params, batch)`` (scalar, or ``B`` losses when stacked).
        params: the initialisation to meta-learn (copied).
        rates: inner rates; a dict of tensors is learned with the parameters when ``learn_rates``.
        steps: inner gradient steps during meta-training.
        first_order: FOMAML (the inner gradients as constants).
        stacked: the model takes stacked parameters (one batched pass per meta-batch).
        outer_lr: Adam's step size.
        learn_rates: learn ``rates`` (which must then be a dict) with the parameters.
        frozen: name prefixes of parameters the inner loop leaves alone (``inner.freeze_rates``); the outer
            loop still learns them, and their zero rates stay zero when the others are learned. With prefixes,
            ``self.rates`` is a dict (one number becomes per-tensor rates of shape ``()``).
    """

    def __init__(
        self,
        loss_fn: LossFn,
        params: Params,
        rates: Rates,
        *,
        steps: int = 1,
        first_order: bool = False,
        stacked: bool = False,
        outer_lr: float = 1e-3,
        learn_rates: bool = False,
        frozen: Sequence[str] = (),
    ) -> None:
        if steps < 1:
            raise ValueError(f"meta-training needs at least one inner step, got {steps}")
        if learn_rates and not isinstance(rates, dict):
            raise ValueError("learned inner rates need per-tensor or per-entry rates, not one number")
        if not outer_lr > 0:
            raise ValueError(f"the outer learning rate must be > 0, got {outer_lr}")
        self.loss_fn, self.steps, self.first_order, self.stacked = loss_fn, steps, first_order, stacked
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.learn_rates, self.frozen = learn_rates, tuple(frozen)
        rates, fixed = freeze_rates(rates, self.params, self.frozen), frozen_names(self.params, self.frozen)
        if isinstance(rates, dict):
            self.rates: Rates = {k: v.detach().clone().requires_grad_(learn_rates and k not in fixed)
                                 for k, v in rates.items()}
        else:
            self.rates = float(rates)
        leaves = list(self.params.values())
        if learn_rates:
            assert isinstance(self.rates, dict)
            leaves += [v for v in self.rates.values() if v.requires_grad]
        self.optimizer = torch.optim.Adam(leaves, lr=outer_lr)

    def step(self, tasks: TaskBatch) -> float:
        """One outer step on a meta-batch; returns its outer loss (after adaptation)."""
        loss = maml_loss(self.loss_fn, self.params, tasks, self.rates, self.steps, self.first_order, self.stacked)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        """Parameters, rates and Adam's state: everything a resumed run needs to continue bit for bit."""
        rates = ({k: v.detach().clone() for k, v in self.rates.items()} if isinstance(self.rates, dict)
                 else torch.tensor(self.rates))
        return {"params": {k: v.detach().clone() for k, v in self.params.items()}, "rates": rates,
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(state["params"][k])
            if isinstance(self.rates, dict):
                for k, v in self.rates.items():
                    v.copy_(state["rates"][k])
            else:
                self.rates = float(state["rates"])
        self.optimizer.load_state_dict(state["optimizer"])


def evaluate_adaptation(
    loss_fn: LossFn,
    params: Params,
    tasks: TaskBatch,
    rates: Rates,
    steps: list[int],
    stacked: bool = False,
    score_fn: LossFn | None = None,
) -> dict[int, torch.Tensor]:
    """Query score of each task after each number of inner steps in ``steps``: ``{steps: B}``.

    The score is ``score_fn(params, query)`` (default: the loss), e.g. an accuracy.
    One adaptation runs to the largest count and the losses are read on the
    way, so 1 and 10 steps cost ten steps, not eleven.
    """
    wanted = sorted(set(int(s) for s in steps))
    if not wanted or wanted[0] < 0:
        raise ValueError(f"evaluation steps must be >= 0, got {steps}")
    out: dict[int, torch.Tensor] = {}
    score = score_fn or loss_fn

    def read(fast: Params, done: int) -> None:
        if done in wanted:
            with torch.no_grad():
                q = score(fast, tasks.query) if stacked else vmap(score)(fast, tasks.query)
            out[done] = q.detach()

    b = tasks.num_tasks
    fast = stack_params({k: v.detach() for k, v in params.items()}, b)
    if not stacked:
        fast = {k: v.contiguous() for k, v in fast.items()}
    read(fast, 0)
    plain = {k: v.detach() for k, v in rates.items()} if isinstance(rates, dict) else rates
    for done in range(1, wanted[-1] + 1):
        if stacked:
            fast = inner_adapt(loss_fn, fast, tasks.support, plain, 1, first_order=True)
        else:
            fast = vmap(lambda p, s: inner_adapt(loss_fn, p, s, plain, 1, first_order=True))(fast, tasks.support)
        fast = {k: v.detach() for k, v in fast.items()}
        read(fast, done)
    return out


def mean_interval(values: torch.Tensor, z: float = 1.96) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% interval (``z * std / sqrt(n)``), as the MAML paper reports."""
    v = values.double().flatten()
    n = v.numel()
    if n == 0:
        return math.nan, math.nan
    half = z * float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return float(v.mean()), half
