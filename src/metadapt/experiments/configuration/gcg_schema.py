"""The config schema of lifelong model-based meta-RL from images (``system: gcg``): Meta-GCG, GCG, the oracle.

Defaults are seed 001's Appendix A (Co-Reyes et al.): inner SGD 3 steps at 1e-2, outer Adam 1e-4, meta-batch 8,
batch 32, sequences of 5, training windows of 400 split in halves, online adaptation every 10 steps on the last
10, CEM with 500 sequences, the top 10 %, 4 rounds, horizon 5, over the paper's widths (``model.preset: paper``).
The shipped CPU configs narrow the model and the planner (``model.preset: cpu``); see docs/methods/meta-gcg.md.
"""

from __future__ import annotations

from typing import Any

from metadapt.errors import ConfigError
from metadapt.experiments.configuration.schema import Field

METHODS = ("meta_gcg", "gcg", "gcg_adapt", "oracle")
# The methods that act with parameters adapted on the newest steps (the rest act with theta).
ADAPTING = ("meta_gcg", "gcg_adapt")

GCG_SCHEMA: dict[str, Any] = {
    "name": Field("name", "meta_gcg", doc="run name, used for the run directory"),
    "seed": Field("int", 0, low=0, doc="seeds the maze, the rotations, the model, the planner and the sampling"),
    "device": Field("str", "cpu", choices=("cpu", "cuda")),
    "threads": Field("int", None, low=1, nullable=True, doc="torch threads (null: PyTorch's default)"),
    "method": Field("str", "meta_gcg", choices=METHODS,
                    doc="meta_gcg: meta-trained on windows of the stream, adapted every adapt.every steps; "
                        "gcg: the same model trained on the same stream, never adapted; gcg_adapt: gcg's theta, "
                        "adapted online as meta_gcg adapts (the ablation: adaptation without meta-training); "
                        "oracle: gcg told the rotation (actions un-rotated before the model sees them)"),
    "env": {
        "id": Field("str", "metadapt/RotatingMaze-v0", doc="an image environment with discrete actions"),
        "kwargs": Field("mapping", {"mode": "lifelong"}, doc="keyword arguments for gym.make (mode, frame_stack, "
                                                           "schedule, densities)"),
        "steps": Field("int", 20000, low=1, doc="environment steps of the run (the stream's length)"),
    },
    "model": {
        "preset": Field("str", "cpu", choices=("cpu", "paper"),
                        doc="the widths: paper (Appendix A: encoder 32-64-64-128, ConvGRU 128) or cpu (narrower)"),
        "widths": Field("mapping", {}, doc="overrides of the preset's constructor arguments (hidden: 64, ...)"),
        "reward_low": Field("float", -1.0, doc="the lowest reward bin"),
        "reward_high": Field("float", 1.0, doc="the highest reward bin"),
        "checkpoint": Field("str", None, nullable=True,
                            doc="a gcg run's model.pt (or its directory) to start the stream from"),
    },
    "planner": {
        "samples": Field("int", 500, low=1, doc="CEM sequences per round"),
        "iterations": Field("int", 4, low=1, doc="CEM rounds"),
        "elite_fraction": Field("float", 0.1, low=0, high=1, low_open=True, doc="share of sequences refit to"),
        "horizon": Field("int", 5, low=1, doc="MPC horizon"),
        "smoothing": Field("float", 0.0, low=0, high=1, high_open=True,
                           doc="weight of the previous round's probabilities in each refit"),
        "warm_mix": Field("float", 0.0, low=0, high=1,
                          doc="weight of the previous step's final distribution (shifted) in the first round's; "
                              "0: uniform every step, as in the paper"),
        "epsilon": Field("float", 0.0, low=0, high=1,
                         doc="probability of a uniformly random action instead of the plan (all methods alike)"),
        "dtype": Field("str", "float32", choices=("float32", "bfloat16"), doc="the planning rollouts' precision"),
    },
    "meta": {
        "inner_lr": Field("float", 1e-2, low=0, low_open=True, doc="inner SGD rate (alpha)"),
        "inner_steps": Field("int", 3, low=1, doc="inner SGD steps in meta-training"),
        "first_order": Field("bool", False, doc="first-order MAML (no second derivatives through the inner steps)"),
        "outer_lr": Field("float", 1e-4, low=0, low_open=True, doc="Adam's rate (meta_gcg's outer step, and gcg's "
                                                                       "and the oracle's only step)"),
        "meta_batch": Field("int", 8, low=1, doc="windows (tasks) per outer step"),
        "batch": Field("int", 32, low=1, doc="sequences per half window (gcg: meta_batch x batch per step)"),
        "window": Field("int", 400, low=2, doc="a training task: this many consecutive steps, split in halves"),
        "sequence_length": Field("int", 5, low=1, doc="steps of each training sequence"),
        "train_every": Field("int", 1, low=1, doc="environment steps between training events"),
        "train_steps": Field("int", 1, low=1, doc="optimizer steps per training event"),
        "start": Field("int", None, low=1, nullable=True,
                       doc="stream length at which training starts (null: meta.window, for every method)"),
        "within_episode": Field("bool", None, nullable=True,
                                doc="training windows inside one episode (null: when the environment's episodes "
                                    "end, i.e. the maze's episodic mode: each reset draws a new rotation)"),
    },
    "adapt": {
        "window": Field("int", 10, low=1, doc="newest steps adapted on"),
        "every": Field("int", 10, low=1, doc="environment steps between adaptations"),
        "steps": Field("int", None, low=1, nullable=True, doc="inner steps online (null: meta.inner_steps)"),
    },
    "train": {
        "checkpoint_every": Field("int", 1000, low=1, doc="environment steps between resumable checkpoints"),
        "log_every": Field("int", 500, low=1, doc="environment steps between progress lines"),
    },
    "eval": {
        "recovery_fraction": Field("float", 0.8, low=0, high=1, low_open=True,
                                   doc="recovered: the reward rate back to this share of the pre-switch rate"),
        "rate_window": Field("int", 200, low=1, doc="steps the pre-switch reward rate averages over"),
        "recovery_window": Field("int", 20, low=1,
                                 doc="recovered: the first window of this many steps after a switch whose mean "
                                     "reward is back to recovery_fraction of the pre-switch rate (counted to its end)"),
        "after_switch": Field("int", 200, low=1, doc="steps after a switch the adaptation metrics look at"),
        "video_steps": Field("int", 0, low=0, doc="the last steps written as video.mp4 (0: none)"),
    },
}


