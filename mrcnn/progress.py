"""Progress reporting: a rich progress bar on a terminal, plain log lines otherwise (CI, files, pipes)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float) -> str:
    """42s, 7m05s, 3h12m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Reporter:
    """`update(done, info)` for `total` steps. `info` is a short status string (loss, img/s...)."""

    def __init__(
        self, total: int, description: str, log: Callable[[str], None] = print, every: int = 0, enabled: bool = True
    ):
        self.total = max(int(total), 1)
        self.description = description
        self.log = log
        self.enabled = enabled
        self.every = every or max(1, self.total // 20)
        self._rich = None
        self._task = None
        self._t0 = time.time()
        self._last = -1
        self._first: tuple[int, float] | None = None

    def __enter__(self) -> Reporter:
        if self.enabled and is_terminal():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self._rich.__enter__()
            self._task = self._rich.add_task(self.description, total=self.total, info="")
        return self

    def update(self, done: int, info: str = "") -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=done, info=info)
        elif done == self.total or done - self._last >= self.every or self._last < 0:
            now = time.time()
            if self._first is None:  # a resumed run's first update is where it starts: its rate counts from there
                self._first = (done, now)
            self._last = done
            elapsed = now - self._t0
            eta = ""
            d0, t0 = self._first
            if self.total > done > d0 and now > t0:
                eta = f", eta {format_duration((self.total - done) * (now - t0) / (done - d0))}"
            self.log(f"{self.description}: {done}/{self.total} {info} ({elapsed:.0f}s{eta})".replace("  ", " "))

    def set_total(self, total: int) -> None:
        """A run that found out it will be shorter (a time budget)."""
        self.total = max(int(total), 1)
        if self._rich is not None:
            self._rich.update(self._task, total=self.total)

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)


@contextmanager
def reporter(
    total: int, description: str, log: Callable[[str], None] = print, enabled: bool = True, every: int = 0
) -> Iterator[Reporter]:
    r = Reporter(total, description, log, every=every, enabled=enabled)
    with r:
        yield r
