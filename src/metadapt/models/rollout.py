"""Turning a model into the objective a planner maximises.

Planners never see a model: they get ``objective(actions N x H x A) -> N``.
"""

from __future__ import annotations

import torch

from metadapt.models.mlp import FoldedMLP
from metadapt.types import Objective, RewardFn


def rollout_returns(
    folded: FoldedMLP, obs: torch.Tensor, actions: torch.Tensor, reward_fn: RewardFn
) -> torch.Tensor:
    """Sum of predicted rewards along each action sequence.

    Args:
        folded: the model with its parameters, prepared by ``MLPDynamics.fold``.
        obs: ``O`` or ``N x O`` start state (float32).
        actions: ``N x H x A`` candidate action sequences.
        reward_fn: batched ``(obs, act, next_obs) -> N``.

    Returns:
        ``N`` float32 returns (may hold non-finite values; planners handle them).
    """
    n, horizon, _ = actions.shape
    state = obs.float().expand(n, -1) if obs.dim() == 1 else obs.float()
    proj = folded.project_actions(actions)
    total = torch.zeros(n, dtype=torch.float32, device=actions.device)
    for t in range(horizon):
        nxt = folded.step(state, proj[t])
        total += reward_fn(state, actions[:, t], nxt).float()
        state = nxt
    return total


def make_objective(folded: FoldedMLP, obs: torch.Tensor, reward_fn: RewardFn) -> Objective:
    """The planner's objective from state ``obs`` (``O``) under ``folded``."""

    def objective(actions: torch.Tensor) -> torch.Tensor:
        return rollout_returns(folded, obs, actions, reward_fn)

    return objective
