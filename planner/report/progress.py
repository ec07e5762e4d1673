"""Progress of a report on stderr: the solving phase and the write phase.

On a terminal, a rich progress bar; otherwise (a pipe, a CI log) plain lines, one each time another
10% of the cells is solved and one per write step, so a log shows where a long report is."""

from __future__ import annotations

import sys
from typing import TextIO

STEP_PCT = 10


class Progress:
    def __init__(self, enabled: bool, terminal: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self._bar = None
        self._task = None
        self._label = ""
        self._total = 0
        self._done = 0
        self._last_pct = -1

    def __enter__(self) -> Progress:
        if self.enabled and self.terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), console=Console(file=self.stream), transient=True)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def start(self, label: str, total: int) -> None:
        """A counted phase (e.g. 'solving', total = cells)."""
        self._label, self._total, self._done, self._last_pct = label, max(0, total), 0, -1
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(label, total=self._total)
        elif self.enabled:
            self._line(0)

    def advance(self, n: int = 1) -> None:
        self._done += n
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)
        elif self.enabled and self._total:
            self._line(100 * self._done // self._total)

    def step(self, text: str) -> None:
        """One step of an uncounted phase (writing the report)."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=text)
        elif self.enabled:
            print(text, file=self.stream, flush=True)

    def _line(self, pct: int) -> None:
        pct = pct // STEP_PCT * STEP_PCT
        if pct > self._last_pct:
            self._last_pct = pct
            print(f"{self._label}: {pct}% ({self._done:,}/{self._total:,})", file=self.stream, flush=True)
