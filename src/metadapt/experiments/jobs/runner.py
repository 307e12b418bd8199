"""The jobs behind the command line: train a model, run trials, write the report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metadapt.adapt.static import StaticLearner
from metadapt.agent import MPCAgent
from metadapt.errors import CheckpointError, ConfigError
from metadapt.experiments.configuration.config import dump_config, load_config
from metadapt.experiments.jobs import build
from metadapt.experiments.jobs.iterate import IterativeTrainer, ReplayedData, iteration_seed
from metadapt.experiments.jobs.rebal_training import RecurrentTrainer
from metadapt.experiments.jobs.trial import TrialResult, run_trial
from metadapt.experiments.reporting.metrics import mean_analysis
from metadapt.experiments.reporting.progress import Reporter
from metadapt.experiments.reporting.report import write_report
from metadapt.models.base import DynamicsModel
from metadapt.types import Params


def unique_dir(base: str | Path) -> Path:
    """``base`` if it does not exist yet, else ``base-2``, ``base-3``...: results are never overwritten."""
    base = Path(base)
    if not base.exists():
        return base
    i = 2
    while Path(f"{base}-{i}").exists():
        i += 1
    return Path(f"{base}-{i}")


def preload() -> None:
    """Import what every run imports lazily: the environments (MuJoCo, Gymnasium's MuJoCo base) and
    ``torch._dynamo``, which ``torch.optim`` imports on the first optimizer (about 1.5 s together).

    A sweep calls it before forking its workers, so each inherits the modules instead of importing
    them again before its first run.
    """
    import importlib

    import torch._dynamo  # noqa: F401

    from metadapt.envs import REGISTRY

    for entry, _ in REGISTRY.values():
        importlib.import_module(entry.split(":")[0])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train(cfg: dict[str, Any], run_dir: Path, reporter: Reporter, resume: bool = False) -> tuple[DynamicsModel, Params]:
    """Iterative model training (MB) into ``run_dir``; resumes from its checkpoint if asked."""
    seed_everything(cfg["seed"])
    device = _device(cfg)
    replay = _replayed_data(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        dump_config(cfg, run_dir / "config.yaml")
    env, reward_fn = build.build_env(cfg)
    common = (lambda s: build.build_planner(cfg, env, s), build.iteration_settings(cfg), cfg["seed"], run_dir,
              StaticLearner, build.DTYPES[cfg["planner"]["dtype"]], reporter)
    placed = {"replay": replay, "device": device}
    trainer: IterativeTrainer
    if cfg["meta"]["enabled"] and cfg["meta"]["method"] == "rebal":
        build.meta_settings(cfg)  # the same window-size checks
        trainer = RecurrentTrainer(env, reward_fn, build.build_recurrent(cfg, env), *common,
                                   recurrent=build.recurrent_settings(cfg), env_id=cfg["env"]["id"], **placed)
    else:
        trainer = IterativeTrainer(env, reward_fn, build.build_model(cfg, env), *common,
                                   meta=build.meta_settings(cfg), env_id=cfg["env"]["id"], **placed)
    params = trainer.run(resume=resume)
    env.close()
    return trainer.model, params


def _replayed_data(cfg: dict[str, Any]) -> ReplayedData | None:
    """``train.data``'s run, refused when it was collected in another environment."""
    source = cfg["train"]["data"]
    if not source:
        return None
    source_cfg = Path(source) / "config.yaml"
    if source_cfg.is_file() and (env_id := load_config(source_cfg)["env"]["id"]) != cfg["env"]["id"]:
        raise ConfigError(f"train.data {source} was collected in {env_id}, not {cfg['env']['id']}")
    replay = ReplayedData.load(source)
    cfg["train"]["data"] = str(Path(source).resolve())  # config.yaml must point at it from anywhere (--resume)
    return replay


def _device(cfg: dict[str, Any]) -> torch.device:
    """``device``, refused in one line when PyTorch cannot reach it."""
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device' is cuda, but this PyTorch sees no CUDA GPU (a run directory's "
                          "config.yaml can be edited to device: cpu to go on without one)")
    return torch.device(cfg["device"])


