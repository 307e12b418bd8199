"""Sweeps: a grid of configs run as independent, resumable runs, then one table.

A sweep file names a base config, fixed overrides and a grid::

    name: mb_planners
    base: ../mb_halfcheetah.yaml        # relative to the sweep file
    command: run                        # run (train if needed, then trials) | train
    set: {trial.steps: 1000}            # overrides for every run
    methods:                            # optional: named bundles of overrides, one grid axis "method"
      mb: {learner.type: mb, model.checkpoint: runs/mb}
      mole: {learner.type: mole, model.checkpoint: "builtin:halfcheetah_malfunction"}
    grid:                               # the product of these lists
      seed: [0, 1, 2]
      planner.type: [rs, cem, mppi]
    resources: {cpus: 1, gpus: 0}       # per run (ray backend)

Every grid point becomes a run directory ``<sweep>/runs/<hash>`` named by a
hash of its fully resolved config, holding ``status.json`` (``done`` or
``failed`` with the traceback in ``error.txt``). Rerunning a sweep skips done
runs, resumes interrupted trainings from their checkpoints and reruns the
rest; a point whose config is invalid fails alone. Grid points that resolve to
the same config are one run (the later ones are dropped, so a repeated seed is
not counted twice). ``results.csv`` has one row per run; ``report.md``
aggregates over seeds (mean, std, 95% CI, n).

A sweep holds a lock on its folder (``sweep.lock``, holding its process id) while
it runs: a second sweep on the same folder refuses at once in one line rather
than running the same points beside it. The lock is the operating system's
(``flock``), so a sweep killed by SIGKILL leaves no stale lock behind.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metadapt.errors import ConfigError, MetadaptError, one_line
from metadapt.experiments.configuration.config import dump_config, load_config, system_of, without_later_defaults
from metadapt.experiments.configuration.files import plain_json, read_yaml_file, write_json
from metadapt.experiments.configuration.schema import check_name
from metadapt.experiments.reporting.metrics import ANALYSIS_FIELDS, LIFELONG_FIELDS, mean_analysis, method_name

RESULT_FIELDS = ("run", "status", "mean_return", "std_return", "trials", "seconds")
_KEYS = {"name", "base", "command", "set", "methods", "grid", "resources"}
SWEPT_SYSTEMS = ("mbrl", "gcg")  # the systems whose runs give the numbers the report aggregates
MAX_POINTS = 10_000  # a grid beyond this is a typo, not a sweep (each point is a run)
LOCK = "sweep.lock"


@dataclass(frozen=True)
class Point:
    """One grid point: its overrides, resolved config (or the error that made it invalid) and directory."""

    labels: dict[str, Any]
    overrides: list[str]
    config: dict[str, Any] | None
    error: str | None
    run_id: str


@dataclass
class Sweep:
    name: str
    command: str
    points: list[Point]
    grid_keys: list[str]
    resources: dict[str, float] = field(default_factory=dict)
    # labels of grid points dropped because an earlier point resolves to the same config (the same run)
    duplicates: list[dict[str, Any]] = field(default_factory=list)


def _override_text(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


def config_hash(cfg: dict[str, Any]) -> str:
    """Stable id of a resolved config (the run directory's name); keys added to the schema later count only
    when they differ from their defaults (``configuration.config.LATER_KEYS``), so older sweeps resume."""
    stable = without_later_defaults(cfg)
    return hashlib.sha1(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _config_keys(value: Any, path: Path, what: str) -> dict[str, Any]:
    """A mapping of config keys (strings) to values; one line naming ``what`` otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"sweep file {path}: '{what}' must be a mapping of config keys, got {one_line(repr(value))}")
    return value


def _resources(value: Any, path: Path) -> dict[str, float]:
    """``resources``: cpus and gpus per run, numbers >= 0."""
    if value is None:
        return {}
    ok = isinstance(value, dict) and all(
        k in ("cpus", "gpus") and not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v) and v >= 0
        for k, v in value.items())
    if not ok:
        raise ConfigError(f"sweep file {path}: 'resources' must map cpus and gpus to numbers >= 0 "
                          f"(e.g. {{cpus: 1, gpus: 0}}), got {one_line(repr(value))}")
    return {k: float(v) for k, v in value.items()}


