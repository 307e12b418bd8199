"""Property (issue 26): random mutations of every shipped config (wrong types, out-of-range values, missing and
extra keys, non-finite numbers, random bytes) never end in a traceback. ``metadapt check`` (in-process, and a few
through the console script) and, for a small sample with tiny budgets, ``metadapt run`` / ``train``: every case
exits with code 0, or with code 2 and one line on stderr, within 60 s.

Hypothesis runs derandomized (the same cases on every machine) and without its example database.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from metadapt.cli import main
from metadapt.experiments.configuration.config import defaults, system_of

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "configs").glob("*.yaml"))}
CASE_SECONDS = 60  # the bound on one case

# Tiny budgets per system (key -> value): a run finishes in seconds. A key a mutation set keeps the mutation's value.
TINY = {
    "mbrl": {
        "train.iterations": 1, "train.steps_per_iteration": 40, "train.rollout_length": 40, "train.epochs": 1,
        "model.hidden": [8], "planner.num_samples": 8, "planner.horizon": 2, "trial.steps": 8,
        "trial.episode_length": 8, "trial.episodes": 1, "meta.meta_batch": 2, "meta.batches_per_epoch": 1,
        "meta.val_batches": 1, "meta.past": 4, "meta.future": 4, "train.val_fraction": 0.3,
        "env.kwargs.schedule": "normal", "planner.compile": False, "logging.tensorboard": False,
    },
    "supervised": {
        "meta.iterations": 4, "baseline.iterations": 4, "eval.tasks": 4, "eval.batch": 4, "meta.meta_batch": 2,
        "train.checkpoint_every": 2, "train.log_every": 2, "model.hidden": [8], "model.filters": 4,
        "eval.steps": [0, 1], "baseline.batch_size": 8,
    },
    "gcg": {
        "env.steps": 30, "meta.window": 10, "meta.meta_batch": 1, "meta.batch": 2, "meta.sequence_length": 2,
        "adapt.window": 4, "adapt.every": 4, "planner.samples": 4, "planner.iterations": 1, "planner.horizon": 2,
        "model.preset": "cpu", "eval.video_steps": 0, "eval.rate_window": 5, "train.checkpoint_every": 10,
        "model.widths": {"encoder_channels": [2, 2, 2, 2], "hidden": 2, "reward_channels": 2, "reward_hidden": [4]},
    },
    "rl": {
        "meta.iterations": 1, "meta.meta_batch": 2, "meta.episodes": 2, "env.horizon": 5, "env.num_envs": None,
        "env.vector": "sync", "policy.hidden": [8], "eval.tasks": 2, "eval.episodes": 1, "eval.steps": 1,
        "eval.curve_every": None, "train.checkpoint_every": 1, "baselines.pretrained": False,
        "baselines.oracle": False, "baselines.random": False, "meta.cg_iterations": 2,
    },
}
RUNNABLE = {name for name, raw in CONFIGS.items() if system_of(raw) in TINY}


def _key_paths(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key of a nested mapping, sections included, as a path."""
    out: list[tuple[str, ...]] = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            if isinstance(k, str):
                out.append((*prefix, k))
                out += _key_paths(v, (*prefix, k))
    return out


def _paths(raw: dict[str, Any]) -> list[tuple[str, ...]]:
    """The keys of a shipped config and every key of its system's schema (mutations reach keys it leaves out)."""
    known = _key_paths(raw) + _key_paths(defaults(system_of(raw)))
    return sorted(set(known))


PATHS = {name: _paths(raw) for name, raw in CONFIGS.items()}

