"""The ``system: rl`` job: MAML-RL meta-training, its baselines, the original's evaluation, the report.

Stages, each resumable after a kill (``checkpoints/state.pt`` every
``train.checkpoint_every`` iterations and at each stage's end):

- ``maml``: MAML-RL (``rl/maml_rl.py``) for ``meta.iterations``;
- ``pretrained``: the same trainer with no inner step (TRPO / PPO on all
  tasks), from the same initial parameters;
- ``oracle``: the same with the task in the observation (``task_in_obs``).

Every random draw of an iteration (its tasks, its episodes' resets and action
noise) is seeded from ``(seed, stage, iteration)``, so a resumed run repeats
exactly what the uninterrupted one would have done.

Evaluation (as in the original): ``eval.tasks`` held-out tasks from the test
distribution, the return after 0 .. ``eval.steps`` inner steps of
``eval.episodes`` fresh episodes each, for MAML, the pretrained policy, a
randomly initialised one and the oracle, with the same tasks and seeds.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metadapt.envs import make_env, registered_id
from metadapt.errors import CheckpointError, ConfigError, MetadaptError
from metadapt.experiments.configuration.config import dump_config
from metadapt.experiments.configuration.files import write_json
from metadapt.experiments.jobs import derive_seed
from metadapt.experiments.reporting.progress import Reporter
from metadapt.meta.checkpoint import load_checkpoint, save_atomic
from metadapt.meta.inner import Rates
from metadapt.meta.outer import mean_interval
from metadapt.models.base import check_params
from metadapt.models.policy import CategoricalMLPPolicy, GaussianMLPPolicy, Policy
from metadapt.rl.maml_rl import (
    MAMLRL,
    MAMLRLSettings,
    episode_advantages,
    evaluate_adaptation,
    policy_gradient_step,
    scale_rates,
)
from metadapt.rl.sampler import make_vector_env, sample_episodes, sample_tasks, to_env_action
from metadapt.types import Params

STATE_FORMAT = "metadapt.rl_state.v1"
MODEL_FORMAT = "metadapt.rl_policies.v1"
METRICS = ("stage", "iteration", "return_pre", "return_post", "kl", "loss_before", "loss_after", "step_fraction",
           "env_steps", "sample_s", "update_s")
CURVE = ("stage", "iteration", "env_steps")  # then return_<k> and ci95_<k> for k = 0 .. eval.curve_steps
INIT, TASKS, EPISODES, EVAL_TASKS, EVAL_EPISODES, RANDOM_INIT = range(6)


# -- environments and policies ----------------------------------------------------------------------------------
class TaskFamily:
    """One task family's vector env, a probe env for its task distributions, and the episode horizon."""

    def __init__(self, cfg: dict[str, Any], oracle: bool = False) -> None:
        e, m = cfg["env"], cfg["meta"]
        kwargs = {**e["kwargs"], **({"task_in_obs": True} if oracle else {})}
        try:
            self.probe = make_env(e["id"], **kwargs)
        except MetadaptError as exc:
            if not oracle:
                raise
            raise ConfigError(f"config key 'baselines.oracle': {e['id']} cannot show its task in the observation "
                              f"({exc}) (allowed: false for this environment)") from None
        if not hasattr(self.probe.unwrapped, "sample_train_task"):
            raise ConfigError(f"config key 'env.id': {e['id']} is not a task family (it has no task distribution)")
        gym_id = registered_id(e["id"])  # module:id -> the id its module registered
        spec = gym.spec(gym_id)
        horizon = e["horizon"] or spec.max_episode_steps
        if horizon is None:
            raise ConfigError(f"config key 'env.horizon': {e['id']} has no time limit, set the horizon")
        self.horizon = int(horizon)
        native = e["vector"] == "auto" and spec.vector_entry_point is not None
        n = e["num_envs"] or (m["meta_batch"] * m["episodes"] if native else m["episodes"])
        try:
            self.envs = make_vector_env(gym_id, n, e["vector"], kwargs)
        except (TypeError, ValueError, gym.error.Error) as exc:
            raise ConfigError(f"config key 'env': {e['id']} cannot be vectorised ({exc})") from exc
        self.obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        self.action_space = self.envs.single_action_space

    def close(self) -> None:
        self.envs.close()
        self.probe.close()


