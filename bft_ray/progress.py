"""Progress for long work, with one look everywhere (rich, on stderr).

``bft_ray.get(..., progress=True)``, the jobs, the SDC check, :class:`~bft_ray.robust.RobustTrainer`
and the benchmarks all report progress through :func:`progress_bar`: what is running, a bar,
done/total, elapsed time and an optional status text.

On a terminal this is a live rich bar. Elsewhere, for example in the log of a ``ray job submit``
job or a CI run where a redrawn bar would be lost or garbled, it prints a plain line at every
tenth of the work and at the end, so a log shows how far the work got before it stopped.

Example:
    >>> from bft_ray.progress import progress_bar, track
    >>> with progress_bar("squares", total=3, enabled=False) as bar:
    ...     for _ in range(3):
    ...         bar.advance(status="ok")
    >>> bar.completed
    3
    >>> [x * x for x in track(range(3), "squares", enabled=False)]
    [0, 1, 4]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console

__all__ = ["Bar", "progress_bar", "track"]

T = TypeVar("T")


class Bar:
    """Handle on one running bar: call :meth:`advance` as work completes.

    Attributes:
        description: What is running.
        total: Units of work in all (``None`` when unknown).
        completed: Units done so far.
        status: The last status text.
    """

    def __init__(self, description: str, total: int | None, console: Console | None) -> None:
        self.description = description
        self.total = total
        self.completed = 0
        self.status = ""
        self._console = console
        self._rich = None  # (Progress, task id) when drawing a live bar
        self._refresh = False  # redraw on every update (a live bar without its own thread)
        self._start = time.monotonic()
        self._next_line = 1  # plain mode: the next tenth of the work to report
        self._printed = -1  # plain mode: the count last printed

    def advance(self, n: int = 1, *, status: str | None = None) -> None:
        """Mark ``n`` more units done, optionally with a new status text."""
        self.completed += n
        self.update(status=status)

    def update(self, *, status: str | None = None, total: int | None = None) -> None:
        """Change the status text or the total without marking work done."""
        if status is not None:
            self.status = status
        if total is not None:
            self.total = total
        if self._rich is not None:
            bar, task = self._rich
            bar.update(
                task,
                completed=self.completed,
                total=self.total,
                status=self.status,
                refresh=self._refresh,
            )
        elif self._console is not None:
            self._plain_line(final=False)

    def _plain_line(self, final: bool) -> None:
        assert self._console is not None
        if final:
            if self.completed == self._printed:
                return  # the last line already says it
        elif not self.total or self.completed * 10 // self.total < self._next_line:
            return
        if self.total:
            self._next_line = self.completed * 10 // self.total + 1
        self._printed = self.completed
        done = f"{self.completed}/{self.total}" if self.total else f"{self.completed}"
        status = f"  {self.status}" if self.status else ""
        elapsed = time.monotonic() - self._start
        self._console.print(
            f"{self.description}: {done} ({elapsed:.0f} s){status}", highlight=False
        )


@contextmanager
def progress_bar(
    description: str,
    total: int | None,
    *,
    enabled: bool = True,
    console: Console | None = None,
    transient: bool = False,
    auto_refresh: bool = True,
) -> Iterator[Bar]:
    """Show progress of ``total`` units of work while the block runs.

    Args:
        description: What is running (the bar's label).
        total: Units of work in all, or ``None`` when unknown.
        enabled: ``False`` draws nothing (the bar still counts).
        console: Where to draw; stderr by default, so stdout stays the job's output.
        transient: Remove a live bar when the block ends.
        auto_refresh: ``False`` redraws a live bar only when the work advances, with no
            background thread (a refreshing bar costs its process about 17 ms of CPU per
            second and takes the GIL ten times a second: benchmarks that time their own
            process want neither).

    Yields:
        A :class:`Bar`; call ``bar.advance()`` as work completes.
    """
    if not enabled:
        yield Bar(description, total, None)
        return
    console = console or Console(stderr=True)
    bar = Bar(description, total, console)
    if not console.is_terminal:
        try:
            yield bar
        finally:
            bar._plain_line(final=True)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(
        *columns,
        console=console,
        transient=transient,
        auto_refresh=auto_refresh,
        # rich would route print() through the bar's console (stderr) while it is up, which
        # takes the lines out of a redirected stdout: only do that when stdout is a terminal.
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
    ) as live:
        bar._rich = (live, live.add_task(description, total=total, status=""))
        bar._refresh = not auto_refresh
        yield bar


def track(
    items: Iterable[T],
    description: str,
    total: int | None = None,
    *,
    enabled: bool = True,
    console: Console | None = None,
) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar (``total`` defaults to ``len(items)``)."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with progress_bar(description, total, enabled=enabled, console=console) as bar:
        for item in items:
            yield item
            bar.advance()