def check_gcg(cfg: dict[str, Any]) -> None:
    """Checks across keys of a resolved ``system: gcg`` config (the environment's own are checked on build)."""
    m, e, a = cfg["meta"], cfg["env"], cfg["adapt"]
    if m["window"] % 2:
        raise ConfigError(f"config key 'meta.window': {m['window']} is odd (allowed: an even number, split in halves)")
    if m["sequence_length"] > m["window"] // 2:
        raise ConfigError(f"config key 'meta.sequence_length': {m['sequence_length']} does not fit in half a window "
                          f"of {m['window']} (allowed: <= {m['window'] // 2})")
    start = m["start"] or m["window"]
    if cfg["method"] == "meta_gcg" and start < m["window"]:
        raise ConfigError(f"config key 'meta.start': {start} is shorter than a training window of {m['window']} "
                          f"(allowed: >= {m['window']})")
    if start < m["sequence_length"]:
        raise ConfigError(f"config key 'meta.start': {start} steps hold no sequence of meta.sequence_length="
                          f"{m['sequence_length']} (allowed: >= {m['sequence_length']})")
    if start > e["steps"]:
        what = "a training window" if m["start"] is None else "meta.start"
        raise ConfigError(f"config key 'meta.window': {what} of {start} steps is larger than the stream of "
                          f"env.steps={e['steps']} allows (allowed: <= {e['steps']})")
    if a["window"] < m["sequence_length"]:
        raise ConfigError(f"config key 'adapt.window': {a['window']} steps hold no sequence of "
                          f"meta.sequence_length={m['sequence_length']} (allowed: >= {m['sequence_length']})")
    if cfg["eval"]["video_steps"] > e["steps"]:
        raise ConfigError(f"config key 'eval.video_steps': {cfg['eval']['video_steps']} is more than env.steps="
                          f"{e['steps']}")
    if not cfg["model"]["reward_low"] < cfg["model"]["reward_high"]:
        raise ConfigError("config key 'model.reward_low': must be below model.reward_high")
