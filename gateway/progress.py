"""Progress bars (rich) for long command-line operations, silent when nobody is watching.

``trygg org import`` of a large organisation (every password is hashed with argon2),
``trygg org erase`` and ``bench/run.py`` run for minutes. On a terminal they show a bar on
stderr; when stderr is a pipe, a file or journald the bar is not drawn at all — no carriage
returns or escape codes in logs — and the command's normal output is unchanged.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class Tracker(Protocol):
    """What an operation reports its progress to."""

    def advance(self, steps: int = 1) -> None:
        """``steps`` more units are done."""

    def describe(self, text: str) -> None:
        """What is being done now."""


class _Silent:
    def advance(self, steps: int = 1) -> None:
        pass

    def describe(self, text: str) -> None:
        pass


class _Bar:
    def __init__(self, bar: Progress, task: TaskID) -> None:
        self._bar = bar
        self._task = task

    def advance(self, steps: int = 1) -> None:
        self._bar.advance(self._task, steps)

    def describe(self, text: str) -> None:
        self._bar.update(self._task, description=text)


SILENT: Tracker = _Silent()


def interactive(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal someone watches."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


@contextlib.contextmanager
def progress(description: str, total: int | None, *,
             stream: TextIO | None = None) -> Iterator[Tracker]:
    """A bar on ``stream`` (stderr) while the block runs, if it is a terminal."""
    out = sys.stderr if stream is None else stream
    if not interactive(out):
        yield SILENT
        return
    # rich loads only when a bar is drawn: gateway.orgfile (on the alarm path) imports this.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(),
        # Transient: the bar disappears when done, leaving only the command's own output.
        console=Console(file=out, force_terminal=True), transient=True,
    )
    with bar:
        yield _Bar(bar, bar.add_task(description, total=total))