def load_sweep(path: str | Path) -> Sweep:
    """Parse and expand a sweep file; an invalid grid point is kept as a failed point, not an error.

    Points that resolve to the same config as an earlier one are dropped (``Sweep.duplicates``): they would be
    the same run in the same folder.
    """
    path = Path(path)
    spec = read_yaml_file(path, "sweep file") or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep file {path} must be a mapping")
    unknown = set(spec) - _KEYS
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key(s) {sorted(map(str, unknown))} (allowed: {sorted(_KEYS)})")
    name = spec.get("name", path.stem)
    if not isinstance(name, str) or (why := check_name(name)) is not None:
        raise ConfigError(f"sweep file {path}: 'name' names the sweep's folder: {one_line(repr(name))} "
                          f"{why if isinstance(name, str) else 'is not a string'}")
    command = spec.get("command", "run")
    if command not in ("run", "train"):
        raise ConfigError(f"sweep file {path}: 'command' must be run or train, got {one_line(repr(command))}")
    base = spec.get("base")
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"sweep file {path}: 'base' must be the path of a config file, got {one_line(repr(base))}")
    base_path = (path.parent / base) if base else None
    if base_path is not None and not base_path.is_file():
        raise ConfigError(f"sweep file {path}: base config not found: {base_path}")
    fixed = _config_keys(spec.get("set"), path, "set")
    grid = _config_keys(spec.get("grid"), path, "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep file {path}: grid key '{key}' must map to a non-empty list")
    methods = spec.get("methods") or {}
    if not isinstance(methods, dict) or not all(isinstance(m, str) for m in methods):
        raise ConfigError(f"sweep file {path}: 'methods' must map method names to mappings of config keys")
    methods = {m: _config_keys(bundle, path, f"methods.{m}") for m, bundle in methods.items()}
    if methods and "method" in grid:
        raise ConfigError(f"sweep file {path}: 'method' is the axis 'methods' defines; it cannot also be a grid key")
    axes = ({"method": list(methods)} if methods else {}) | grid
    keys = list(axes)
    if math.prod(len(v) for v in axes.values()) > MAX_POINTS:
        raise ConfigError(f"sweep file {path}: the grid has {math.prod(len(v) for v in axes.values())} points, "
                          f"more than {MAX_POINTS}")
    points: list[Point] = []
    duplicates: list[dict[str, Any]] = []
    seen: set[str] = set()
    for combo in itertools.product(*(axes[k] for k in keys)):
        labels = dict(zip(keys, combo, strict=True))
        bundle = methods[labels["method"]] if methods else {}
        overrides = [_override_text(k, v) for k, v in {**fixed, **bundle}.items()]
        # "method" is the methods axis's label, not a config key; without a methods section it is the config's own
        # key (system gcg's method), set like any other grid key.
        overrides += [_override_text(k, v) for k, v in labels.items() if not (methods and k == "method")]
        try:
            cfg = load_config(base_path, overrides)
            point = Point(labels, overrides, cfg, None, config_hash(cfg))
        except MetadaptError as exc:
            bad = hashlib.sha1(json.dumps(overrides).encode()).hexdigest()[:12]
            point = Point(labels, overrides, None, one_line(exc), f"invalid-{bad}")
        if point.config is not None and (system := system_of(point.config)) not in SWEPT_SYSTEMS:
            raise ConfigError(f"sweep file {path}: system {system} has no result a sweep can aggregate (allowed: "
                              f"{', '.join(SWEPT_SYSTEMS)}; meta-RL and supervised runs report their own intervals)")
        if point.run_id in seen:
            duplicates.append(labels)
            continue
        seen.add(point.run_id)
        points.append(point)
    return Sweep(name, command, points, keys, _resources(spec.get("resources"), path), duplicates)


@contextmanager
def sweep_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold ``out_dir/sweep.lock`` (with this process id) while a sweep writes into ``out_dir``.

    A second holder is refused at once in one line naming the process that holds
    it. The lock is an ``flock`` on the file, released by the operating system when
    its process ends, however it ends; the same process may take it again (``cmd_sweep``
    holds it around ``run_sweep``, which takes it too).
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): sweeps there are not protected from each other
        yield
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = (out / LOCK).resolve()
    if path in _HELD:
        yield
        return
    while True:
        f = open(path, "a+")  # noqa: SIM115 (held for the whole sweep)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise MetadaptError(f"sweep folder {out} is in use by process {one_line(holder, 40)} (lock {path}): "
                                "wait for that sweep to end, or give this one another --out") from None
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()  # the file was replaced between open and lock: lock the one that is there now
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _HELD[path] = f
    try:
        yield
    finally:
        _HELD.pop(path, None)
        f.close()  # releases the flock; the file stays (removing it would race with a sweep opening it)


