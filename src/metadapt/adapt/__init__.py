"""Online learners: one file each, one protocol (``reset``, ``observe``, ``params``)."""

from metadapt.adapt.base import OnlineLearner, StepInfo
from metadapt.adapt.static import StaticLearner

__all__ = ["OnlineLearner", "StaticLearner", "StepInfo"]
