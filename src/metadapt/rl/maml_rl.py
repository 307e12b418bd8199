"""MAML for reinforcement learning (Finn et al. 2017, Sec. 5.3; survey seed 003, Algorithm 3).

A policy's parameters ``theta`` are meta-trained so that a few vanilla
policy-gradient steps on a new task's own episodes make it good at that task:

1. draw ``B`` tasks; sample ``E`` episodes of each with ``theta`` (``D_b``);
2. adapt per task, ``theta'_b = theta - alpha * grad L_pg(theta, D_b)``, with
   the core's ``meta.inner.inner_adapt`` over the stacked ``B x ...``
   parameters (several steps sample fresh episodes with each intermediate
   policy, as the original's multi-step code does);
3. sample ``D'_b`` with ``theta'_b``;
4. the outer step improves the post-adaptation surrogate
   ``mean_b E_{D'_b}[pi_{theta'_b(theta)}(a|s) / pi_old(a|s) * A]`` through the
   inner step: TRPO (the KL between the sampling and the adapted policies
   bounded, Fisher-vector products are Hessian-vector products of that KL
   through the inner step), or PPO-clip epochs with Adam.

With ``inner_steps = 0`` the same class is plain TRPO / PPO on the mixture of
tasks (the pretrained baseline and, with the task in the observation, the
oracle). Learned per-parameter inner rates (Meta-SGD) are an option: they are
stepped by the outer update with ``theta``.

Advantages: GAE over a linear feature baseline fitted per task on that task's
episodes (``rl/returns.py``), normalised per task, in the inner and the outer
step alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metadapt.meta.inner import Rates, init_rates, inner_adapt, stack_params
from metadapt.models.policy import Policy
from metadapt.rl.returns import advantages
from metadapt.rl.sampler import Episodes
from metadapt.rl.trpo import TRPOInfo, ppo_clip_loss, trpo_step
from metadapt.types import Params

OUTER = ("trpo", "ppo")

SampleFn = Callable[[Params, Sequence[Any], int], Episodes]
"""``sample(params, tasks, seed) -> Episodes``: params one dict or stacked ``B x ...`` per task."""


@dataclass(frozen=True)
class MAMLRLSettings:
    """The algorithm's settings (defaults: the original's 2D navigation and locomotion runs)."""

    inner_lr: float = 0.1
    inner_steps: int = 1
    first_order: bool = False
    learn_inner_lr: bool = False
    gamma: float = 0.99
    gae_lambda: float = 1.0
    outer: str = "trpo"
    max_kl: float = 0.01
    cg_iterations: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8  # rllab's ConjugateGradientOptimizer, which the original used
    max_backtracks: int = 15
    ppo_clip: float = 0.2
    ppo_epochs: int = 5
    ppo_lr: float = 1e-3

    def __post_init__(self) -> None:
        if not self.inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {self.inner_lr}")
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {self.inner_steps}")
        if self.outer not in OUTER:
            raise ValueError(f"outer must be one of {', '.join(OUTER)}, got {self.outer!r}")
        if not self.max_kl > 0:
            raise ValueError(f"max_kl must be > 0, got {self.max_kl}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gamma must be in (0, 1] and gae_lambda in [0, 1], got {self.gamma}, {self.gae_lambda}")


def pg_loss(policy: Policy) -> Callable[[Params, tuple[torch.Tensor, ...]], torch.Tensor]:
    """The inner loss: ``-E[log pi(a|s) * A]`` per task (``B`` losses for stacked ``B x ...`` parameters)."""

    def loss(params: Params, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        obs, act, adv, mask = batch
        lp = policy.log_prob(params, obs, act)
        return -(lp * adv * mask).sum(dim=(-2, -1)) / mask.sum(dim=(-2, -1)).clamp_min(1)

    return loss


def episode_advantages(episodes: Episodes, settings: MAMLRLSettings) -> torch.Tensor:
    """``B x E x H`` normalised GAE advantages over a per-task linear baseline."""
    return advantages(episodes.obs, episodes.reward, episodes.mask, settings.gamma, settings.gae_lambda)


def policy_gradient_step(policy: Policy, params: Params, episodes: Episodes, adv: torch.Tensor, rates: Rates,
                         first_order: bool) -> Params:
    """One inner step per task on its own episodes: ``B x ...`` adapted parameters (``params`` one dict, stacked
    here, or already ``B x ...``); differentiable in ``params`` and learned ``rates`` unless ``first_order``."""
    if params["layers.0.weight"].dim() == 2:
        params = stack_params(params, episodes.num_tasks)
    batch = (episodes.obs, episodes.act, adv, episodes.mask)
    return inner_adapt(pg_loss(policy), params, batch, rates, 1, first_order)


def _masked_task_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean over tasks of each task's mean over its valid steps (``B x E x H`` -> scalar)."""
    return ((x * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp_min(1)).mean()


@dataclass
class Rollouts:
    """What one meta-iteration sampled: the episodes of every inner step, their advantages, the post-adaptation
    episodes and the (detached) adapted parameters they were sampled with."""

    inner: list[Episodes]
    inner_adv: list[torch.Tensor]
    post: Episodes
    post_adv: torch.Tensor
    sampled_with: Params


class MAMLRL:
    """Meta-trains ``policy`` parameters with MAML's inner policy-gradient step and a TRPO or PPO outer step.

    Args:
        policy: a functional policy (``models/policy.py``).
        params: the initial parameters (copied).
        settings: ``MAMLRLSettings``.
    """

    def __init__(self, policy: Policy, params: Params, settings: MAMLRLSettings) -> None:
        self.policy, self.settings = policy, settings
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        rates = init_rates(self.params, "entry" if settings.learn_inner_lr else "scalar", settings.inner_lr)
        if isinstance(rates, dict):
            rates = {k: v.requires_grad_(True) for k, v in rates.items()}
        self.rates: Rates = rates
        self.optimizer: torch.optim.Optimizer | None = None
        if settings.outer == "ppo":
            self.optimizer = torch.optim.Adam(self.trainable(), lr=settings.ppo_lr)

    def trainable(self) -> list[torch.Tensor]:
        """``theta`` and, when learned, the inner rates: what the outer step updates."""
        out = list(self.params.values())
        if isinstance(self.rates, dict):
            out += list(self.rates.values())
        return out

    # -- adaptation -------------------------------------------------------------------------------------------
    def advantages(self, episodes: Episodes) -> torch.Tensor:
        return episode_advantages(episodes, self.settings)

    def adapt_step(self, params: Params, episodes: Episodes, adv: torch.Tensor, first_order: bool) -> Params:
        return policy_gradient_step(self.policy, params, episodes, adv, self.rates, first_order)

    def adapted(self, rollouts: Rollouts, differentiable: bool = True) -> Params:
        """``theta'(theta)``, differentiable through every inner step (first order: identity); without
        ``differentiable`` only its value (the same numbers, no second-order graph)."""
        p: Params = self.params if differentiable else {k: v.detach() for k, v in self.params.items()}
        first_order = self.settings.first_order or not differentiable
        for episodes, adv in zip(rollouts.inner, rollouts.inner_adv, strict=True):
            p = self.adapt_step(p, episodes, adv, first_order)
        if p["layers.0.weight"].dim() == 2:
            p = stack_params(p, rollouts.post.num_tasks)
        return p

    def sample(self, sample: SampleFn, tasks: Sequence[Any], seed: int, steps: int | None = None) -> Rollouts:
        """Episodes with ``theta``, adapt (no outer graph), sample again, ``steps`` times (default: the
        settings' inner steps)."""
        steps = self.settings.inner_steps if steps is None else steps
        seeds = np.random.SeedSequence(seed).generate_state(steps + 1)
        p: Params = {k: v.detach() for k, v in self.params.items()}
        inner, inner_adv = [], []
        episodes = sample(p, tasks, int(seeds[0]))
        for i in range(steps):
            adv = self.advantages(episodes)
            inner.append(episodes)
            inner_adv.append(adv)
            p = {k: v.detach() for k, v in self.adapt_step(p, episodes, adv, first_order=True).items()}
            episodes = sample(p, tasks, int(seeds[i + 1]))
        if p["layers.0.weight"].dim() == 2:
            p = stack_params(p, len(tasks))
        # A copy: with no inner step these would be views of theta, which the outer step changes in place,
        # and the ratio to the sampling policy would stay 1 (the step never accepted).
        sampled_with = {k: v.detach().clone() for k, v in p.items()}
        return Rollouts(inner, inner_adv, episodes, self.advantages(episodes), sampled_with)

    # -- the outer step ---------------------------------------------------------------------------------------
    def surrogate(self, rollouts: Rollouts, differentiable: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(surrogate loss, mean KL from the sampling policies) of the post-adaptation episodes."""
        post = rollouts.post
        a = self.adapted(rollouts, differentiable)
        lp = self.policy.log_prob(a, post.obs, post.act)
        old = self.policy.log_prob(rollouts.sampled_with, post.obs, post.act).detach()
        loss = -_masked_task_mean(torch.exp(lp - old) * rollouts.post_adv, post.mask)
        kl = _masked_task_mean(self.policy.kl(rollouts.sampled_with, a, post.obs), post.mask)
        return loss, kl

    def outer_step(self, rollouts: Rollouts) -> dict[str, float]:
        """Update ``theta`` (and learned rates) from one meta-iteration's rollouts."""
        s = self.settings
        if s.outer == "trpo":
            info: TRPOInfo = trpo_step(
                self.trainable(), lambda differentiable: self.surrogate(rollouts, differentiable),
                s.max_kl, s.cg_damping, s.cg_iterations, s.backtrack_ratio, s.max_backtracks,
            )
            return {"loss_before": info.loss_before, "loss_after": info.loss_after, "kl": info.kl,
                    "step_fraction": info.step_fraction}
        assert self.optimizer is not None
        post, before = rollouts.post, float("nan")
        old = self.policy.log_prob(rollouts.sampled_with, post.obs, post.act).detach()
        for epoch in range(s.ppo_epochs):
            a = self.adapted(rollouts)
            loss = ppo_clip_loss(self.policy.log_prob(a, post.obs, post.act), old, rollouts.post_adv, post.mask,
                                 s.ppo_clip)
            if epoch == 0:
                before = float(loss.detach())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        after, kl = (float(t.detach()) for t in self.surrogate(rollouts, differentiable=False))
        return {"loss_before": before, "loss_after": after, "kl": kl, "step_fraction": 1.0}

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rates = self.rates
        return {
            "params": {k: v.detach().cpu().clone() for k, v in self.params.items()},
            "rates": {k: v.detach().cpu().clone() for k, v in rates.items()} if isinstance(rates, dict) else rates,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = next(iter(self.params.values())).device
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(state["params"][k].to(device))
            if isinstance(self.rates, dict):
                for k, v in self.rates.items():
                    v.copy_(state["rates"][k].to(device))
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])


def scale_rates(rates: Rates, factor: float) -> Rates:
    """``rates`` (a scalar or one tensor per parameter) times ``factor``."""
    if factor == 1.0:
        return rates
    return {k: v * factor for k, v in rates.items()} if isinstance(rates, dict) else rates * factor


def evaluate_adaptation(policy: Policy, params: Params, rates: Rates, settings: MAMLRLSettings, sample: SampleFn,
                        tasks: Sequence[Any], steps: int, seed: int, later_scale: float = 1.0) -> np.ndarray:
    """Mean return per task after ``0 .. steps`` inner steps (``(steps + 1) x B``), each step on fresh episodes
    of the current adapted policy, as the original's evaluation (20 episodes per step and task). Steps after the
    first take ``rates * later_scale`` (the original's test scripts: 0.5, a first step at the meta-trained rate
    and the later ones at half of it)."""
    seeds = np.random.SeedSequence(seed).generate_state(steps + 1)
    p: Params = {k: v.detach() for k, v in params.items()}
    later = scale_rates(rates, later_scale)
    out = []
    for i in range(steps + 1):
        episodes = sample(p, tasks, int(seeds[i]))
        out.append(episodes.returns().mean(dim=1).cpu().numpy())
        if i < steps:
            adv = episode_advantages(episodes, settings)
            step = policy_gradient_step(policy, p, episodes, adv, rates if i == 0 else later, True)
            p = {k: v.detach() for k, v in step.items()}
    return np.stack(out)
