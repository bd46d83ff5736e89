"""The metrics of a run: metrics.jsonl (rank 0 writes), one JSON row per iteration, per evaluation and per event
(the fine-tuning report, a stop, the cross-rank check). The trainer owns it and holds it open while it trains; the
hooks put their rows into it (detectron2's EventStorage and JSONWriter in one)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from mrcnn.errors import MrcnnError
from mrcnn.io import strict_json
from mrcnn.training.runs import keep_metrics_until


class MetricsStorage:
    def __init__(self, path: Path, is_main: bool) -> None:
        self.path, self.is_main = path, is_main
        self.latest: dict = {}  # the last iteration's row
        self.file: TextIO | None = None

    @contextlib.contextmanager
    def opened(self, start_iter: int) -> Iterator[MetricsStorage]:
        """metrics.jsonl open for appending, closed on leaving however the run ends. On --resume the rows a killed
        run wrote after its last checkpoint go first."""
        if not self.is_main:
            yield self
            return
        keep_metrics_until(self.path, start_iter)
        with open(self.path, "a") as self.file:
            try:
                yield self
            finally:
                self.file = None

    def put(self, row: dict) -> None:
        """One row, written and flushed at once (rank 0; elsewhere nothing)."""
        if self.file is None:
            return
        try:
            self.file.write(json.dumps(strict_json(row), allow_nan=False) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk mid-run: the file and the reason, not a traceback
            raise MrcnnError(f"{self.path}: could not be written ({e.strerror or e})") from None

    def put_step(self, row: dict) -> None:
        """An iteration's row: written, and `latest` for the hooks."""
        self.latest = row
        self.put(row)
