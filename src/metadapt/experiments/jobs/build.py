"""Building library objects from a resolved config (the only config-to-object seam)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch

from metadapt.adapt.base import OnlineLearner
from metadapt.envs import env_obs_version, get_objective, load_reward_fn, make_env, task_env
from metadapt.errors import CheckpointError, ConfigError, MetadaptError
from metadapt.experiments.configuration import components
from metadapt.experiments.configuration.components import LEARNERS, MODELS, PLANNERS, BuildContext
from metadapt.experiments.configuration.resources import FLOAT, LONG, Need, check_memory, mlp_param_count
from metadapt.experiments.jobs.iterate import IterationSettings
from metadapt.experiments.jobs.rebal_training import RecurrentSettings
from metadapt.meta.checkpoint import load_model
from metadapt.meta.maml import MetaSettings
from metadapt.meta.prior import BUILTIN, Prior, load_prior
from metadapt.meta.rebal import load_recurrent
from metadapt.models.base import DynamicsModel
from metadapt.models.recurrent import RecurrentDynamics
from metadapt.planning import Planner
from metadapt.types import Params, RewardFn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
T = TypeVar("T")


def load_untrusted(path: str | Path, what: str, load: Callable[[], T]) -> T:
    """``load()`` of a file that may come from anyone: a file of the right format whose contents have the wrong
    shape (``params`` a list, a spec without sizes...) is one ``CheckpointError`` line naming it, not a traceback."""
    try:
        return load()
    except MetadaptError:
        raise
    except (AttributeError, TypeError, KeyError, ValueError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{what} {path} does not hold what metadapt writes ({type(exc).__name__}: {exc})") \
            from exc


def build_env(
    cfg: dict[str, Any], max_episode_steps: int | None = None, render: bool = False
) -> tuple[gym.Env, RewardFn]:
    """The configured environment and the batched objective its planner maximises (``planner.objective``: the
    reward, or one of the environment's planning objectives); ``render``: RGB frames of 480 x 320.

    ``env.id`` may be ``module:id`` (a user's environment), ``env.perturbations`` adds model-editing tasks
    (checked against the model here), and ``env.reward_fn`` (``module:function``) replaces the environment's
    own batched reward as the ``reward`` objective."""
    kwargs = dict(cfg["env"]["kwargs"])
    if render:
        kwargs.update(render_mode="rgb_array", width=480, height=320)
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    env = make_env(cfg["env"]["id"], perturbations=cfg["env"].get("perturbations"), **kwargs)
    if not isinstance(env.action_space, gym.spaces.Box):
        raise MetadaptError(f"environment '{cfg['env']['id']}' needs a Box action space")
    if cfg["env"].get("reward_fn"):
        try:
            reward = load_reward_fn(cfg["env"]["reward_fn"], *dims(env))
        except MetadaptError as exc:
            env.close()
            raise ConfigError(f"config key 'env.reward_fn': {exc}") from None
        if cfg["planner"]["objective"] == "reward":
            return env, reward
    try:
        return env, get_objective(env, cfg["planner"]["objective"])
    except MetadaptError as exc:
        env.close()
        raise ConfigError(f"config key 'planner.objective': {exc}") from None


def dims(env: gym.Env) -> tuple[int, int]:
    return int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))


def build_model(cfg: dict[str, Any], env: gym.Env) -> DynamicsModel:
    """The dynamics model of ``model.type`` (any registered type) for ``env``'s spaces."""
    ctx = BuildContext(*dims(env), seed=cfg["seed"], device=cfg["device"])
    return components.build(MODELS, cfg["model"], ctx)


def refuse_builtin_prior(checkpoint: str | Path, learner: str) -> None:
    """``builtin:<name>`` names a shipped meta-learned prior: one line saying so when ``learner`` plans with another
    kind of model (MB and DE an MB dynamics model, ReBAL a recurrent one) and what to use instead."""
    text = str(checkpoint)
    if not text.startswith(BUILTIN):
        return
    with_prior = "|".join(n for n in LEARNERS.names() if LEARNERS[n].needs == "prior")
    if learner in LEARNERS and LEARNERS[learner].needs == "recurrent":
        want, train = "a ReBAL model", "a ReBAL run (metadapt train CONFIG meta.enabled=true meta.method=rebal)"
    else:
        want, train = "an MB dynamics model", "an MB run (metadapt train CONFIG meta.enabled=false)"
    raise CheckpointError(f"model.checkpoint={text} is a shipped meta-learned prior, not {want} "
                          f"(learner.type={learner}): use it with learner.type={with_prior}, or point "
                          f"model.checkpoint at {train}")


def load_trained(cfg: dict[str, Any], env: gym.Env) -> tuple[DynamicsModel, Params]:
    """The model named by ``model.checkpoint`` (a ``model.pt`` or a run directory holding one)."""
    refuse_builtin_prior(cfg["model"]["checkpoint"], cfg["learner"]["type"])
    path = Path(cfg["model"]["checkpoint"])
    if path.is_dir():
        path = path / "model.pt"
    model, params = load_untrusted(path, "model", lambda: load_model(path, cfg["env"]["id"], env_obs_version(env)))
    if (model.obs_dim, model.act_dim) != dims(env):
        raise MetadaptError(
            f"checkpoint {path} is for obs/action sizes {model.obs_dim}/{model.act_dim}, "
            f"environment '{cfg['env']['id']}' has {dims(env)[0]}/{dims(env)[1]}"
        )
    return model, params


def action_bounds(env: gym.Env) -> tuple[torch.Tensor, torch.Tensor]:
    space = env.action_space
    assert isinstance(space, gym.spaces.Box)
    return torch.as_tensor(space.low.ravel()), torch.as_tensor(space.high.ravel())


def build_planner(cfg: dict[str, Any], env: gym.Env, seed: int) -> Planner:
    """The planner of ``planner.type`` (any registered type) with its own section."""
    p = cfg["planner"]
    low, high = action_bounds(env)
    ctx = BuildContext(*dims(env), action_low=low, action_high=high, horizon=p["horizon"],
                       num_samples=p["num_samples"], seed=seed, device=cfg["device"])
    return components.build(PLANNERS, p, ctx)


def learner_needs(cfg: dict[str, Any]) -> str:
    """What ``learner.type`` plans from: ``"model"`` (an MB model), ``"prior"`` or ``"recurrent"`` (ReBAL)."""
    return LEARNERS[cfg["learner"]["type"]].needs


def planner_compile(cfg: dict[str, Any]) -> bool:
    """``planner.compile``, refused in one line where torch.compile cannot work."""
    if not cfg["planner"]["compile"]:
        return False
    from metadapt.models.rollout import compiled_rollout_returns

    try:
        compiled_rollout_returns()
    except RuntimeError as exc:
        raise ConfigError(f"config key 'planner.compile': {exc}") from None
    return True


def build_learner(
    cfg: dict[str, Any], params: Params | None, prior: Prior | None = None, model: DynamicsModel | None = None,
    recurrent: tuple[RecurrentDynamics, Params] | None = None,
) -> OnlineLearner:
    """The online learner of ``learner.type`` (any registered type): mb/de from an MB model's ``params``,
    ts/gs/mole from ``prior``, rebal from a ``recurrent`` model."""
    ctx = BuildContext(0, 0, device=cfg["device"], model=model, params=params, prior=prior, recurrent=recurrent)
    if model is not None:
        ctx.obs_dim, ctx.act_dim = model.obs_dim, model.act_dim
    return components.build(LEARNERS, cfg["learner"], ctx)


def meta_settings(cfg: dict[str, Any]) -> MetaSettings | None:
    m = cfg["meta"]
    if not m["enabled"]:
        return None
    if m["past"] + m["future"] > cfg["train"]["rollout_length"]:
        raise ConfigError(
            f"config keys 'meta.past' + 'meta.future' ({m['past']} + {m['future']}) must fit in one rollout "
            f"('train.rollout_length' is {cfg['train']['rollout_length']})"
        )
    return MetaSettings(
        inner_lr=m["inner_lr"], inner_steps=m["inner_steps"], first_order=m["first_order"],
        learn_inner_lr=m["learn_inner_lr"], inner_lr_per=m["inner_lr_per"], gain_inner_lr=m["gain_inner_lr"],
        prior_weight=m["prior_weight"], past=m["past"], future=m["future"],
        meta_batch=m["meta_batch"], batches_per_epoch=m["batches_per_epoch"], val_batches=m["val_batches"],
    )


def build_recurrent(cfg: dict[str, Any], env: gym.Env) -> RecurrentDynamics:
    m = cfg["model"]
    return RecurrentDynamics(*dims(env), m["hidden"], cfg["meta"]["context"], m["activation"], m["sigma"])


def recurrent_settings(cfg: dict[str, Any]) -> RecurrentSettings:
    m = cfg["meta"]
    return RecurrentSettings(past=m["past"], future=m["future"], batch=m["meta_batch"],
                             batches_per_epoch=m["batches_per_epoch"], val_batches=m["val_batches"])


def load_trained_recurrent(
    path: str | Path, env: gym.Env, env_id: str | None = None
) -> tuple[RecurrentDynamics, Params]:
    """A ReBAL model (``rebal.pt`` or a run directory holding one) that fits ``env`` (``env_id``'s layout)."""
    refuse_builtin_prior(path, "rebal")
    model, params = load_untrusted(path, "ReBAL model", lambda: load_recurrent(path, env_id, env_obs_version(env)))
    if (model.obs_dim, model.act_dim) != dims(env):
        raise MetadaptError(f"ReBAL model {path} is for obs/action sizes {model.obs_dim}/{model.act_dim}, "
                            f"the environment has {dims(env)[0]}/{dims(env)[1]}")
    return model, params


def load_trained_prior(cfg: dict[str, Any], env: gym.Env) -> Prior:
    """The prior named by ``model.checkpoint`` (a ``prior.pt`` or a run directory holding one)."""
    path = cfg["model"]["checkpoint"]
    return load_untrusted(path, "prior", lambda: load_prior(path, *dims(env), cfg["env"]["id"], env_obs_version(env)))


def iteration_settings(cfg: dict[str, Any]) -> IterationSettings:
    t = cfg["train"]
    return IterationSettings(
        iterations=t["iterations"], steps_per_iteration=t["steps_per_iteration"],
        rollout_length=t["rollout_length"], epochs=t["epochs"], batch_size=t["batch_size"], lr=t["lr"],
        val_fraction=t["val_fraction"], patience=t["patience"], window=cfg["learner"]["window"],
        buffer_capacity=t["buffer_capacity"],
    )


def memory_needs(cfg: dict[str, Any], obs_dim: int, act_dim: int,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> list[Need]:
    """The least memory a model-based run needs: training (when ``shapes`` is ``None``: the model is trained from
    the config) and planning (with ``shapes``, the parameter shapes of the loaded model it plans with)."""
    m, p, t = cfg["model"], cfg["planner"], cfg["train"]
    if shapes is None:
        sizes = [obs_dim + act_dim, *m["hidden"], obs_dim]
        params, width = mlp_param_count(sizes), max(sizes)
    else:
        params = sum(math.prod(s) for s in shapes.values())
        width = max((max(s) for s in shapes.values() if s), default=1)
    needs = []
    if shapes is None:
        needs += [
            Need("the model with its gradients and Adam moments", "model.hidden", 4 * FLOAT * params),
            Need("the replay buffer", "train.buffer_capacity",
                 t["buffer_capacity"] * (FLOAT * (2 * obs_dim + act_dim + 1) + 3 * LONG + 1), gpu=False),
            Need("one training batch through the model", "train.batch_size or model.hidden",
                 2 * FLOAT * t["batch_size"] * sum(sizes)),
        ]
        if cfg["meta"]["enabled"]:
            needs.append(Need("one adapted copy of the model per window of a meta-batch",
                              "meta.meta_batch or model.hidden", FLOAT * params * cfg["meta"]["meta_batch"]))
    n = p["num_samples"]
    needs += [
        Need("the planner's candidate action sequences", "planner.num_samples or planner.horizon",
             FLOAT * n * p["horizon"] * act_dim),
        Need("one planning step through the model", "planner.num_samples or model.hidden",
             FLOAT * n * (width + obs_dim + act_dim)),
    ]
    return needs


def check_resources(cfg: dict[str, Any], env: gym.Env, shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """Refuse, before any work, a config whose tensors cannot fit in the machine (see ``memory_needs``)."""
    check_memory(memory_needs(cfg, *dims(env), shapes), cfg["device"])


def schedule_warning(cfg: dict[str, Any], env: gym.Env) -> str | None:
    """A line to log when a periodic schedule never switches within a trial (``alternating_500`` in a 300-step
    trial runs one task throughout): allowed, for short test runs, but said rather than silent."""
    schedule = getattr(task_env(env), "schedule", None)
    period, tasks = getattr(schedule, "period", None), getattr(schedule, "tasks", [])
    length = min(cfg["trial"]["steps"], cfg["trial"]["episode_length"])
    if isinstance(period, int) and len(tasks) > 1 and period >= length:
        return (f"note: the schedule's first switch (step {period}) comes after the trial's last step "
                f"(trial.steps={cfg['trial']['steps']}, trial.episode_length={cfg['trial']['episode_length']}): "
                f"every trial runs only '{tasks[0].name}'")
    return None


def check_schedule(cfg: dict[str, Any], env: gym.Env) -> None:
    """Refuse a task schedule with a switch the trial never reaches: trials reset the environment (and its
    schedule) every ``trial.episode_length`` steps and stop after ``trial.steps``."""
    schedule = getattr(task_env(env), "schedule", None)
    starts = getattr(schedule, "starts", None)  # the explicit switch steps of a sequence schedule
    if starts is None:
        return
    steps, episode = cfg["trial"]["steps"], cfg["trial"]["episode_length"]
    length = min(steps, episode)
    late = [int(s) for s in starts if int(s) >= length]
    if late:
        describe = getattr(schedule, "describe", lambda: "the schedule")()
        raise ConfigError(
            f"config key 'env.kwargs.schedule': its switch at step {late[0]} comes after the trial's last step "
            f"(trial.steps={steps}, trial.episode_length={episode}) and would never be reached; schedule: {describe}")
