"""Checkpoints that load with ``torch.load(weights_only=True)``: they cannot run code.

A run directory may come from someone else, so nothing here unpickles
arbitrary objects. Writes are atomic (temporary file, then rename), so a
process killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from metadapt.errors import CheckpointError
from metadapt.models.mlp import MLPDynamics
from metadapt.models.normalizer import Normalizer
from metadapt.types import Params

MODEL_FORMAT = "metadapt.mlp_dynamics.v1"


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint dict safely; any problem is a ``CheckpointError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    return obj


def check_origin(state: dict[str, Any], path: str | Path, env_id: str | None, obs_version: int) -> None:
    """Refuse a file trained on ``env_id`` under another version of its observation layout.

    ``state`` carries ``env_id`` and ``obs_version`` as recorded at training time
    (files without them: version 1). Nothing is checked without ``env_id`` or
    when the file came from another environment with the same sizes.
    """
    if env_id is None or state.get("env_id") != env_id:
        return
    if (found := int(state.get("obs_version", 1))) != obs_version:
        raise CheckpointError(f"{path} was trained on {env_id}'s observation version {found}, the environment's "
                              f"is now {obs_version}: retrain it")


def model_state(model: MLPDynamics, params: Params, env_id: str | None = None, obs_version: int = 1) -> dict[str, Any]:
    """Everything needed to rebuild ``model`` with ``params``, and the environment it was trained on."""
    return {
        "format": MODEL_FORMAT,
        "env_id": env_id,
        "obs_version": obs_version,
        "obs_dim": model.obs_dim,
        "act_dim": model.act_dim,
        "hidden": list(model.hidden),
        "activation": model.activation,
        "sigma": model.sigma,
        "action_gain": model.action_gain,
        "normalizer": {k: v.cpu() for k, v in model.normalizer.state_dict().items()},
        "params": {k: v.detach().cpu().clone() for k, v in params.items()},
    }


def save_model(
    model: MLPDynamics, params: Params, path: str | Path, env_id: str | None = None, obs_version: int = 1
) -> None:
    save_atomic(model_state(model, params, env_id, obs_version), path)


def model_from_state(state: dict[str, Any], source: str = "checkpoint") -> tuple[MLPDynamics, Params]:
    if state.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{source} is not a metadapt dynamics model (format {state.get('format')!r})")
    try:
        model = MLPDynamics(
            int(state["obs_dim"]), int(state["act_dim"]), tuple(state["hidden"]),
            str(state["activation"]), float(state["sigma"]),
            Normalizer.from_state_dict(state["normalizer"]), bool(state.get("action_gain", False)),
        )
        params = {k: v.float() for k, v in state["params"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source} is incomplete: {exc}") from exc
    expected = model.param_shapes()
    got = {k: tuple(v.shape) for k, v in params.items()}
    if got != expected:
        raise CheckpointError(f"{source} parameters do not match the model architecture")
    return model, params


def load_model(path: str | Path, env_id: str | None = None, obs_version: int = 1) -> tuple[MLPDynamics, Params]:
    """Rebuild a model and its parameters from ``save_model``'s file (checked against ``env_id``'s layout)."""
    state = load_checkpoint(path, ("format",))
    out = model_from_state(state, str(path))
    check_origin(state, path, env_id, obs_version)
    return out
