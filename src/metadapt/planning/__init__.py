"""Batched MPC planners over action sequences; each sees only an objective ``N x H x A -> N``
(``DiscreteCEM``: ``N x H`` action indices ``-> N``)."""

from metadapt.planning.base import Planner, PlanResult, WarmStart
from metadapt.planning.cem import CEM
from metadapt.planning.discrete_cem import DiscreteCEM, DiscreteWarmStart
from metadapt.planning.mppi import MPPI
from metadapt.planning.random_shooting import RandomShooting

PLANNERS: dict[str, type[Planner]] = {"rs": RandomShooting, "cem": CEM, "mppi": MPPI}

__all__ = [
    "CEM", "MPPI", "PLANNERS", "DiscreteCEM", "DiscreteWarmStart", "PlanResult", "Planner", "RandomShooting",
    "WarmStart",
]