def build_policy(cfg: dict[str, Any], obs_dim: int, action_space: gym.Space) -> Policy:
    p = cfg["policy"]
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalMLPPolicy(obs_dim, int(action_space.n), p["hidden"], p["activation"])
    if isinstance(action_space, gym.spaces.Box):
        return GaussianMLPPolicy(obs_dim, int(np.prod(action_space.shape)), p["hidden"], p["activation"],
                                 p["init_std"])
    raise ConfigError(f"config key 'env.id': action space {action_space} is neither Box nor Discrete")


def settings(cfg: dict[str, Any], inner_steps: int | None = None) -> MAMLRLSettings:
    m = cfg["meta"]
    return MAMLRLSettings(
        inner_lr=m["inner_lr"], inner_steps=m["inner_steps"] if inner_steps is None else inner_steps,
        first_order=m["first_order"], learn_inner_lr=m["learn_inner_lr"] and inner_steps is None,
        gamma=m["gamma"], gae_lambda=m["gae_lambda"], outer=m["outer"], max_kl=m["max_kl"],
        cg_iterations=m["cg_iterations"], cg_damping=m["cg_damping"], backtrack_ratio=m["backtrack_ratio"],
        max_backtracks=m["max_backtracks"], ppo_clip=m["ppo_clip"],
        ppo_epochs=m["ppo_epochs"], ppo_lr=m["ppo_lr"],
    )


def _stages(cfg: dict[str, Any]) -> list[tuple[str, int]]:
    b = cfg["baselines"]
    out = [("maml", cfg["meta"]["iterations"])]
    for name in ("pretrained", "oracle"):
        if b[name]:
            out.append((name, b["iterations"] or cfg["meta"]["iterations"]))
    return out


# -- training ---------------------------------------------------------------------------------------------------
def _cpu(params: Params) -> Params:
    return {k: v.detach().cpu().clone() for k, v in params.items()}


def _plain_rates(rates: Rates) -> Any:
    return _cpu(rates) if isinstance(rates, dict) else float(rates)


def _write_metrics(rows: list[dict[str, Any]], path: Path, fields: tuple[str, ...] = METRICS) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _save_state(run_dir: Path, cfg: dict[str, Any], stage: str, iteration: int, learner: dict[str, Any] | None,
                rows: list[dict[str, Any]], results: dict[str, dict[str, Any]], curve: list[dict[str, Any]]) -> None:
    save_atomic({"format": STATE_FORMAT, "config": json.dumps(cfg, sort_keys=True), "stage": stage,
                 "iteration": iteration, "learner": learner, "metrics": list(rows), "results": results,
                 "curve": list(curve)}, run_dir / "checkpoints" / "state.pt")
    _write_metrics(rows, run_dir / "metrics.csv")
    if curve:
        k = cfg["eval"]["curve_steps"]
        _write_metrics(curve, run_dir / "heldout.csv",
                       CURVE + tuple(f"{p}_{i}" for i in range(k + 1) for p in ("return", "ci95")))


