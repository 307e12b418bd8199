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
randomly initialised one and the oracle, with the same tasks and seeds. For
robots with a posture (the cheetahs, the ant) each step also records the share
of the episodes' steps the robot spent on its back (``upside_down``, over the
tasks that have not diverged): a return earned running on the back is a
return, but not a gait anyone wants. Meta-training records the same share of
each iteration's sampled steps (after the inner step) in ``metrics.csv``, with
the Gaussian policy's mean action standard deviation (``action_std``): a run
stuck on its back, or one whose exploration collapsed, shows there while it
trains, not only in the final evaluation.

No policy acts with non-finite parameters. In meta-training, an iteration whose
inner step or outer step gives a NaN or an infinity (in the adapted parameters,
the sampled episodes, the outer step's numbers or the updated policy) is
refused: the policy stays as it was, the row of ``metrics.csv`` says
``refused``, and ``REFUSED_IN_A_ROW`` refusals in a row stop the run in one
line. In evaluation, a held-out task whose adaptation diverges is sampled no
more with its parameters (a placeholder policy keeps the other tasks' episodes
and seeds as they were) and is recorded as diverged from that step on: its
returns are ``null`` and a step's mean over tasks is ``null`` with the count
of diverged tasks (``nonfinite``), as in the supervised system's summary.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import numbers
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch

from metadapt.adapt.base import params_are_finite
from metadapt.envs import make_env, registered_id
from metadapt.errors import CheckpointError, ConfigError, MetadaptError
from metadapt.experiments.configuration.config import dump_config
from metadapt.experiments.configuration.files import write_json
from metadapt.experiments.configuration.resources import FLOAT, Need, check_memory, mlp_param_count
from metadapt.experiments.jobs import derive_seed
from metadapt.experiments.jobs.supervised import summarize
from metadapt.experiments.reporting.progress import Reporter
from metadapt.meta.checkpoint import check_finite, load_checkpoint, save_atomic
from metadapt.meta.inner import Rates, stack_params
from metadapt.models.base import check_params
from metadapt.models.policy import LOG_STD, CategoricalMLPPolicy, GaussianMLPPolicy, Policy
from metadapt.rl.maml_rl import (
    MAMLRL,
    MAMLRLSettings,
    episode_advantages,
    evaluate_adaptation,
    policy_gradient_step,
    scale_rates,
)
from metadapt.rl.sampler import Episodes, make_vector_env, sample_episodes, sample_tasks, to_env_action
from metadapt.types import UPSIDE_DOWN, Params

STATE_FORMAT = "metadapt.rl_state.v1"
MODEL_FORMAT = "metadapt.rl_policies.v1"
TRAINED = ("maml", "pretrained", "oracle")  # the stages whose policies model.pt holds
# ``refused``: 1 on an iteration whose step was refused for a NaN or an infinity (its numbers are then NaN)
# ``upside_down`` and ``action_std`` are empty where the robot has no posture or the policy is categorical (and
# in the rows of runs checkpointed before they were recorded); a refused iteration's ``upside_down`` is NaN like
# its other numbers, its ``action_std`` the kept policy's
METRICS = ("stage", "iteration", "return_pre", "return_post", "kl", "loss_before", "loss_after", "step_fraction",
           "env_steps", "refused", "sample_s", "update_s", "upside_down", "action_std")
# Refused meta-iterations in a row that stop a stage: each draws new tasks and episodes from an unchanged policy,
# so one refusal can be a rare batch, while this many say the settings themselves diverge.
REFUSED_IN_A_ROW = 5
CURVE = ("stage", "iteration", "env_steps")  # then return_<k> and ci95_<k> for k = 0 .. eval.curve_steps
INIT, TASKS, EPISODES, EVAL_TASKS, EVAL_EPISODES, RANDOM_INIT = range(6)


# -- environments and policies ----------------------------------------------------------------------------------
class TaskFamily:
    """One task family's vector env, a probe env for its task distributions, and the episode horizon.

    The memory the config needs (``memory_needs``) is checked after the probe (one environment, which gives the
    sizes) and before the vector env is built. ``num_envs`` overrides the vector env's size (``check`` builds one
    sub-environment: enough to know the env vectorises, without building the run's hundreds).
    """

    def __init__(self, cfg: dict[str, Any], oracle: bool = False, num_envs: int | None = None) -> None:
        e, m = cfg["env"], cfg["meta"]
        kwargs = {**e["kwargs"], **({"task_in_obs": True} if oracle else {})}
        try:
            self.probe = make_env(e["id"], **kwargs)
        except MetadaptError as exc:
            if not oracle:
                raise
            raise ConfigError(f"config key 'baselines.oracle': {e['id']} cannot show its task in the observation "
                              f"({exc}) (allowed: false for this environment)") from None
        try:
            if not hasattr(self.probe.unwrapped, "sample_train_task"):
                raise ConfigError(f"config key 'env.id': {e['id']} is not a task family (it has no task "
                                  "distribution)")
            gym_id = registered_id(e["id"])  # module:id -> the id its module registered
            spec = gym.spec(gym_id)
            horizon = e["horizon"] or spec.max_episode_steps
            if horizon is None:
                raise ConfigError(f"config key 'env.horizon': {e['id']} has no time limit, set the horizon")
            self.horizon = int(horizon)
            self.native = e["vector"] == "auto" and spec.vector_entry_point is not None
            self.num_envs = e["num_envs"] or (m["meta_batch"] * m["episodes"] if self.native else m["episodes"])
            self.obs_dim = int(np.prod(self.probe.observation_space.shape))
            self.action_space = self.probe.action_space
            self.period = control_period(self.probe)
            check_memory(memory_needs(cfg, self), cfg["device"])
            try:
                self.envs = make_vector_env(gym_id, num_envs or self.num_envs, e["vector"], kwargs)
            except (TypeError, ValueError, gym.error.Error) as exc:
                raise ConfigError(f"config key 'env': {e['id']} cannot be vectorised ({exc})") from exc
        except BaseException:
            self.probe.close()
            raise
        # what the policy acts on: the vector env's spaces (the probe's, for every registered family)
        self.obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        self.action_space = self.envs.single_action_space

    def env_bytes(self) -> int:
        """At least the memory of one sub-environment: a MuJoCo environment's model and data (each sub-environment
        of a Gymnasium vector env holds its own), or a batched environment's row of observation and action."""
        base = self.probe.unwrapped
        model, data = getattr(base, "model", None), getattr(base, "data", None)
        if not self.native and hasattr(model, "nbuffer") and hasattr(data, "nbuffer"):
            # narena: the stack and arena every MjData allocates beside its buffer (megabytes, most of its size)
            return int(model.nbuffer) + int(data.nbuffer) + int(getattr(data, "narena", 0))
        return FLOAT * (self.obs_dim + _act_size(self.action_space))

    def close(self) -> None:
        self.envs.close()
        self.probe.close()


def _act_size(space: gym.Space) -> int:
    """Floats per action of ``space`` (a discrete action: one index)."""
    return 1 if isinstance(space, gym.spaces.Discrete) else int(np.prod(space.shape))


def memory_needs(cfg: dict[str, Any], family: TaskFamily) -> list[Need]:
    """The least memory a meta-RL run needs (a lower bound, what must exist at once): the policy with its outer
    step's state, one adapted copy of it per task of a meta-batch (per inner step) and per held-out task, the
    episodes a meta-iteration and an evaluation step sample (``tasks x episodes x horizon`` steps of observation,
    action, reward, mask and advantage), the policy's activations over a meta-iteration's episodes, and the
    sub-environments of the vector env."""
    p, m, ev = cfg["policy"], cfg["meta"], cfg["eval"]
    obs, act = family.obs_dim, _act_size(family.action_space)
    discrete = isinstance(family.action_space, gym.spaces.Discrete)
    out = int(family.action_space.n) if discrete else act
    params = mlp_param_count([obs, *p["hidden"], out]) + (0 if discrete else act)  # + the Gaussian's log_std
    step = FLOAT * (obs + act + 3)  # one step of one episode: observation, action, reward, mask, advantage
    rates = 2 if m["learn_inner_lr"] else 1  # Meta-SGD: a learned rate per parameter entry, stepped like it
    # TRPO: the gradient and the conjugate-gradient vectors; PPO: Adam's two moments; both beside the policy
    return [
        Need("the policy with its gradients and outer-step state", "policy.hidden", 4 * FLOAT * params * rates),
        Need("one adapted copy of the policy per task and inner step of a meta-batch",
             "meta.meta_batch, meta.inner_steps or policy.hidden",
             FLOAT * params * m["meta_batch"] * max(1, m["inner_steps"])),
        Need("one adapted copy of the policy per held-out task", "eval.tasks or policy.hidden",
             FLOAT * params * ev["tasks"]),
        Need("the episodes of a meta-iteration", "meta.meta_batch, meta.episodes, meta.inner_steps or env.horizon",
             step * m["meta_batch"] * m["episodes"] * family.horizon * (m["inner_steps"] + 1)),
        Need("the episodes of an evaluation step", "eval.tasks, eval.episodes or env.horizon",
             step * ev["tasks"] * ev["episodes"] * family.horizon),
        Need("the policy's activations over a meta-iteration's episodes",
             "meta.meta_batch, meta.episodes, env.horizon or policy.hidden",
             FLOAT * m["meta_batch"] * m["episodes"] * family.horizon * sum(p["hidden"])),
        Need("the sub-environments", "env.num_envs" if cfg["env"]["num_envs"]
             else "meta.meta_batch or meta.episodes" if family.native else "meta.episodes",
             family.num_envs * family.env_bytes(), gpu=False),
    ]


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


def _action_std(learner: MAMLRL) -> float | None:
    """The mean over action dimensions of the Gaussian policy's ``exp(log_std)`` (``None`` for a categorical)."""
    log_std = learner.params.get(LOG_STD)
    return None if log_std is None else float(log_std.detach().exp().mean())


def _plain_rates(rates: Rates) -> Any:
    return _cpu(rates) if isinstance(rates, dict) else float(rates)


def _rates_are_finite(rates: Rates) -> bool:
    """Whether the inner rates (a scalar or, learned, one tensor per parameter) are finite."""
    return params_are_finite(rates) if isinstance(rates, dict) else math.isfinite(float(rates))


class Period(NamedTuple):
    """An env's control period ``dt`` (seconds per action; ``None`` for an env without one) and ``unrecorded``,
    the period a policy file that recorded none was trained at (``None``: unknown, such files are not checked)."""

    dt: float | None
    unrecorded: float | None = None


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None


def control_period(env: gym.Env) -> Period:
    """``env``'s ``Period``: its ``dt`` and, for an env whose default period changed, its ``UNRECORDED_DT``."""
    base = env.unwrapped
    return Period(_seconds(getattr(base, "dt", None)), _seconds(getattr(base, "UNRECORDED_DT", None)))


def _check_period(saved: Any, period: Period | None, source: str, env_id: str, hint: str) -> None:
    """Refuse policies trained at another control period than ``env_id`` steps now (a changed default or
    ``env.kwargs``): they would act at a rate they never saw. A file without a recorded period is taken to be at
    the env's ``unrecorded`` period, and passes when that is unknown."""
    if period is None or period.dt is None:
        return
    if saved is None:
        saved = period.unrecorded
        if saved is None:
            return
    seconds = _seconds(saved)
    if seconds is None or not math.isclose(seconds, period.dt, rel_tol=1e-9):
        shown = f"{seconds:g}" if seconds is not None else repr(saved)
        raise CheckpointError(f"{source} was trained with {env_id} stepping {shown} s per action, it now steps "
                              f"{period.dt:g} s ({hint})")


def _check_finite_policy(params: Params, rates: Any, what: str, source: str) -> None:
    """Refuse ``source`` in one line when a trained policy's parameters or inner rates hold a NaN or an infinity
    (``what``: whose, e.g. "maml policy's")."""
    check_finite(params, f"{what} parameters", source)
    if isinstance(rates, dict):
        check_finite(rates, f"{what} inner rates", source)
    elif isinstance(rates, bool) or not isinstance(rates, int | float) or not math.isfinite(rates):
        raise CheckpointError(f"{source}: the {what} inner rate is {rates!r}, not a finite number")


def _write_metrics(rows: list[dict[str, Any]], path: Path, fields: tuple[str, ...] = METRICS) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _save_state(run_dir: Path, cfg: dict[str, Any], stage: str, iteration: int, learner: dict[str, Any] | None,
                rows: list[dict[str, Any]], results: dict[str, dict[str, Any]], curve: list[dict[str, Any]],
                period: Period) -> None:
    save_atomic({"format": STATE_FORMAT, "config": json.dumps(cfg, sort_keys=True), "env_dt": period.dt,
                 "stage": stage, "iteration": iteration, "learner": learner, "metrics": list(rows), "results": results,
                 "curve": list(curve)}, run_dir / "checkpoints" / "state.pt")
    _write_metrics(rows, run_dir / "metrics.csv")
    if curve:
        k = cfg["eval"]["curve_steps"]
        _write_metrics(curve, run_dir / "heldout.csv",
                       CURVE + tuple(f"{p}_{i}" for i in range(k + 1) for p in ("return", "ci95")))


def _load_state(run_dir: Path, cfg: dict[str, Any], period: Period) -> dict[str, Any] | None:
    path = run_dir / "checkpoints" / "state.pt"
    if not path.is_file():
        return None  # killed before the first checkpoint: start over
    state = load_checkpoint(path, ("format", "config", "stage", "iteration", "learner", "metrics", "results"))
    if state["format"] != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a meta-RL checkpoint (format {state['format']!r})")
    if json.loads(state["config"]) != json.loads(json.dumps(cfg, sort_keys=True)):
        raise CheckpointError(f"{run_dir}/config.yaml differs from the run's checkpoint: resume continues the same "
                              "run (start a new run to change it)")
    _check_period(state.get("env_dt"), period, str(path), cfg["env"]["id"],
                  "resume continues a run at its own period: start a new run")
    # training never saves a non-finite policy, so one here is a damaged file: refused before it acts
    try:
        trained = dict(state["results"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is incomplete: its results are not a mapping ({exc})") from exc
    if state["learner"] is not None:
        trained[f"{state['stage']} stage's current"] = state["learner"]
    try:
        for name, result in trained.items():
            _check_finite_policy(result["params"], result["rates"], f"{name} policy's", str(path))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} is incomplete: {exc}") from exc
    return state


class _Diverged(Exception):
    """A meta-iteration met a NaN or an infinity: ``what`` names where, ``lower`` the keys that would avoid it."""

    def __init__(self, what: str, lower: str) -> None:
        super().__init__(what)
        self.what, self.lower = what, lower


def _episodes_are_finite(episodes: Episodes) -> bool:
    """Whether every observation, action and reward sampled is finite (a policy with finite but huge parameters
    can still act with NaN, and an environment given NaN may answer with it)."""
    return all(bool(torch.isfinite(t.float()).all()) for t in (episodes.obs, episodes.act, episodes.reward))


def _refused_in_a_row(rows: list[dict[str, Any]], stage: str) -> int:
    """How many of ``stage``'s last rows were refused iterations (a resumed stage goes on counting)."""
    n = 0
    for row in reversed(rows):
        if row["stage"] != stage or not int(row.get("refused") or 0):
            break
        n += 1
    return n


def _fit(cfg: dict[str, Any], run_dir: Path, reporter: Reporter, resume: bool,
         period: Period) -> dict[str, dict[str, Any]]:
    """Train every stage; returns ``{stage: {"params", "rates"}}`` (CPU tensors). ``period``: the env's control
    period, recorded in the checkpoints and checked on resume."""
    seed, device = cfg["seed"], torch.device(cfg["device"])
    stages = _stages(cfg)
    names = [s for s, _ in stages] + ["done"]
    state = _load_state(run_dir, cfg, period) if resume else None
    rows: list[dict[str, Any]] = list(state["metrics"]) if state else []
    results: dict[str, dict[str, Any]] = dict(state["results"]) if state else {}
    curve: list[dict[str, Any]] = list(state.get("curve", [])) if state else []
    every = cfg["eval"]["curve_every"]
    first = names.index(state["stage"]) if state is not None else 0
    m, ckpt = cfg["meta"], cfg["train"]["checkpoint_every"]
    outer_keys = "meta.max_kl" if m["outer"] == "trpo" else "meta.ppo_lr"  # what a diverging outer step lowers
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
            sampled = [0]  # environment steps sampled this iteration, refused or not

            def sample(params: Params, tasks: Any, s: int, fam: TaskFamily = family, pol: Policy = policy,
                       count: list[int] = sampled) -> Any:
                if not params_are_finite(params):  # only an adapted policy can be: theta is kept finite
                    raise _Diverged("the inner step gave non-finite adapted parameters", "meta.inner_lr")
                episodes = sample_episodes(fam.envs, pol, params, tasks, m["episodes"], fam.horizon, s,
                                           normalize_actions=cfg["env"]["normalize_actions"],
                                           info_keys=(UPSIDE_DOWN,))
                count[0] += episodes.steps()
                if not _episodes_are_finite(episodes):  # adapted (stacked) parameters, or theta itself
                    raise _Diverged("the sampled episodes hold non-finite values",
                                    "meta.inner_lr" if params["layers.0.weight"].dim() == 3 else outer_keys)
                return episodes

            in_a_row = _refused_in_a_row(rows, stage)
            reporter.start(stage, {"maml": "MAML-RL", "pretrained": "pretrained (all tasks)",
                                   "oracle": "oracle (task observed)"}[stage], total)
            reporter.advance(stage, start)
            timing = {"sample_s": 0.0, "update_s": 0.0}
            if every and start == 0:  # a resumed stage saved its point at ``start`` with its checkpoint
                curve.append(_curve_point(cfg, family, policy, learner, stage, 0, env_steps))
            for it in range(start, total):
                rng = np.random.default_rng(derive_seed(seed, TASKS, index, it))
                tasks = sample_tasks(family.probe, m["meta_batch"], rng, "train")
                # the last good policy (with PPO's Adam moments, which the step changes in place: a deep copy)
                good = copy.deepcopy(learner.state_dict())
                sampled[0] = 0
                refusal: _Diverged | None = None
                t0, t1 = time.perf_counter(), None
                try:
                    rollouts = learner.sample(sample, tasks, derive_seed(seed, EPISODES, index, it))
                    t1 = time.perf_counter()
                    info = learner.outer_step(rollouts)
                    if not (all(math.isfinite(v) for v in info.values()) and params_are_finite(learner.params)
                            and _rates_are_finite(learner.rates)):
                        raise _Diverged("the outer step gave non-finite numbers", outer_keys)
                except _Diverged as exc:
                    learner.load_state_dict(good)
                    refusal = exc
                t2 = time.perf_counter()
                t1 = t2 if t1 is None else t1  # refused while sampling: all of it was sampling
                env_steps += sampled[0]
                timing["sample_s"] += t1 - t0
                timing["update_s"] += t2 - t1
                if refusal is None:
                    pre = rollouts.inner[0] if rollouts.inner else rollouts.post
                    numbers = {"return_pre": pre.mean_return(), "return_post": rollouts.post.mean_return(), **info,
                               "upside_down": rollouts.post.info_mean(UPSIDE_DOWN), "action_std": _action_std(learner)}
                else:
                    numbers = {**dict.fromkeys(("return_pre", "return_post", "kl", "loss_before", "loss_after",
                                                "upside_down"), math.nan), "step_fraction": 0.0,
                               "action_std": _action_std(learner)}  # the policy kept
                rows.append({"stage": stage, "iteration": it + 1, **numbers, "env_steps": env_steps,
                             "refused": int(refusal is not None), "sample_s": round(t1 - t0, 4),
                             "update_s": round(t2 - t1, 4)})
                in_a_row = 0 if refusal is None else in_a_row + 1
                if refusal is not None:
                    if in_a_row >= REFUSED_IN_A_ROW:
                        _write_metrics(rows, run_dir / "metrics.csv")  # what was refused, for the one who looks
                        raise MetadaptError(f"{stage} training diverged: {in_a_row} meta-iterations in a row up to "
                                            f"iteration {it + 1} were refused ({refusal.what}): lower "
                                            f"{refusal.lower}")
                    reporter.log(f"{stage} iteration {it + 1} refused: {refusal.what}; the policy stays as it was")
                reporter.advance(stage, 1, ret=rows[-1]["return_post"])
                if every and ((it + 1) % every == 0 or it + 1 == total):  # before the checkpoint that saves it
                    curve.append(_curve_point(cfg, family, policy, learner, stage, it + 1, env_steps))
                if (it + 1) % ckpt == 0 and it + 1 < total:
                    _save_state(run_dir, cfg, stage, it + 1, learner.state_dict(), rows, results, curve, period)
            results[stage] = {"params": _cpu(learner.params), "rates": _plain_rates(learner.rates)}
            _record_time(run_dir, stage, total - start, timing)
            _save_state(run_dir, cfg, names[index + 1], 0, None, rows, results, curve, period)
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
    sampler = _GuardedSampler(cfg, family, policy)
    returns = sampler.mark(evaluate_adaptation(policy, learner.params, rates, settings(cfg), sampler, tasks,
                                               ev["curve_steps"], derive_seed(cfg["seed"], EVAL_EPISODES),
                                               ev["later_lr_scale"]))
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
def save_policies(path: Path, cfg: dict[str, Any], results: dict[str, dict[str, Any]], obs_dim: int,
                  dt: float | None = None) -> None:
    """The trained policies, the observation size and control period ``dt`` (seconds per action) they act at."""
    save_atomic({"format": MODEL_FORMAT, "env_id": cfg["env"]["id"], "obs_dim": obs_dim, "env_dt": dt,
                 "policy": cfg["policy"], "methods": results}, path)


def load_policies(path: str | Path, policy: Policy, env_id: str, oracle: Callable[[], Policy] | None = None,
                  period: Period | None = None) -> dict[str, dict[str, Any]]:
    """The trained policies of a run (``model.pt`` or its directory): ``{method: {"params", "rates"}}``.

    Refused in one line (``CheckpointError`` naming the file) when they do not fit ``env_id``'s observation size
    or were trained at another control period than ``period`` (unchecked when ``None``),
    when ``methods`` is not a mapping of trained policies, or when a policy's parameters do not match ``policy``
    (the oracle's: ``oracle()``, built only when the file holds one; without ``oracle`` its sizes go unchecked)
    or hold a NaN or an infinity.
    """
    p = Path(path)
    p = p / "model.pt" if p.is_dir() else p
    state = load_checkpoint(p, ("format", "methods", "obs_dim"))
    if state["format"] != MODEL_FORMAT:
        raise CheckpointError(f"{p} is not a meta-RL policy file (format {state['format']!r})")
    if state["obs_dim"] != policy.obs_dim:
        raise CheckpointError(f"{p} holds policies for observation size {state['obs_dim']!r}, {env_id} has "
                              f"{policy.obs_dim}")
    _check_period(state.get("env_dt"), period, str(p), env_id,
                  "set env.kwargs, e.g. a MuJoCo env's frame_skip, to the period it was trained at")
    methods = state["methods"]
    if not isinstance(methods, dict) or not methods:
        found = "an empty mapping" if isinstance(methods, dict) else f"a {type(methods).__name__}"
        raise CheckpointError(f"{p}: its methods are {found}, not a mapping of trained policies "
                              f"({', '.join(TRAINED)})")
    for name, trained in methods.items():
        if name not in TRAINED:
            raise CheckpointError(f"{p} holds a policy named {name!r} (known: {', '.join(TRAINED)})")
        if not isinstance(trained, dict) or not isinstance(trained.get("params"), dict) or "rates" not in trained:
            raise CheckpointError(f"{p}: its {name} policy is not a mapping of parameters and inner rates")
        expected = policy if name != "oracle" else oracle() if oracle is not None else None
        for what, tensors in (("parameters", trained["params"]), ("inner rates", trained["rates"])):
            if not isinstance(tensors, dict):
                continue  # one scalar rate: _check_finite_policy checks it
            if not all(isinstance(v, torch.Tensor) and v.is_floating_point() for v in tensors.values()):
                raise CheckpointError(f"{p}: its {name} policy's {what} are not all floating-point tensors")
            try:
                if expected is not None:
                    check_params(expected, tensors, f"{p}'s {name} policy's {what}")
            except ValueError as exc:
                raise CheckpointError(str(exc)) from None
        _check_finite_policy(trained["params"], trained["rates"], f"{name} policy's", str(p))
    return methods


# -- evaluation -------------------------------------------------------------------------------------------------
def _interval(values: np.ndarray) -> dict[str, Any]:
    """Mean and 95% half-width of per-task returns, both ``None`` when a task diverged (counted in
    ``nonfinite``); one task has a half-width of 0."""
    out = summarize(torch.as_tensor(values))
    if len(values) == 1 and out["mean"] is not None:
        out["ci95"] = 0.0
    return out


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


class _GuardedSampler:
    """``sample(params, tasks, seed)``: ``eval.episodes`` episodes of each task, never acting with a diverged policy.

    One per evaluation (``evaluate_adaptation`` calls it once per step, in order). A task diverges at the step
    whose parameters are not finite, or whose episodes hold a NaN or an infinity, and stays diverged: from then on
    it acts with a placeholder (zero parameters) so that the other tasks keep the episodes and seeds they would
    have had, its episodes are zeroed (a NaN in one task would otherwise reach every task's baseline fit), and
    ``mark`` turns its returns into NaN.
    """

    def __init__(self, cfg: dict[str, Any], family: TaskFamily, policy: Policy) -> None:
        self.cfg, self.family, self.policy = cfg, family, policy
        self.diverged: list[torch.Tensor] = []  # per call: ``B`` bools
        self.upside_down: list[float | None] = []  # per call: the share of steps the robot was on its back

    def __call__(self, params: Params, tasks: list[Any], seed: int) -> Episodes:
        n = len(tasks)
        # one policy for every task at step 0: stacked for the per-task check only (it acts unstacked, as before)
        stacked = stack_params(params, n) if params["layers.0.weight"].dim() == 2 else params
        # per task, as params_are_finite does: a sum is not finite when an entry is not
        bad = ~torch.isfinite(sum(v.detach().reshape(n, -1).sum(1) for v in stacked.values())).cpu()
        if self.diverged:
            bad |= self.diverged[-1]
        if bool(bad.any()):
            params = {k: v.detach().clone() for k, v in stacked.items()}
            for v in params.values():
                v[bad.to(v.device)] = 0.0
        ep = sample_episodes(self.family.envs, self.policy, params, tasks, self.cfg["eval"]["episodes"],
                             self.family.horizon, seed, normalize_actions=self.cfg["env"]["normalize_actions"],
                             info_keys=(UPSIDE_DOWN,))
        unfinished = torch.stack([~torch.isfinite(t.float()).reshape(n, -1).all(1).cpu()
                                  for t in (ep.obs, ep.act, ep.reward)]).any(0)
        bad |= unfinished
        if bool(unfinished.any()):
            ep = Episodes(*(torch.where(_rows(bad, t).to(t.device), torch.zeros_like(t), t)
                            for t in (ep.obs, ep.act, ep.reward)), ep.mask, ep.tasks, ep.info)
        self.diverged.append(bad)
        self.upside_down.append(ep.info_mean(UPSIDE_DOWN, ~bad.to(ep.mask.device)))
        return ep

    def mark(self, returns: np.ndarray) -> np.ndarray:
        """``(steps + 1) x B`` returns with NaN for each task from the step its adaptation diverged."""
        out = np.array(returns, dtype=np.float64)
        for k, bad in enumerate(self.diverged):
            out[k, bad.numpy()] = np.nan
        return out


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``B`` mask shaped to broadcast over ``like``'s ``B x ...``."""
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


def _evaluate_one(cfg: dict[str, Any], family: TaskFamily, policy: Policy, params: Params, rates: Rates,
                  s: MAMLRLSettings, tasks: list[Any], reporter: Reporter, name: str,
                  device: torch.device) -> dict[str, Any]:
    ev = cfg["eval"]
    reporter.log(f"evaluating {name} on {len(tasks)} held-out tasks")
    params = {k: v.to(device) for k, v in params.items()}
    rates = {k: v.to(device) for k, v in rates.items()} if isinstance(rates, dict) else rates
    sampler = _GuardedSampler(cfg, family, policy)
    returns = sampler.mark(evaluate_adaptation(policy, params, rates, s, sampler, tasks, ev["steps"],
                                               derive_seed(cfg["seed"], EVAL_EPISODES), ev["later_lr_scale"]))
    out = {str(k): {**_interval(returns[k]), "per_task": [float(x) for x in returns[k]]}  # NaN: null in JSON
           for k in range(returns.shape[0])}
    for k, share in enumerate(sampler.upside_down):  # robots with a posture: how the return was earned
        if share is not None:
            out[str(k)][UPSIDE_DOWN] = share
    if diverged := [k for k in range(returns.shape[0]) if out[str(k)]["nonfinite"]]:
        reporter.log(f"{name}: the adaptation diverged on {out[str(diverged[-1])]['nonfinite']} of {len(tasks)} "
                     f"held-out tasks from step {diverged[0]} on (reported as diverged)")
    return out


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
                if not params_are_finite(params):
                    break  # the adaptation diverged (the evaluation says so): a diverged policy is not shown acting
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
    obs_dim, period, loaded = _check(cfg)  # one line now rather than after meta-training, before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        dump_config(cfg, run_dir / "config.yaml")
    results = loaded if loaded is not None else _fit(cfg, run_dir, reporter, resume, period)
    out = run_dir / "model.pt"
    save_policies(out, cfg, results, obs_dim, period.dt)
    summary = evaluate(cfg, results, reporter)
    write_json(run_dir / "summary.json", summary)
    from metadapt.experiments.reporting.rl_report import write_rl_report

    if video:
        reporter.log(f"video: {write_adaptation_video(cfg, results, run_dir / 'adaptation.mp4')}")
    write_rl_report(run_dir)
    return out


def check(cfg: dict[str, Any]) -> None:
    """Everything ``train`` would refuse before training: the task family, the memory the config needs, the oracle's
    observation, and ``policy.checkpoint`` (loaded and checked). Builds one sub-environment per family, never the
    run's vector env: a config too large to run is refused in a second, before anything of its size exists."""
    _check(cfg)


def _check(cfg: dict[str, Any]) -> tuple[int, Period, dict[str, dict[str, Any]] | None]:
    """``check``; returns the observation size, the control period and ``policy.checkpoint``'s policies (``None``
    without one)."""
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device' is cuda, but this PyTorch sees no CUDA GPU (allowed: cpu)")

    periods: list[Period] = []

    def policy_of(oracle: bool) -> Policy:
        family = TaskFamily(cfg, oracle=oracle, num_envs=1)
        periods.append(family.period)
        try:
            return build_policy(cfg, family.obs_dim, family.action_space)
        finally:
            family.close()

    policy = policy_of(False)
    oracle: list[Policy] = []  # built once, when the config trains an oracle or the checkpoint holds one

    def oracle_policy() -> Policy:
        if not oracle:
            oracle.append(policy_of(True))
        return oracle[0]

    if cfg["baselines"]["oracle"] and not cfg["policy"]["checkpoint"]:
        oracle_policy()
    loaded = None
    if cfg["policy"]["checkpoint"]:
        loaded = load_policies(cfg["policy"]["checkpoint"], policy, cfg["env"]["id"], oracle_policy, periods[0])
    return policy.obs_dim, periods[0], loaded


def report_run(run_dir: Path) -> Path:
    from metadapt.experiments.reporting.rl_report import write_rl_report

    return write_rl_report(run_dir)