# The locks this process holds. Forked pool workers close their copies (``_die_with_parent``): the lock must end
# with the sweep process, not wait for its last worker.
_HELD: dict[Path, Any] = {}


def _status(run_dir: Path) -> str | None:
    status = run_dir / "status.json"
    if not status.is_file():
        return None
    try:
        return str(json.loads(status.read_text()).get("status"))
    except (json.JSONDecodeError, OSError):
        return None


def _error_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), cut to a readable length."""
    text = str(exc).strip()
    return one_line(text.splitlines()[0]) if text else type(exc).__name__


def execute_point(command: str, config: dict[str, Any], run_dir: str, threads: int) -> dict[str, Any]:
    """Run one grid point in this process; never raises (failures are recorded in the run directory, when the
    disk still takes them, and always in the returned result)."""
    out = Path(run_dir)
    start = time.perf_counter()
    result: dict[str, Any] = {"run": out.name, "status": "failed", "mean_return": None,
                              "std_return": None, "trials": 0}
    try:
        import torch

        from metadapt.experiments.jobs import runner
        from metadapt.experiments.reporting.progress import Reporter

        torch.set_num_threads(max(1, threads))
        out.mkdir(parents=True, exist_ok=True)
        if (system := system_of(config)) != "mbrl":  # its training is its evaluation; its summary has the numbers
            from metadapt.experiments import jobs

            summary = jobs.train(config, out, Reporter(), resume=(out / "checkpoints").is_dir())
            if not isinstance(summary, dict) or "mean_return" not in summary:
                raise MetadaptError(f"system {system} gives no result a sweep can aggregate")
            result.update(mean_return=float(summary["mean_return"]), std_return=0.0, trials=1)
            result.update({k: float(summary[k]) for k in LIFELONG_FIELDS if k in summary})
        elif command == "train":
            resume = (out / "checkpoints" / "latest.pt").is_file()
            runner.train(config, out, Reporter(), resume=resume)
        else:
            # A trial that was interrupted is rerun whole; an interrupted training resumes from its checkpoint.
            train_dir = out / "train"
            if not config["model"]["checkpoint"] and (train_dir / "checkpoints" / "latest.pt").is_file():
                runner.train(config, train_dir, Reporter(), resume=True)
                config = {**config, "model": {**config["model"], "checkpoint": str(train_dir)}}
            trials = runner.run(config, out, Reporter())
            returns = [t.total_return for t in trials]
            result.update(mean_return=float(np.mean(returns)), std_return=float(np.std(returns)), trials=len(trials))
            result.update(mean_analysis([t.analysis for t in trials]))
        result["status"] = "done"
    except Exception as exc:  # a failing run must not stop the sweep: record it and go on
        result["error"] = _error_line(exc)
        with suppress(OSError):  # a full disk (say) must not stop the sweep either: the result still says why
            (out / "error.txt").write_text("".join(traceback.format_exception(exc)))
    result["seconds"] = time.perf_counter() - start
    result = plain_json(result)  # NaN returns are null, in status.json and in the result alike
    try:
        write_json(out / "status.json", result)
    except OSError as exc:
        if result["status"] == "done":  # not recorded as done: a rerun must run it again
            result.update(status="failed", error=f"status.json not written: {_error_line(exc)}")
    return result


def _failed_result(point: Point, why: str) -> dict[str, Any]:
    """The result of a point whose process never returned one (a worker killed by the system, say)."""
    return {"run": point.run_id, "status": "failed", "mean_return": None, "std_return": None, "trials": 0,
            "seconds": 0.0, "error": one_line(why)}


def _die_with_parent() -> None:
    """Pool initializer: on Linux, a worker is killed when the sweep process dies (even by SIGKILL).

    Without it an orphaned worker would go on writing into a run directory that
    the rerun of the sweep is redoing. It also closes the worker's inherited copy
    of the sweep's lock, which then ends with the sweep process alone.
    """
    for held in list(_HELD.values()):
        with suppress(OSError):
            held.close()
    _HELD.clear()
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _record_invalid(point: Point, run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").write_text(f"invalid config: {point.error}\noverrides: {point.overrides}\n")
    result = {"run": run_dir.name, "status": "failed", "mean_return": None, "std_return": None,
              "trials": 0, "seconds": 0.0, "error": point.error}
    write_json(run_dir / "status.json", result)
    return result


def run_sweep(
    sweep: Sweep,
    out_dir: str | Path,
    workers: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    on_event: Callable[[str, Point, dict[str, Any] | None], None] | None = None,
    threads_per_run: int | None = None,
) -> list[dict[str, Any]]:
    """Run every grid point not already done; returns one result per point (grid order).

    Local runs get ``threads_per_run`` torch threads each (default: the cores
    shared evenly among the workers).

    ``on_event(kind, point, result)`` is called with kind ``skip``, ``start``,
    ``done`` or ``failed``.
    """
    with sweep_lock(out_dir):
        return _run_sweep(sweep, Path(out_dir), workers, backend, ray_address, on_event, threads_per_run)


def _run_sweep(
    sweep: Sweep,
    out: Path,
    workers: int | None,
    backend: str,
    ray_address: str | None,
    on_event: Callable[[str, Point, dict[str, Any] | None], None] | None,
    threads_per_run: int | None,
) -> list[dict[str, Any]]:
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    emit = on_event or (lambda kind, point, result: None)
    results: dict[str, dict[str, Any]] = {}
    todo: list[Point] = []
    for p in sweep.points:
        run_dir = runs / p.run_id
        if p.config is None:
            results[p.run_id] = _record_invalid(p, run_dir)
            emit("failed", p, results[p.run_id])
        elif _status(run_dir) == "done":
            results[p.run_id] = {**json.loads((run_dir / "status.json").read_text()), "run": p.run_id}
            emit("skip", p, results[p.run_id])
        else:
            dump_config(p.config, _prepare(run_dir))
            todo.append(p)
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(todo) or 1))
    if backend == "ray":
        results.update(_run_ray(sweep, todo, runs, ray_address, emit))
    elif backend == "local":
        threads = threads_per_run or max(1, cores // workers)
        # Spawned, not forked: a process that has run torch's OpenMP thread pool (a notebook, a test session,
        # anything that trained before calling run_sweep) deadlocks its forked children in their first
        # parallel torch op. A spawned worker imports torch and MuJoCo once (seconds) and runs many points.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent, mp_context=ctx) as pool:
            pending: dict[Future[dict[str, Any]], Point] = {}
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < workers:
                    p = queue.pop(0)
                    emit("start", p, None)
                    try:
                        fut = pool.submit(execute_point, sweep.command, p.config, str(runs / p.run_id), threads)
                    except RuntimeError as exc:  # the pool broke (a worker was killed): the point fails alone
                        results[p.run_id] = _failed_result(p, f"not started: {_error_line(exc)}")
                        emit("failed", p, results[p.run_id])
                        continue
                    pending[fut] = p
                if not pending:
                    continue
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    p = pending.pop(fut)
                    try:
                        results[p.run_id] = fut.result()
                    except Exception as exc:  # its worker died (out of memory, killed): the point fails alone
                        results[p.run_id] = _failed_result(p, f"its worker process died: {_error_line(exc)}")
                    emit(results[p.run_id]["status"], p, results[p.run_id])
    else:
        raise ConfigError(f"unknown backend '{backend}' (allowed: local, ray)")
    ordered = [results[p.run_id] for p in sweep.points]
    write_results(sweep, ordered, out)
    return ordered


def _prepare(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir / "sweep_config.yaml"


def _run_ray(sweep: Sweep, todo: list[Point], runs: Path, address: str | None,
             emit: Callable[[str, Point, dict[str, Any] | None], None]) -> dict[str, dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise MetadaptError("the ray backend needs Ray: pip install 'metadapt[ray]'") from None
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    cpus = float(sweep.resources.get("cpus", 1))
    gpus = float(sweep.resources.get("gpus", 0))
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus)(execute_point)
    refs = {}
    for p in todo:
        emit("start", p, None)
        refs[remote.remote(sweep.command, p.config, str(runs / p.run_id), max(1, int(cpus)))] = p
    out: dict[str, dict[str, Any]] = {}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        p = refs[ready[0]]
        try:
            out[p.run_id] = ray.get(ready[0])
        except Exception as exc:  # its worker died: the point fails alone
            out[p.run_id] = _failed_result(p, f"its Ray task died: {_error_line(exc)}")
        emit(out[p.run_id]["status"], p, out[p.run_id])
    return out


def write_results(sweep: Sweep, results: list[dict[str, Any]], out: Path) -> Path:
    """``results.csv``: one row per run, its grid labels included."""
    path = out / "results.csv"
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        lifelong = [k for k in LIFELONG_FIELDS if any(k in r for r in results)]  # only a lifelong sweep has them
        fields = [*RESULT_FIELDS, *ANALYSIS_FIELDS, *lifelong, *sweep.grid_keys, "error"]
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for p, r in zip(sweep.points, results, strict=True):
            w.writerow({**{k: r.get(k, "") for k in (*RESULT_FIELDS, *ANALYSIS_FIELDS, *lifelong)}, **p.labels,
                        "error": r.get("error", "")})
    tmp.replace(path)
    return path


# Two-sided 95% Student t quantiles for n - 1 degrees of freedom (n = 2..30); 1.96 beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045]


def mean_ci(values: list[float]) -> tuple[float, float, float, int]:
    """(mean, std, half-width of the 95% confidence interval of the mean, n)."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), 0.0, math.nan, 1
    std = float(x.std(ddof=1))
    t = _T95[n - 2] if n - 2 < len(_T95) else 1.96
    return float(x.mean()), std, t * std / math.sqrt(n), n


