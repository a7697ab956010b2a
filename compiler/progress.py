"""Progress display for long stages (rich, on stderr so stdout stays clean for scripts)."""

from __future__ import annotations

import contextlib
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _console(stderr: bool) -> Console:
    # Off a terminal (CI logs, pipes) rich assumes 80 columns and folds every table; logs are wide.
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal else 150
    return Console(stderr=stderr, highlight=False, width=width)


# Progress and stage headings go to stderr; the final summary to stdout (`> summary.txt` works).
console = _console(stderr=True)
summary_console = _console(stderr=False)


@contextlib.contextmanager
def silenced(quiet: bool = True):
    """Progress, headings and the summary printed nowhere while inside (compile_model(quiet=True)):
    a program calling the compiler reads the returned report instead."""
    before = console.quiet, summary_console.quiet
    console.quiet, summary_console.quiet = quiet or before[0], quiet or before[1]
    try:
        yield
    finally:
        console.quiet, summary_console.quiet = before


@contextlib.contextmanager
def progress_bar(description: str, total: int):
    """Yield `advance(n=1)`; shows a bar with count, elapsed and remaining time."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            if status is None:
                progress.advance(task, n)
            else:
                progress.update(task, advance=n, status=status)

        yield advance


@contextlib.contextmanager
def activity(description: str, unit: str | None = None):
    """A step of unknown length (a data check, a conversion): spinner, count so far, elapsed time.

    Yields `advance(n=1)`, for steps that can count what they have done (files checked); a
    step that cannot still shows that it is alive and how long it has run.
    """
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}")]
    if unit:
        columns.append(TextColumn("{task.completed:,.0f} " + unit))
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=None)

        def advance(n: int = 1) -> None:
            progress.advance(task, n)

        yield advance


class StageTimer:
    """Wall time per pipeline stage, in the order the stages ran, and the process's peak memory
    when each ended: the stage after which the peak jumps is the one that set it."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, title: str | None = None):
        console.print(f"[bold cyan]==>[/] {title or name}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            # Imported here: it brings NumPy, which `edgetl --help` does not need.
            from edgetl.runtime.measure import peak_rss_mb

            peak = peak_rss_mb()  # never reset here: /usr/bin/time and benchmarks/scale.py read the same mark
            if peak is not None:
                # VmHWM is the kernel's recorded mark or the current RSS, whichever is higher
                # when it is read, and the current RSS is counted lazily per thread, so a later
                # reading can come out below an earlier one (seen once in tests/test_pipeline.py
                # as stage peaks out of order). The peak so far never falls.
                self.peak_mb[name] = max([peak, *self.peak_mb.values()])
