"""Returns, advantages and the linear feature baseline of policy-gradient methods.

Episodes are batched as ``B x E x H`` (tasks x episodes x time steps) with a
``mask`` that is 1 on the steps an episode actually took (an episode that
terminated early has zeros after its last step). Every function here is exact
on that layout: masked steps contribute nothing and receive 0.
"""

from __future__ import annotations

import torch


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``R_t = sum_{k >= t} gamma^(k - t) r_k`` along the last dimension (``... x H``), 0 where masked."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[..., t] + gamma * running) * mask[..., t]
        out[..., t] = running
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> torch.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016), ``... x H``.

    ``values`` are the baseline's ``V(s_t)``; the value after an episode's last
    step is 0 (a finite horizon, as in MAML-RL's fixed-length tasks). With
    ``lam = 1`` this is ``discounted_returns - values``.
    """
    next_values = torch.cat([values[..., 1:] * mask[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = (rewards + gamma * next_values - values) * mask
    return discounted_returns(deltas, mask, gamma * lam)


def normalize_per_task(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``B x E x H`` values centred and scaled to unit variance within each task's valid steps (rllab's
    ``center_adv``), 0 where masked."""
    n = mask.sum(dim=(1, 2), keepdim=True).clamp_min(1)
    mean = (x * mask).sum(dim=(1, 2), keepdim=True) / n
    var = ((x - mean).pow(2) * mask).sum(dim=(1, 2), keepdim=True) / n
    return (x - mean) / (var.sqrt() + eps) * mask


def linear_features(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The original MAML-RL baseline's features of ``B x E x H x O`` observations: ``B x E x H x F``.

    ``[o, o^2, t, t^2, t^3, 1]`` with ``o`` clipped to ``[-10, 10]`` and ``t`` the
    step index / 100 (rllab's ``LinearFeatureBaseline``); 0 on masked steps.
    """
    o = obs.float().clamp(-10, 10)
    t = torch.arange(obs.shape[2], dtype=o.dtype, device=o.device) / 100.0
    t = t.view(1, 1, -1, 1).expand(*obs.shape[:3], 1)
    feats = torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)
    return feats * mask.unsqueeze(-1)


class LinearFeatureBaseline:
    """``V(s_t) = features(s_t) . w_b``, one ``w_b`` per task, fitted by ridge regression on that task's returns.

    Fitted per task batch, as in the original: ``(X^T X + reg I) w = X^T R``
    with ``reg`` starting at ``reg_coeff`` and multiplied by 10, for each task
    on its own, until that task's solution is finite (at most 5 solves).
    """

    def __init__(self, reg_coeff: float = 1e-5) -> None:
        if not reg_coeff > 0:
            raise ValueError(f"reg_coeff must be > 0, got {reg_coeff}")
        self.reg_coeff = reg_coeff
        self.weights: torch.Tensor | None = None

    def fit(self, obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Fit ``B`` weight vectors (``B x F``) to ``B x E x H`` returns; returns the weights."""
        x = linear_features(obs, mask).flatten(1, 2).double()  # B x N x F
        y = (returns * mask).flatten(1, 2).double().unsqueeze(-1)
        xtx, xty = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        w = torch.linalg.solve(xtx + self.reg_coeff * eye, xty)
        # Only the tasks whose fit is not finite are refitted with more regularisation: one task's bad
        # batch must not change the baselines (and so the advantages) of the others.
        reg = torch.full((x.shape[0],), self.reg_coeff, dtype=x.dtype, device=x.device)
        for _ in range(4):
            bad = ~torch.isfinite(w).flatten(1).all(dim=1)
            if not bool(bad.any()):
                break
            reg[bad] *= 10
            w[bad] = torch.linalg.solve(xtx[bad] + reg[bad, None, None] * eye, xty[bad])
        self.weights = w.squeeze(-1).to(obs.dtype if obs.is_floating_point() else torch.float32)
        return self.weights

    def predict(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``B x E x H`` values of the fitted tasks' observations."""
        if self.weights is None:
            raise RuntimeError("fit the baseline first")
        return (linear_features(obs, mask) * self.weights[:, None, None, :]).sum(-1)


def advantages(obs: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float,
               reg_coeff: float = 1e-5, normalize: bool = True) -> torch.Tensor:
    """``B x E x H`` advantages: GAE over a linear baseline fitted on these episodes' returns, per task,
    normalised per task (the original's inner and outer steps both use these)."""
    returns = discounted_returns(rewards, mask, gamma)
    baseline = LinearFeatureBaseline(reg_coeff)
    baseline.fit(obs, returns, mask)
    adv = gae(rewards, baseline.predict(obs, mask), mask, gamma, lam)
    return normalize_per_task(adv, mask) if normalize else adv
