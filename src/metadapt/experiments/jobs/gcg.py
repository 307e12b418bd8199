"""The ``system: gcg`` job: one lifelong stream of Meta-GCG, GCG or the oracle (seed 001, Algorithm 1).

Every step: plan with discrete CEM over the model's predicted rewards (``planning/discrete_cem.py``), act, append
to the stream (``data/stream.py``); every ``meta.train_every`` steps, once the stream holds ``meta.start`` steps,
``meta.train_steps`` optimizer steps (``meta/lifelong.py``: MAML on windows for Meta-GCG, Adam on sequences for
GCG and the oracle); every ``adapt.every`` steps, adapt on the newest ``adapt.window`` steps (Meta-GCG acts with
the adapted parameters; GCG and the oracle keep theta but the same adaptation is scored for them too, so the
reports show what adapting would have done to a model that was not meta-trained for it).

The oracle is told the rotation of the coming step (``TaskEnv.upcoming_task``): its model and planner work in
movements (the action un-rotated), and the environment gets ``action_for(movement, rotation)``.

Written to the run directory: ``config.yaml``; ``steps.csv`` (one row per step: reward, rotation, position,
exploration, the plan's predicted return, the training loss, and at each scored adaptation the cross-entropy of
the next ``adapt.every`` steps before and after it); ``summary.json``; ``model.pt`` (theta, with the model's
spec); ``checkpoints/state.pt`` every ``train.checkpoint_every`` steps; ``report.md`` with ``j_average.png``;
``video.mp4`` when ``eval.video_steps`` asks for one.

Resume after a kill: the environment is deterministic given its seed and the actions, so the checkpoint keeps
the actions (not the frames) and a resumed run replays them to rebuild the environment and the stream, then
continues from the checkpoint's parameters, optimizer and generators: the same numbers as an uninterrupted run.
The checkpoint also keeps the resolved config it was computed under: a resume whose config.yaml was edited since
in a key that changes the results is refused in one line naming the keys.

Non-finite numbers (``meta/lifelong.py``): a refused optimizer step or adaptation is counted in ``steps.csv``
(``train_refused``, ``adapt_refused``) and ``summary.json``; ``DIVERGED_AFTER`` refused optimizer steps in a row
stop the run (``FitDiverged``: one line, exit code 2) without writing ``model.pt``. Sizes no machine holds are
refused before anything is written (``memory_needs``).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metadapt.data.stream import FrameStream
from metadapt.envs import make_env
from metadapt.errors import CheckpointError, ConfigError
from metadapt.experiments.configuration.config import dump_config, refuse_result_changing_edits
from metadapt.experiments.configuration.files import plain_json, write_json
from metadapt.experiments.configuration.gcg_schema import ADAPTING
from metadapt.experiments.configuration.resources import FLOAT, LONG, Need, check_memory
from metadapt.experiments.jobs import derive_seed
from metadapt.experiments.reporting.lifelong import COLUMNS, summarize
from metadapt.experiments.reporting.progress import Reporter
from metadapt.meta.checkpoint import check_finite, load_checkpoint, save_atomic
from metadapt.meta.fit import FitDiverged
from metadapt.meta.lifelong import LifelongLearner, LifelongSettings
from metadapt.models.latent_image import LatentImageModel
from metadapt.planning.discrete_cem import DiscreteCEM
from metadapt.types import Params

STATE_FORMAT = "metadapt.gcg_state.v1"
MODEL_FORMAT = "metadapt.gcg_model.v1"
ENV, INIT, PLAN, SAMPLE, EXPLORE = range(5)
# Refused optimizer steps in a row (non-finite loss or theta) that stop the run: one refusal is a bad batch and
# theta goes on from before it, ten in a row mean theta itself (or a rate) is past recovering.
DIVERGED_AFTER = 10
# Keys a resume may change: they do not change what the stream computes (the run's name, where and on how many
# threads it runs, how often it logs and checkpoints, the report's metrics and video, which are recomputed).
RESUME_MAY_CHANGE = ("name", "device", "threads", "train.log_every", "train.checkpoint_every", "eval")


# -- building -----------------------------------------------------------------------------------------------------
def make_stream_env(cfg: dict[str, Any]) -> gym.Env:
    """The configured environment, checked to be an image environment with discrete actions (one line if not)."""
    e = cfg["env"]
    try:
        env = make_env(e["id"], **e["kwargs"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key 'env.kwargs': {e['id']} refuses them ({exc})") from None
    obs_space, act_space = env.observation_space, env.action_space
    if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 3):
        env.close()
        raise ConfigError(f"config key 'env.id': {e['id']} does not observe stacked frames (its observations are "
                          f"{obs_space}; allowed: K x H x W images, e.g. metadapt/RotatingMaze-v0)")
    if not isinstance(act_space, gym.spaces.Discrete):
        env.close()
        raise ConfigError(f"config key 'env.id': {e['id']} has actions {act_space}; Meta-GCG plans over "
                          "discrete actions (allowed: a Discrete action space)")
    if cfg["method"] == "oracle" and not hasattr(env.unwrapped, "oracle_action"):
        env.close()
        raise ConfigError(f"config key 'method': the oracle needs an environment that can un-rotate its actions "
                          f"(an oracle_action method), {e['id']} has none (allowed: meta_gcg, gcg, gcg_adapt)")
    m = cfg["meta"]
    length = episode_length(env)
    if length is not None and length < m["sequence_length"]:
        env.close()
        raise ConfigError(f"config key 'env.kwargs': episodes of {length} steps hold no sequence of "
                          f"meta.sequence_length={m['sequence_length']}")
    if within_episode(cfg, env) and cfg["method"] == "meta_gcg" and length is not None and length < m["window"]:
        env.close()
        raise ConfigError(f"config key 'meta.window': a window of {m['window']} steps is larger than the episodes "
                          f"of {length} steps allow (training windows lie inside one episode; allowed: <= {length})")
    return env


def episode_length(env: gym.Env) -> int | None:
    """Steps of the environment's episodes: None for an endless one (the maze's lifelong mode) or no known limit."""
    u = env.unwrapped
    if getattr(u, "mode", None) == "lifelong":
        return None
    if isinstance(getattr(u, "episode_steps", None), int):
        return int(u.episode_steps)
    return env.spec.max_episode_steps if env.spec is not None else None


def within_episode(cfg: dict[str, Any], env: gym.Env) -> bool:
    """Whether training windows must lie inside one episode: ``meta.within_episode``, or (null) whenever the
    environment's episodes end (each reset may draw another task)."""
    chosen = cfg["meta"]["within_episode"]
    return bool(chosen) if chosen is not None else getattr(env.unwrapped, "mode", None) != "lifelong"


