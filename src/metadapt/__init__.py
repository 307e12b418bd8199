"""metadapt: agents that keep adapting while they act, through meta-learning.

The names below are the public API; the README's Python examples import from
here. Subpackages (``metadapt.adapt``, ``metadapt.meta``, ...) stay importable
as modules: no name here shadows one.
"""

from metadapt.adapt import OnlineLearner, StaticLearner, StepInfo
from metadapt.adapt.continual import ContinualLearner
from metadapt.adapt.mole import MOLeLearner
from metadapt.adapt.ts import KShotLearner
from metadapt.agent import MPCAgent
from metadapt.data import ReplayBuffer
from metadapt.data.episodes import NWayKShot, nearest_neighbour_accuracy
from metadapt.data.glyphs import generate_glyphs
from metadapt.data.omniglot import ImageClasses, load_omniglot
from metadapt.data.sinusoid import SinusoidTasks
from metadapt.envs import get_reward_fn, make_env
from metadapt.experiments.configuration.components import LEARNERS, PLANNERS, TASKS, BuildContext
from metadapt.experiments.jobs.iterate import IterationSettings, IterativeTrainer
from metadapt.experiments.jobs.trial import run_trial
from metadapt.meta.checkpoint import load_model, save_model
from metadapt.meta.inner import freeze_rates, init_rates, inner_adapt, inner_adapt_with_loss
from metadapt.meta.maml import MetaSettings, fit_meta
from metadapt.meta.outer import MAML, evaluate_adaptation, maml_loss, mean_interval
from metadapt.meta.prior import Prior, load_prior, save_prior
from metadapt.models import MLPDynamics, Normalizer
from metadapt.models.base import FunctionalModel, check_params
from metadapt.models.classifier import ConvClassifier
from metadapt.models.regressor import MLPRegressor
from metadapt.planning import CEM, MPPI, RandomShooting, WarmStart
from metadapt.types import Params, TaskBatch, TaskSampler, Window

__version__ = "0.1.0"

__all__ = [
    "CEM", "LEARNERS", "MAML", "MPPI", "PLANNERS", "TASKS", "BuildContext", "ContinualLearner", "ConvClassifier",
    "FunctionalModel", "ImageClasses", "IterationSettings", "IterativeTrainer", "KShotLearner", "MLPDynamics",
    "MLPRegressor", "MOLeLearner", "MPCAgent", "MetaSettings", "NWayKShot", "Normalizer", "OnlineLearner", "Params",
    "Prior", "RandomShooting", "ReplayBuffer", "SinusoidTasks", "StaticLearner", "StepInfo", "TaskBatch",
    "TaskSampler", "WarmStart", "Window", "check_params", "evaluate_adaptation", "fit_meta", "freeze_rates",
    "generate_glyphs", "get_reward_fn", "init_rates", "inner_adapt", "inner_adapt_with_loss", "load_model",
    "load_omniglot", "load_prior", "make_env", "maml_loss", "mean_interval", "nearest_neighbour_accuracy",
    "run_trial", "save_model", "save_prior",
]