# Values of every kind; the large ones only go to `check` (a run with them would be long, not wrong).
SMALL_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 12), st.integers(1, 6), st.floats(0.01, 0.9),
    st.floats(-5, 5, allow_nan=False), st.text(max_size=12),
    st.lists(st.integers(-2, 16), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(0, 5), max_size=2),
    st.sampled_from(["1e-3", "nan", ".inf", "", "../x", "/abs/run", "rs", "cem", "mole", "ts", "sampled", "normal",
                     "builtin:halfcheetah_malfunction", "metadapt/Crawler-v0", "cuda", "omniglot", "rebal"]),
)
LARGE_VALUES = st.one_of(
    SMALL_VALUES, st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**63, 2**64, 10**12, 1e308, -1e308, 10**400]),
    st.lists(st.integers(0, 10**12), min_size=1, max_size=3),
)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def _set(raw: dict[str, Any], path: tuple[str, ...], value: Any, delete: bool = False) -> None:
    node = raw
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@st.composite
def mutated_config(draw: st.DrawFn, names: list[str], values: st.SearchStrategy[Any]) -> tuple[str, bytes, set[str]]:
    """(config name, file bytes, dotted keys the mutations set)."""
    name = draw(st.sampled_from(names))
    raw = copy.deepcopy(CONFIGS[name])
    touched: set[str] = set()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["wrong", "wrong", "missing", "extra", "non_finite"]))
        path = draw(st.sampled_from(PATHS[name]))
        if kind == "extra":
            path = (*path[:-1], draw(st.sampled_from(["bogus", "horizn", "seeds", "Type"]) | st.text(min_size=1,
                                                                                                      max_size=6)))
        value = draw(NON_FINITE if kind == "non_finite" else values)
        _set(raw, path, value, delete=kind == "missing")
        if kind != "missing":
            touched.add(".".join(path))
    text = yaml.safe_dump(raw, sort_keys=False).encode()
    roll = draw(st.integers(0, 9))
    if roll == 0:  # random bytes spliced into the file
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=24)) + text[at + draw(st.integers(0, 8)):]
    elif roll == 1:  # a file of nothing but random bytes
        text = draw(st.binary(max_size=120))
    return name, text, touched


def _run_case(argv: list[str]) -> tuple[int, str, float]:
    """``metadapt`` in-process: (exit code, stderr, seconds)."""
    err = io.StringIO()
    began = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue(), time.monotonic() - began


def _assert_clean(code: int, err: str, seconds: float, what: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, f"{what}\n{err}"
    assert code in (0, 2), f"{what}: exit {code}\n{err}"
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("metadapt: "), f"{what}\n{err}"
    else:  # at most a note on what the config means (a schedule that never switches within the trial)
        assert not lines or (len(lines) == 1 and lines[0].startswith("metadapt: note: ")), \
            f"{what}: exit 0 but stderr:\n{err}"
    assert seconds < CASE_SECONDS, f"{what}: {seconds:.0f} s"


SETTINGS = {"deadline": None, "derandomize": True, "database": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


@settings(max_examples=1500, **SETTINGS)
@given(case=mutated_config(sorted(CONFIGS), LARGE_VALUES))
def test_check_of_a_mutated_config_is_valid_or_one_line(case):
    name, text, _ = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(text)
        code, err, seconds = _run_case(["check", str(path)])
    event(f"exit {code}")
    _assert_clean(code, err, seconds, f"check {name}: {text[:400]!r}")


@settings(max_examples=80, **SETTINGS)
@given(case=mutated_config(sorted(RUNNABLE), SMALL_VALUES))
def test_run_or_train_of_a_mutated_config_with_tiny_budgets_is_valid_or_one_line(case):
    name, text, touched = case
    system = system_of(CONFIGS[name])
    # The tiny budgets apply to every key the mutations did not set: a deleted key or section gets its tiny value
    # back (its default may be a long run), and one below a section replaced by a scalar is refused in one line.
    overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for k, v in TINY[system].items() if k not in touched]
    command = "run" if system == "mbrl" else "train"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(text)
        code, err, seconds = _run_case([command, str(path), *overrides, "--out", str(Path(tmp) / "out"), "--quiet"])
    event(f"{command} exit {code}")
    _assert_clean(code, err, seconds, f"{command} {name} {overrides}: {text[:400]!r}")


def _examples(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` examples of ``strategy``, the same on every run (drawn by a derandomized property)."""
    found: list[Any] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: Any) -> None:
        found.append(example)

    collect()
    return found[-count:]


def test_check_of_mutated_configs_through_the_console_script(tmp_path):
    """A few cases through ``python -m metadapt.cli check``: the exit code and stderr of a real process (a
    subprocess per Hypothesis example would be slow, so they are drawn once)."""
    junk = random.Random(26).randbytes(300)
    cases = [("mb_small.yaml", (ROOT / "configs" / "mb_small.yaml").read_bytes(), set()),  # exit 0
             ("junk.yaml", junk, set()),  # exit 2
             *_examples(mutated_config(sorted(CONFIGS), LARGE_VALUES), 3)]
    for i, (name, text, _) in enumerate(cases):
        path = tmp_path / f"{i}-{name}"
        path.write_bytes(text)
        began = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "metadapt.cli", "check", str(path)], capture_output=True,
                              text=True, timeout=CASE_SECONDS * 2)
        _assert_clean(proc.returncode, proc.stderr, time.monotonic() - began, f"check {name}: {text[:400]!r}")
