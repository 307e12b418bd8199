"""The config schema of few-shot supervised meta-learning (``system: supervised``): MAML, FOMAML, Meta-SGD.

Defaults are the MAML paper's sinusoid setting (Finn et al. 2017, Sec. 5.1).
"""

from __future__ import annotations

from typing import Any

from metadapt.errors import ConfigError
from metadapt.experiments.configuration.schema import Field

SUPERVISED_SCHEMA: dict[str, Any] = {
    "name": Field("name", "maml", doc="run name, used for the run directory"),
    "seed": Field("int", 0, low=0, doc="seeds initialisation, the task stream and the held-out tasks"),
    "device": Field("str", "cpu", choices=("cpu", "cuda")),
    "threads": Field("int", None, low=1, nullable=True, doc="torch threads (null: PyTorch's default)"),
    "task": {  # + "type": one of the registered task families (experiments.components.TASKS)
        "shots": Field("int", 10, low=1, doc="K: support examples per task (per class in classification)"),
        "query": Field("int", 10, low=1, doc="query examples per task (per class) in meta-training"),
        "eval_query": Field("int", 100, low=1, doc="query examples per held-out task (per class)"),
        "ways": Field("int", 5, low=2, doc="classification: N classes per episode"),
        "data": Field("str", None, nullable=True,
                      doc="classification: an Omniglot-layout folder (images_background, images_evaluation); "
                          "null: the generated glyph set, made on first use"),
        "rotations": Field("bool", True, doc="classification: rotations by 90 degrees are new classes (MAML)"),
    },
    "model": {
        "hidden": Field("ints", [40, 40], doc="regression: hidden widths"),
        "activation": Field("str", "relu", choices=("relu", "tanh", "silu", "elu", "gelu")),
        "filters": Field("int", 64, low=1, doc="classification: filters of each of the 4 conv blocks"),
        "pool": Field("str", "max", choices=("max", "stride"),
                      doc="classification: 2x2 max-pooling after each block, or stride-2 convolutions and the "
                          "features averaged (the MAML code's Omniglot network)"),
        "norm_scale": Field("bool", True, doc="classification: batch norm learns a scale (false: a shift only, as "
                                              "the MAML code's batch norm)"),
        "checkpoint": Field("str", None, nullable=True,
                            doc="a model.pt (or run directory) to evaluate instead of meta-training"),
    },
    "meta": {
        "inner_lr": Field("float", 0.01, low=0, low_open=True, doc="inner SGD rate (alpha)"),
        "inner_steps": Field("int", 1, low=1, doc="inner steps during meta-training"),
        "first_order": Field("bool", False, doc="first-order MAML (no second derivatives)"),
        "learn_inner_lr": Field("bool", False, doc="learn the inner rates too (Meta-SGD with inner_lr_per=entry)"),
        "inner_lr_per": Field("str", "entry", choices=("entry", "tensor"),
                              doc="learned rates: one per parameter entry (Meta-SGD) or one per tensor"),
        "inner_frozen": Field("strs", [], doc="name prefixes of parameters the inner loop leaves alone (meta-learned "
                                              "only; the pretrained baseline's fine-tuning too): [norm.] is the "
                                              "MAML code's batch norm"),
        "meta_batch": Field("int", 25, low=1, doc="tasks per outer step"),
        "outer_lr": Field("float", 1e-3, low=0, low_open=True, doc="Adam's rate (beta)"),
        "iterations": Field("int", 70000, low=1, doc="outer steps"),
    },
    "baseline": {
        "pretrained": Field("bool", True, doc="also train one network on all tasks and fine-tune it the same way"),
        "iterations": Field("int", None, low=1, nullable=True, doc="its Adam steps (null: meta.iterations)"),
        "lr": Field("float", 1e-3, low=0, low_open=True, doc="its Adam rate"),
        "batch_size": Field("int", 64, low=1, doc="classification: images per Adam step over all training classes"),
        "finetune_lr": Field("float", None, low=0, low_open=True, nullable=True,
                             doc="its fine-tuning SGD rate (null: meta.inner_lr)"),
    },
    "train": {
        "checkpoint_every": Field("int", 2000, low=1, doc="iterations between resumable checkpoints"),
        "log_every": Field("int", 100, low=1, doc="iterations averaged into one metrics.csv row"),
    },
    "eval": {
        "tasks": Field("int", 600, low=1, doc="held-out tasks (the paper: 600)"),
        "steps": Field("ints0", [0, 1, 10], doc="inner steps after which held-out tasks are scored"),
        "batch": Field("int", 100, low=1, doc="held-out tasks adapted at once"),
    },
}


def check_supervised(cfg: dict[str, Any]) -> None:
    """Checks across keys of a resolved supervised config."""
    t = cfg["train"]
    if t["checkpoint_every"] % t["log_every"]:
        # A checkpoint between two metrics rows would lose the partial average on resume.
        raise ConfigError(f"config key 'train.checkpoint_every': {t['checkpoint_every']} is not a multiple of "
                          f"train.log_every={t['log_every']} (allowed: a multiple of train.log_every)")
    if cfg["task"]["type"] == "sinusoid" and cfg["task"]["data"] is not None:
        raise ConfigError("config key 'task.data': sinusoid tasks are generated, they read no folder "
                          "(allowed: null with task.type=sinusoid)")
