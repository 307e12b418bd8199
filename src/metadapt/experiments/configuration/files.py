"""The files metadapt reads from users and writes for them: bounded YAML in, strict JSON out.

Config files, sweep files and ``key=value`` overrides may come from anyone, so
YAML is read through one loader that

- refuses documents larger than ``MAX_YAML_BYTES`` and text that is not UTF-8;
- refuses a document whose aliases would expand it past ``MAX_YAML_NODES`` nodes
  or ``MAX_YAML_EXPANDED_CHARS`` characters of scalars (a few lines of nested
  aliases stand for billions of values, a few aliases of a long string for
  gigabytes: every later copy, comparison or error message would expand them)
  or that refers to itself;
- builds plain data only (mappings, lists, strings, numbers, booleans, null):
  no dates, sets, binary or ordered pairs, which nothing in a config means;
- reads ``1e-3`` as a number, as YAML 1.2 does (YAML 1.1 wants ``1.0e-3``).

Every JSON file metadapt writes is strict JSON (``allow_nan=False``): a
non-finite number is written as ``null``, which every JSON parser reads.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from metadapt.errors import ConfigError

MAX_YAML_BYTES = 4 * 1024 * 1024  # configs are a few kB; a sweep file with a large grid a few tens
MAX_YAML_NODES = 100_000  # scalars, lists and mappings of the document with every alias expanded
# Characters of the scalars with every alias expanded: a few aliases of one long string stand for gigabytes that
# every copy, comparison or error message would build, though they are few nodes.
MAX_YAML_EXPANDED_CHARS = 2 * MAX_YAML_BYTES
MAX_YAML_DEPTH = 64  # nesting of lists and mappings (copying and validating recurse)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses alias expansion past ``MAX_YAML_NODES`` and non-plain types."""

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _check_expanded_size(node)
        return node


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a node graph that is cyclic, or counts more than ``MAX_YAML_NODES`` nodes or
    ``MAX_YAML_EXPANDED_CHARS`` characters of scalars once aliases are expanded.

    Aliases share one node, so the graph stays small while its expansion grows
    exponentially; sizes are summed bottom-up with each shared node counted once
    per reference, iteratively (deep nesting must not exhaust the stack).
    """
    size: dict[int, int] = {}
    chars: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            children = _children(node)
            total = 1 + sum(size[id(c)] for c in children)
            if total > MAX_YAML_NODES:
                raise ConfigError(f"the document expands to more than {MAX_YAML_NODES} values (nested aliases?)")
            size[key] = total
            text = len(node.value) if isinstance(node, yaml.ScalarNode) else sum(chars[id(c)] for c in children)
            if text > MAX_YAML_EXPANDED_CHARS:
                raise ConfigError(f"the document expands to more than {MAX_YAML_EXPANDED_CHARS // (1024 * 1024)} "
                                  "MB of text (aliases of long strings?)")
            chars[key] = text
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if depth[key] > MAX_YAML_DEPTH:
                raise ConfigError(f"the document nests lists and mappings more than {MAX_YAML_DEPTH} deep")
            continue
        if len(on_path) > MAX_YAML_DEPTH:
            raise ConfigError(f"the document nests lists and mappings more than {MAX_YAML_DEPTH} deep")
        if key in size:
            continue
        if key in on_path:
            raise ConfigError("the document refers to itself through an alias")
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise ConfigError("the document refers to itself through an alias")
            if id(child) not in size:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _refuse(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(None, None, f"the YAML tag {node.tag} is not plain data", node.start_mark)


# Plain data only: what a config can mean.
for _tag in ("binary", "set", "omap", "pairs", "timestamp"):
    _BoundedLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)
# Dates stay strings (no key wants a date), and exponent floats without a dot are numbers (YAML 1.2).
_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, what: str) -> Any:
    """The plain data of one YAML document; any problem is one ``ConfigError`` line naming ``what``."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{what} is larger than {MAX_YAML_BYTES // (1024 * 1024)} MB")
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except ConfigError as exc:  # refused by the bounds
        raise ConfigError(f"{what}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{what} is not valid YAML{where} ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply") from None


def read_yaml_file(path: str | Path, what: str) -> Any:
    """The plain data of a YAML file (``what``: how messages name it), read within the same bounds."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        if p.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{what} {p} is larger than {MAX_YAML_BYTES // (1024 * 1024)} MB")
        with open(p, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{what} {p} cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {p} is not a text file (not UTF-8)") from None
    return parse_yaml(text, f"{what} {p}")


def plain_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (numpy numbers as Python ones)."""
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # a numpy or torch scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value: Any, **kw: Any) -> str:
    """Strict JSON text of ``value`` (NaN and infinities as ``null``)."""
    return json.dumps(plain_json(value), allow_nan=False, **kw)


def write_json(path: str | Path, value: Any, indent: int = 2) -> None:
    """Write ``value`` to ``path`` as strict JSON, atomically (a killed process leaves the old file)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(to_json(value, indent=indent))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