def build_model(cfg: dict[str, Any], env: gym.Env) -> LatentImageModel:
    m = cfg["model"]
    k, size = env.observation_space.shape[0], env.observation_space.shape[1]
    widths = dict(m["widths"])
    try:
        return LatentImageModel.from_preset(m["preset"], frame_stack=int(k), num_actions=int(env.action_space.n),
                                            image_size=int(size), reward_low=m["reward_low"],
                                            reward_high=m["reward_high"], **widths)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key 'model.widths': {exc}") from None


def settings(cfg: dict[str, Any], env: gym.Env) -> LifelongSettings:
    m, a = cfg["meta"], cfg["adapt"]
    return LifelongSettings(
        meta=cfg["method"] == "meta_gcg", adapt=cfg["method"] in ADAPTING, inner_lr=m["inner_lr"],
        inner_steps=m["inner_steps"], first_order=m["first_order"], outer_lr=m["outer_lr"],
        meta_batch=m["meta_batch"], batch=m["batch"], window=m["window"], sequence_length=m["sequence_length"],
        adapt_window=a["window"], adapt_steps=a["steps"] or m["inner_steps"],
        within_episode=within_episode(cfg, env),
    )


def _model_file(path: str | Path) -> Path:
    p = Path(path)
    return p / "model.pt" if p.is_dir() else p


