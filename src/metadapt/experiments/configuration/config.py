"""The config schema: parsing YAML, applying ``key=value`` overrides, validating.

Only entry points read configs; library classes take typed arguments. Every
problem is a ``ConfigError`` whose message names the key and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from metadapt.errors import CheckpointError, ConfigError
from metadapt.experiments.configuration.components import LEARNERS, MODELS, PLANNERS, TASKS, Registry
from metadapt.experiments.configuration.files import parse_yaml, plain_json, read_yaml_file
from metadapt.experiments.configuration.gcg_schema import GCG_SCHEMA, check_gcg
from metadapt.experiments.configuration.rl_schema import RL_SCHEMA, check_rl
from metadapt.experiments.configuration.schema import Field, validate_section
from metadapt.experiments.configuration.schema import defaults as schema_defaults
from metadapt.experiments.configuration.supervised_schema import SUPERVISED_SCHEMA, check_supervised


def _f(kind: str, default: Any, **kw: Any) -> Field:
    return Field(kind, default, **kw)


SCHEMA: dict[str, Any] = {
    "name": _f("name", "run", doc="run name, used for the run directory"),
    "seed": _f("int", 0, low=0, doc="seeds every generator of the run"),
    "device": _f("str", "cpu", choices=("cpu", "cuda")),
    "env": {
        "id": _f("str", "metadapt/HalfCheetah-v0", doc="registered Gymnasium id, or module:id for your own "
                                                        "(importing module registers id; its folder on PYTHONPATH)"),
        "kwargs": _f("mapping", {}, doc="keyword arguments for gym.make"),
        "reward_fn": _f("str", None, nullable=True,
                        doc="module:function, the batched reward (obs, act, next_obs) -> N the planner maximises "
                            "for planner.objective=reward; null: the environment's own reward_fn"),
        "perturbations": _f("mapping", None, nullable=True,
                            doc="named tasks that set/scale/add to MuJoCo model fields, usable in env.kwargs.schedule"
                                " and task_sampler: {task: [{element: body, name: torso, field: mass, scale: 2.0}, "
                                "...]} or {task: {task: BUILTIN_TASK, edits: [...]}} (see metadapt.envs.perturb)"),
    },
    "model": {  # + "type" and one section per registered model type (experiments.components.MODELS)
        "hidden": _f("ints", [500, 500, 500]),
        "activation": _f("str", "relu", choices=("relu", "tanh", "silu", "elu", "gelu")),
        "sigma": _f("float", 1.0, low=0, low_open=True, doc="std of the Gaussian likelihood (normalized)"),
        "action_gain": _f("bool", False, doc="one adaptable gain per actuator on the normalized action "
                                              "(priors for actuator failures; not with ReBAL; a model.checkpoint's own "
                                              "setting wins)"),
        "checkpoint": _f("str", None, nullable=True, doc="trained model.pt or run directory; null trains one"),
    },
    "planner": {  # + "type" and one section per registered planner type (experiments.components.PLANNERS)
        "horizon": _f("int", 10, low=1),
        "num_samples": _f("int", 1000, low=1),
        "dtype": _f("str", "auto", choices=("auto", "float32", "bfloat16"),
                    doc="planning rollout weights; auto: bfloat16 where the device has fast bfloat16 products"),
        "compile": _f("bool", False, doc="torch.compile the planning rollout (first call compiles for tens of s)"),
        "objective": _f("str", "reward", doc="what the planner maximises: reward (the environment's) or one of the "
                                             "environment's planning objectives (HalfCheetahs: authors, the GrBAL "
                                             "and MOLe code's cost); returns and reports always use the reward"),
    },
    "learner": {  # + "type" and one section per registered learner type (experiments.components.LEARNERS)
        "window": _f("int", 16, low=1, doc="K, recent transitions handed to the learner (ts: the prior's M)"),
        "lr": _f("float", None, low=0, low_open=True, nullable=True,
                 doc="online step size (de/gs/mole M step); null: 0.01, or the prior's inner LR when "
                     "that is one number (MOLe's theta_new always uses the prior's own, Meta-SGD rates included)"),
    },
    "meta": {
        "enabled": _f("bool", False, doc="meta-train a prior (GrBAL) instead of fitting the plain loss"),
        "method": _f("str", "maml", choices=("maml", "rebal"), doc="maml: GrBAL prior; rebal: recurrent model"),
        "context": _f("int", 32, low=1, doc="rebal: size of the GRU context"),
        "inner_lr": _f("float", 0.01, low=0, low_open=True, doc="inner SGD learning rate (eta)"),
        "inner_steps": _f("int", 1, low=1),
        "first_order": _f("bool", False, doc="first-order MAML (no second derivatives)"),
        "learn_inner_lr": _f("bool", False, doc="learn the inner learning rates too (meta.inner_lr_per says how many)"),
        "inner_lr_per": _f("str", "entry", choices=("entry", "tensor", "entry_tied_actions"),
                           doc="learned inner rates: one per parameter entry (Meta-SGD), one per parameter tensor, "
                               "or per entry with the first layer's action columns sharing one rate per unit"),
        "gain_inner_lr": _f("float", 1.0, low=0, low_open=True,
                            doc="with model.action_gain and learn_inner_lr: the gains' shared inner rate before "
                                "meta-training (without learned rates the gains step with inner_lr)"),
        "prior_weight": _f("float", 0.0, low=0, doc="weight of the unadapted prior's error in the outer loss "
                                                    "(0: MAML; keeps a multi-step prior a model of its own)"),
        "past": _f("int", 16, low=1, doc="M, steps adapted on"),
        "future": _f("int", 16, low=1, doc="K, steps evaluated after adaptation"),
        "meta_batch": _f("int", 32, low=1, doc="windows per outer step"),
        "batches_per_epoch": _f("int", 100, low=1),
        "val_batches": _f("int", 8, low=1, doc="validation meta-batches (held-out trajectories)"),
    },
    "train": {
        "iterations": _f("int", 12, low=1),
        # >= 2: the data normalizer, refit before every fit, needs two transitions to have a spread
        "steps_per_iteration": _f("int", 3000, low=2),
        "rollout_length": _f("int", 1000, low=1),
        "epochs": _f("int", 50, low=1),
        "batch_size": _f("int", 512, low=1),
        "lr": _f("float", 1e-3, low=0, low_open=True),
        "val_fraction": _f("float", 0.1, low=0, high=1, low_open=True, high_open=True,
                           doc="share of the collected data held out for validation (early stopping needs some)"),
        "patience": _f("int", 5, low=1),
        "buffer_capacity": _f("int", 1_000_000, low=2),
        "data": _f("str", None, nullable=True,
                   doc="a training run directory whose collected data is refit iteration by iteration instead of "
                       "collecting (MB on exactly the data a prior was meta-trained on)"),
    },
    "logging": {
        "tensorboard": _f("bool", False, doc="also write the per-step scalars as TensorBoard events (trial_*/tb)"),
    },
    "trial": {
        "steps": _f("int", 1000, low=1),
        "episode_length": _f("int", 1000, low=1, doc="steps before the env resets within a trial"),
        "episodes": _f("int", 1, low=1, doc="independent trials (each from a fresh learner)"),
    },
}


def _cross_checks(cfg: dict[str, Any]) -> None:
    p = cfg["planner"]
    if p["type"] == "cem" and p["cem"]["num_elites"] > p["num_samples"]:
        raise ConfigError(
            f"config key 'planner.cem.num_elites': {p['cem']['num_elites']} exceeds planner.num_samples "
            f"(allowed: an integer from 1 to {p['num_samples']})"
        )
    rebal = (cfg["meta"]["enabled"] and cfg["meta"]["method"] == "rebal") or cfg["learner"]["type"] == "rebal"
    if cfg["model"]["action_gain"] and rebal:
        raise ConfigError("config key 'model.action_gain': the recurrent ReBAL model has no action gains "
                          "(allowed: false with meta.method=rebal or learner.type=rebal)")


def _resolve_mbrl(cfg: dict[str, Any]) -> None:
    _cross_checks(cfg)
    if cfg["planner"]["dtype"] == "auto":
        # Resolved here so the run directory records what actually ran.
        from metadapt.models.mlp import fast_bfloat16

        cfg["planner"]["dtype"] = "bfloat16" if fast_bfloat16(cfg["device"]) else "float32"


# system -> (schema, checks across keys): one line per system. A config names its system with the
# top-level key ``system``; model-based RL (MB, GrBAL, ReBAL, MOLe and the baselines) is the default and
# its resolved configs carry no ``system`` key, so the run ids of existing sweeps do not change.
SYSTEMS: dict[str, tuple[dict[str, Any], Any]] = {
    "mbrl": (SCHEMA, _resolve_mbrl),
    "supervised": (SUPERVISED_SCHEMA, check_supervised),
    "rl": (RL_SCHEMA, check_rl),
    "gcg": (GCG_SCHEMA, check_gcg),
}
DEFAULT_SYSTEM = "mbrl"


# system -> section -> (registry, default type): the sections whose types are registered parts
TYPED_SECTIONS: dict[str, dict[str, tuple[Registry, str]]] = {
    "mbrl": {"model": (MODELS, "mlp"), "learner": (LEARNERS, "mb"), "planner": (PLANNERS, "rs")},
    "supervised": {"task": (TASKS, "sinusoid")},
}


def _with_registered_types(schema: dict[str, Any], typed_sections: dict[str, tuple[Registry, str]]) -> dict[str, Any]:
    """``schema`` with each typed section's ``type`` choices and one sub-section per registered type,
    as registered now (a type registered at run time is configurable like the built-in ones)."""
    out = dict(schema)
    for section, (registry, default) in typed_sections.items():
        docs = "; ".join(f"{n}: {registry[n].doc}" for n in registry.names() if registry[n].doc)
        typed = {"type": _f("str", default, choices=registry.names(), doc=docs), **schema[section]}
        for name in registry.names():
            if name in typed:
                raise ConfigError(f"{section} type '{name}' has the name of a {section} key")
            if registry[name].fields:
                typed[name] = dict(registry[name].fields)
        out[section] = typed
    return out


def _keep_chosen_types(cfg: dict[str, Any], typed_sections: dict[str, tuple[Registry, str]]) -> None:
    """Leave only the chosen type's sub-section in each typed section (the others were checked)."""
    for section, (registry, _) in typed_sections.items():
        chosen = cfg[section]["type"]
        for name in registry.names():
            if name != chosen or not registry[name].fields:
                cfg[section].pop(name, None)


