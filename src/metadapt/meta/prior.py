"""A meta-trained prior on disk: the model, ``theta*``, its inner learning rate(s) and window sizes.

The file loads with ``torch.load(weights_only=True)``; a wrong format version, a
truncated file, dimensions that do not match the environment or a NaN or an
infinity in the parameters, the normalizer or the inner learning rates are
refused with one line (``CheckpointError``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metadapt.errors import CheckpointError
from metadapt.meta.checkpoint import (
    check_finite,
    check_origin,
    load_checkpoint,
    model_from_state,
    model_state,
    save_atomic,
)
from metadapt.meta.maml import InnerLR, adapt
from metadapt.models.base import DynamicsModel
from metadapt.types import Params

PRIOR_FORMAT = "metadapt.prior.v1"


@dataclass
class Prior:
    """``theta*`` with what adapting it needs. ``inner_lr`` is a float or per-entry tensors (Meta-SGD)."""

    model: DynamicsModel
    params: Params
    inner_lr: InnerLR
    inner_steps: int
    past: int
    future: int
    env_id: str | None = None
    obs_version: int = 1  # of ``env_id``'s observation layout when the prior was trained

    def adapt(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> Params:
        """Adapted parameters from recent transitions (``M x O``, ``M x A``, ``M x O``, raw)."""
        device = next(iter(self.params.values())).device
        obs, act, next_obs = (torch.as_tensor(t, dtype=torch.float32, device=device) for t in (obs, act, next_obs))
        with torch.no_grad():
            out = adapt(self.model, self.params, obs, act, next_obs, self.inner_lr, self.inner_steps, True)
        return {k: v.detach() for k, v in out.items()}


def save_prior(prior: Prior, path: str | Path) -> None:
    lr: Any = prior.inner_lr
    state = {
        "format": PRIOR_FORMAT,
        "model": model_state(prior.model, prior.params),
        "inner_lr": {k: v.detach().cpu().clone() for k, v in lr.items()} if isinstance(lr, dict) else float(lr),
        "inner_steps": prior.inner_steps,
        "past": prior.past,
        "future": prior.future,
        "env_id": prior.env_id,
        "obs_version": prior.obs_version,
    }
    save_atomic(state, path)


BUILTIN = "builtin:"
PRIORS_DIR = Path(__file__).resolve().parent.parent / "priors"


def builtin_priors() -> list[str]:
    """Names of the priors shipped inside the package (``builtin:<name>``)."""
    return sorted(p.stem for p in PRIORS_DIR.glob("*.pt"))


def resolve_prior_path(path: str | Path) -> Path:
    """``builtin:<name>`` -> the shipped file; a run directory -> its ``prior.pt``; else the path itself."""
    text = str(path)
    if text.startswith(BUILTIN):
        name = text[len(BUILTIN):]
        if name not in builtin_priors():
            raise CheckpointError(f"no shipped prior '{name}' (shipped: {', '.join(builtin_priors()) or 'none'})")
        return PRIORS_DIR / f"{name}.pt"
    p = Path(path)
    return p / "prior.pt" if p.is_dir() else p


def load_prior(
    path: str | Path, obs_dim: int | None = None, act_dim: int | None = None, env_id: str | None = None,
    obs_version: int | None = None,
) -> Prior:
    """Load a prior (a file, a run directory or ``builtin:<name>``); with dims, check it fits the environment.

    With ``env_id``, a prior trained on that environment under another observation layout (same size, another
    meaning) is refused: ``obs_version`` is the environment's layout now, which the caller states
    (``metadapt.envs.observation_version(env_id)`` for a registered id, ``env_obs_version(env)`` for an instance).
    """
    if env_id is not None and obs_version is None:
        raise TypeError("load_prior: with env_id, pass the environment's obs_version "
                        "(metadapt.envs.observation_version(env_id))")
    path = resolve_prior_path(path)
    state = load_checkpoint(path, ("format",))
    if state["format"] != PRIOR_FORMAT:
        raise CheckpointError(f"{path} is not a metadapt prior of format {PRIOR_FORMAT} (found {state['format']!r})")
    try:
        model, params = model_from_state(state["model"], str(path))
        lr = state["inner_lr"]
        inner_lr: InnerLR = {k: v.float() for k, v in lr.items()} if isinstance(lr, dict) else float(lr)
        prior = Prior(model, params, inner_lr, int(state["inner_steps"]), int(state["past"]), int(state["future"]),
                      state.get("env_id"), int(state.get("obs_version", 1)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} is incomplete: {exc}") from exc
    if isinstance(inner_lr, dict) and {k: tuple(v.shape) for k, v in inner_lr.items()} != model.param_shapes():
        raise CheckpointError(f"{path}: its per-parameter inner learning rates do not match the model")
    if isinstance(inner_lr, dict):
        check_finite(inner_lr, "inner learning rates", str(path))
    elif not math.isfinite(inner_lr):
        raise CheckpointError(f"{path}: its inner learning rate is {inner_lr}, not a finite number")
    for name, want, have in (("observation", obs_dim, model.obs_dim), ("action", act_dim, model.act_dim)):
        if want is not None and want != have:
            raise CheckpointError(f"{path} is a prior for {name} size {have}, the environment has {want}")
    if env_id is not None:
        assert obs_version is not None  # checked on entry
        check_origin({"env_id": prior.env_id, "obs_version": prior.obs_version}, path, env_id, obs_version)
    return prior
