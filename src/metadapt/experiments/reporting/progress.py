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
