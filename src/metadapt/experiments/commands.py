"""What each ``metadapt`` command does, given its parsed arguments; ``cli.py`` only parses and dispatches.

Every function takes the ``argparse.Namespace`` of its sub-command and returns
the exit code; problems are ``MetadaptError``s, which the command line prints
as one line with exit code 2. Once a command knows its run directory it sets
``args.log_dir``: an unexpected error's traceback goes there.
"""

from __future__ import annotations

import argparse
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metadapt.errors import ConfigError, MetadaptError

# The configs and sweeps shipped inside the package (package data: a plain install has them; the repository's
# top-level configs/ is a link to this folder). Sweeps name their base config relative to themselves.
SHIPPED = Path(__file__).resolve().parents[1] / "configs"
DEMO_SWEEP = "demo"


@dataclass(frozen=True)
class ShippedConfig:
    """One shipped file: its name (the file's stem), kind (config or sweep), path and one-line description."""

    name: str
    kind: str
    path: Path
    description: str


def _description(path: Path) -> str:
    """The file's first comment line, without the ``#`` (nor a comma or colon that leads on to the next line)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip().startswith("#"):
                    return line.strip().lstrip("#").strip().rstrip(",;:")
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def shipped_configs() -> list[ShippedConfig]:
    """The shipped configs, then the shipped sweeps, each sorted by name."""
    if not SHIPPED.is_dir():
        raise MetadaptError(f"this installation of metadapt lacks its shipped configs ({SHIPPED} is missing): "
                            "reinstall it (pip install metadapt)")
    return [ShippedConfig(p.stem, kind, p, _description(p))
            for kind, folder in (("config", SHIPPED), ("sweep", SHIPPED / "sweeps"))
            for p in sorted(folder.glob("*.yaml"))]


def _shipped_name(text: str) -> str:
    """``configs/sweeps/demo.yaml``, ``sweeps/demo`` or ``demo`` -> ``demo``: the README's paths name shipped files
    from any folder."""
    name = text.removesuffix(".yaml").removesuffix(".yml")
    for prefix in ("./", "configs/", "sweeps/"):
        name = name.removeprefix(prefix)
    return name


def resolve_file(text: str, kind: str) -> str:
    """A CONFIG (``kind`` config) or SWEEP (``kind`` sweep) argument: a file that exists as given, else the shipped
    file of that name; anything else is one line naming the closest shipped names."""
    what = f"{kind} file"
    if "\0" in text:  # no file name holds one
        raise ConfigError(f"{what} not found: {text!r}")
    if Path(text).is_file():
        return text
    name = _shipped_name(text)
    if "/" in name or os.sep in name:  # a path, not a name
        raise ConfigError(f"{what} not found: {text} (shipped {kind}s are named without a folder: metadapt configs "
                          "lists them)")
    shipped = shipped_configs()
    for item in shipped:
        if item.name == name and item.kind == kind:
            return str(item.path)
    other = next((i for i in shipped if i.name == name), None)
    if other is not None:
        command = "metadapt sweep" if other.kind == "sweep" else "metadapt run (or train, check)"
        raise ConfigError(f"{what} not found: {text}: '{name}' is a shipped {other.kind}, not a {kind}: "
                          f"use it with {command} {name}")
    names = [i.name for i in shipped if i.kind == kind]
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    close += [n for n in names if name and name.lower() in n.lower() and n not in close]
    hint = f"close shipped {kind}s: {', '.join(close[:4])}; " if close else ""
    raise ConfigError(f"{what} not found: {text} (no such file, and no shipped {kind} of that name; {hint}"
                      "metadapt configs lists the shipped ones)")


def _reporter(quiet: bool):
    from metadapt.experiments.reporting.progress import Reporter, RichReporter

    return Reporter() if quiet else RichReporter()


def _run_dir(args: argparse.Namespace, name: str) -> Path:
    """The run directory of ``train`` or ``run``: ``--out`` or a new ``runs/<name>[-i]``, checked to be creatable
    (the job makes it once the config has passed its checks: a run that cannot start writes nothing).

    An existing ``--out`` that is not empty is another run's: refused unless ``--force``, so that a run never
    silently writes over one. ``name`` was checked by the schema: it stays inside ``runs/``.
    """
    from metadapt.experiments.jobs import runner

    path = Path(args.out) if args.out else runner.unique_dir(Path("runs") / name)
    if path.exists():
        if not path.is_dir():
            raise MetadaptError(f"--out {path} is a file, not a directory")
        if any(path.iterdir()) and not args.force:
            raise MetadaptError(f"--out {path} already exists and is not empty (an earlier run?): choose another "
                                "directory, or pass --force to write over it")
        writable = path
    else:
        writable = next(p for p in path.absolute().parents if p.exists())
        if not writable.is_dir():
            raise MetadaptError(f"cannot create the run directory {path}: {writable} is not a directory")
    if not os.access(writable, os.W_OK | os.X_OK):
        raise MetadaptError(f"cannot create the run directory {path}: {writable} is not writable")
    args.log_dir = path
    return path


def cmd_train(args: argparse.Namespace) -> int:
    from metadapt.experiments import jobs
    from metadapt.experiments.configuration.config import load_config, system_of

    with _reporter(args.quiet) as rep:
        if args.resume:
            run_dir = Path(args.resume)
            if args.config or args.overrides:
                raise MetadaptError("--resume takes the run directory only (its config.yaml is reused)")
            if run_dir.is_dir():
                args.log_dir = run_dir
            jobs.resume(run_dir, rep)
        else:
            if not args.config:
                raise MetadaptError("train needs a CONFIG file (or --resume RUN_DIR)")
            cfg = load_config(resolve_file(args.config, "config"), args.overrides)
            if args.out and (Path(args.out) / "checkpoints").exists() and not args.force:
                raise MetadaptError(f"{args.out} already holds a training run: use --resume {args.out} "
                                    "(or --force to start it over)")
            if getattr(args, "video", False):
                if system_of(cfg) != "rl":
                    raise MetadaptError("train --video is for system: rl (model-based trials: metadapt run --video)")
                from metadapt.experiments.reporting.video import check_video_writer

                check_video_writer()
            run_dir = _run_dir(args, cfg["name"])
            jobs.train(cfg, run_dir, rep, **({"video": True} if getattr(args, "video", False) else {}))
    print(f"model: {run_dir / 'model.pt'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from metadapt.experiments.configuration.config import load_config, system_of
    from metadapt.experiments.jobs import runner

    cfg = load_config(resolve_file(args.config, "config"), args.overrides)
    if system_of(cfg) != "mbrl":  # a system whose training is its evaluation (meta-RL, lifelong streams)
        from metadapt.experiments import jobs

        if args.video:
            raise MetadaptError(f"run --video is for model-based trials (system: {system_of(cfg)} writes its own "
                                "videos from its config)")
        jobs.check(cfg)
        out = _run_dir(args, cfg["name"])
        with _reporter(args.quiet) as rep:
            jobs.train(cfg, out, rep)
        print(f"report: {out / 'report.md'}")
        return 0
    if args.video:
        from metadapt.experiments.reporting.video import check_video_writer, gl_backend

        check_video_writer()
        gl_backend()  # before anything imports mujoco; one line when there is no OpenGL
    out = _run_dir(args, cfg["name"])
    with _reporter(args.quiet) as rep:
        runner.run(cfg, out, rep, video=args.video)
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate and resolve a config as ``train`` and ``run`` would, build what it names once (environment,
    checkpoint) and print the resolved config; nothing runs and nothing is written."""
    import yaml

    from metadapt.experiments import jobs
    from metadapt.experiments.configuration.config import load_config

    cfg = load_config(resolve_file(args.config, "config"), args.overrides)
    jobs.check(cfg)
    print(yaml.safe_dump(cfg, sort_keys=False), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The shipped sweep ``demo`` into ``runs/demo`` (under the working folder), with the overrides on every run."""
    demo = SHIPPED / "sweeps" / f"{DEMO_SWEEP}.yaml"
    if not demo.is_file():
        raise MetadaptError(f"this installation of metadapt lacks its shipped demo sweep ({demo} is missing): "
                            "reinstall it (pip install metadapt)")
    args.sweep = str(demo)
    args.out = args.out or str(Path("runs") / "demo")
    args.backend, args.ray_address, args.threads = "local", None, None
    return cmd_sweep(args)


def cmd_report(args: argparse.Namespace) -> int:
    from metadapt.experiments import jobs
    from metadapt.experiments.reporting.report import write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise MetadaptError(f"run directory not found: {run_dir}")
    args.log_dir = run_dir
    if (own := jobs.report(run_dir)) is not None:
        print(f"report: {own}")
        return 0
    if (run_dir / "results.csv").is_file():
        from metadapt.experiments.jobs.sweep import write_sweep_report

        print(f"report: {write_sweep_report(run_dir)}")
        return 0
    print(f"report: {write_report(run_dir)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import tempfile

    from metadapt.experiments.jobs.sweep import load_sweep, sweep_lock

    args.sweep = resolve_file(args.sweep, "sweep")
    with tempfile.TemporaryDirectory(prefix="metadapt-sweep-") as tmp:
        if getattr(args, "overrides", None):
            args.sweep = str(_sweep_with_overrides(Path(args.sweep), args.overrides, Path(tmp)))
        sweep = load_sweep(args.sweep)
        out = Path(args.out) if args.out else Path("runs") / "sweeps" / sweep.name
        if out.exists() and not out.is_dir():
            raise MetadaptError(f"--out {out} is a file, not a directory")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MetadaptError(f"cannot create the sweep directory {out}: {exc.strerror or exc}") from None
        args.log_dir = out
        with sweep_lock(out):  # a second sweep on this folder is refused before it writes anything
            return _sweep(args, sweep, out)


def _overlaps(key: str, other: str) -> bool:
    """Whether two dotted config keys name the same value or one holds the other."""
    return key == other or key.startswith(f"{other}.") or other.startswith(f"{key}.")


def _sweep_with_overrides(path: Path, overrides: list[str], tmp: Path) -> Path:
    """A copy of the sweep file ``path`` in ``tmp`` whose ``set`` ends with ``overrides`` (so they reach every
    run) and whose ``base`` is an absolute path; the sweep folder keeps this copy as its ``sweep.yaml``.

    A key that the sweep's grid or methods set point by point is refused: the point's own value would win.
    A file that is not a sweep is left to ``load_sweep``'s messages.
    """
    import yaml

    from metadapt.experiments.configuration.config import parse_override
    from metadapt.experiments.configuration.files import read_yaml_file

    spec = read_yaml_file(path, "sweep file")
    if not isinstance(spec, dict):
        return path
    fixed, grid, methods = (spec.get(k) or {} for k in ("set", "grid", "methods"))
    bundles = list(methods.values()) if isinstance(methods, dict) else []
    if not all(isinstance(m, dict) for m in (fixed, grid, methods, *bundles)):
        return path
    per_point = ({"method": "its methods"} if methods else {}) | {str(k): "its grid" for k in grid}
    for bundle in bundles:
        per_point.update({str(k): "its methods" for k in bundle if str(k) not in per_point})
    fixed = dict(fixed)
    for text in overrides:
        parts, value = parse_override(text)
        key = ".".join(parts)
        if clash := next((k for k in per_point if _overlaps(key, k)), None):
            raise ConfigError(f"override '{text}': sweep {spec.get('name', path.stem)} sets {clash} point by point "
                              f"({per_point[clash]}), which would win over it: override other keys, or copy the "
                              f"sweep file and edit it")
        fixed[key] = value
    spec["set"] = fixed
    spec.setdefault("name", path.stem)  # the copy's own name would be "sweep"
    if isinstance(spec.get("base"), str):
        spec["base"] = os.path.normpath(path.absolute().parent / spec["base"])
    copy = tmp / "sweep.yaml"
    copy.write_text(f"# {path} with the command line's overrides: {' '.join(overrides)}\n"
                    + yaml.safe_dump(spec, sort_keys=False))
    return copy


def _sweep(args: argparse.Namespace, sweep: Any, out: Path) -> int:
    import shutil
    import time

    from metadapt.experiments.jobs.sweep import run_sweep, write_sweep_report

    copy = out / "sweep.yaml"
    if not (copy.exists() and os.path.samefile(args.sweep, copy)):  # the sweep file may be that copy
        shutil.copyfile(args.sweep, copy)
    counts = {"skip": 0, "done": 0, "failed": 0, "start": 0}
    total = len(sweep.points)

    with _reporter(args.quiet) as rep:
        for labels in sweep.duplicates:
            rep.log(f"grid point ({' '.join(f'{k}={v}' for k, v in labels.items())}) resolves to the config of an "
                    "earlier point: run once")
        rep.start("sweep", f"sweep {sweep.name}", total)

        began = time.perf_counter()
        state = {"running": 0, "finished": 0}

        def on_event(kind: str, point: Any, result: dict[str, Any] | None) -> None:
            counts[kind] += 1
            if kind == "start":
                state["running"] += 1
                rep.advance("sweep", 0, running=state["running"], failed=counts["failed"])
                return
            labels = " ".join(f"{k}={v}" for k, v in point.labels.items())
            if kind == "skip":
                rep.log(f"skip {point.run_id} ({labels}): already done")
            else:
                if point.config is not None:
                    state["running"] -= 1
                    state["finished"] += 1
                if kind == "done":
                    ret = result.get("mean_return")
                    rep.log(f"done {point.run_id} ({labels}): return "
                            f"{f'{ret:.1f}' if isinstance(ret, int | float) else 'n/a'} "
                            f"in {result.get('seconds') or 0:.0f} s")
                else:
                    rep.log(f"FAILED {point.run_id} ({labels}): {result.get('error', '')}")
            left = total - counts["skip"] - counts["done"] - counts["failed"]
            per_run = (time.perf_counter() - began) / max(1, state["finished"])
            eta = f"{per_run * left / max(1, args.workers or os.cpu_count() or 1) / 60:.1f}min" if left else "0"
            rep.advance("sweep", 1, running=state["running"], failed=counts["failed"], eta=eta)

        results = run_sweep(sweep, out, args.workers, args.backend, args.ray_address, on_event, args.threads)
    failed = [r for r in results if r["status"] != "done"]
    print(f"sweep {sweep.name}: {total} runs, {counts['skip']} skipped (already done), "
          f"{total - len(failed)} done, {len(failed)} failed; results: {out / 'results.csv'}")
    print(f"report: {write_sweep_report(out)}")
    if results and len(failed) == len(results):
        raise MetadaptError(f"sweep {sweep.name}: every one of its {total} runs failed (the first: "
                            f"{failed[0].get('error') or 'see its error.txt'}); see {out / 'report.md'}")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    """The shipped configs and sweeps (name, kind, description), or one file's text with ``--show``."""
    if args.show:
        name = _shipped_name(args.show)
        found = [i for i in shipped_configs() if i.name == name]
        if not found:
            close = difflib.get_close_matches(name, [i.name for i in shipped_configs()], n=4, cutoff=0.6)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise ConfigError(f"no shipped config or sweep named '{args.show}'{hint}: metadapt configs lists them")
        print(found[0].path.read_text(encoding="utf-8"), end="")
        return 0
    items = shipped_configs()
    width = max(len(i.name) for i in items)
    for item in items:
        print(f"{item.name:<{width}}  {item.kind:<6}  {item.description}")
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from metadapt.envs import registered
    from metadapt.envs.describe import markdown_table, show

    if args.show:
        print(show(args.show))
    elif args.markdown:
        print(markdown_table())
    else:
        for env_id, doc in registered().items():
            print(f"{env_id:<36} {doc}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    if args.which == "adaptation":
        return _bench_adaptation(args)
    if args.which == "sampling":
        from metadapt.experiments.benchmarks.bench_sampling import bench_sampling

        torch.set_num_threads(args.threads or 1)  # the policy's small products: one thread beside the workers
        bench_sampling(repeats=min(args.repeats, 5), seed=args.seed)
        return 0
    if args.which == "maml":
        from metadapt.experiments.benchmarks.bench_maml import bench_maml

        if args.threads:
            torch.set_num_threads(args.threads)
        bench_maml(repeats=args.repeats)
        return 0
    if args.which == "gcg":
        from metadapt.experiments.benchmarks.bench_gcg import bench_gcg

        torch.set_num_threads(args.threads or 1)  # the CPU configuration's runs: one thread per run
        bench_gcg(repeats=min(args.repeats, 5), seed=args.seed)
        return 0
    if args.which == "sweep":
        from metadapt.experiments.benchmarks.bench_sweep import bench_sweep

        bench_sweep(runs=args.runs)
        return 0
    if args.which == "speed":
        from metadapt.experiments.benchmarks.bench import bench_speed

        bench_speed(repeats=args.repeats, num_samples=args.num_samples, horizon=args.horizon)
        return 0
    from metadapt.experiments.benchmarks.bench import bench_planner

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    bench_planner(args.num_samples, args.horizon, repeats=args.repeats, dtype=dtype)
    return 0


def _bench_adaptation(args: argparse.Namespace) -> int:
    from metadapt.envs import env_class, make_env, observation_version
    from metadapt.errors import CheckpointError
    from metadapt.experiments.benchmarks.adaptation import adaptation_errors, format_table
    from metadapt.meta.checkpoint import load_model
    from metadapt.meta.prior import load_prior

    if not args.case:
        raise ConfigError("bench adaptation needs at least one --case ENV_ID TASK MB_MODEL PRIOR")
    rows = []
    for env_id, task, mb_path, prior_path in args.case:
        env_class(env_id)  # one clear line for an unknown id
        probe = make_env(env_id)
        obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
        probe.close()
        mb_file = Path(mb_path) / "model.pt" if Path(mb_path).is_dir() else Path(mb_path)
        mb = load_model(mb_file, env_id, observation_version(env_id))
        if (mb[0].obs_dim, mb[0].act_dim) != (obs_dim, act_dim):
            raise CheckpointError(f"{mb_file} is a model for obs/action sizes {mb[0].obs_dim}/{mb[0].act_dim}, "
                                  f"{env_id} has {obs_dim}/{act_dim}")
        prior = load_prior(prior_path, obs_dim, act_dim, env_id, observation_version(env_id))
        rows.append(adaptation_errors(env_id, task, mb, prior, steps=args.steps, windows=args.windows,
                                      episode_length=args.episode_length, seed=args.seed))
        print(format_table(rows[-1:]).splitlines()[1], flush=True)
    print(format_table(rows))
    return 0
