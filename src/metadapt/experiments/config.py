"""The config schema: parsing YAML, applying ``key=value`` overrides, validating.

Only entry points read configs; library classes take typed arguments. Every
problem is a ``ConfigError`` whose message names the key and what is allowed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metadapt.errors import ConfigError


@dataclass(frozen=True)
class Field:
    """One config key: its kind, default and allowed values."""

    kind: str  # int | float | str | bool | ints | mapping
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    doc: str = ""

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        names = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                 "ints": "a list of positive integers", "mapping": "a mapping of keyword arguments"}
        text = names[self.kind]
        if self.low is not None:
            text += f" {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            text += f"{' and' if self.low is not None else ''} {'<' if self.high_open else '<='} {self.high:g}"
        if self.nullable:
            text += " (or null)"
        return text


def _f(kind: str, default: Any, **kw: Any) -> Field:
    return Field(kind, default, **kw)


SCHEMA: dict[str, Any] = {
    "name": _f("str", "run", doc="run name, used for the run directory"),
    "seed": _f("int", 0, low=0, doc="seeds every generator of the run"),
    "device": _f("str", "cpu", choices=("cpu", "cuda")),
    "env": {
        "id": _f("str", "metadapt/HalfCheetah-v0", doc="registered Gymnasium id"),
        "kwargs": _f("mapping", {}, doc="keyword arguments for gym.make"),
    },
    "model": {
        "hidden": _f("ints", [500, 500, 500]),
        "activation": _f("str", "relu", choices=("relu", "tanh", "silu", "elu", "gelu")),
        "sigma": _f("float", 1.0, low=0, low_open=True, doc="std of the Gaussian likelihood (normalized)"),
        "action_gain": _f("bool", False, doc="one adaptable gain per actuator on the normalized action "
                                              "(priors for actuator failures; not with ReBAL; a model.checkpoint's own "
                                              "setting wins)"),
        "checkpoint": _f("str", None, nullable=True, doc="trained model.pt or run directory; null trains one"),
    },
    "planner": {
        "type": _f("str", "rs", choices=("rs", "cem", "mppi")),
        "horizon": _f("int", 10, low=1),
        "num_samples": _f("int", 1000, low=1),
        "iterations": _f("int", 5, low=1, doc="CEM refits / MPPI rounds per step"),
        "num_elites": _f("int", 50, low=1, doc="CEM elites"),
        "momentum": _f("float", 0.1, low=0, high=1, high_open=True, doc="CEM mean/variance momentum"),
        "init_std": _f("float", 0.25, low=0, high=1, low_open=True, doc="CEM initial std / action range"),
        "temperature": _f("float", 0.1, low=0, low_open=True, doc="MPPI temperature"),
        "noise_std": _f("float", 0.5, low=0, low_open=True, doc="MPPI noise std / half action range"),
        "noise_beta": _f("float", 0.5, low=0, high=1, high_open=True, doc="MPPI time correlation"),
        "dtype": _f("str", "auto", choices=("auto", "float32", "bfloat16"),
                    doc="planning rollout weights; auto: bfloat16 where the device has fast bfloat16 products"),
        "compile": _f("bool", False, doc="torch.compile the planning rollout (first call compiles for tens of s)"),
    },
    "learner": {
        "type": _f("str", "mb", choices=("mb", "de", "ts", "gs", "mole", "rebal"),
                   doc="mb/de use an MB model; ts/gs/mole a meta-trained prior; rebal a recurrent model"),
        "window": _f("int", 16, low=1, doc="K, recent transitions handed to the learner (ts: the prior's M)"),
        "lr": _f("float", None, low=0, low_open=True, nullable=True,
                 doc="online step size (de/gs/mole M step); null: 0.01, or the prior's inner LR when "
                     "that is one number (MOLe's theta_new always uses the prior's own, Meta-SGD rates included)"),
        "alpha": _f("float", 1.0, low=0, doc="MOLe CRP concentration"),
        "choose": _f("str", "likelihood", choices=("likelihood", "posterior"), doc="MOLe component planned with"),
        "creation_test": _f("str", "weighted", choices=("weighted", "likelihood"), doc="MOLe new-component test"),
        "creation_margin": _f("float", 0.0, low=0, doc="MOLe: nats theta_new must win by (0: Algorithm 1)"),
        "merge_kl": _f("float", None, low=0, low_open=True, nullable=True,
                       doc="MOLe: fold components within this many nats of the chosen one (null: off)"),
        "max_components": _f("int", None, low=1, nullable=True, doc="MOLe cap (null: none, as in the paper)"),
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
        "steps_per_iteration": _f("int", 3000, low=1),
        "rollout_length": _f("int", 1000, low=1),
        "epochs": _f("int", 50, low=1),
        "batch_size": _f("int", 512, low=1),
        "lr": _f("float", 1e-3, low=0, low_open=True),
        "val_fraction": _f("float", 0.1, low=0, high=1, high_open=True),
        "patience": _f("int", 5, low=1),
        "buffer_capacity": _f("int", 1_000_000, low=1),
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


def defaults(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = SCHEMA if schema is None else schema
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


def _check(key: str, field: Field, value: Any) -> Any:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"config key '{key}': {why} (allowed: {field.allowed()})")

    if value is None:
        if field.nullable:
            return None
        raise bad("null is not allowed")
    if field.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"{value!r} is not an integer")
    elif field.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(f"{value!r} is not a number")
        value = float(value)
        if not math.isfinite(value):
            raise bad(f"{value!r} is not finite")
    elif field.kind == "str":
        if not isinstance(value, str):
            raise bad(f"{value!r} is not a string")
    elif field.kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"{value!r} is not true or false")
    elif field.kind == "ints":
        if not isinstance(value, list) or not value or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value
        ):
            raise bad(f"{value!r} is not a non-empty list of positive integers")
    elif field.kind == "mapping":
        if not isinstance(value, dict):
            raise bad(f"{value!r} is not a mapping")
        return value
    if field.choices is not None and value not in field.choices:
        raise bad(f"{value!r} is not allowed")
    if field.low is not None and (value < field.low or (field.low_open and value == field.low)):
        raise bad(f"{value!r} is out of range")
    if field.high is not None and (value > field.high or (field.high_open and value == field.high)):
        raise bad(f"{value!r} is out of range")
    return value


def _validate(raw: Any, schema: dict[str, Any], prefix: str) -> dict[str, Any]:
    where = prefix.rstrip(".") or "the config"
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{where}' must be a mapping, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in schema:
            allowed = ", ".join(sorted(schema))
            raise ConfigError(f"unknown config key '{prefix}{key}' (allowed keys in {where}: {allowed})")
        spec = schema[key]
        if isinstance(spec, dict):
            out[key] = _validate(value if value is not None else {}, spec, f"{prefix}{key}.")
        else:
            out[key] = _check(f"{prefix}{key}", spec, value)
    for key, spec in schema.items():
        if key not in out:
            out[key] = defaults(spec) if isinstance(spec, dict) else copy.deepcopy(spec.default)
    return out


def _cross_checks(cfg: dict[str, Any]) -> None:
    p = cfg["planner"]
    if p["type"] == "cem" and p["num_elites"] > p["num_samples"]:
        raise ConfigError(
            f"config key 'planner.num_elites': {p['num_elites']} exceeds planner.num_samples "
            f"(allowed: an integer from 1 to {p['num_samples']})"
        )
    rebal = (cfg["meta"]["enabled"] and cfg["meta"]["method"] == "rebal") or cfg["learner"]["type"] == "rebal"
    if cfg["model"]["action_gain"] and rebal:
        raise ConfigError("config key 'model.action_gain': the recurrent ReBAL model has no action gains "
                          "(allowed: false with meta.method=rebal or learner.type=rebal)")


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check every key; returns the fully resolved config."""
    cfg = _validate(raw, SCHEMA, "")
    _cross_checks(cfg)
    if cfg["planner"]["dtype"] == "auto":
        # Resolved here so the run directory records what actually ran.
        from metadapt.models.mlp import fast_bfloat16

        cfg["planner"]["dtype"] = "bfloat16" if fast_bfloat16(cfg["device"]) else "float32"
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``planner.horizon=15`` -> (["planner", "horizon"], 15); values are YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, _, value = text.partition("=")
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"override '{text}' has an empty key part")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc.__class__.__name__})") from exc
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
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {p} is not valid YAML{where}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        raw = loaded
    return validate(apply_overrides(raw, overrides or []))


def dump_config(cfg: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
