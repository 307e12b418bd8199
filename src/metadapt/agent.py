"""An MPC agent: an online learner chooses parameters, a planner chooses actions."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

from metadapt.adapt.base import OnlineLearner, params_are_finite
from metadapt.models.base import DynamicsModel
from metadapt.models.mlp import FoldedMLP
from metadapt.models.rollout import compiled_rollout_returns, make_objective, nonfinite_objective, rollout_returns
from metadapt.planning.base import Planner, PlanResult
from metadapt.types import Params, RewardFn, Window


def _params_key(params: Params) -> tuple[Any, ...]:
    # data_ptr + _version changes whenever a tensor is replaced or modified in place.
    return tuple((k, v.data_ptr(), v._version) for k, v in params.items())


class MPCAgent:
    """Model-predictive control with a learned, possibly adapting, dynamics model.

    Args:
        model: the dynamics model (its normalizer included).
        learner: decides which parameters to plan with, from the stream of windows.
        planner: optimises action sequences against the model's predicted return.
        reward_fn: batched ``(obs, act, next_obs) -> N``.
        window: K, the number of recent transitions handed to the learner (a ``Window`` of the episode's K
            latest steps, from a history of single steps that ``new_episode`` clears).
        dtype: matrix-product dtype of the planning rollout.
        compile: plan through ``torch.compile`` of the rollout (off by default; same returns to float rounding).
    """

    def __init__(
        self,
        model: DynamicsModel,
        learner: OnlineLearner,
        planner: Planner,
        reward_fn: RewardFn,
        window: int = 16,
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.model, self.learner, self.planner, self.reward_fn = model, learner, planner, reward_fn
        self.window, self.dtype = window, dtype
        self.compile = compile
        self._rollout = compiled_rollout_returns() if compile else rollout_returns
        self.device = planner.device
        self.warm_start = planner.make_warm_start()
        self._history: deque[Window] = deque(maxlen=window)  # single steps (windows of length 1), oldest first
        self._episode, self._step = 0, 0  # of the next observed transition: episode in the trial, step in it
        self._folded: tuple[tuple[Any, ...], int, FoldedMLP | None] | None = None
        self._plan_params: Params | None = None
        self.last_plan: PlanResult | None = None

    def reset(self) -> None:
        """Start of a trial: forget the learner's adaptation, the warm start and the window."""
        self.learner.reset()
        self.new_episode()
        self._episode = 0

    def new_episode(self) -> None:
        """Start of an episode within a trial: the learner keeps what it learned."""
        self.warm_start.reset()
        if self._step:
            self._episode += 1
        self._history.clear()
        self._step = 0

    def _fold(self, params: Params) -> FoldedMLP | None:
        """The planning form of ``params``, folded once per parameter change; ``None`` when an entry is not
        finite: the bfloat16 fast path's fused ReLU (oneDNN) turns a NaN into 0, so a model with NaN weights
        would plan on finite returns; the planner sees NaN returns instead (``nonfinite_objective``) and counts
        every candidate as non-finite. The check reads the parameters once per change (about 80 us for a
        3 x 500 network on a CPU core)."""
        key = _params_key(params)
        if self._folded is None or self._folded[0] != key or self._folded[1] != id(self.model.normalizer):
            fused = False if self.compile else None
            folded = self.model.fold(params, self.dtype, fused) if params_are_finite(params) else None
            self._folded = (key, id(self.model.normalizer), folded)
        return self._folded[2]

    def act(self, obs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Plan from ``obs`` (``O``) and return the first action (``A``, float32)."""
        params = self.learner.params()
        self._plan_params = params
        state = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        folded = self._fold(params)
        objective = make_objective(folded, state, self.reward_fn, self._rollout) if folded is not None else \
            nonfinite_objective
        with torch.no_grad():
            self.last_plan = self.planner.plan(objective, self.warm_start)
        return self.last_plan.action.cpu().numpy()

    def observe(
        self, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, reward: float = 0.0, done: bool = False
    ) -> dict[str, float | str]:
        """Feed the executed transition to the learner; returns per-step metrics.

        The step joins the history of the episode's steps; the learner receives
        the window of the ``window`` latest (``Window``, oldest first, with the
        episode and in-episode step indices this agent counts). ``done``: the
        episode ended with this step.
        """
        step = Window.from_step(obs, act, next_obs, reward, done, self._episode, self._step, self.device)
        self._step += 1
        metrics: dict[str, float | str] = {}
        if self._plan_params is not None:
            o, a, o2 = step.obs[0], step.act[0], step.next_obs[0]
            with torch.no_grad():
                err = self.model.predict_normalized_delta(self._plan_params, o, a) - self.model.target(o, o2)
            metrics["model_error"] = float(err.pow(2).mean())
        self._history.append(step)
        info = self.learner.observe(Window.cat(self._history))
        metrics.update(info.metrics)
        return metrics
