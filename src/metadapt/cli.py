"""The ``metadapt`` command: demo | train | run | report | envs | bench."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from metadapt.errors import MetadaptError


class _Parser(argparse.ArgumentParser):
    """Bad options are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


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
    t.set_defaults(func="cmd_train")

    r = sub.add_parser("run", help="run trials (training first unless model.checkpoint is set)")
    r.add_argument("config", help="YAML config")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. planner.horizon=15")
    r.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--video", action="store_true",
                   help="write trial_<i>/trial.mp4 with the true task and the chosen component on each frame")
    r.set_defaults(func="cmd_run")

    d = sub.add_parser("demo", help="the showcase: MOLe, TS and GS with the shipped HalfCheetah prior on an "
                                    "alternating motor malfunction, then a report")
    d.add_argument("--out", metavar="DIR", help="run directory (default runs/demo)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func="cmd_demo")

    sw = sub.add_parser("sweep", help="run a grid of configs (resumable), then aggregate")
    sw.add_argument("sweep", help="sweep YAML (see configs/sweeps/)")
    sw.add_argument("--out", help="sweep directory (default runs/sweeps/NAME); rerun to resume")
    sw.add_argument("--workers", type=positive_int, default=None, help="local processes (default: the cores)")
    sw.add_argument("--threads", type=positive_int, default=None,
                    help="torch threads per local run (default: the cores shared among the workers)")
    sw.add_argument("--backend", choices=["local", "ray"], default="local")
    sw.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start one locally)")
    sw.add_argument("--quiet", action="store_true")
    sw.set_defaults(func="cmd_sweep")

    rp = sub.add_parser("report", help="(re)write report.md for a run or sweep directory")
    rp.add_argument("run_dir")
    rp.set_defaults(func="cmd_report")

    e = sub.add_parser("envs", help="list registered environments")
    e.add_argument("--show", metavar="ID", help="print one environment's tasks and preset schedules")
    e.add_argument("--markdown", action="store_true", help="print the README's table of environments")
    e.set_defaults(func="cmd_envs")

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
    b.set_defaults(func="cmd_bench")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from metadapt.experiments import commands

        return int(getattr(commands, args.func)(args))
    except MetadaptError as exc:
        print(f"metadapt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metadapt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