def _number(cell: Any) -> float:
    """A numeric cell of ``results.csv``; empty or unreadable cells are NaN (left out of every mean)."""
    try:
        return float(cell)
    except (TypeError, ValueError):
        return math.nan


def aggregate(rows: list[dict[str, str]], group_keys: list[str]) -> list[dict[str, Any]]:
    """Group ``results.csv`` rows by ``group_keys`` (everything but the seed) and summarise them.

    The returns get mean, std, 95% CI and n; every ``ANALYSIS_FIELDS`` column
    present gets ``<field>`` (its mean over the seeds that have it) and
    ``<field>_ci95``.
    """
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    failed: dict[tuple[str, ...], int] = {}
    for r in rows:
        key = tuple(r.get(k, "") for k in group_keys)
        groups.setdefault(key, [])
        if r["status"] == "done":
            groups[key].append(r)
        else:
            failed[key] = failed.get(key, 0) + 1

    def column(done: list[dict[str, str]], name: str) -> list[float]:
        return [_number(r.get(name)) for r in done]

    out = []
    for key, done in groups.items():
        mean, std, ci, n = mean_ci(column(done, "mean_return"))
        g = {**dict(zip(group_keys, key, strict=True)), "mean": mean, "std": std, "ci95": ci, "n": n,
             "failed": failed.get(key, 0)}
        for name in ANALYSIS_FIELDS:
            m, _, c, k = mean_ci(column(done, name))
            if k:
                g[name], g[f"{name}_ci95"] = m, c
        out.append(g)
    return out


