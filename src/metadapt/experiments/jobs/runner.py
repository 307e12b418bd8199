"""The jobs behind the command line: train a model, run trials, write the report."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metadapt.adapt.static import StaticLearner
from metadapt.agent import MPCAgent
from metadapt.errors import CheckpointError, ConfigError, MetadaptError
from metadapt.experiments.configuration.config import (
    dump_config,
    load_config,
    refuse_result_changing_edits,
    with_later_defaults,
)
from metadapt.experiments.configuration.files import write_json
from metadapt.experiments.jobs import build
from metadapt.experiments.jobs.iterate import CHECKPOINT, IterativeTrainer, ReplayedData, iteration_seed
from metadapt.experiments.jobs.rebal_training import RecurrentTrainer
from metadapt.experiments.jobs.trial import TrialResult, run_trial
from metadapt.experiments.reporting.metrics import mean_analysis
from metadapt.experiments.reporting.progress import Reporter, TensorBoardReporter, check_tensorboard, tensorboard_writer
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


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


# The resolved config a training run started with, beside its checkpoints: config.yaml is the user's to read (and
# to edit, e.g. device or train.iterations), this copy is what a resume compares it against.
STARTED_WITH = "checkpoints/config.json"
# Keys a resumed training may change: they do not change what the completed iterations computed (the run's
# name, where it runs, what it logs, its trials, compiling the planner), or only extend it (train.iterations:
# iteration i draws from (seed, i) alone, so more iterations continue the same run).
RESUME_MAY_CHANGE = ("name", "device", "logging", "trial", "planner.compile", "train.iterations")


def _check_resumable(cfg: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume ``run_dir`` with a config that changes its results, naming the changed keys."""
    path = run_dir / STARTED_WITH
    if not path.is_file():
        return  # a run from before this record: the checkpoint's own checks (architecture, seed) still apply
    try:
        started = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc}): start a new run") from None
    refuse_result_changing_edits(with_later_defaults(started), cfg, RESUME_MAY_CHANGE, run_dir)


