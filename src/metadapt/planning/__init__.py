"""Batched MPC planners over action sequences; each sees only an objective ``N x H x A -> N``."""

from metadapt.planning.base import Planner, PlanResult, WarmStart
from metadapt.planning.cem import CEM
from metadapt.planning.mppi import MPPI
from metadapt.planning.random_shooting import RandomShooting

PLANNERS: dict[str, type[Planner]] = {"rs": RandomShooting, "cem": CEM, "mppi": MPPI}

__all__ = ["CEM", "MPPI", "PLANNERS", "PlanResult", "Planner", "RandomShooting", "WarmStart"]
