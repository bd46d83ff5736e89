"""Stopping a training run on request: SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption, torchrun passing its
own SIGTERM on) ends the run at the next iteration boundary with `last.pt` written for `--resume`, instead of
losing everything since the last periodic checkpoint.

The first signal only sets a flag; the trainer reads it once per iteration (under DDP the ranks agree on it in the
all-reduce they already make, so they all stop after the same iteration). A second signal of either kind aborts at
once (KeyboardInterrupt) and keeps the last checkpoint written. Processes forked from the trainer (DataLoader
workers) inherit the handler but not the role: there SIGINT is ignored (the trainer shuts its workers down when it
stops) and SIGTERM does what it did before.
"""

from __future__ import annotations

import os
import signal
import threading

from mrcnn.errors import MrcnnError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(MrcnnError):
    """The run stopped on request after writing its checkpoint; the CLI exits with 128 + the signal's number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopOnSignal:
    """Context manager: `requested` is the first SIGINT / SIGTERM received inside it (None: none). Outside the main
    thread (where Python cannot set handlers) it installs nothing and `requested` stays None."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._pid = os.getpid()
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.requested).name if self.requested is not None else ""

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:  # a forked loader worker
            if signum == signal.SIGINT:
                return
            previous = self._previous.get(signum, signal.SIG_DFL)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                previous = signal.signal(s, self._handle)
                self._previous[s] = signal.SIG_DFL if previous is None else previous  # None: not set from Python
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()