def _load_state(run_dir: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    path = run_dir / "checkpoints" / "state.pt"
    if not path.is_file():
        return None  # killed before the first checkpoint: start over
    state = load_checkpoint(path, ("format", "config", "stage", "iteration", "learner", "metrics", "results"))
    if state["format"] != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a meta-RL checkpoint (format {state['format']!r})")
    if json.loads(state["config"]) != json.loads(json.dumps(cfg, sort_keys=True)):
        raise CheckpointError(f"{run_dir}/config.yaml differs from the run's checkpoint: resume continues the same "
                              "run (start a new run to change it)")
    return state


def _fit(cfg: dict[str, Any], run_dir: Path, reporter: Reporter, resume: bool) -> dict[str, dict[str, Any]]:
    """Train every stage; returns ``{stage: {"params", "rates"}}`` (CPU tensors)."""
    seed, device = cfg["seed"], torch.device(cfg["device"])
    stages = _stages(cfg)
    names = [s for s, _ in stages] + ["done"]
    state = _load_state(run_dir, cfg) if resume else None
    rows: list[dict[str, Any]] = list(state["metrics"]) if state else []
    results: dict[str, dict[str, Any]] = dict(state["results"]) if state else {}
    curve: list[dict[str, Any]] = list(state.get("curve", [])) if state else []
    every = cfg["eval"]["curve_every"]
    first = names.index(state["stage"]) if state is not None else 0
    m, ckpt = cfg["meta"], cfg["train"]["checkpoint_every"]
    for index in range(first, len(stages)):
        stage, total = stages[index]
        family = TaskFamily(cfg, oracle=stage == "oracle")
        try:
            policy = build_policy(cfg, family.obs_dim, family.action_space)
            init = policy.init_params(torch.Generator().manual_seed(derive_seed(seed, INIT, stage == "oracle")),
                                      device)
            learner = MAMLRL(policy, init, settings(cfg, None if stage == "maml" else 0))
            start = 0
            if state is not None and state["stage"] == stage and state["learner"] is not None:
                learner.load_state_dict(state["learner"])
                start = int(state["iteration"])
            env_steps = int(rows[-1]["env_steps"]) if rows and rows[-1]["stage"] == stage else 0

            def sample(params: Params, tasks: Any, s: int, fam: TaskFamily = family, pol: Policy = policy) -> Any:
                return sample_episodes(fam.envs, pol, params, tasks, m["episodes"], fam.horizon, s,
                                       normalize_actions=cfg["env"]["normalize_actions"])


            reporter.start(stage, {"maml": "MAML-RL", "pretrained": "pretrained (all tasks)",
                                   "oracle": "oracle (task observed)"}[stage], total)
            reporter.advance(stage, start)
            timing = {"sample_s": 0.0, "update_s": 0.0}
            if every and start == 0:  # a resumed stage saved its point at ``start`` with its checkpoint
                curve.append(_curve_point(cfg, family, policy, learner, stage, 0, env_steps))
            for it in range(start, total):
                rng = np.random.default_rng(derive_seed(seed, TASKS, index, it))
                tasks = sample_tasks(family.probe, m["meta_batch"], rng, "train")
                t0 = time.perf_counter()
                rollouts = learner.sample(sample, tasks, derive_seed(seed, EPISODES, index, it))
                t1 = time.perf_counter()
                info = learner.outer_step(rollouts)
                t2 = time.perf_counter()
                if not all(math.isfinite(v) for v in info.values()):
                    raise MetadaptError(f"{stage} training diverged at iteration {it + 1} ({info}): lower "
                                        "meta.inner_lr or meta.max_kl")
                pre = rollouts.inner[0] if rollouts.inner else rollouts.post
                env_steps += sum(e.steps() for e in rollouts.inner) + rollouts.post.steps()
                timing["sample_s"] += t1 - t0
                timing["update_s"] += t2 - t1
                rows.append({"stage": stage, "iteration": it + 1, "return_pre": pre.mean_return(),
                             "return_post": rollouts.post.mean_return(), **info, "env_steps": env_steps,
                             "sample_s": round(t1 - t0, 4), "update_s": round(t2 - t1, 4)})
                reporter.advance(stage, 1, ret=rows[-1]["return_post"])
                if every and ((it + 1) % every == 0 or it + 1 == total):  # before the checkpoint that saves it
                    curve.append(_curve_point(cfg, family, policy, learner, stage, it + 1, env_steps))
                if (it + 1) % ckpt == 0 and it + 1 < total:
                    _save_state(run_dir, cfg, stage, it + 1, learner.state_dict(), rows, results, curve)
            results[stage] = {"params": _cpu(learner.params), "rates": _plain_rates(learner.rates)}
            _record_time(run_dir, stage, total - start, timing)
            _save_state(run_dir, cfg, names[index + 1], 0, None, rows, results, curve)
            state = None
        finally:
            family.close()
    return results


def _curve_point(cfg: dict[str, Any], family: TaskFamily, policy: Policy, learner: MAMLRL, stage: str,
                 iteration: int, env_steps: int) -> dict[str, Any]:
    """One point of the held-out curve: the stage's current policy on the first ``eval.curve_tasks`` held-out tasks
    (the final evaluation's tasks and episode seeds), return after 0 .. ``eval.curve_steps`` steps."""
    ev = cfg["eval"]
    tasks = sample_tasks(family.probe, ev["curve_tasks"], np.random.default_rng(derive_seed(cfg["seed"], EVAL_TASKS)),
                         "test")
    rates = learner.rates if stage == "maml" else _baseline_rate(cfg, stage)
    returns = evaluate_adaptation(policy, learner.params, rates, settings(cfg), _eval_sampler(cfg, family, policy),
                                  tasks, ev["curve_steps"], derive_seed(cfg["seed"], EVAL_EPISODES),
                                  ev["later_lr_scale"])
    row: dict[str, Any] = {"stage": stage, "iteration": iteration, "env_steps": env_steps}
    for k in range(returns.shape[0]):
        iv = _interval(returns[k])
        row[f"return_{k}"], row[f"ci95_{k}"] = iv["mean"], iv["ci95"]
    return row


def _record_time(run_dir: Path, stage: str, iterations: int, timing: dict[str, float]) -> None:
    """Wall time of a stage and its share spent sampling, in ``timing.json`` (never in the results)."""
    path = run_dir / "timing.json"
    out = json.loads(path.read_text()) if path.is_file() else {}
    total = timing["sample_s"] + timing["update_s"]
    out[stage] = {"iterations": iterations, **{k: round(v, 3) for k, v in timing.items()},
                  "sampling_share": round(timing["sample_s"] / total, 4) if total else None,
                  "threads": torch.get_num_threads()}
    path.write_text(json.dumps(out, indent=2))


# -- checkpoints of the trained policies ------------------------------------------------------------------------
def save_policies(path: Path, cfg: dict[str, Any], results: dict[str, dict[str, Any]], obs_dim: int) -> None:
    save_atomic({"format": MODEL_FORMAT, "env_id": cfg["env"]["id"], "obs_dim": obs_dim, "policy": cfg["policy"],
                 "methods": results}, path)


def load_policies(path: str | Path, obs_dim: int, env_id: str) -> dict[str, dict[str, Any]]:
    """The trained policies of a run (``model.pt`` or its directory), refused in one line when they do not fit
    ``env_id``'s observation size."""
    p = Path(path)
    p = p / "model.pt" if p.is_dir() else p
    state = load_checkpoint(p, ("format", "methods", "obs_dim"))
    if state["format"] != MODEL_FORMAT:
        raise CheckpointError(f"{p} is not a meta-RL policy file (format {state['format']!r})")
    if int(state["obs_dim"]) != obs_dim:
        raise CheckpointError(f"{p} holds policies for observation size {state['obs_dim']}, {env_id} has {obs_dim}")
    return state["methods"]


# -- evaluation -------------------------------------------------------------------------------------------------
def _interval(values: np.ndarray) -> dict[str, float]:
    mean, half = mean_interval(torch.as_tensor(values))
    return {"mean": mean, "ci95": half if len(values) > 1 else 0.0}


def evaluate(cfg: dict[str, Any], results: dict[str, dict[str, Any]], reporter: Reporter) -> dict[str, Any]:
    """Returns after 0 .. eval.steps inner steps on held-out tasks, per method (see the module docstring)."""
    ev, seed, device = cfg["eval"], cfg["seed"], torch.device(cfg["device"])
    s = settings(cfg)
    methods: dict[str, Any] = {}
    family = TaskFamily(cfg)
    try:
        tasks = sample_tasks(family.probe, ev["tasks"], np.random.default_rng(derive_seed(seed, EVAL_TASKS)), "test")
        policy = build_policy(cfg, family.obs_dim, family.action_space)
        candidates: dict[str, tuple[Params, Rates]] = {}
        if "maml" in results:
            r = results["maml"]
            candidates["maml"] = (r["params"], r["rates"])
        if "pretrained" in results:
            candidates["pretrained"] = (results["pretrained"]["params"], _baseline_rate(cfg, "pretrained"))
        if cfg["baselines"]["random"]:
            gen = torch.Generator().manual_seed(derive_seed(seed, RANDOM_INIT))
            candidates["random"] = (policy.init_params(gen), _baseline_rate(cfg, "random"))
        for name, (params, rates) in candidates.items():
            check_params(policy, params, f"the {name} policy's parameters")
            methods[name] = _evaluate_one(cfg, family, policy, params, rates, s, tasks, reporter, name, device)
    finally:
        family.close()
    if "oracle" in results:
        oracle = TaskFamily(cfg, oracle=True)
        try:
            policy = build_policy(cfg, oracle.obs_dim, oracle.action_space)
            methods["oracle"] = _evaluate_one(cfg, oracle, policy, results["oracle"]["params"],
                                              _baseline_rate(cfg, "oracle"), s, tasks, reporter, "oracle", device)
        finally:
            oracle.close()
    return {"metric": "return", "tasks": ev["tasks"], "episodes": ev["episodes"], "steps": ev["steps"],
            "later_lr_scale": ev["later_lr_scale"],
            "env_id": cfg["env"]["id"], "methods": methods}


def _baseline_rate(cfg: dict[str, Any], method: str) -> float:
    """A baseline's first-step evaluation rate: ``eval.<method>_lr``, else ``meta.inner_lr``."""
    return cfg["eval"][f"{method}_lr"] or cfg["meta"]["inner_lr"]


def _eval_sampler(cfg: dict[str, Any], family: TaskFamily, policy: Policy) -> Any:
    """``sample(params, tasks, seed)``: ``eval.episodes`` episodes of each task."""

    def sample(p: Params, t: Any, sd: int) -> Any:
        return sample_episodes(family.envs, policy, p, t, cfg["eval"]["episodes"], family.horizon, sd,
                               normalize_actions=cfg["env"]["normalize_actions"])

    return sample


def _evaluate_one(cfg: dict[str, Any], family: TaskFamily, policy: Policy, params: Params, rates: Rates,
                  s: MAMLRLSettings, tasks: list[Any], reporter: Reporter, name: str,
                  device: torch.device) -> dict[str, Any]:
    ev = cfg["eval"]
    reporter.log(f"evaluating {name} on {len(tasks)} held-out tasks")
    params = {k: v.to(device) for k, v in params.items()}
    rates = {k: v.to(device) for k, v in rates.items()} if isinstance(rates, dict) else rates
    returns = evaluate_adaptation(policy, params, rates, s, _eval_sampler(cfg, family, policy), tasks, ev["steps"],
                                  derive_seed(cfg["seed"], EVAL_EPISODES), ev["later_lr_scale"])
    return {str(k): {**_interval(returns[k]), "per_task": [float(x) for x in returns[k]]}
            for k in range(returns.shape[0])}


# -- video ----------------------------------------------------------------------------------------------------
def write_adaptation_video(cfg: dict[str, Any], results: dict[str, dict[str, Any]], path: Path) -> Path:
    """``adaptation.mp4``: the MAML-RL policy on one held-out task, one rendered episode after each of
    0 .. ``eval.steps`` policy-gradient steps (each step on ``eval.episodes`` fresh episodes, as evaluated).
    The actions are the policy's mean; the caption gives the step count, the true task and the return."""
    from metadapt.experiments.reporting.video import TrialVideo

    ev, seed = cfg["eval"], cfg["seed"]
    s = settings(cfg)
    family = TaskFamily(cfg)
    try:
        task = sample_tasks(family.probe, 1, np.random.default_rng(derive_seed(seed, EVAL_TASKS)), "test")
        policy = build_policy(cfg, family.obs_dim, family.action_space)
        params: Params = {k: v.detach() for k, v in results["maml"]["params"].items()}
        rates = results["maml"]["rates"]
        later = scale_rates(rates, ev["later_lr_scale"])
        env = make_env(cfg["env"]["id"], render_mode="rgb_array", **cfg["env"]["kwargs"])
        env.unwrapped.next_task = task[0]
        video = TrialVideo(path, fps=int(env.metadata.get("render_fps", 20)))
        seeds = np.random.SeedSequence(derive_seed(seed, EVAL_EPISODES)).generate_state(ev["steps"] + 1)
        for k in range(ev["steps"] + 1):
            obs, info = env.reset(seed=int(seeds[k]))
            total = 0.0
            for _ in range(family.horizon):
                with torch.no_grad():
                    act = policy.mode(params, torch.as_tensor(np.asarray(obs, dtype=np.float32)))
                a = act.numpy()
                if isinstance(family.action_space, gym.spaces.Box):
                    a = to_env_action(a, family.action_space.low, family.action_space.high,
                                      cfg["env"]["normalize_actions"])
                obs, reward, terminated, truncated, info = env.step(a)
                total += float(reward)
                video.add(env.render(), [f"MAML-RL after {k} step{'s' if k != 1 else ''}",
                                         f"task {info.get('task', '?')}", f"return {total:.1f}"])
                if terminated or truncated:
                    break
            if k < ev["steps"]:
                episodes = sample_episodes(family.envs, policy, params, task, ev["episodes"], family.horizon,
                                           int(seeds[k]), normalize_actions=cfg["env"]["normalize_actions"])
                adv = episode_advantages(episodes, s)
                step = policy_gradient_step(policy, params, episodes, adv, rates if k == 0 else later, True)
                params = {name: v[0].detach() for name, v in step.items()}
        video.close()
        env.close()
    finally:
        family.close()
    return path


# -- the job ----------------------------------------------------------------------------------------------------
def train(cfg: dict[str, Any], run_dir: Path, reporter: Reporter, resume: bool = False,
          video: bool = False) -> Path:
    """Meta-train, train the baselines, evaluate and report into ``run_dir``; returns ``model.pt``."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        dump_config(cfg, run_dir / "config.yaml")
    obs_dim = check(cfg)  # one line now rather than after meta-training
    if cfg["policy"]["checkpoint"]:
        results = load_policies(cfg["policy"]["checkpoint"], obs_dim, cfg["env"]["id"])
    else:
        results = _fit(cfg, run_dir, reporter, resume)
    out = run_dir / "model.pt"
    save_policies(out, cfg, results, obs_dim)
    summary = evaluate(cfg, results, reporter)
    write_json(run_dir / "summary.json", summary)
    from metadapt.experiments.reporting.rl_report import write_rl_report

    if video:
        reporter.log(f"video: {write_adaptation_video(cfg, results, run_dir / 'adaptation.mp4')}")
    write_rl_report(run_dir)
    return out


def check(cfg: dict[str, Any]) -> int:
    """Everything ``train`` would refuse before training: the task family (its vector env built once), the oracle's
    observation, and ``policy.checkpoint`` (loaded and matched to the observation size). Returns the observation
    size."""
    family = TaskFamily(cfg)
    obs_dim = family.obs_dim
    build_policy(cfg, obs_dim, family.action_space)
    family.close()
    if cfg["baselines"]["oracle"]:
        TaskFamily(cfg, oracle=True).close()
    if cfg["policy"]["checkpoint"]:
        load_policies(cfg["policy"]["checkpoint"], obs_dim, cfg["env"]["id"])
    return obs_dim


def report_run(run_dir: Path) -> Path:
    from metadapt.experiments.reporting.rl_report import write_rl_report

    return write_rl_report(run_dir)