def _to(value: Any, device: torch.device) -> Any:
    """A parameter dict (or a learning rate, dict or number) on ``device``; numbers pass through."""
    return {k: v.to(device) for k, v in value.items()} if isinstance(value, dict) else value


def resume_train(run_dir: Path, reporter: Reporter) -> tuple[DynamicsModel, Params]:
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a training run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    return train(cfg, run_dir, reporter, resume=True)


def run(cfg: dict[str, Any], out_dir: Path, reporter: Reporter, video: bool = False) -> list[TrialResult]:
    """Train (unless ``model.checkpoint`` names a model), run ``trial.episodes`` trials, report.

    ``video``: also write each trial as ``trial_<i>/trial.mp4`` (needs offscreen OpenGL).
    """
    device = _device(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out_dir / "config.yaml")
    env, reward_fn = build.build_env(cfg, max_episode_steps=cfg["trial"]["episode_length"], render=video)
    prior = None
    recurrent = None
    needs = build.learner_needs(cfg)
    kind = cfg["learner"]["type"]
    if needs == "recurrent":
        if not cfg["model"]["checkpoint"]:
            if not (cfg["meta"]["enabled"] and cfg["meta"]["method"] == "rebal"):
                raise ConfigError(f"learner.type={kind} plans with a ReBAL model: set model.checkpoint=REBAL "
                                  "or meta.enabled=true meta.method=rebal to train one first")
            train(cfg, out_dir / "train", reporter)
        recurrent = build.load_trained_recurrent(cfg["model"]["checkpoint"] or out_dir / "train", env, cfg["env"]["id"])
        model, params = recurrent[0].planning_model(), recurrent[1]
    elif needs == "prior":
        if cfg["model"]["checkpoint"]:
            prior = build.load_trained_prior(cfg, env)
        elif not cfg["meta"]["enabled"]:
            raise ConfigError(f"learner.type={kind} plans with a meta-trained prior: set "
                              "model.checkpoint=PRIOR or meta.enabled=true to meta-train one first")
        else:
            reporter.log(f"no model.checkpoint: meta-training a prior into {out_dir / 'train'}")
            train(cfg, out_dir / "train", reporter)
            prior = build.load_trained_prior({**cfg, "model": {"checkpoint": str(out_dir / "train")}}, env)
        model, params = prior.model, prior.params
    elif cfg["model"]["checkpoint"]:
        model, params = build.load_trained(cfg, env)
    else:
        reporter.log(f"no model.checkpoint: training one into {out_dir / 'train'}")
        model, params = train(cfg, out_dir / "train", reporter)
    model.normalizer = model.normalizer.to(device)
    params = _to(params, device)
    if prior is not None:
        prior = replace(prior, params=_to(prior.params, device), inner_lr=_to(prior.inner_lr, device))
    if recurrent is not None:
        recurrent[0].normalizer = model.normalizer
        recurrent = (recurrent[0], _to(recurrent[1], device))
    seed_everything(cfg["seed"])
    results = []
    for i in range(cfg["trial"]["episodes"]):
        trial_seed = iteration_seed(cfg["seed"], i, 100)
        # TS adapts on exactly the M steps its prior was meta-trained to adapt on.
        window = prior.past if prior is not None and kind == "ts" else cfg["learner"]["window"]
        learner = build.build_learner(cfg, params, prior, model, recurrent)
        agent = MPCAgent(
            model, learner, build.build_planner(cfg, env, trial_seed), reward_fn,
            window, build.DTYPES[cfg["planner"]["dtype"]], build.planner_compile(cfg),
        )
        res = run_trial(env, agent, cfg["trial"]["steps"], trial_seed, out_dir / f"trial_{i}", reporter,
                        label=f"trial {i}", tensorboard=cfg["logging"]["tensorboard"], video=video)
        reporter.log(f"trial {i}: return={res.total_return:.1f} over {res.steps} steps, "
                     f"plan {res.mean_plan_ms:.1f} ms/step")
        results.append(res)
    env.close()
    returns = [r.total_return for r in results]
    summary = {"returns": returns, "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
               "analysis": mean_analysis([r.analysis for r in results])}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out_dir)
    return results