def paired_differences(rows: list[dict[str, str]], group_keys: list[str]) -> list[dict[str, Any]]:
    """Per-seed differences of mean return between every two methods run on the same seeds.

    Methods that share a seed share its task schedule and initial states, so the per-seed difference removes
    what the seed does to both; an unpaired table can show overlapping intervals for a method that wins on every
    seed. One entry per (the other grid keys, method a, method b), with the mean difference ``a - b``, its 95%
    interval (Student's t over the seeds both completed), ``wins`` (seeds where a's return is higher), ``losses``
    and ``n``. Empty unless the sweep has a ``method`` axis and a ``seed`` column.
    """
    if "method" not in group_keys or not rows or "seed" not in rows[0]:
        return []
    others = [k for k in group_keys if k != "method"]
    returns: dict[tuple[str, ...], dict[str, dict[str, float]]] = {}
    for r in rows:
        value = _number(r.get("mean_return"))
        if r["status"] == "done" and math.isfinite(value):
            key = tuple(r.get(k, "") for k in others)
            returns.setdefault(key, {}).setdefault(r["method"], {})[r["seed"]] = value
    out = []
    for key, by_method in returns.items():
        methods = list(by_method)
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                seeds = sorted(set(by_method[a]) & set(by_method[b]))
                if not seeds:
                    continue
                diffs = [by_method[a][s] - by_method[b][s] for s in seeds]
                mean, _, ci, n = mean_ci(diffs)
                out.append({**dict(zip(others, key, strict=True)), "a": a, "b": b, "mean": mean, "ci95": ci, "n": n,
                            "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs)})
    return out


def _paired_lines(pairs: list[dict[str, Any]], others: list[str], digits: int = 1, what: str = "return") -> list[str]:
    if not pairs:
        return []
    lines = ["", "Paired by seed (methods on one seed share its task schedule): the mean over seeds of each seed's "
             f"{what} difference, its 95% interval, and on how many seeds the first method's {what} is higher.", "",
             "| " + " | ".join([*others, "difference", "mean", "95% CI", "wins", "losses", "seeds"]) + " |",
             "|" + "---|" * (len(others) + 1) + "---:|---:|---:|---:|---:|"]
    for p in pairs:
        ci = f"± {p['ci95']:.{digits}f}" if math.isfinite(p["ci95"]) else "n/a"
        lines.append("| " + " | ".join([*(str(p[k]) for k in others),
                                        f"{method_name(p['a'])} − {method_name(p['b'])}",
                                        f"{p['mean']:+.{digits}f}", ci,
                                        str(p["wins"]), str(p["losses"]), str(p["n"])]) + " |")
    return lines


def _cells(g: dict[str, Any], keys: list[str]) -> list[str]:
    """A group's grid values as table cells, methods as the papers name them."""
    return [method_name(g[k]) if k == "method" else str(g[k]) for k in keys]


def _label(g: dict[str, Any], keys: list[str]) -> str:
    """A group's name in tables and legends: its grid values, methods as the papers name them."""
    return " / ".join(_cells(g, keys)) or "all"


def _damaged_lines(damaged: dict[str, str], consequence: str) -> list[str]:
    """The report's section on runs whose files could not be read (the report goes on without them)."""
    if not damaged:
        return []
    return ["", "## Runs whose files could not be read", "",
            *[f"- `{run}`: {why} ({consequence})" for run, why in damaged.items()]]


def _curve_figures(out: Path, rows: list[dict[str, str]], group_keys: list[str],
                   damaged: dict[str, str]) -> list[str]:
    """Cumulative reward per group (mean over seeds, first trial) and one MOLe run's task probabilities; a run whose
    metrics.csv cannot be read as CSV is left out of the curves and recorded in ``damaged``."""
    from metadapt.experiments.reporting.report import (
        mark_switches,
        plot_task_probabilities,
        plt,
        read_csv,
        read_posterior,
        save_figure,
        smooth,
    )

    curves: dict[str, list[np.ndarray]] = {}
    errors: dict[str, list[np.ndarray]] = {}
    mole: tuple[str, dict[str, np.ndarray], tuple[list[int], np.ndarray]] | None = None
    first: dict[str, np.ndarray] | None = None  # the first run's steps and tasks: where the switches are marked
    for r in rows:
        trial = out / "runs" / r["run"] / "trial_0"
        try:
            m = read_csv(trial / "metrics.csv") if r["status"] == "done" else {}
        except MetadaptError as exc:
            damaged[r["run"]] = _error_line(exc)
            continue
        if "return" not in m or m["return"].dtype == object:
            continue
        if first is None and all(k in m and m[k].dtype != object for k in ("step", "task_id")):
            first = m
        label = _label(r, group_keys)
        curves.setdefault(label, []).append(m["return"])
        if "model_error" in m and m["model_error"].dtype != object:
            errors.setdefault(label, []).append(m["model_error"])
        posterior = read_posterior(trial, m) if mole is None else None
        if posterior is not None:
            mole = (f"{label}, run {r['run']}", m, posterior)
    lines = []
    if curves:
        fig, ax = plt.subplots(figsize=(8, 3.8))
        for label, runs in curves.items():
            n = min(len(c) for c in runs)
            ax.plot(np.mean([c[:n] for c in runs], axis=0), lw=1.2, label=f"{label} (n={len(runs)})")
        if first is not None:
            mark_switches(ax, first)
        ax.set_xlabel("step")
        ax.set_ylabel("cumulative reward (mean over seeds)")
        ax.legend(fontsize=7)
        save_figure(fig, out / "cumulative_reward.png")
        lines += ["", "![cumulative reward per group](cumulative_reward.png)"]
    if errors:
        fig, ax = plt.subplots(figsize=(8, 3.8))
        for label, runs in errors.items():
            n = min(len(c) for c in runs)
            ax.semilogy(smooth(np.nanmean([c[:n] for c in runs], axis=0)), lw=1, label=f"{label} (n={len(runs)})")
        if first is not None:
            mark_switches(ax, first)
        ax.set_xlabel("step")
        ax.set_ylabel("one-step model error of the planning\nparameters (normalized MSE, mean of the last 25 steps)")
        ax.legend(fontsize=7)
        save_figure(fig, out / "model_error.png")
        lines += ["", "![model error per group](model_error.png)"]
    if mole is not None:
        plot_task_probabilities(mole[1], mole[2], out / "task_probabilities.png",
                                f"MOLe task probabilities ({mole[0]})")
        lines += ["", "![MOLe task probabilities, true task shaded](task_probabilities.png)"]
    return lines


def read_results(path: Path) -> list[dict[str, str]]:
    """The rows of a sweep's ``results.csv``; a file that is not one is one ``MetadaptError`` line naming it."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MetadaptError(f"{path} cannot be read as a sweep's results table ({_error_line(exc)})") from None
    missing = [k for k in ("run", "status", "mean_return") if k not in columns]
    if missing:
        raise MetadaptError(f"{path} is not a results table written by metadapt sweep (no column "
                            f"{', '.join(missing)})")
    for r in rows:
        r.pop(None, None)  # cells beyond the header (csv puts them under None)
        if not all(isinstance(v, str) for v in r.values()):
            raise MetadaptError(f"{path} is not a results table written by metadapt sweep (a row is shorter than "
                                "the header)")
    return rows


def write_sweep_report(out_dir: str | Path) -> Path:
    """``report.md`` of a sweep directory: the aggregated table and a figure of returns per group."""
    from metadapt.experiments.reporting.report import plt, save_figure

    out = Path(out_dir)
    rows = read_results(out / "results.csv")
    grid_keys = [k for k in (rows[0].keys() if rows else [])
                 if isinstance(k, str) and k not in (*RESULT_FIELDS, *ANALYSIS_FIELDS, *LIFELONG_FIELDS, "error")]
    group_keys = [k for k in grid_keys if k != "seed"]
    if rows and "j_average" in rows[0]:
        return _lifelong_sweep_report(out, rows, group_keys)
    table = aggregate(rows, group_keys)
    done = sum(r["status"] == "done" for r in rows)
    lines = [f"# metadapt sweep report: {out.name}", "",
             f"{len(rows)} runs: {done} done, {len(rows) - done} failed. Returns are each run's mean trial return; "
             "the table aggregates over seeds (std with ddof 1; 95% CI of the mean from Student's t).", "",
             "| " + " | ".join([*group_keys, "mean return", "std", "95% CI", "seeds", "failed"]) + " |",
             "|" + "---|" * len(group_keys) + "---:|---:|---:|---:|---:|"]
    for g in table:
        ci = f"± {g['ci95']:.1f}" if math.isfinite(g["ci95"]) else "n/a"
        lines.append("| " + " | ".join([*_cells(g, group_keys), f"{g['mean']:.1f}", f"{g['std']:.1f}",
                                        ci, str(g["n"]), str(g["failed"])]) + " |")
    lines += _paired_lines(paired_differences(rows, group_keys), [k for k in group_keys if k != "method"])
    present = [f for f in ANALYSIS_FIELDS if any(f in g for g in table)]
    if present:
        lines += ["", "Adaptation metrics (mean over seeds, ± the 95% CI half-width): task recovery is the adjusted "
                  "Rand index of the chosen component against the true task, steps within K of a switch excluded; "
                  "effective components are those chosen for at least 5% of the steps; first/last 500 are the "
                  "returns of the first and last 500 steps spent in the trial's first task; upside_down is the "
                  "share of steps a legged robot ends with its torso's up axis below the horizon, "
                  "forward_velocity its mean forward velocity (m/s).", "",
                  "| " + " | ".join([*group_keys, *present]) + " |", "|" + "---|" * len(group_keys)
                  + "---:|" * len(present)]
        for g in table:
            cells = [f"{g[f]:.3g} ± {g[f + '_ci95']:.2g}" if f in g and math.isfinite(g[f + "_ci95"])
                     else (f"{g[f]:.3g}" if f in g else "") for f in present]
            lines.append("| " + " | ".join([*_cells(g, group_keys), *cells]) + " |")
    if table:
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(table)), 3.5))
        labels = [_label(g, group_keys) for g in table]
        means = [g["mean"] for g in table]
        errs = [0.0 if not math.isfinite(g["ci95"]) else g["ci95"] for g in table]
        ax.bar(range(len(table)), means, yerr=errs, capsize=4, color="#7aa6c2")
        ax.set_xticks(range(len(table)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("mean return (95% CI)")
        save_figure(fig, out / "returns.png")
        lines += ["", "![returns per group](returns.png)"]
        damaged: dict[str, str] = {}
        try:
            lines += _curve_figures(out, rows, group_keys, damaged)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            # Each run's metrics.csv was read as CSV; a column of the wrong kind is still the file's fault.
            raise MetadaptError(f"cannot draw the figures of sweep {out}: a run's metrics.csv is not what metadapt "
                                f"writes ({type(exc).__name__}: {one_line(exc)})") from exc
        lines += _damaged_lines(damaged, "its return is the one results.csv holds and it has no curve")
    failures = [r for r in rows if r["status"] != "done"]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [f"- `{r['run']}`: {r.get('error', '')} (see runs/{r['run']}/error.txt)" for r in failures]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _lifelong_sweep_report(out: Path, rows: list[dict[str, str]], group_keys: list[str]) -> Path:
    """The report of a sweep of lifelong runs (``system: gcg``): J_average at the end, recovery and adaptation per
    group with 95% intervals over seeds, paired differences, and J_average(T) of every group on one figure."""
    from metadapt.experiments.reporting.lifelong import read_steps, summarize_run, switch_steps
    from metadapt.experiments.reporting.lifelong_report import lifelong_figure

    done = [r for r in rows if r["status"] == "done"]
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for r in done:
        groups.setdefault(tuple(r.get(k, "") for k in group_keys), []).append(r)

    def cell(values: list[float], digits: int) -> str:
        mean, _, ci, n = mean_ci(values)
        if not n:
            return "-"
        return f"{mean:.{digits}f} ± {ci:.{digits}f}" if math.isfinite(ci) else f"{mean:.{digits}f}"

    heads = ["J_average at the end", "steps to recover", "censored share", "CE before → after adapting",
             "after switches: before → after", "seeds"]
    lines = [f"# metadapt sweep report: {out.name}", "",
             f"{len(rows)} runs: {len(done)} done, {len(rows) - len(done)} failed. Lifelong runs: J_average is each "
             "run's mean reward over its whole stream; recovery, the steps after a rotation switch until the reward "
             "rate is back to its share of the pre-switch rate (censored: the next switch came first); CE, the "
             "reward-prediction cross-entropy of the next steps before and after each online adaptation. Mean over "
             "seeds ± the 95% interval of the mean (Student's t).", "",
             "| " + " | ".join([*group_keys, *heads]) + " |", "|" + "---|" * len(group_keys) + "---:|" * len(heads)]
    damaged: dict[str, str] = {}  # run -> why its files could not be read: its results.csv row stands
    for r in done:  # the metrics as defined now, from each run's own steps (results.csv keeps what its run wrote)
        run_dir = out / "runs" / r["run"]
        if (run_dir / "steps.csv").is_file() and (run_dir / "config.yaml").is_file():
            try:
                summary = summarize_run(run_dir)
            except MetadaptError as exc:
                damaged[r["run"]] = _error_line(exc)
                continue
            r.update({k: str(v) for k, v in summary.items() if k in LIFELONG_FIELDS})
            r["mean_return"] = r["j_average"]
    for key, runs in groups.items():
        col = {f: [_number(r.get(f)) for r in runs] for f in LIFELONG_FIELDS}
        g = dict(zip(group_keys, key, strict=True))
        lines.append("| " + " | ".join([*_cells(g, group_keys), cell(col["j_average"], 4),
                                        cell(col["recovery_steps"], 0), cell(col["recovery_censored"], 2),
                                        f"{cell(col['ce_before'], 3)} → {cell(col['ce_after'], 3)}",
                                        f"{cell(col['ce_before_after_switch'], 3)} → "
                                        f"{cell(col['ce_after_after_switch'], 3)}", str(len(runs))]) + " |")
    lines += _paired_lines(paired_differences(rows, group_keys), [k for k in group_keys if k != "method"],
                           digits=4, what="J_average")
    curves: dict[str, list[np.ndarray]] = {}
    switches = np.zeros(0, dtype=int)
    for key, runs in groups.items():
        label = _label(dict(zip(group_keys, key, strict=True)), group_keys)
        for r in runs:
            steps = out / "runs" / r["run"] / "steps.csv"
            if steps.is_file() and r["run"] not in damaged:
                cols = read_steps(steps)
                curves.setdefault(label, []).append(cols["reward"])
                if not switches.size:  # one seed's switches; other seeds switch elsewhere
                    switches = switch_steps(cols["rotation"])
    if curves:
        lifelong_figure(curves, switches, out / "j_average.png",
                        title="mean over seeds, band: min to max; dotted: the first seed's switches")
        lines += ["", "![J_average per method](j_average.png)"]
    lines += _damaged_lines(damaged, "its numbers are those results.csv holds and it has no curve")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
