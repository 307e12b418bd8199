"""The ``metadapt`` command: demo | train | run | check | sweep | report | configs | envs | bench.

Options and ``key=value`` overrides may come in any order after the sub-command.
A CONFIG or SWEEP argument is a file, or the name of a config shipped inside the
package (``metadapt configs`` lists them): a path that exists wins.

Every failure is one line on stderr: a user's mistake (a bad config, file,
option or a resource the machine lacks) exits with code 2; an unexpected
internal error exits with code 1 and says where its full traceback was written
(the run directory's ``error.log``, or a file in the system's temporary
folder). ``--debug``, before or after the sub-command, prints tracebacks instead.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from metadapt.errors import MetadaptError, one_line


class _Parser(argparse.ArgumentParser):
    """Bad options are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


class _CommandParser(_Parser):
    """A sub-command's parser: options and positional arguments in any order (``run CONFIG seed=1 --out DIR
    planner.horizon=5``). Plain argparse stops collecting ``overrides`` at the first option, and the top-level
    parser cannot parse intermixed itself (its sub-commands are a positional that takes the rest)."""

    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:  # the two passes of parse_known_intermixed_args (Python 3.11) come back here
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metadapt")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


DEBUG_HELP = "print full tracebacks instead of one error line"


CONFIG_HELP = "a YAML config file, or the name of a shipped config (metadapt configs lists them)"
OVERRIDES_HELP = "key=value overrides (values are YAML), before or after the options, e.g. planner.horizon=15"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="metadapt", description="Model-based RL agents that keep adapting while they act.")
    p.add_argument("--version", action="version", version=f"metadapt {_version()}")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    # Each sub-command takes --debug too (after its own arguments); SUPPRESS keeps one given before it.
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        """A sub-command: ``summary`` in ``metadapt --help``, ``description`` in ``metadapt NAME --help``."""
        return sub.add_parser(name, parents=[common], help=summary, description=description)

    t = command("train", "train what a config describes: an MB dynamics model, a meta-learned prior (GrBAL, "
                         "ReBAL), few-shot supervised MAML or MAML-RL",
                "Train what a config describes and write it to a run directory: an MB dynamics model "
                "(iterative data collection and fitting, model.pt), a meta-learned dynamics prior (meta.enabled=true: "
                "GrBAL with meta.method=maml, prior.pt; ReBAL's recurrent model with meta.method=rebal, rebal.pt), "
                "few-shot supervised MAML (system: supervised) or MAML-RL (system: rl). A killed run continues "
                "with --resume.")
    t.add_argument("config", nargs="?", help=CONFIG_HELP)
    t.add_argument("overrides", nargs="*", default=[], help=OVERRIDES_HELP)
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last completed iteration")
    t.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>)")
    t.add_argument("--force", action="store_true", help="write into an existing --out directory (start over)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--video", action="store_true",
                   help="system rl: adaptation.mp4, the adapted policy on a held-out task after each inner step")
    t.set_defaults(func="cmd_train")

    r = command("run", "run trials (training first unless model.checkpoint is set)",
                "Run the config's trials: the planner acts with the online learner (learner.type) in the "
                "environment and its task schedule, then report.md. Without model.checkpoint the model or prior "
                "is trained first, as train would.")
    r.add_argument("config", help=CONFIG_HELP)
    r.add_argument("overrides", nargs="*", default=[], help=OVERRIDES_HELP)
    r.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>)")
    r.add_argument("--force", action="store_true", help="write over an existing --out directory")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--video", action="store_true",
                   help="write trial_<i>/trial.mp4 with the true task and the chosen component on each frame")
    r.set_defaults(func="cmd_run")

    c = command("check", "validate and resolve a config without running anything; print the resolved config",
                "Validate and resolve a config as run and train would: its keys, its checkpoint (loaded and "
                "matched to the environment), the environment and its schedule, and the memory it needs. Nothing "
                "runs and nothing is written; the resolved config is printed as YAML.")
    c.add_argument("config", help=CONFIG_HELP)
    c.add_argument("overrides", nargs="*", default=[], help=OVERRIDES_HELP)
    c.set_defaults(func="cmd_check")

    d = command("demo", "the showcase: MOLe, TS and GS with the shipped HalfCheetah prior on an alternating "
                        "motor malfunction, then a report",
                "The showcase: the shipped sweep 'demo' (metadapt configs --show demo), MOLe, TS and GS with the "
                "shipped HalfCheetah motor-malfunction prior, normal and every motor reversed alternating every 500 "
                "steps, then report.md. Runs from any folder (it writes under ./runs/demo); overrides apply to "
                "every run, e.g. trial.steps=200 for a short one.")
    d.add_argument("overrides", nargs="*", default=[], help="key=value overrides for every run, e.g. trial.steps=200")
    d.add_argument("--out", metavar="DIR", help="run directory (default runs/demo)")
    d.add_argument("--workers", type=positive_int, default=None, help="local processes (default: the cores)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func="cmd_demo")

    sw = command("sweep", "run a grid of configs (resumable), then aggregate",
                 "Run every point of a sweep file's grid as its own run (in parallel, resumable: rerun to "
                 "continue), then aggregate them over seeds into results.csv and report.md. Overrides apply to "
                 "every run; a key the sweep's grid or methods set per point cannot be overridden.")
    sw.add_argument("sweep", help="a sweep YAML file, or the name of a shipped sweep (metadapt configs lists them)")
    sw.add_argument("overrides", nargs="*", default=[], help="key=value overrides for every run, e.g. trial.steps=200")
    sw.add_argument("--out", help="sweep directory (default runs/sweeps/NAME); rerun to resume")
    sw.add_argument("--workers", type=positive_int, default=None, help="local processes (default: the cores)")
    sw.add_argument("--threads", type=positive_int, default=None,
                    help="torch threads per local run (default: the cores shared among the workers)")
    sw.add_argument("--backend", choices=["local", "ray"], default="local")
    sw.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start one locally)")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.set_defaults(func="cmd_sweep")

    rp = command("report", "(re)write report.md for a run or sweep directory",
                 "Rewrite report.md and its figures from the files a run, a training run or a sweep directory "
                 "holds (metrics, summaries, results.csv); nothing is rerun.")
    rp.add_argument("run_dir", help="a run, training run or sweep directory")
    rp.set_defaults(func="cmd_report")

    cf = command("configs", "list the configs and sweeps shipped with metadapt",
                 "List the configs and sweeps shipped inside the package: name, kind (config or sweep) and the "
                 "first line of the file's description. run, train, check and sweep take these names in place "
                 "of a file.")
    cf.add_argument("--show", metavar="NAME", help="print one shipped config or sweep file (to copy and edit)")
    cf.set_defaults(func="cmd_configs")

    e = command("envs", "list registered environments",
                "List the registered environments with a line each; --show prints one environment's tasks and "
                "preset schedules (env.kwargs.schedule).")
    e.add_argument("--show", metavar="ID", help="print one environment's tasks and preset schedules")
    e.add_argument("--markdown", action="store_true", help="print the README's table of environments")
    e.set_defaults(func="cmd_envs")

    b = command("bench", "benchmarks that print ratios measured in one run",
                "Benchmarks that print ratios measured in one run (planners, learners, sweeps, MAML, sampling, "
                "adaptation errors); each choice is described below.")
    b.add_argument("which", choices=["planner", "speed", "adaptation", "sweep", "maml", "sampling", "gcg"],
                   help="planner: planners vs the matrix-product peak; speed: planners, learners, control steps "
                        "and meta-training vs the bfloat16 floor; adaptation: K-step errors on held-out "
                        "tasks; sweep: the same sweep with 1 and 2 workers; maml: a sinusoid meta-iteration against "
                        "reference loops (plain PyTorch, higher); sampling: the meta-RL sampler vs the raw "
                        "simulator, and one TRPO meta-iteration; gcg: Meta-GCG's planning per control step "
                        "(paper and CPU widths), its latent rollout vs the matrix-product peak, a meta-training "
                        "step, the maze's steps per second")
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


