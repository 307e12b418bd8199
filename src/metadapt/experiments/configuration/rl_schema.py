"""The config schema of model-free meta-RL (``system: rl``): MAML-RL with a TRPO or PPO outer step.

Defaults are the original's 2D navigation run (Finn et al. 2017, Sec. 5.3 and
Appendix A.2: 100-100 ReLU policy, inner rate 0.1, one inner step, 20 episodes
per task, meta-batch 20, TRPO with a KL bound of 0.01).
"""

from __future__ import annotations

from typing import Any

from metadapt.errors import ConfigError
from metadapt.experiments.configuration.schema import Field

RL_SCHEMA: dict[str, Any] = {
    "name": Field("str", "maml_rl", doc="run name, used for the run directory"),
    "seed": Field("int", 0, low=0, doc="seeds initialisation, the task stream, the episodes and the held-out tasks"),
    "device": Field("str", "cpu", choices=("cpu", "cuda")),
    "threads": Field("int", None, low=1, nullable=True, doc="torch threads (null: PyTorch's default)"),
    "env": {
        "id": Field("str", "metadapt/PointNav-v0", doc="a task family: a registered metadapt environment id"),
        "kwargs": Field("mapping", {}, doc="keyword arguments for gym.make"),
        "horizon": Field("int", None, low=1, nullable=True, doc="steps per episode (null: the id's time limit)"),
        "vector": Field("str", "auto", choices=("auto", "sync", "async"),
                        doc="auto: the env's own batched vector env when it has one, else sync; "
                            "sync/async: gymnasium.vector over gym.make"),
        "normalize_actions": Field("bool", True, doc="the policy acts in [-1, 1], mapped onto the action bounds "
                                                      "(rllab's normalize, as in the original)"),
        "num_envs": Field("int", None, low=1, nullable=True,
                          doc="sub-environments (null: meta_batch x episodes for a batched env, else episodes)"),
    },
    "policy": {
        "hidden": Field("ints", [100, 100], doc="hidden widths"),
        "activation": Field("str", "relu", choices=("relu", "tanh", "silu", "elu", "gelu")),
        "init_std": Field("float", 1.0, low=0, low_open=True, doc="Gaussian policies: initial action std"),
        "checkpoint": Field("str", None, nullable=True,
                            doc="a run's model.pt (or its directory) to evaluate instead of training"),
    },
    "meta": {
        "inner_lr": Field("float", 0.1, low=0, low_open=True, doc="inner policy-gradient step size (alpha)"),
        "inner_steps": Field("int", 1, low=1, doc="inner steps in meta-training (each on fresh episodes)"),
        "first_order": Field("bool", False, doc="first-order MAML (no second derivatives through the inner step)"),
        "learn_inner_lr": Field("bool", False, doc="learn one inner rate per parameter entry (Meta-SGD)"),
        "meta_batch": Field("int", 20, low=1, doc="tasks per meta-iteration"),
        "episodes": Field("int", 20, low=1, doc="episodes per task and inner step"),
        "iterations": Field("int", 100, low=1, doc="meta-iterations"),
        "gamma": Field("float", 0.99, low=0, high=1, low_open=True),
        "gae_lambda": Field("float", 1.0, low=0, high=1),
        "outer": Field("str", "trpo", choices=("trpo", "ppo"), doc="the outer step"),
        "max_kl": Field("float", 0.01, low=0, low_open=True, doc="trpo: KL bound of the outer step"),
        "cg_iterations": Field("int", 10, low=1, doc="trpo: conjugate-gradient iterations"),
        "cg_damping": Field("float", 1e-5, low=0, doc="trpo: damping added to the Fisher-vector products"),
        "backtrack_ratio": Field("float", 0.8, low=0, high=1, low_open=True, high_open=True,
                                 doc="trpo: line-search shrink factor (rllab's 0.8)"),
        "max_backtracks": Field("int", 15, low=1, doc="trpo: line-search steps before the update is skipped"),
        "ppo_clip": Field("float", 0.2, low=0, low_open=True, doc="ppo: ratio clip"),
        "ppo_epochs": Field("int", 5, low=1, doc="ppo: Adam epochs per meta-iteration"),
        "ppo_lr": Field("float", 1e-3, low=0, low_open=True, doc="ppo: Adam's rate"),
    },
    "baselines": {
        "pretrained": Field("bool", True, doc="a policy trained on all tasks (no inner step), then fine-tuned"),
        "oracle": Field("bool", True, doc="a policy trained with the task in its observation (task_in_obs)"),
        "random": Field("bool", True, doc="a randomly initialised policy fine-tuned the same way"),
        "iterations": Field("int", None, low=1, nullable=True, doc="their iterations (null: meta.iterations)"),
    },
    "train": {
        "checkpoint_every": Field("int", 10, low=1, doc="iterations between resumable checkpoints"),
    },
    "eval": {
        "tasks": Field("int", 40, low=1, doc="held-out tasks (the original: 40)"),
        "steps": Field("int", 3, low=0, doc="inner steps evaluated: returns after 0 .. steps"),
        "episodes": Field("int", 20, low=1, doc="episodes per task and step"),
        "later_lr_scale": Field("float", 1.0, low=0, low_open=True,
                                doc="rate of the 2nd and later steps relative to the first (the original's test "
                                    "scripts: 0.5)"),
        "pretrained_lr": Field("float", None, low=0, low_open=True, nullable=True,
                               doc="first-step rate of the pretrained policy (null: meta.inner_lr; the original's "
                                   "cheetah test tuned it per baseline)"),
        "random_lr": Field("float", None, low=0, low_open=True, nullable=True,
                           doc="first-step rate of the random initialisation (null: meta.inner_lr)"),
        "oracle_lr": Field("float", None, low=0, low_open=True, nullable=True,
                           doc="first-step rate of the oracle (null: meta.inner_lr)"),
        "curve_every": Field("int", None, low=1, nullable=True,
                             doc="meta-iterations between held-out evaluations while training (heldout.csv: "
                                 "return after 0 .. curve_steps steps against environment steps; null: none)"),
        "curve_tasks": Field("int", 10, low=1, doc="held-out tasks of each curve point (the first of eval's)"),
        "curve_steps": Field("int", 1, low=0, doc="inner steps of each curve point"),
    },
}


FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: policies and their rates are float32


def check_rl(cfg: dict[str, Any]) -> None:
    """Checks across keys of a resolved ``system: rl`` config."""
    m, ev = cfg["meta"], cfg["eval"]
    # A rate beyond float32 is inf in the step, which then gives every task NaN parameters: no result can come of
    # it. A large but finite rate can diverge too; that is a result (the evaluation reports the diverged tasks).
    firsts = {"meta.inner_lr": m["inner_lr"],
              **{f"eval.{k}_lr": ev[f"{k}_lr"] for k in ("pretrained", "random", "oracle") if ev[f"{k}_lr"]}}
    if m["outer"] == "ppo" and m["ppo_lr"] * 10 > FLOAT32_MAX:  # Adam's first step: lr / (1 - beta1), beta1 0.9
        raise ConfigError(f"config key 'meta.ppo_lr': {m['ppo_lr']:g} makes Adam's first step (10 x the rate) "
                          f"overflow float32 (allowed: up to {FLOAT32_MAX / 10:.3g})")
    for key, rate in firsts.items():
        if rate > FLOAT32_MAX:
            raise ConfigError(f"config key '{key}': {rate:g} is beyond float32's range, in which policies step "
                              f"(allowed: up to {FLOAT32_MAX:.3g})")
        if ev["steps"] >= 2 and rate * ev["later_lr_scale"] > FLOAT32_MAX:
            raise ConfigError(f"config key 'eval.later_lr_scale': the later steps' rate {key} x eval.later_lr_scale "
                              f"= {rate * ev['later_lr_scale']:g} is beyond float32's range, in which policies step "
                              f"(allowed: a product up to {FLOAT32_MAX:.3g})")
    kwargs = cfg["env"]["kwargs"]
    if "task_in_obs" in kwargs:
        raise ConfigError("config key 'env.kwargs.task_in_obs': the oracle baseline sets it itself "
                          "(allowed: leave it out; baselines.oracle=true trains the oracle)")
    if "schedule" in kwargs or "task_sampler" in kwargs:
        raise ConfigError("config key 'env.kwargs': meta-RL gives every episode its task itself "
                          "(allowed: no schedule or task_sampler)")
