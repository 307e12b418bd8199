"""Dynamics models as pure functions of parameter dicts."""

from metadapt.models.mlp import ACTIVATIONS, FoldedMLP, MLPDynamics
from metadapt.models.normalizer import Normalizer
from metadapt.models.rollout import make_objective, rollout_returns

__all__ = ["ACTIVATIONS", "FoldedMLP", "MLPDynamics", "Normalizer", "make_objective", "rollout_returns"]
