"""One signal policy for every kvplan command: Ctrl-C (SIGINT) and SIGTERM both unwind the program the
same way, so every `finally` and `except KeyboardInterrupt` cleanup runs (temporary files, the run
folder of `kvplan execute`, worker pools), then the command prints one line, "interrupted", and exits
130 (SIGINT) or 143 (SIGTERM), the shell's 128 + signal number.

SIGTERM raises `Terminated`, a KeyboardInterrupt, where Python raises KeyboardInterrupt for Ctrl-C.
This module imports nothing heavy: planner/cli/__init__.py installs it before the subcommands' imports
(about a second of pandas, matplotlib, torch), and `startup_guard` turns an interrupt during those
imports into the same one line instead of a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MESSAGE = "interrupted"
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM: a KeyboardInterrupt, so the cleanup written for Ctrl-C runs for it too."""


_owner_pid: int | None = None
_terminating = False  # Terminated was raised and SIGTERM set to be ignored


def _on_sigterm(signum: int, frame: object) -> None:
    global _terminating
    if os.getpid() != _owner_pid:  # a forked child: die as SIGTERM's default action would
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    # From here on SIGTERM is ignored, by the OS: a second one (a process manager, a group kill) must not cut
    # the cleanup short, nor kill the interpreter while it exits; SIGKILL still ends it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _terminating = True
    raise Terminated()


def install() -> bool:
    """SIGTERM raises Terminated in this process from now on. Not in a multiprocessing child (a report
    worker keeps the default: its parent shuts it down), not off the main thread, and not where the
    embedding program already chose its own SIGTERM handling. True when installed."""
    global _owner_pid, _terminating
    if threading.current_thread() is not threading.main_thread():
        return False
    if "multiprocessing" in sys.modules and sys.modules["multiprocessing"].parent_process() is not None:
        return False
    current = signal.getsignal(signal.SIGTERM)
    ours = current is _on_sigterm or (current == signal.SIG_IGN and _terminating)
    if current != signal.SIG_DFL and not ours:
        return False
    _owner_pid = os.getpid()
    _terminating = False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def exit_code(exc: BaseException | None) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT


def report(exc: BaseException | None) -> int:
    """Print the one line and return the exit code."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    print(MESSAGE, file=sys.stderr, flush=True)
    return exit_code(exc)


@contextmanager
def startup_guard() -> Iterator[None]:
    """Ctrl-C or SIGTERM while the program is still importing: the one line and the exit code, no traceback."""
    try:
        yield
    except KeyboardInterrupt as exc:
        sys.exit(report(exc))
