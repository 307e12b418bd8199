"""Gradient-based meta-learning of a dynamics prior (GrBAL, seed 004; the prior of MOLe, seed 000).

GrBAL on the core: the inner step is ``meta.inner.inner_adapt`` on the model's
transition loss and the outer loss is ``meta.outer.maml_loss`` over a meta-batch
of windows; what is GrBAL's own lives here (windows of a replay buffer, the
inner-rate layouts that know the first layer's action columns and the action
gains, validation on held-out trajectories, early stopping).

A *task* is a window of one trajectory: the ``M`` past steps are the adaptation
set, the ``K`` following steps the evaluation set. The inner loop takes SGD
steps on the adaptation set as a pure function of the parameter dict; the outer
loss is the evaluation-set error of the adapted parameters, averaged over a
meta-batch of windows with ``torch.func.vmap``. Second-order MAML by default;
``first_order`` drops the inner gradients' dependence on the parameters;
``learn_inner_lr`` learns the inner learning rates too: one per parameter entry
(Meta-SGD, ``inner_lr_per="entry"``) or one per parameter tensor
(``inner_lr_per="tensor"``). Per-entry rates learn *which* weights vary across
the training tasks (a joint never disabled in training keeps small rates on its
action inputs); per-tensor rates cannot, and adapt less on training and
held-out tasks alike (docs/results.md, "Model adaptation").
``inner_lr_per="entry_tied_actions"`` is Meta-SGD with one exception: the
first layer's action columns share one learned rate per hidden unit, so every
actuator may change as much as the ones that changed in training (an actuator
held out of training otherwise keeps the small rate of a weight that never had
to move).

A model with action gains (``MLPDynamics(action_gain=True)``) gets one learned
rate shared by all its gains in every learned-rate mode, started at
``gain_inner_lr`` rather than ``inner_lr``: a gain's gradient sums over a whole
weight column, so its useful step is two orders of magnitude larger, and a
shared rate lets an actuator that never failed in training adapt like the ones
that did.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from metadapt.data.buffer import ReplayBuffer
from metadapt.errors import MetadaptError
from metadapt.meta.fit import finite, improves
from metadapt.meta.inner import inner_adapt_with_loss
from metadapt.meta.outer import maml_loss
from metadapt.models.base import DynamicsModel
from metadapt.models.mlp import ACTION_GAIN
from metadapt.types import Params, TaskBatch

InnerLR = float | Params
# (obs, act, next_obs) of a batch of windows: B x M (or K) x (O | A | O)
WindowBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
INNER_LR_PER = ("entry", "tensor", "entry_tied_actions")
FIRST_WEIGHT = "layers.0.weight"


@dataclass(frozen=True)
class MetaSettings:
    """Seed 000 Table 1 (Ours/TS/GS row): K = 16, inner LR 0.01, outer LR 1e-3."""

    inner_lr: float = 0.01
    inner_steps: int = 1
    first_order: bool = False
    learn_inner_lr: bool = False
    # with learn_inner_lr: "entry" (Meta-SGD), "tensor" (one rate per layer tensor) or "entry_tied_actions"
    inner_lr_per: str = "entry"
    # with learn_inner_lr and a model with action gains: the gains' shared rate before meta-training
    gain_inner_lr: float = 1.0
    # weight of the prior's own (unadapted) evaluation-set error in the outer loss; 0 is MAML
    prior_weight: float = 0.0
    past: int = 16  # M, the adaptation window
    future: int = 16  # K, the evaluation window
    meta_batch: int = 32
    batches_per_epoch: int = 100
    val_batches: int = 8


def initial_inner_lrs(params: Params, settings: MetaSettings, action_dim: int = 0) -> Params | None:
    """The learned inner rates before meta-training: ``settings.inner_lr`` in the configured shape, or ``None``.

    With ``"entry_tied_actions"`` the first weight's rates are ``H x (O + 1)``
    for an ``H x (O + A)`` weight (``action_dim = A``, the input's last columns):
    the last column is the rate all ``A`` action columns share. Action gains
    (``A``) get one shared rate (a scalar, or shape ``1`` in the per-entry modes)
    of ``settings.gain_inner_lr``.
    """
    if settings.inner_lr_per not in INNER_LR_PER:
        raise ValueError(f"inner_lr_per must be one of {', '.join(INNER_LR_PER)}, got {settings.inner_lr_per!r}")
    if not settings.learn_inner_lr:
        return None
    per_tensor = settings.inner_lr_per == "tensor"
    if per_tensor:
        lrs = {k: torch.full((), settings.inner_lr, dtype=v.dtype, device=v.device) for k, v in params.items()}
    else:
        lrs = {k: torch.full_like(v, settings.inner_lr) for k, v in params.items()}
    if settings.inner_lr_per == "entry_tied_actions":
        w = params[FIRST_WEIGHT]
        if not 1 <= action_dim < w.shape[-1]:
            raise ValueError(f"tied action rates need 1 <= action_dim < {w.shape[-1]} inputs, got {action_dim}")
        lrs[FIRST_WEIGHT] = lrs[FIRST_WEIGHT][:, : w.shape[-1] - action_dim + 1].clone()
    if ACTION_GAIN in params:
        lrs[ACTION_GAIN] = params[ACTION_GAIN].new_full(() if per_tensor else (1,), settings.gain_inner_lr)
    return lrs


def broadcast_inner_lrs(lrs: Params, params: Params) -> Params:
    """Learned rates in the parameters' shapes, differentiably: per-tensor and shared rates (shape ``1``)
    broadcast, and a rate tensor with fewer columns than its weight (tied action rates) has its last
    column shared by the weight's trailing columns."""
    out = {}
    for k, v in lrs.items():
        shape = params[k].shape
        if v.dim() == 2 and v.shape[-1] < shape[-1]:
            tied = v[:, -1:].expand(shape[0], shape[-1] - v.shape[-1] + 1)
            out[k] = torch.cat([v[:, :-1], tied], dim=1)
        else:
            out[k] = v.expand(shape)
    return out


def expand_inner_lrs(lrs: Params, params: Params) -> Params:
    """Learned rates in the parameters' shapes, as priors store and learners use them (a copy)."""
    return {k: v.contiguous().clone() for k, v in broadcast_inner_lrs(lrs, params).items()}


def adapt(
    model: DynamicsModel,
    params: Params,
    obs: torch.Tensor,
    act: torch.Tensor,
    next_obs: torch.Tensor,
    lr: InnerLR,
    steps: int = 1,
    first_order: bool = False,
) -> Params:
    """``steps`` SGD steps on the normalized-delta MSE of ``M x O``, ``M x A``, ``M x O`` transitions.

    Differentiable with respect to ``params`` (and ``lr`` when it is a dict of
    tensors) unless ``first_order``, where the inner gradients are treated as
    constants. Returns a new dict; ``params`` is untouched.
    """
    return adapt_with_loss(model, params, obs, act, next_obs, lr, steps, first_order)[0]


def adapt_with_loss(
    model: DynamicsModel,
    params: Params,
    obs: torch.Tensor,
    act: torch.Tensor,
    next_obs: torch.Tensor,
    lr: InnerLR,
    steps: int = 1,
    first_order: bool = False,
) -> tuple[Params, torch.Tensor]:
    """``adapt``, also returning the loss of the starting parameters (from the same forward pass)."""
    return inner_adapt_with_loss(model.loss, params, (obs, act, next_obs), lr, steps, first_order)


def adapted_loss(
    model: DynamicsModel,
    params: Params,
    past: WindowBatch,
    future: WindowBatch,
    lr: InnerLR,
    steps: int = 1,
    first_order: bool = False,
) -> torch.Tensor:
    """Mean over ``B`` windows of the evaluation-set MSE after adapting on the adaptation set.

    ``past`` tensors are ``B x M x (O | A | O)``, ``future`` tensors ``B x K x ...``: a meta-batch of
    window tasks for the core's MAML outer loss (one ``vmap`` lane per window).
    With ``steps == 0`` this is the prior's loss on the evaluation set.
    """
    return maml_loss(model.loss, params, TaskBatch(past, future), lr, steps, first_order)


def meta_loss(
    model: DynamicsModel, params: Params, past: WindowBatch, future: WindowBatch, lr: InnerLR, settings: MetaSettings
) -> torch.Tensor:
    """The outer loss: ``adapted_loss`` plus ``settings.prior_weight`` times the prior's own loss on ``future``.

    MAML (weight 0) asks nothing of the prior before adaptation, and with
    several inner steps it drifts to a starting point that is no model of any
    task (docs/results.md, "Model adaptation"); a small weight keeps it one.
    """
    s = settings
    loss = adapted_loss(model, params, past, future, lr, s.inner_steps, s.first_order)
    if s.prior_weight > 0:
        loss = loss + s.prior_weight * adapted_loss(model, params, past, future, lr, 0)
    return loss


def _device(params: Params) -> torch.device:
    """Where the parameters live: meta-training runs there (windows are moved to it)."""
    return next(iter(params.values())).device


@dataclass(frozen=True)
class MetaFitResult:
    """Losses are normalized-delta MSEs on evaluation windows; ``val_prior`` is before adaptation.

    ``diverged``: the epoch whose training loss was not finite, where the fit stopped (0: it did not).
    """

    epochs: int
    best_epoch: int
    train_loss: float
    val_loss: float
    val_prior: float
    diverged: int = 0


def _evaluate(model: DynamicsModel, params: Params, lr: InnerLR, s: MetaSettings, buffer: ReplayBuffer,
              gen_seed: int, steps: int) -> float:
    gen = torch.Generator().manual_seed(gen_seed)  # the same validation windows every epoch
    total = 0.0
    for _ in range(s.val_batches):
        w = buffer.sample_windows(s.past, s.future, s.meta_batch, gen, split="val", device=_device(params))
        # torch.func.grad still differentiates inside no_grad; only the outer graph is skipped.
        with torch.no_grad():
            loss = adapted_loss(model, params, w.past(), w.future(), lr, steps, first_order=True)
        total += float(loss)
    return total / s.val_batches


def fit_meta(
    model: DynamicsModel,
    params: Params,
    buffer: ReplayBuffer,
    settings: MetaSettings,
    *,
    epochs: int,
    lr: float,
    patience: int,
    generator: torch.Generator,
    inner_lrs: Params | None = None,
    optimizer_state: dict[str, Any] | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> tuple[Params, Params | None, dict[str, Any], MetaFitResult]:
    """Adam on the post-adaptation loss over meta-batches of windows; early stopping on validation windows.

    Validation windows come from held-out trajectories and are scored *after*
    adaptation. ``inner_lrs`` (Meta-SGD) are learned alongside when given. A
    validation loss that is not finite never becomes the best; a meta-batch whose
    loss is not finite stops the fit before its step (``MetaFitResult.diverged``),
    as in ``meta.fit.fit_dynamics``.

    Returns:
        The best parameters, the best inner learning rates (or ``None``), the
        optimizer state (after a divergence: the state of the best parameters), and a summary.
    """
    s = settings
    if buffer.window_starts(s.past + s.future, "train").numel() == 0:
        raise MetadaptError(
            f"meta-training needs training trajectories of at least M+K = {s.past + s.future} steps and none "
            "has been collected yet: raise the rollout length or lower the validation fraction"
        )
    has_val = buffer.window_starts(s.past + s.future, "val").numel() > 0
    device = _device(params)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    lrs = {k: v.detach().to(device).clone().requires_grad_(True) for k, v in inner_lrs.items()} if inner_lrs else None
    opt = torch.optim.Adam(list(leaves.values()) + (list(lrs.values()) if lrs else []), lr=lr)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
        for group in opt.param_groups:
            group["lr"] = lr
    val_seed = int(torch.randint(2**31, (1,), generator=generator))

    def inner(lr_dict: Params | None) -> InnerLR:
        return broadcast_inner_lrs(lr_dict, leaves) if lr_dict is not None else s.inner_lr

    def snapshot() -> tuple[Params, Params | None]:
        return ({k: v.detach().clone() for k, v in leaves.items()},
                {k: v.detach().clone() for k, v in lrs.items()} if lrs else None)

    def val_loss(p: Params, lr_: InnerLR) -> float:
        return _evaluate(model, p, lr_, s, buffer, val_seed, s.inner_steps) if has_val else math.nan

    best, best_lrs = snapshot()
    best_opt = copy.deepcopy(opt.state_dict())  # what a diverged fit hands on with the best parameters
    best_val, best_epoch, since_best = val_loss(best, inner(best_lrs)), 0, 0
    epoch, running, diverged = 0, math.nan, 0
    for epoch in range(1, epochs + 1):
        total = 0.0
        for _ in range(s.batches_per_epoch):
            w = buffer.sample_windows(s.past, s.future, s.meta_batch, generator, split="train", device=device)
            loss = meta_loss(model, leaves, w.past(), w.future(), inner(lrs), s)
            value = float(loss.detach())
            if not math.isfinite(value):  # its gradient would make every parameter and Adam moment NaN
                diverged = epoch
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += value
        if diverged:
            break
        running = total / s.batches_per_epoch
        v = val_loss(leaves, inner(lrs))
        if on_epoch is not None:
            on_epoch(epoch, running, v)
        if improves(v, best_val, has_val) and finite(leaves) and (lrs is None or finite(lrs)):
            best, best_lrs = snapshot()
            best_val, best_epoch, since_best = v, epoch, 0
            best_opt = copy.deepcopy(opt.state_dict())
        else:
            since_best += 1
            if since_best >= patience:
                break
    prior = _evaluate(model, best, 0.0, s, buffer, val_seed, 0) if has_val else math.nan
    result = MetaFitResult(epoch, best_epoch, running, best_val, prior, diverged)
    return best, best_lrs, best_opt if diverged else opt.state_dict(), result
