"""Dynamics model types by name, so a checkpoint can rebuild any registered model from its spec.

A model's ``spec()`` names its type and holds what rebuilds it (sizes,
widths, normalizer statistics); a checkpoint stores the spec beside the
parameters, and loading looks the type up here. A model type defined outside
the package registers itself once and its checkpoints and priors load like
the MLP's::

    from metadapt.models.registry import register_dynamics
    register_dynamics("linear", LinearDynamics.from_spec)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metadapt.models.base import DynamicsModel
from metadapt.models.mlp import MLPDynamics

FromSpec = Callable[[dict[str, Any]], DynamicsModel]

_TYPES: dict[str, FromSpec] = {}


def register_dynamics(name: str, from_spec: FromSpec, replace: bool = False) -> None:
    """Make ``spec["type"] == name`` rebuild with ``from_spec``; a taken name is an error unless ``replace``."""
    if name in _TYPES and not replace:
        raise ValueError(f"dynamics model type '{name}' is already registered")
    _TYPES[name] = from_spec


def unregister_dynamics(name: str) -> None:
    _TYPES.pop(name, None)


def dynamics_types() -> tuple[str, ...]:
    return tuple(_TYPES)


def dynamics_from_spec(spec: dict[str, Any]) -> DynamicsModel:
    """The model a spec describes; ``ValueError`` naming the problem for an unknown type or a bad spec."""
    if not isinstance(spec, dict):
        raise ValueError(f"a model spec is a mapping, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in _TYPES:
        raise ValueError(f"model type {kind!r} is not registered (registered: {', '.join(_TYPES)})")
    try:
        return _TYPES[kind](spec)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"the spec of a '{kind}' model is incomplete or malformed ({exc})") from exc


register_dynamics("mlp", MLPDynamics.from_spec)