def system_of(cfg: dict[str, Any]) -> str:
    """The system a resolved (or raw) config belongs to."""
    return cfg.get("system", DEFAULT_SYSTEM) if isinstance(cfg, dict) else DEFAULT_SYSTEM


def defaults(system: str = DEFAULT_SYSTEM) -> dict[str, Any]:
    """Every key of ``system``'s schema at its default."""
    return schema_defaults(SYSTEMS[system][0])


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check every key; returns the fully resolved config."""
    raw = dict(raw)
    system = raw.pop("system", DEFAULT_SYSTEM)
    if not isinstance(system, str) or system not in SYSTEMS:
        raise ConfigError(f"config key 'system': {system!r} is not allowed (allowed: one of {', '.join(SYSTEMS)})")
    schema, check = SYSTEMS[system]
    typed = TYPED_SECTIONS.get(system, {})
    for section, (registry, _) in typed.items():  # a name that is not a type but has a hint (learner.type=grbal)
        if isinstance(raw.get(section), dict) and registry.hinted(chosen := raw[section].get("type")):
            raise registry.unknown(chosen)
    cfg = validate_section(raw, _with_registered_types(schema, typed), "")
    _keep_chosen_types(cfg, typed)
    check(cfg)
    return cfg if system == DEFAULT_SYSTEM else {"system": system, **cfg}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``planner.horizon=15`` -> (["planner", "horizon"], 15); values are YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, _, value = text.partition("=")
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"override '{text}' has an empty key part")
    parsed = parse_yaml(value, f"override '{key}'") if value.strip() else ""
    return path, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML file (or start from defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        loaded = read_yaml_file(p, "config file")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        raw = loaded
    return validate(apply_overrides(raw, overrides or []))


def dump_config(cfg: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))


# Model-based keys added after the first release, with the default that keeps what the code computed before
# them. A run id (a hash of the resolved config) leaves them out while they hold that default, so sweep folders
# written before a key existed resume instead of running every point again.
LATER_KEYS: dict[tuple[str, str], Any] = {
    ("planner", "objective"): "reward",
    ("env", "reward_fn"): None,
    ("env", "perturbations"): None,
    ("learner", "ts"): {"backtrack": 0},
}


def without_later_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` without the ``LATER_KEYS`` that hold their defaults (a copy; ``cfg`` is not changed)."""
    out = dict(cfg)
    for (section, key), default in LATER_KEYS.items():
        part = out.get(section)
        if isinstance(part, dict) and key in part and part[key] == default:
            out[section] = {k: v for k, v in part.items() if k != key}
    return out


