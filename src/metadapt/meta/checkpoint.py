"""Checkpoints that load with ``torch.load(weights_only=True)``: they cannot run code.

A run directory may come from someone else, so nothing here unpickles
arbitrary objects. Writes are atomic (temporary file, then rename), so a
process killed mid-write leaves the previous checkpoint intact. A model whose
parameters or normalizer hold a NaN or an infinity is refused on loading: it
would plan on garbage (and in bfloat16 not even visibly).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from metadapt.errors import CheckpointError
from metadapt.models.base import DynamicsModel, check_params
from metadapt.models.normalizer import Normalizer
from metadapt.models.registry import dynamics_from_spec
from metadapt.types import Params

MODEL_FORMAT = "metadapt.dynamics.v2"  # {"spec": model.spec(), "params": ...}, any registered model type
MLP_FORMAT_V1 = "metadapt.mlp_dynamics.v1"  # still read: the MLP's fields at the top level


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors in ``tensors`` with a NaN or an infinite entry (in order)."""
    return [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]


def check_finite(tensors: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Refuse ``source`` (one ``CheckpointError`` line naming it) when one of its ``what`` is not finite."""
    if bad := nonfinite_tensors(tensors):
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(f"{source}: its {what} hold non-finite values (NaN or inf) in "
                              f"{', '.join(bad[:3])}{more}: it comes from a diverged fit or a damaged file")


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a Python file, flushed to disk. Given a path, torch reports a failed write (a full
    disk) as a ``RuntimeError`` ("unexpected pos ..."); through a file it is the ``OSError`` (``ENOSPC``) that
    every other write raises."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write ``obj`` to ``path`` so that a reader sees the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_torch(obj, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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


def model_state(model: DynamicsModel, params: Params, env_id: str | None = None,
                obs_version: int = 1) -> dict[str, Any]:
    """Everything needed to rebuild ``model`` (any registered type) with ``params``, and its environment."""
    return {
        "format": MODEL_FORMAT,
        "env_id": env_id,
        "obs_version": obs_version,
        "spec": model.spec(),
        "params": {k: v.detach().cpu().clone() for k, v in params.items()},
    }


def save_model(
    model: DynamicsModel, params: Params, path: str | Path, env_id: str | None = None, obs_version: int = 1
) -> None:
    save_atomic(model_state(model, params, env_id, obs_version), path)


def _spec_of(state: dict[str, Any], source: str) -> dict[str, Any]:
    fmt = state.get("format")
    if fmt == MODEL_FORMAT:
        return state.get("spec")  # type: ignore[return-value]
    if fmt == MLP_FORMAT_V1:  # the first format, MLP only: its fields at the top level
        keys = ("obs_dim", "act_dim", "hidden", "activation", "sigma", "action_gain", "normalizer")
        return {"type": "mlp", **{k: state[k] for k in keys if k in state}}
    if isinstance(fmt, str) and fmt.startswith("metadapt.gcg_"):
        raise CheckpointError(f"{source} is an image model of a system: gcg run (format {fmt!r}), not a dynamics "
                              "model over states: a state-based run cannot use it")
    raise CheckpointError(f"{source} is not a metadapt dynamics model (format {fmt!r})")


def model_from_state(state: dict[str, Any], source: str = "checkpoint") -> tuple[DynamicsModel, Params]:
    """The model and parameters of ``model_state``'s dict (or the first, MLP-only format)."""
    try:
        model = dynamics_from_spec(_spec_of(state, source))
        params = {k: v.float() for k, v in state["params"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{source} is incomplete: {exc}") from exc
    try:
        check_params(model, params)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    check_finite(params, "parameters", source)
    normalizer = getattr(model, "normalizer", None)  # another registered model type may keep other statistics
    if isinstance(normalizer, Normalizer):
        check_finite(normalizer.state_dict(), "normalizer statistics", source)
    return model, params


def load_model(path: str | Path, env_id: str | None = None, obs_version: int = 1) -> tuple[DynamicsModel, Params]:
    """Rebuild a model and its parameters from ``save_model``'s file (checked against ``env_id``'s layout)."""
    state = load_checkpoint(path, ("format",))
    out = model_from_state(state, str(path))
    check_origin(state, path, env_id, obs_version)
    return out