def load_gcg_model(path: str | Path, model: LatentImageModel) -> Params:
    """The parameters of a gcg run's ``model.pt`` for ``model`` (one line when it is not one, or does not fit)."""
    file = _model_file(path)
    state = load_checkpoint(file, ("format",))
    if state["format"] != MODEL_FORMAT:
        raise CheckpointError(f"{file} is not an image model of a system: gcg run (format {state['format']!r}); "
                              "a state-based model cannot plan from frames")
    if state.get("spec") != model.spec():
        raise CheckpointError(f"{file} holds a model of other sizes ({state.get('spec')}) than this config builds "
                              f"({model.spec()})")
    params = state["params"]
    if not isinstance(params, dict) or set(params) != set(model.param_shapes()):
        raise CheckpointError(f"{file} does not hold this model's parameters")
    check_finite(params, "parameters", str(file))
    return params


def memory_needs(cfg: dict[str, Any], model: LatentImageModel) -> list[Need]:
    """The least memory a lifelong run needs (``resources.py``): the model and its optimizer, the planner's
    candidates and their latent grids, a training batch's latent grids and the stream's frames."""
    m, p = cfg["meta"], cfg["planner"]
    params, grid = model.num_params(), model.hidden * model.grid ** 2  # floats of one C x G x G latent grid
    n, plan_float = p["samples"], 2 if p["dtype"] == "bfloat16" else FLOAT
    # A meta-batch scores meta_batch x batch query sequences after adapting on as many support ones; GCG draws the
    # query's number alone.
    sequences = m["meta_batch"] * m["batch"] * (2 if cfg["method"] == "meta_gcg" else 1)
    frame = model.image_size ** 2
    needs = [
        Need("the model with its gradients and Adam moments", "model.preset or model.widths", 4 * FLOAT * params),
        Need("the planner's candidate action sequences", "planner.samples or planner.horizon",
             LONG * n * p["horizon"]),
        # One ConvGRU step holds each candidate's grid and its three gates (z, r, the candidate state).
        Need("one planning step's latent grids", "planner.samples or model.widths", plan_float * n * 4 * grid),
        Need("one training batch's frames and latent grids",
             "meta.meta_batch, meta.batch, meta.sequence_length or model.widths",
             FLOAT * sequences * (model.frame_stack * frame + m["sequence_length"] * 4 * grid)),
        # One frame and an action, a reward and an episode index per step, kept on the host for the whole run.
        Need("the stream's frames", "env.steps", cfg["env"]["steps"] * (frame + LONG + FLOAT + LONG), gpu=False),
    ]
    if cfg["method"] == "meta_gcg":
        needs.append(Need("one adapted copy of the model per window of a meta-batch", "meta.meta_batch",
                          FLOAT * params * m["meta_batch"]))
    return needs


def check(cfg: dict[str, Any]) -> None:
    """What ``train`` refuses before it starts: the environment, the model's widths, the memory the run needs, a
    model checkpoint."""
    env = make_stream_env(cfg)
    try:
        model = build_model(cfg, env)
        check_memory(memory_needs(cfg, model), cfg["device"])
        if cfg["model"]["checkpoint"]:
            load_gcg_model(cfg["model"]["checkpoint"], model)
    finally:
        env.close()