def with_later_defaults(started: dict[str, Any], system: str = DEFAULT_SYSTEM) -> dict[str, Any]:
    """A config of ``system`` recorded by an earlier metadapt, with the keys added since at their defaults.

    A new key's default keeps what the code computed before it existed (``planner.objective: reward``), so a
    run started before the key was added resumes unless the user set it to something else.
    """
    def fill(value: Any, default: Any) -> Any:
        if isinstance(value, dict) and isinstance(default, dict):
            return {**{k: v for k, v in default.items() if k not in value},
                    **{k: fill(v, default.get(k)) for k, v in value.items()}}
        return value

    return fill(started, defaults(system))


def refuse_result_changing_edits(started: dict[str, Any], cfg: dict[str, Any], may_change: tuple[str, ...],
                                 run_dir: Path) -> None:
    """Refuse (one ``CheckpointError`` line naming the keys) to resume ``run_dir`` under ``cfg`` when it differs
    from ``started``, the config the run started with, in a key that changes results: any key but those under
    ``may_change`` (dotted keys or whole sections)."""
    changed = [k for k in changed_keys(started, plain_json(cfg))
               if not any(k == free or k.startswith(free + ".") for free in may_change)]
    if changed:
        raise CheckpointError(f"{run_dir}/config.yaml differs from the config the run started with in "
                              f"{', '.join(changed)}: resume continues the same run (start a new run to change it)")


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two resolved configs (sorted; a section present in one
    only counts as each of its keys)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]
