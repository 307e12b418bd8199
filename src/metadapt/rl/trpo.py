"""Trust-region steps (TRPO, Schulman et al. 2015) on any differentiable surrogate and KL, and PPO-clip's loss.

``trpo_step`` is written against two closures, so it serves plain TRPO and
MAML-RL's outer step alike: there both the surrogate and the KL are functions
of the meta-parameters *through the inner policy-gradient step*, and the
Fisher-vector products are Hessian-vector products of that KL.

The step: ``g`` = gradient of the surrogate loss; ``s`` solves ``F s = g`` by
conjugate gradient (``F`` = Hessian of the KL at the current parameters, plus
``damping``); the full step ``-sqrt(2 delta / s^T F s) s`` is shortened by
``backtrack_ratio`` until the loss improves and the KL is within ``max_kl``
(else the parameters stay where they were).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def conjugate_gradient(fvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iterations: int = 10,
                       residual_tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve ``A x = b`` for a symmetric positive definite ``A`` given as ``fvp(v) = A v``."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r.dot(r)
    for _ in range(iterations):
        if rr <= residual_tol:
            break
        ap = fvp(p)
        alpha = rr / p.dot(ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def assign(params: Sequence[torch.Tensor], vector: torch.Tensor) -> None:
    """Write a flat vector into ``params`` in place (no autograd history)."""
    with torch.no_grad():
        i = 0
        for p in params:
            p.copy_(vector[i:i + p.numel()].view_as(p))
            i += p.numel()


@dataclass
class TRPOInfo:
    loss_before: float
    loss_after: float
    kl: float
    step_fraction: float  # of the full step taken; 0 when the line search found no acceptable step
    backtracks: int


def trpo_step(
    params: Sequence[torch.Tensor],
    objective: Callable[[bool], tuple[torch.Tensor, torch.Tensor]],
    max_kl: float = 0.01,
    damping: float = 1e-5,
    cg_iterations: int = 10,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
) -> TRPOInfo:
    """One TRPO update of ``params`` (leaf tensors that require grad), in place.

    ``objective(differentiable)`` returns the surrogate loss to minimise and
    the mean KL from the policy the data was sampled with, recomputed from the
    current values of ``params``; with ``differentiable=False`` (the line
    search) only their values are needed and it may skip building graphs.
    Raises ``ValueError`` for a ``max_kl`` that is not positive.
    """
    if not max_kl > 0:
        raise ValueError(f"max_kl must be > 0, got {max_kl}")
    params = list(params)
    loss, kl = objective(True)
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    g = flat([torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads, strict=True)]).detach()
    kl_grads = torch.autograd.grad(kl, params, create_graph=True, allow_unused=True)
    kl_flat = flat([torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, kl_grads, strict=True)])

    def fvp(v: torch.Tensor) -> torch.Tensor:
        hv = torch.autograd.grad(kl_flat.dot(v), params, retain_graph=True, allow_unused=True)
        return flat([torch.zeros_like(p) if h is None else h for p, h in zip(params, hv, strict=True)]).detach() \
            + damping * v

    direction = conjugate_gradient(fvp, g, cg_iterations)
    shs = 0.5 * direction.dot(fvp(direction))
    old = flat([p.detach() for p in params]).clone()
    before = float(loss.detach())
    if not (torch.isfinite(shs) and shs > 0):
        return TRPOInfo(before, before, 0.0, 0.0, 0)
    full = -math.sqrt(max_kl / float(shs)) * direction
    fraction = 1.0
    with torch.no_grad():
        for i in range(max_backtracks):
            assign(params, old + fraction * full)
            with torch.enable_grad():  # the inner adaptation differentiates even here
                new_loss, new_kl = (float(t.detach()) for t in objective(False))
            if math.isfinite(new_loss) and new_loss < before and new_kl <= max_kl:
                return TRPOInfo(before, new_loss, new_kl, fraction, i)
            fraction *= backtrack_ratio
        assign(params, old)
    return TRPOInfo(before, before, 0.0, 0.0, max_backtracks)


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                  clip: float = 0.2) -> torch.Tensor:
    """PPO's clipped surrogate (to minimise), averaged over the valid steps of ``... x H`` tensors."""
    ratio = torch.exp(log_prob - old_log_prob)
    clipped = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    return -(clipped * mask).sum() / mask.sum().clamp_min(1)
