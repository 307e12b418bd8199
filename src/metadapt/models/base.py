"""The model protocol every meta-learner, online learner, checkpoint and prior types against.

A model is an object with no parameters of its own: its parameters live in a
plain dict (``Params``) passed to every call, so adapting, stacking (a mixture,
a meta-batch, an ensemble) and differentiating through an adaptation are
operations on dicts. ``loss(params, batch)`` is what the inner adaptation
(``metadapt.meta.inner``) differentiates; a model that accepts stacked
parameters (every tensor ``B x ...``) with a stacked batch returns ``B`` losses
and declares ``stacked = True``, and the MAML outer loop then adapts a whole
meta-batch in one pass instead of one ``vmap`` lane per task.

Dynamics models add what a model-based agent needs: the sizes of the spaces
and ``objective`` (the scores of action sequences from a state), which is what
a planner sees. The MLP's folding and prepacking are its own fast path behind
that method (``metadapt.models.rollout``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from metadapt.types import Params


@runtime_checkable
class FunctionalModel(Protocol):
    """A pure function of a parameter dict with a loss."""

    def init_params(self, generator: torch.Generator, device: torch.device | str = "cpu") -> Params:
        """Fresh parameters drawn with ``generator`` (the same generator state gives the same dict)."""
        ...

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter (checkpoints are checked against it)."""
        ...

    def loss(self, params: Params, batch: Any) -> torch.Tensor:
        """The training loss of ``batch``: a scalar, or ``B`` losses when ``params`` and ``batch`` are stacked."""
        ...


def check_params(model: FunctionalModel, params: Params, what: str = "parameters") -> None:
    """Raise ``ValueError`` naming the first name or shape of ``params`` that ``model`` does not have."""
    shapes = model.param_shapes()
    missing, extra = sorted(set(shapes) - set(params)), sorted(set(params) - set(shapes))
    if missing or extra:
        raise ValueError(f"{what} do not match the model: missing {missing or 'none'}, unexpected {extra or 'none'}")
    for name, shape in shapes.items():
        if tuple(params[name].shape) != tuple(shape):
            raise ValueError(f"{what} do not match the model: '{name}' has shape {tuple(params[name].shape)}, "
                             f"the model needs {tuple(shape)}")


@runtime_checkable
class DynamicsModel(FunctionalModel, Protocol):
    """What a model-based agent needs of a dynamics model, beside the functional model's loss.

    ``obs_dim`` (``O``) and ``act_dim`` (``A``); ``normalizer`` (model state, refit
    on the raw data); ``predict_normalized_delta(params, obs, act)`` and
    ``target(obs, next_obs)`` (``... x O``), whose difference is the one-step
    model error the agent logs; and ``fold(params, dtype, fused)``, the planning
    form of ``params``: an object the rollout (``models/rollout.py``) steps for
    ``N x H x A`` action sequences. ``MLPDynamics.fold`` is the MLP's fast path
    (normalization folded into the weights, the action block projected once,
    bfloat16 prepacking); the agent calls it once per parameter change and the
    planner only ever sees the resulting objective ``N x H x A -> N``.
    """

    obs_dim: int
    act_dim: int
    sigma: float
    normalizer: Any

    def predict_normalized_delta(self, params: Params, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        ...

    def target(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        ...

    def transition_loss(self, params: Params, obs: torch.Tensor, act: torch.Tensor,
                        next_obs: torch.Tensor) -> torch.Tensor:
        """Mean squared one-step error of ``N x O``, ``N x A``, ``N x O`` transitions (a scalar)."""
        ...

    def log_likelihood(self, params: Params, obs: torch.Tensor, act: torch.Tensor,
                       next_obs: torch.Tensor) -> torch.Tensor:
        """Log-density of each transition (``... x O`` inputs -> ``...``), what MOLe's posterior weighs."""
        ...

    def fold(self, params: Params, dtype: torch.dtype = torch.float32, fused: bool | None = None,
             prepack: bool = True) -> FoldedDynamics:
        ...

    def spec(self) -> dict[str, Any]:
        """Everything but the parameters that rebuilds this model: ``{"type": <registered name>, ...}`` of
        plain values and tensors (a checkpoint stores it; ``models.registry.dynamics_from_spec`` reads it)."""
        ...


@runtime_checkable
class FoldedDynamics(Protocol):
    """A dynamics model with fixed parameters, in the form the planning rollout steps.

    ``project_actions`` prepares a whole ``N x H x A`` action tensor once
    (``H x N x C``, ``C`` the model's choice); ``step`` maps an ``N x O``
    float32 state and one prepared ``N x C`` slice to the ``N x O`` next state.
    """

    def project_actions(self, actions: torch.Tensor) -> torch.Tensor:
        ...

    def step(self, obs: torch.Tensor, act_proj: torch.Tensor) -> torch.Tensor:
        ...
