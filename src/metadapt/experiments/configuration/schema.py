"""Typed config fields and the validation every config schema shares.

A schema is a nested dict of ``Field`` (a key) and dicts (a section). Every
problem is a ``ConfigError`` whose message names the key and what is allowed.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Any

from metadapt.errors import ConfigError


@dataclass(frozen=True)
class Field:
    """One config key: its kind, default and allowed values."""

    kind: str  # int | float | str | name | bool | ints | ints0 | strs | mapping
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
                 "name": "a name without path separators (a folder of the runs directory)",
                 "ints": "a list of positive integers",
                 "ints0": "a list of integers >= 0", "strs": "a list of non-empty strings",
                 "mapping": "a mapping of keyword arguments"}
        text = names[self.kind]
        if self.low is not None:
            text += f" {'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            text += f"{' and' if self.low is not None else ''} {'<' if self.high_open else '<='} {_number(self.high)}"
        if self.nullable:
            text += " (or null)"
        return text


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


# Every integer ends up in a torch or numpy int64 (seeds, sizes, counts): larger ones are refused here rather
# than overflowing there.
INT_LIMIT = 2**63 - 1
# A run name is a folder of the runs directory: it must not lead out of it, nor be empty or hidden.
_NAME_MAX = 200


def check_name(value: str) -> str | None:
    """Why ``value`` cannot name a run folder (``None``: it can)."""
    if not value.strip():
        return "is empty"
    if len(value) > _NAME_MAX:
        return f"is longer than {_NAME_MAX} characters"
    if any(sep in value for sep in ("/", "\\")) or (os.altsep and os.altsep in value):
        return "holds a path separator"
    if value in (".", "..") or value.startswith("."):
        return "starts with a dot"
    return None


def _f(kind: str, default: Any, **kw: Any) -> Field:
    return Field(kind, default, **kw)


def defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """The resolved config of a schema with every key at its default."""
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
        if abs(value) > INT_LIMIT:
            raise bad(f"{value!r} is out of range (integers must fit in 64 bits)")
    elif field.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(f"{value!r} is not a number")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond every float
            raise bad(f"{value!r} is out of range") from None
        if not math.isfinite(value):
            raise bad(f"{value!r} is not finite")
    elif field.kind in ("str", "name"):
        if not isinstance(value, str):
            raise bad(f"{value!r} is not a string")
        if "\0" in value:  # no file name or id holds one, and the operating system refuses it in paths
            raise bad(f"{value!r} holds a NUL character")
        if field.kind == "name" and (why := check_name(value)) is not None:
            raise bad(f"{value!r} {why}")
    elif field.kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"{value!r} is not true or false")
    elif field.kind in ("ints", "ints0"):
        least = 1 if field.kind == "ints" else 0
        if not isinstance(value, list) or not value or any(
            isinstance(v, bool) or not isinstance(v, int) or v < least or v > INT_LIMIT for v in value
        ):
            raise bad(f"{value!r} is not a non-empty list of integers >= {least}")
    elif field.kind == "strs":
        if not isinstance(value, list) or any(not isinstance(v, str) or not v or "\0" in v for v in value):
            raise bad(f"{value!r} is not a list of non-empty strings")
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


def validate_section(raw: Any, schema: dict[str, Any], prefix: str) -> dict[str, Any]:
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
            out[key] = validate_section(value if value is not None else {}, spec, f"{prefix}{key}.")
        else:
            out[key] = _check(f"{prefix}{key}", spec, value)
    for key, spec in schema.items():
        if key not in out:
            out[key] = defaults(spec) if isinstance(spec, dict) else copy.deepcopy(spec.default)
    return out