def _completed_counts(run_dir: Path) -> dict[str, int]:
    """How far the completed iterations of ``run_dir`` moved the ``fit`` (epochs) and ``collect`` (steps) bars,
    from its ``metrics.csv``: a resumed run's TensorBoard curves go on from there instead of starting over."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return {"fit": sum(int(float(r["epochs"])) for r in rows),
                "collect": int(float(rows[-1]["env_steps"])) if rows else 0}
    except (OSError, KeyError, ValueError, TypeError, csv.Error):
        return {}  # the curves then restart at 0; the checkpoint's own checks judge the run


def train(cfg: dict[str, Any], run_dir: Path, reporter: Reporter, resume: bool = False) -> tuple[DynamicsModel, Params]:
    """Iterative model training (MB) into ``run_dir``; resumes from its checkpoint if asked.

    A resume refuses a config that changes the run's results; a run killed before its first checkpoint
    resumes by starting over (the same seed gives the same run).
    """
    seed_everything(cfg["seed"])
    device = _device(cfg)
    replay = _replayed_data(cfg)
    env, objective = build.build_env(cfg)
    try:
        if not cfg["logging"]["tensorboard"]:
            return _train(cfg, run_dir, reporter, resume, env, objective, replay, device)
        # Written while training runs (each epoch's losses, each iteration's metrics row), not only after it.
        done = _completed_counts(run_dir) if resume else {}
        with TensorBoardReporter(reporter, tensorboard_writer(run_dir / "tb"), done) as tb:
            return _train(cfg, run_dir, tb, resume, env, objective, replay, device)
    finally:
        env.close()


def _train(cfg: dict[str, Any], run_dir: Path, reporter: Reporter, resume: bool, env: Any, objective: Any,
           replay: ReplayedData | None, device: torch.device) -> tuple[DynamicsModel, Params]:
    build.check_resources(cfg, env)
    if resume:
        _check_resumable(cfg, run_dir)
        if not (run_dir / CHECKPOINT).is_file():
            reporter.log(f"{run_dir} has no checkpoint yet (killed before its first iteration ended): starting over")
            resume = False
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        dump_config(cfg, run_dir / "config.yaml")
        (run_dir / STARTED_WITH).parent.mkdir(exist_ok=True)
        write_json(run_dir / STARTED_WITH, cfg)
    common = (lambda s: build.build_planner(cfg, env, s), build.iteration_settings(cfg), cfg["seed"], run_dir,
              StaticLearner, build.DTYPES[cfg["planner"]["dtype"]], reporter)
    placed = {"replay": replay, "device": device}
    trainer: IterativeTrainer
    if cfg["meta"]["enabled"] and cfg["meta"]["method"] == "rebal":
        build.meta_settings(cfg)  # the same window-size checks
        trainer = RecurrentTrainer(env, objective, build.build_recurrent(cfg, env), *common,
                                   recurrent=build.recurrent_settings(cfg), env_id=cfg["env"]["id"], **placed)
    else:
        trainer = IterativeTrainer(env, objective, build.build_model(cfg, env), *common,
                                   meta=build.meta_settings(cfg), env_id=cfg["env"]["id"], **placed)
    try:
        params = trainer.run(resume=resume)
    except ValueError as exc:
        # The library refuses data it cannot fit (no training transition left after the validation split, ...);
        # the data is what the config's budgets collected.
        raise MetadaptError(f"training stopped: {exc} (see train.steps_per_iteration, train.rollout_length, "
                            "train.val_fraction)") from exc
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


def _check_model_source(cfg: dict[str, Any]) -> None:
    """Refuse a learner whose model can come from nowhere: neither ``model.checkpoint`` nor training."""
    needs, kind = build.learner_needs(cfg), cfg["learner"]["type"]
    if cfg["model"]["checkpoint"]:
        return
    if needs == "recurrent" and not (cfg["meta"]["enabled"] and cfg["meta"]["method"] == "rebal"):
        raise ConfigError(f"learner.type={kind} plans with a ReBAL model: set model.checkpoint=REBAL "
                          "or meta.enabled=true meta.method=rebal to train one first")
    if needs == "prior" and not cfg["meta"]["enabled"]:
        raise ConfigError(f"learner.type={kind} plans with a meta-trained prior: set "
                          "model.checkpoint=PRIOR or meta.enabled=true to meta-train one first")


def _shapes(params: Params) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in params.items()}


def _say_schedule_note(cfg: dict[str, Any], env: Any) -> None:
    """A schedule that never switches within the trial is allowed (short test runs) but always said, on stderr:
    not through the reporter, which ``--quiet`` silences, since it changes what the run measures."""
    if (note := build.schedule_warning(cfg, env)) is not None:
        print(f"metadapt: {note}", file=sys.stderr)


def check(cfg: dict[str, Any]) -> None:
    """Everything ``run`` and ``train`` would refuse, without running: the device, where the model comes from,
    the window sizes, ``train.data``, the environment and its schedule (built once), the memory the run needs,
    ``model.checkpoint`` (loaded and matched to the environment), the planner and, with a checkpoint, the learner."""
    _device(cfg)
    _check_model_source(cfg)
    build.meta_settings(cfg)
    build.planner_compile(cfg)
    _replayed_data(cfg)
    env, _ = build.build_env(cfg, max_episode_steps=cfg["trial"]["episode_length"])
    try:
        build.check_schedule(cfg, env)
        _say_schedule_note(cfg, env)
        build.check_resources(cfg, env)
        build.build_planner(cfg, env, 0)
        if not cfg["model"]["checkpoint"]:
            build.build_model(cfg, env)
            return
        needs, prior, recurrent = build.learner_needs(cfg), None, None
        if needs == "recurrent":
            recurrent = build.load_trained_recurrent(cfg["model"]["checkpoint"], env, cfg["env"]["id"])
            model, params = recurrent[0].planning_model(), recurrent[1]
        elif needs == "prior":
            prior = build.load_trained_prior(cfg, env)
            model, params = prior.model, prior.params
        else:
            model, params = build.load_trained(cfg, env)
        build.check_resources(cfg, env, _shapes(params))
        build.build_learner(cfg, params, prior, model, recurrent)
    finally:
        env.close()


def run(cfg: dict[str, Any], out_dir: Path, reporter: Reporter, video: bool = False) -> list[TrialResult]:
    """Train (unless ``model.checkpoint`` names a model), run ``trial.episodes`` trials, report.

    ``video``: also write each trial as ``trial_<i>/trial.mp4`` (needs offscreen OpenGL).
    """
    device = _device(cfg)
    _check_model_source(cfg)
    if cfg["logging"]["tensorboard"]:
        check_tensorboard()  # before training, not after it
    env, objective = build.build_env(cfg, max_episode_steps=cfg["trial"]["episode_length"], render=video)
    build.check_schedule(cfg, env)
    _say_schedule_note(cfg, env)
    if not cfg["model"]["checkpoint"]:
        build.check_resources(cfg, env)  # training's, before it starts
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out_dir / "config.yaml")
    prior = None
    recurrent = None
    needs = build.learner_needs(cfg)
    kind = cfg["learner"]["type"]
    if needs == "recurrent":
        if not cfg["model"]["checkpoint"]:
            train(cfg, out_dir / "train", reporter)
        recurrent = build.load_trained_recurrent(cfg["model"]["checkpoint"] or out_dir / "train", env, cfg["env"]["id"])
        model, params = recurrent[0].planning_model(), recurrent[1]
    elif needs == "prior":
        if cfg["model"]["checkpoint"]:
            prior = build.load_trained_prior(cfg, env)
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
    build.check_resources(cfg, env, _shapes(params))  # planning's, with the model it plans with
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
            model, learner, build.build_planner(cfg, env, trial_seed), objective,
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
    write_json(out_dir / "summary.json", summary)
    write_report(out_dir)
    return results
