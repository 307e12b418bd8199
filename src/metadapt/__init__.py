"""metadapt: model-based RL agents that keep adapting while they act."""

from metadapt.adapt import OnlineLearner, StaticLearner, StepInfo
from metadapt.agent import MPCAgent
from metadapt.data import Normalizer, ReplayBuffer
from metadapt.envs import get_reward_fn, make_env
from metadapt.meta.checkpoint import load_model, save_model
from metadapt.models import MLPDynamics
from metadapt.planning import CEM, MPPI, RandomShooting, WarmStart

__version__ = "0.1.0"

__all__ = [
    "CEM", "MPPI", "MLPDynamics", "MPCAgent", "Normalizer", "OnlineLearner", "RandomShooting",
    "ReplayBuffer", "StaticLearner", "StepInfo", "WarmStart", "get_reward_fn", "load_model", "make_env",
    "save_model",
]
