"""metadapt: model-based RL agents that keep adapting while they act."""

from metadapt.adapt import OnlineLearner, StaticLearner, StepInfo
from metadapt.adapt.ts import KShotLearner
from metadapt.agent import MPCAgent
from metadapt.data import ReplayBuffer
from metadapt.envs import get_reward_fn, make_env
from metadapt.meta.checkpoint import load_model, save_model
from metadapt.meta.maml import MetaSettings, adapt, fit_meta
from metadapt.meta.prior import Prior, load_prior, save_prior
from metadapt.models import MLPDynamics, Normalizer
from metadapt.planning import CEM, MPPI, RandomShooting, WarmStart

__version__ = "0.1.0"

__all__ = [
    "CEM", "MPPI", "KShotLearner", "MLPDynamics", "MPCAgent", "MetaSettings", "Normalizer", "OnlineLearner",
    "Prior", "RandomShooting", "ReplayBuffer", "StaticLearner", "StepInfo", "WarmStart", "adapt", "fit_meta",
    "get_reward_fn", "load_model", "load_prior", "make_env", "save_model", "save_prior",
]
