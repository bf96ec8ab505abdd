"""Progress of long work: step lines in a run's log, bars on a terminal (issue 12 item 4).

A 30-day backfill is one Dagster run (single-run backfill policy) that used to say nothing
for minutes. The daily assets now log one line per partition, in steps (every partition up
to `MAX_LINES`, then evenly spaced ones and always the last), e.g.
`user_last_txn:v2 offline: day 3/30 2026-01-03: 2,914 rows`, which the UI shows in the run's log.

The same events go to in-process listeners (`listen`), so a command running the job in its
own process (the demo) can draw a bar. Bars (`bar`) are drawn only when stderr is a terminal:
captured output (tests, CI logs, pipes) stays exactly as before.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

MAX_LINES = 31  # a month of days is logged day by day; longer runs in steps


@dataclass(frozen=True)
class Step:
    """One unit of work done: `done` of `total` for `what` (e.g. 'user_last_txn:v2 offline')."""

    what: str
    done: int
    total: int
    detail: str = ""


Listener = Callable[[Step], None]
_listeners: list[Listener] = []


class _Log(Protocol):
    def info(self, msg: str) -> Any: ...


def logged(done: int, total: int, max_lines: int = MAX_LINES) -> bool:
    """Whether step `done` (1-based) of `total` gets a log line: all of them up to
    `max_lines`, else every ceil(total/max_lines)-th and the last."""
    if total <= max_lines:
        return True
    return done == total or done % math.ceil(total / max_lines) == 0


def partition_line(done: int, total: int, day: date, rows: int, unit: str = "rows") -> str:
    """`day 3/30 2026-01-03: 2,914 rows`."""
    return f"day {done}/{total} {day.isoformat()}: {rows:,} {unit}"


def report(log: _Log | None, what: str, done: int, total: int, detail: str) -> None:
    """Log step `done`/`total` (multi-step work only, in steps) and tell the listeners."""
    if log is not None and total > 1 and logged(done, total):
        log.info(f"{what}: {detail}")
    step = Step(what, done, total, detail)
    for listener in list(_listeners):
        listener(step)


@contextlib.contextmanager
def listen(listener: Listener) -> Iterator[None]:
    """Receive every `Step` reported in this process while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


class _NoBar:
    """What `bar` gives when stderr is not a terminal: same calls, no output."""

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        return 0

    def advance(self, task: int, advance: float = 1) -> None:
        return None

    def update(self, task: int, **_: Any) -> None:
        return None


def on_terminal() -> bool:
    return sys.stderr.isatty()


@contextlib.contextmanager
def bar(enabled: bool | None = None) -> Iterator[Any]:
    """A rich `Progress` on stderr (transient: it disappears when done) if stderr is a
    terminal, else a silent stand-in with the same `add_task`/`advance`/`update` calls."""
    if not (on_terminal() if enabled is None else enabled):
        yield _NoBar()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield progress