# -- the loop -----------------------------------------------------------------------------------------------------
class _Run:
    """One lifelong run's parts and state (what a checkpoint saves and a resume restores)."""

    def __init__(self, cfg: dict[str, Any], device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.env = make_stream_env(cfg)
        self.model = build_model(cfg, self.env)
        try:  # before anything is allocated or written
            check_memory(memory_needs(cfg, self.model), cfg["device"])
        except ConfigError:
            self.env.close()
            raise
        seed = cfg["seed"]
        if cfg["model"]["checkpoint"]:
            params = {k: v.to(device) for k, v in load_gcg_model(cfg["model"]["checkpoint"], self.model).items()}
        else:
            params = self.model.init_params(torch.Generator().manual_seed(derive_seed(seed, INIT)), device)
        self.learner = LifelongLearner(self.model.loss, params, settings(cfg, self.env), device)
        p = cfg["planner"]
        self.planner = DiscreteCEM(int(self.env.action_space.n), p["horizon"], num_samples=p["samples"],
                                   iterations=p["iterations"], elite_fraction=p["elite_fraction"],
                                   smoothing=p["smoothing"], seed=derive_seed(seed, PLAN), device=device)
        self.warm = self.planner.make_warm_start(p["warm_mix"])
        self.sample_gen = torch.Generator().manual_seed(derive_seed(seed, SAMPLE))
        self.explore_gen = torch.Generator().manual_seed(derive_seed(seed, EXPLORE))
        self.stream = FrameStream(int(self.env.observation_space.shape[0]),
                                  tuple(int(s) for s in self.env.observation_space.shape[1:]))
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[p["dtype"]]
        self.columns: dict[str, list[float]] = {c: [] for c in COLUMNS}
        self.env_actions: list[int] = []
        self.model_actions: list[int] = []
        self.pending: tuple[Params, Params] | None = None  # (theta, theta*) of the last adaptation, to score
        self.episode = 0
        self.obs: np.ndarray | None = None

    # ---- environment --------------------------------------------------------------------------------------------
    def reset(self, first: bool) -> None:
        obs, _ = self.env.reset(seed=derive_seed(self.cfg["seed"], ENV) if first else None)
        self.obs = obs
        self.stream.begin(obs)
        self.learner.reset()
        self.warm.reset()
        self.pending = None

    def env_step(self, model_action: int, env_action: int) -> tuple[float, dict[str, Any], bool]:
        obs, reward, terminated, truncated, info = self.env.step(env_action)
        self.stream.append(model_action, float(reward), obs)
        self.obs = obs
        self.env_actions.append(env_action)
        self.model_actions.append(model_action)
        return float(reward), info, bool(terminated or truncated)

    def to_env(self, model_action: int) -> int:
        if self.cfg["method"] != "oracle":
            return model_action
        return int(self.env.unwrapped.oracle_action(model_action))

    # ---- acting -------------------------------------------------------------------------------------------------
    def act(self) -> tuple[int, float, float, bool]:
        """The model action (a movement for the oracle), the plan's predicted return over the horizon, the
        predicted reward of its first action, whether it explored (then both predictions are NaN)."""
        n = int(self.env.action_space.n)
        if float(torch.rand((), generator=self.explore_gen)) < self.cfg["planner"]["epsilon"]:
            return int(torch.randint(n, (), generator=self.explore_gen)), math.nan, math.nan, True
        frames = torch.as_tensor(self.obs, device=self.device)[None]
        objective = self.model.planning_objective(self.learner.acting_params(), frames, self.dtype)
        with torch.no_grad():
            plan = self.planner.plan(objective, self.warm)
            first = float(objective(plan.sequence[None, :1])[0])
        return int(plan.action), float(plan.expected_return), first, False

    # ---- learning -----------------------------------------------------------------------------------------------
    def learn(self, t: int) -> tuple[float, float, float, float, float]:
        """Train and adapt after step ``t``; returns (training loss, CE before, CE after) (NaN where none), the
        optimizer steps refused and whether the adaptation was refused (non-finite: ``meta/lifelong.py``)."""
        m, a = self.cfg["meta"], self.cfg["adapt"]
        loss = ce_before = ce_after = math.nan
        refused, adapt_refused = self.learner.refused_steps, False
        if len(self.stream) >= (m["start"] or m["window"]) and (t + 1) % m["train_every"] == 0:
            losses = [self.learner.train_step(self.stream, self.sample_gen) for _ in range(m["train_steps"])]
            loss = float(np.mean(losses))
        if (t + 1) % a["every"] == 0:
            if self.pending is not None:  # the newest adapt.every steps came after the last adaptation
                following = self.stream.last(a["every"], m["sequence_length"])
                if following[1].shape[0]:
                    ce_before = self.learner.loss(self.pending[0], following)
                    ce_after = self.learner.loss(self.pending[1], following)
            adapted = self.learner.adapt(self.stream)
            adapt_refused = self.learner.adapt_refused
            theta = {k: v.detach().clone() for k, v in self.learner.theta.items()}
            self.pending = None if adapted is None else (theta, adapted)
        return loss, ce_before, ce_after, float(self.learner.refused_steps - refused), float(adapt_refused)

    def record(self, t: int, reward: float, info: dict[str, Any], explored: bool, plan_return: float,
               predicted: float, learned: tuple[float, float, float, float, float]) -> None:
        row = (t, reward, float(info.get("rotation", info.get("task_id", 0))), float(info.get("x", math.nan)),
               self.episode, float(explored), plan_return, predicted, *learned)
        for c, v in zip(COLUMNS, row, strict=True):
            self.columns[c].append(float(v))

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def state(self, step: int) -> dict[str, Any]:
        pending = {} if self.pending is None else {"theta": self.pending[0], "adapted": self.pending[1]}
        return {
            "format": STATE_FORMAT, "step": step, "learner": self.learner.state_dict(),
            "planner_rng": self.planner.generator.get_state(), "warm": self.warm.state_dict(),
            "sample_rng": self.sample_gen.get_state(), "explore_rng": self.explore_gen.get_state(),
            "env_actions": torch.tensor(self.env_actions, dtype=torch.int16),
            "model_actions": torch.tensor(self.model_actions, dtype=torch.int16),
            "columns": {c: torch.tensor(v, dtype=torch.float64) for c, v in self.columns.items()},
            "pending": pending, "episode": self.episode,
            # What the checkpoint was computed under, for a resume to compare its config.yaml with.
            "config": json.dumps(plain_json(self.cfg)),
        }

    def restore(self, state: dict[str, Any], source: Path,
                on_step: Callable[[int, float, dict[str, Any]], None] | None = None) -> int:
        """Replay the saved actions through a fresh environment and stream, then load the learning state.
        ``on_step(t, reward, info)`` sees every replayed step (the video's frames of the steps before the kill)."""
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{source} is not a gcg run's checkpoint (format {state.get('format')!r})")
        step = int(state["step"])
        env_actions = state["env_actions"].tolist()
        model_actions = state["model_actions"].tolist()
        saved_rewards = state["columns"]["reward"]
        if not (len(env_actions) == len(model_actions) == step == saved_rewards.numel()):
            raise CheckpointError(f"{source} is inconsistent: {step} steps, {len(env_actions)} actions")
        self.reset(first=True)
        for t, (ea, ma) in enumerate(zip(env_actions, model_actions, strict=True)):
            reward, info, done = self.env_step(ma, ea)
            if reward != float(saved_rewards[t]):
                raise CheckpointError(f"{source}: replaying the saved actions gives another reward at step {t} "
                                      "(was the environment changed since the run started?)")
            if on_step is not None:
                on_step(t, reward, info)
            if done:
                self.reset(first=False)
        self.learner.load_state_dict(state["learner"])
        self.planner.generator.set_state(state["planner_rng"])
        self.warm.load_state_dict(state["warm"])
        self.sample_gen.set_state(state["sample_rng"])
        self.explore_gen.set_state(state["explore_rng"])
        nan = [math.nan] * step  # a column added since the checkpoint was written
        self.columns = {c: state["columns"][c].tolist() if c in state["columns"] else nan for c in COLUMNS}
        p = state["pending"]
        self.pending = None if not p else tuple({k: v.to(self.device) for k, v in p[key].items()}
                                                for key in ("theta", "adapted"))  # type: ignore[assignment]
        self.episode = int(state["episode"])
        return step


def check_resumable(state: dict[str, Any], cfg: dict[str, Any], source: Path, run_dir: Path) -> None:
    """Refuse to resume ``run_dir`` from checkpoint ``state`` with a config that changes its results (any key but
    ``RESUME_MAY_CHANGE``), naming the changed keys, as the model-based job does."""
    saved = state.get("config")
    if saved is None:
        return  # a checkpoint from before the config was kept: the replay's own checks (the rewards) still apply
    try:
        started = json.loads(saved)
    except (TypeError, ValueError):
        raise CheckpointError(f"{source} holds no readable config: start a new run") from None
    refuse_result_changing_edits(started, cfg, RESUME_MAY_CHANGE, run_dir)


def _diverged(cfg: dict[str, Any], step: int) -> FitDiverged:
    m = cfg["meta"]
    rates = f"meta.outer_lr (now {m['outer_lr']:g})" + (
        f" or meta.inner_lr (now {m['inner_lr']:g})" if cfg["method"] == "meta_gcg" else "")
    return FitDiverged(f"training diverged: the last {DIVERGED_AFTER} optimizer steps, to step {step}, had a "
                       "non-finite loss or would have made the model's parameters non-finite and were refused; "
                       f"model.pt was not written: lower {rates} and start a new run")


def _write_steps(columns: dict[str, list[float]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for row in zip(*(columns[c] for c in COLUMNS), strict=True):
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else (int(v) if float(v).is_integer() else v)
                        for v in row])
    tmp.replace(path)


def _refused(columns: dict[str, list[float]]) -> dict[str, float]:
    """The optimizer steps and adaptations refused so far (``steps.csv``'s counts; NaN rows: from before them)."""
    return {"train_steps_refused": float(np.nansum(columns["train_refused"])),
            "adaptations_refused": float(np.nansum(columns["adapt_refused"]))}


def summary_of(columns: dict[str, np.ndarray], cfg: dict[str, Any]) -> dict[str, float]:
    e = cfg["eval"]
    return summarize(columns["reward"], columns["rotation"], columns["step"], columns["ce_before"],
                     columns["ce_after"], e["rate_window"], e["recovery_fraction"], e["after_switch"],
                     e["recovery_window"])


def train(cfg: dict[str, Any], run_dir: Path, reporter: Reporter, resume: bool = False) -> dict[str, Any]:
    """Run the lifelong stream of ``cfg`` into ``run_dir`` (``resume``: from its checkpoint); returns the summary."""
    device = torch.device(cfg["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': cuda is not available on this machine (allowed: cpu)")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    if device.type == "cuda":  # the same numbers per seed on a GPU too (cuDNN's fastest kernels are not)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    state_path = run_dir / "checkpoints" / "state.pt"
    state = load_checkpoint(state_path, ("format",)) if resume and state_path.is_file() else None
    if state is not None:  # before the run is built and the stream replayed
        check_resumable(state, cfg, state_path, run_dir)
    run = _Run(cfg, device)
    total, every, shown = cfg["env"]["steps"], cfg["train"]["checkpoint_every"], cfg["eval"]["video_steps"]
    video = _VideoFrames() if shown else None
    start = 0
    if state is not None:
        predictions = state["columns"].get("predicted_reward")

        def replayed(t: int, reward: float, info: dict[str, Any]) -> None:
            if video is not None and t >= total - shown:
                guess = math.nan if predictions is None else float(predictions[t])
                video.add(np.asarray(run.obs)[-1], info, guess, reward)

        start = run.restore(state, state_path, replayed)
        reporter.log(f"resumed at step {start} (replayed {start} steps)")
    else:
        if resume:
            reporter.log(f"no checkpoint in {run_dir}: starting the stream over")
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
        run.reset(first=True)
    reporter.start("stream", f"{cfg['method']} stream", total)
    if start:
        reporter.advance("stream", start)
    began, t0 = time.perf_counter(), start
    for t in range(start, total):
        action, plan_return, predicted, explored = run.act()
        env_action = run.to_env(action)
        reward, info, done = run.env_step(action, env_action)
        learned = run.learn(t)
        run.record(t, reward, info, explored, plan_return, predicted, learned)
        if run.learner.refused_in_a_row >= DIVERGED_AFTER:  # the step log shows the refusals; no model, no checkpoint
            _write_steps(run.columns, run_dir / "steps.csv")
            run.env.close()
            raise _diverged(cfg, t + 1)
        if video is not None and t >= total - shown:
            video.add(np.asarray(run.obs)[-1], info, predicted, reward)
        if done:
            run.episode += 1
            run.reset(first=False)
        reporter.advance("stream")
        if (t + 1) % cfg["train"]["log_every"] == 0:
            rate = (t + 1 - t0) / max(time.perf_counter() - began, 1e-9)
            j = float(np.mean(run.columns["reward"]))
            refused = _refused(run.columns)
            said = (f", refused as non-finite: {refused['train_steps_refused']:.0f} optimizer steps, "
                    f"{refused['adaptations_refused']:.0f} adaptations") if any(refused.values()) else ""
            reporter.log(f"step {t + 1}/{total}: J_average {j:.4f}, {rate:.1f} steps/s{said}")
        if (t + 1) % every == 0 or t + 1 == total:
            save_atomic(run.state(t + 1), state_path)
            _write_steps(run.columns, run_dir / "steps.csv")
    seconds = time.perf_counter() - began
    run.env.close()
    theta = {k: v.detach().cpu().clone() for k, v in run.learner.theta.items()}
    save_atomic({"format": MODEL_FORMAT, "spec": run.model.spec(), "params": theta, "env_id": cfg["env"]["id"],
                 "method": cfg["method"]}, run_dir / "model.pt")
    summary = summary_of({c: np.asarray(v) for c, v in run.columns.items()}, cfg)
    summary.update(method=cfg["method"], steps=total, seconds_this_session=seconds,
                   steps_per_second=(total - start) / max(seconds, 1e-9), **_refused(run.columns))
    write_json(run_dir / "summary.json", plain_json(summary))
    if video is not None:
        video.write(run_dir / "video.mp4")
    report_run(run_dir)
    return summary


class _VideoFrames:
    """The last ``eval.video_steps`` frames, each with the true rotation of the step that led to it, the reward the
    model predicted for that step's action and the reward it got."""

    def __init__(self) -> None:
        from metadapt.experiments.reporting.video import check_video_writer

        check_video_writer()
        self.frames: list[tuple[np.ndarray, list[str]]] = []

    def add(self, frame: np.ndarray, info: dict[str, Any], predicted: float, reward: float) -> None:
        """``frame``: ``H x W`` uint8, the newest frame after the step; ``info``: that step's."""
        big = np.repeat(np.repeat(frame, 4, axis=0), 4, axis=1)
        rgb = np.stack([big] * 3, axis=-1).astype(np.uint8)
        guess = "random action" if math.isnan(predicted) else f"{predicted:+.2f}"
        self.frames.append((rgb, [f"rotation {int(info.get('rotation', 0))}", f"predicted reward {guess}",
                                  f"reward {reward:+.0f}, x {int(info.get('x', 0))}"]))

    def write(self, path: Path) -> None:
        from metadapt.experiments.reporting.video import TrialVideo

        out = TrialVideo(path, fps=10)
        for frame, caption in self.frames:
            out.add(frame, caption)
        out.close()


def report_run(run_dir: Path) -> Path:
    from metadapt.experiments.reporting.lifelong_report import write_lifelong_report

    return write_lifelong_report(run_dir)
