"""The ``metadapt`` command: demo | train | run | report | envs | bench."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from metadapt.errors import ConfigError, MetadaptError

DEMO_SWEEP = "sweeps/demo.yaml"


class _Parser(argparse.ArgumentParser):
    """Bad options are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _configs_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "configs" / DEMO_SWEEP).is_file():
            return parent / "configs"
    return Path("configs")


def _reporter(quiet: bool):
    from metadapt.experiments.progress import Reporter, RichReporter

    return Reporter() if quiet else RichReporter()


def cmd_train(args: argparse.Namespace) -> int:
    from metadapt.experiments import jobs, runner
    from metadapt.experiments.config import load_config

    with _reporter(args.quiet) as rep:
        if args.resume:
            run_dir = Path(args.resume)
            if args.config or args.overrides:
                raise MetadaptError("--resume takes the run directory only (its config.yaml is reused)")
            jobs.resume(run_dir, rep)
        else:
            if not args.config:
                raise MetadaptError("train needs a CONFIG file (or --resume RUN_DIR)")
            cfg = load_config(args.config, args.overrides)
            run_dir = Path(args.out) if args.out else runner.unique_dir(Path("runs") / cfg["name"])
            if (run_dir / "checkpoints").exists():
                raise MetadaptError(f"{run_dir} already holds a training run: use --resume {run_dir}")
            jobs.train(cfg, run_dir, rep)
    print(f"model: {run_dir / 'model.pt'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from metadapt.experiments import runner
    from metadapt.experiments.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.video:
        from metadapt.experiments.video import check_video_writer, gl_backend

        check_video_writer()
        gl_backend()  # before anything imports mujoco; one line when there is no OpenGL
    out = Path(args.out) if args.out else runner.unique_dir(Path("runs") / cfg["name"])
    with _reporter(args.quiet) as rep:
        runner.run(cfg, out, rep, video=args.video)
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.sweep = str(_configs_dir() / DEMO_SWEEP)
    args.out = args.out or str(Path("runs") / "demo")
    args.workers, args.backend, args.ray_address, args.threads = None, "local", None, None
    return cmd_sweep(args)


def cmd_report(args: argparse.Namespace) -> int:
    from metadapt.experiments import jobs
    from metadapt.experiments.report import write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise MetadaptError(f"run directory not found: {run_dir}")
    if (own := jobs.report(run_dir)) is not None:
        print(f"report: {own}")
        return 0
    if (run_dir / "results.csv").is_file():
        from metadapt.experiments.sweep import write_sweep_report

        print(f"report: {write_sweep_report(run_dir)}")
        return 0
    print(f"report: {write_report(run_dir)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import os
    import shutil
    import time

    from metadapt.experiments.sweep import load_sweep, run_sweep, write_sweep_report

    sweep = load_sweep(args.sweep)
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / sweep.name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.sweep, out / "sweep.yaml")
    counts = {"skip": 0, "done": 0, "failed": 0, "start": 0}
    total = len(sweep.points)

    with _reporter(args.quiet) as rep:
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
                    rep.log(f"done {point.run_id} ({labels}): return {result['mean_return']:.1f} "
                            f"in {result['seconds']:.0f} s")
                else:
                    rep.log(f"FAILED {point.run_id} ({labels}): {result.get('error', '')}")
            left = total - counts["skip"] - counts["done"] - counts["failed"]
            per_run = (time.perf_counter() - began) / max(1, state["finished"])
            eta = f"{per_run * left / max(1, args.workers or os.cpu_count() or 1) / 60:.1f}min" if left else "0"
            rep.advance("sweep", 1, running=state["running"], failed=counts["failed"], eta=eta)

        results = run_sweep(sweep, out, args.workers, args.backend, args.ray_address, on_event, args.threads)
    failed = sum(r["status"] != "done" for r in results)
    print(f"sweep {sweep.name}: {total} runs, {counts['skip']} skipped (already done), "
          f"{total - failed} done, {failed} failed; results: {out / 'results.csv'}")
    print(f"report: {write_sweep_report(out)}")
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
    if args.which == "maml":
        from metadapt.experiments.bench_maml import bench_maml

        if args.threads:
            torch.set_num_threads(args.threads)
        bench_maml(repeats=args.repeats)
        return 0
    if args.which == "sweep":
        from metadapt.experiments.bench_sweep import bench_sweep

        bench_sweep(runs=args.runs)
        return 0
    if args.which == "speed":
        from metadapt.experiments.bench import bench_speed

        bench_speed(repeats=args.repeats, num_samples=args.num_samples, horizon=args.horizon)
        return 0
    from metadapt.experiments.bench import bench_planner

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    bench_planner(args.num_samples, args.horizon, repeats=args.repeats, dtype=dtype)
    return 0


def _bench_adaptation(args: argparse.Namespace) -> int:
    from metadapt.envs import env_class, make_env, observation_version
    from metadapt.errors import CheckpointError
    from metadapt.experiments.adaptation import adaptation_errors, format_table
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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="metadapt", description="Model-based RL agents that keep adapting while they act.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train what a config describes: a dynamics model (MB), a meta-learned prior "
                                     "(GrBAL, ReBAL), or few-shot supervised MAML (system: supervised)")
    t.add_argument("config", nargs="?", help="YAML config (see configs/)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.iterations=3")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last completed iteration")
    t.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("run", help="run trials (training first unless model.checkpoint is set)")
    r.add_argument("config", help="YAML config")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. planner.horizon=15")
    r.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--video", action="store_true",
                   help="write trial_<i>/trial.mp4 with the true task and the chosen component on each frame")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="the showcase: MOLe, TS and GS with the shipped HalfCheetah prior on an "
                                    "alternating motor malfunction, then a report")
    d.add_argument("--out", metavar="DIR", help="run directory (default runs/demo)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)

    sw = sub.add_parser("sweep", help="run a grid of configs (resumable), then aggregate")
    sw.add_argument("sweep", help="sweep YAML (see configs/sweeps/)")
    sw.add_argument("--out", help="sweep directory (default runs/sweeps/NAME); rerun to resume")
    sw.add_argument("--workers", type=positive_int, default=None, help="local processes (default: the cores)")
    sw.add_argument("--threads", type=positive_int, default=None,
                    help="torch threads per local run (default: the cores shared among the workers)")
    sw.add_argument("--backend", choices=["local", "ray"], default="local")
    sw.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start one locally)")
    sw.add_argument("--quiet", action="store_true")
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="(re)write report.md for a run or sweep directory")
    rp.add_argument("run_dir")
    rp.set_defaults(func=cmd_report)

    e = sub.add_parser("envs", help="list registered environments")
    e.add_argument("--show", metavar="ID", help="print one environment's tasks and preset schedules")
    e.add_argument("--markdown", action="store_true", help="print the README's table of environments")
    e.set_defaults(func=cmd_envs)

    b = sub.add_parser("bench", help="benchmarks that print ratios measured in one run")
    b.add_argument("which", choices=["planner", "speed", "adaptation", "sweep", "maml"],
                   help="planner: planners vs the matrix-product peak; speed: planners, learners, control steps "
                        "and meta-training vs the bfloat16 floor; adaptation: K-step errors on held-out "
                        "tasks; sweep: the same sweep with 1 and 2 workers; maml: a sinusoid meta-iteration against "
                        "reference loops (plain PyTorch, higher)")
    b.add_argument("--runs", type=positive_int, default=8, help="sweep: equal runs in the sweep")
    b.add_argument("--num-samples", type=positive_int, default=1000)
    b.add_argument("--horizon", type=positive_int, default=10)
    b.add_argument("--repeats", type=positive_int, default=10)
    b.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    b.add_argument("--case", nargs=4, action="append", metavar=("ENV_ID", "TASK", "MB_MODEL", "PRIOR"),
                   help="adaptation: one held-out task, an MB model.pt (or run dir) and a prior.pt (repeatable)")
    b.add_argument("--steps", type=positive_int, default=4000, help="adaptation: random-action steps collected")
    b.add_argument("--windows", type=positive_int, default=400, help="adaptation: windows scored")
    b.add_argument("--episode-length", type=positive_int, default=188,
                   help="adaptation: random-action episode length (default: the shipped priors' rollout length)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=positive_int, default=None, help="maml: torch threads (default: PyTorch's)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MetadaptError as exc:
        print(f"metadapt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metadapt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
