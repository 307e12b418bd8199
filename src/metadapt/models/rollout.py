"""Turning a model into the objective a planner maximises.

Planners never see a model: they get ``objective(actions N x H x A) -> N``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import torch

from metadapt.models.mlp import FoldedMLP
from metadapt.types import Objective, RewardFn

Rollout = Callable[[FoldedMLP, torch.Tensor, torch.Tensor, RewardFn], torch.Tensor]


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


_compiled: Rollout | None = None


def compiled_rollout_returns() -> Rollout:
    """``rollout_returns`` through ``torch.compile`` (inductor), built once per process.

    Use it with a plain (``fused=False``) fold: inductor fuses the bias and
    activation into its own kernels and cannot lower oneDNN's fused op. The
    first call compiles (tens of seconds); new parameters and start states
    reuse the compiled graph. Raises ``RuntimeError`` when no C++ compiler is
    installed (inductor needs one on CPU).
    """
    global _compiled
    if _compiled is None:
        if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            raise RuntimeError("planner.compile needs a C++ compiler (g++ or clang++) for torch.compile on CPU")
        _compiled = torch.compile(rollout_returns, dynamic=False)
    return _compiled


def nonfinite_objective(actions: torch.Tensor) -> torch.Tensor:
    """The objective of a model whose parameters are not finite: NaN for each of the ``N x H x A`` sequences.

    Such a model cannot be rolled out faithfully: the bfloat16 fast path applies ReLU in oneDNN's product
    epilogue, which maps NaN to 0, so NaN weights can come out as finite, meaningless returns. NaN returns
    make every planner count every candidate as non-finite (``Planner.score``) instead.
    """
    return torch.full(actions.shape[:1], torch.nan, dtype=torch.float32, device=actions.device)


def make_objective(
    folded: FoldedMLP, obs: torch.Tensor, reward_fn: RewardFn, rollout: Rollout = rollout_returns
) -> Objective:
    """The planner's objective from state ``obs`` (``O``) under ``folded`` (``rollout``: eager or compiled)."""

    def objective(actions: torch.Tensor) -> torch.Tensor:
        return rollout(folded, obs, actions, reward_fn)

    return objective