# Errors of the machine rather than of metadapt: a full disk, a folder that cannot be written. They are the
# user's to fix and their traceback helps nobody (a full disk would not take it anyway).
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT,
                       errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE,
                       errno.EPIPE, errno.EIO, errno.EFBIG, errno.ENOTEMPTY, errno.EXDEV}


# torch.save reports a failed write (a full disk) as a RuntimeError, not an OSError.
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed writing", "file write failed")


def _say(text: str) -> None:
    """One line on stderr, cut to a readable length (``errors.one_line``: the one place messages are cut)."""
    print(f"metadapt: {one_line(text)}", file=sys.stderr)


def _memory_error(exc: BaseException) -> bool:
    """An allocation the machine refused (Python's or PyTorch's, on the CPU or a GPU)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)[:500]
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _write_traceback(exc: BaseException, argv: list[str], run_dir: object) -> str:
    """Write the full traceback to ``run_dir/error.log`` (else a new file in the temporary folder); its path."""
    text = (f"metadapt {' '.join(argv)}\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            + "".join(traceback.format_exception(exc)) + "\n")
    if run_dir is not None and Path(str(run_dir)).is_dir():
        path = Path(str(run_dir)) / "error.log"
        try:
            with open(path, "a") as f:
                f.write(text)
            return str(path)
        except OSError:
            pass
    try:
        fd, name = tempfile.mkstemp(prefix="metadapt-error-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return name
    except OSError:
        return "nowhere (the disk refused it: run again with --debug to see it)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        from metadapt.experiments import commands

        return int(getattr(commands, args.func)(args))
    except KeyboardInterrupt:
        print("metadapt: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, MetadaptError):
            _say(f"error: {exc}")
            return 2
        if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
            where = f" {exc.filename}" if exc.filename else ""
            _say(f"error: cannot use{where}: {exc.strerror or exc}")
            return 2
        if isinstance(exc, RuntimeError) and any(t in str(exc)[:500] for t in _TORCH_WRITE_FAILURES):
            _say(f"error: a file could not be written (is the disk full?): {exc}")
            return 2
        if _memory_error(exc):
            _say(f"error: out of memory ({type(exc).__name__}: {exc}): lower the sizes in the config "
                 "(planner.num_samples, planner.horizon, model.hidden, batch sizes)")
            return 2
        if debug:
            return 1
        where = _write_traceback(exc, argv, getattr(args, "log_dir", None))
        # The path goes first: the message after it may be cut.
        _say(f"internal error, full traceback in {where}: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
