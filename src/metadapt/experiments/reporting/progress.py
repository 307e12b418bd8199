"""Progress bars (rich) behind a small interface the library can call without knowing rich."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from metadapt.errors import MetadaptError


class Reporter:
    """No-op progress reporting; subclasses draw bars."""

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        return None

    def start(self, key: str, description: str, total: int) -> None:
        """Begin (or restart) the bar ``key`` with ``total`` units."""

    def advance(self, key: str, amount: int = 1, **fields: Any) -> None:
        """Move bar ``key`` forward; ``fields`` fill its info column (e.g. ``ret=12.3``)."""

    def log(self, message: str) -> None:
        """A line above the bars."""

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        """Numbers worth plotting over ``step`` (an iteration's metrics row); ``TensorBoardReporter`` writes them."""


class TensorBoardReporter(Reporter):
    """Forwards everything to ``inner`` and writes TensorBoard scalars while the job runs: every numeric field of
    ``advance(key, ...)`` as ``<key>/<field>`` over that bar's count (each training epoch's losses, a
    collection's running return) and every ``scalars(prefix, ...)`` number as ``<prefix>/<name>``."""

    def __init__(self, inner: Reporter, writer: Any, counts: dict[str, int] | None = None) -> None:
        """``counts``: where each bar's curve goes on from (a resumed job's completed epochs and steps)."""
        self.inner, self.writer = inner, writer
        self._counts: dict[str, int] = dict(counts or {})

    def __enter__(self) -> TensorBoardReporter:
        return self  # ``inner`` is its owner's to start and stop

    def __exit__(self, *exc: Any) -> None:
        self.writer.close()

    def start(self, key: str, description: str, total: int) -> None:
        self.inner.start(key, description, total)

    def advance(self, key: str, amount: int = 1, **fields: Any) -> None:
        self.inner.advance(key, amount, **fields)
        # A bar restarted for the next iteration keeps counting on: one curve over the whole job.
        self._counts[key] = self._counts.get(key, 0) + amount
        for name, value in fields.items():
            if _is_scalar(value):
                self.writer.add_scalar(f"{key}/{name}", float(value), self._counts[key])

    def log(self, message: str) -> None:
        self.inner.log(message)

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        for name, value in values.items():
            if _is_scalar(value):
                self.writer.add_scalar(f"{prefix}/{name}", float(value), step)
        self.writer.flush()


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def tensorboard_writer(path: Any) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``path``; one line saying what to install when it is missing."""
    check_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))


def check_tensorboard() -> None:
    """Refuse ``logging.tensorboard`` before any work when TensorBoard is not installed (one line)."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise MetadaptError("logging.tensorboard needs TensorBoard: pip install 'metadapt[tensorboard]'") from None


class RichReporter(Reporter):
    """Bars with speed and a free-text info column (running return, losses)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def start(self, key: str, description: str, total: int) -> None:
        if key in self._tasks:
            self._progress.reset(self._tasks[key], total=total, description=description, info="", rate="")
        else:
            self._tasks[key] = self._progress.add_task(description, total=total, info="", rate="")

    def advance(self, key: str, amount: int = 1, **fields: Any) -> None:
        task = self._tasks[key]
        info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self._progress.advance(task, amount)
        speed = self._progress.tasks[self._tasks[key]].speed
        rate = f"{speed:6.1f}/s" if speed else ""
        self._progress.update(task, info=info, rate=rate)

    def log(self, message: str) -> None:
        self._progress.console.print(message)
