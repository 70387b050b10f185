"""Ctrl-C during a long command: stop at once, but never lose track of the interrupt.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread is, and some libraries
catch it there: py4j (ScienceWorld's bridge to its JVM) handles a ``KeyboardInterrupt`` raised
while it waits for the JVM, fails in that handler and raises an ``AttributeError`` instead, which
the episode runner records as one failed episode and carries on. :class:`InterruptGuard` installs
a SIGINT handler that raises ``KeyboardInterrupt`` as usual *and* remembers that it did, so the
next episode boundary (:meth:`InterruptGuard.check`) stops the command even when a library
swallowed the interrupt; :meth:`InterruptGuard.shielded` defers it while an episode is being
recorded, so a store write or a report entry is never cut in half. While it is active, a library
that logs the interrupt it caught (py4j logs it with a traceback) is kept quiet: the command itself
says that it was interrupted.

Training runs also stop on SIGTERM (what a scheduler or ``kill`` sends): ``InterruptGuard(SIGTERM_TOO)``
treats it exactly like Ctrl-C, so the run checkpoints and ends ``interrupted`` either way, and its
shielded sections (an optimizer update, a checkpoint being written) are never cut in half.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

#: The signals a training run stops on.
SIGTERM_TOO = (signal.SIGINT, signal.SIGTERM)


class InterruptGuard:
    """SIGINT (and optionally more signals) handling for a ``with`` block in the main thread (elsewhere a no-op)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGINT,)) -> None:
        self.requested = False  # a signal arrived since the block began
        self.signals = signals
        self._shield_depth = 0
        self._previous: dict[signal.Signals, Any] = {}
        self._installed = False

    @staticmethod
    def _not_our_interrupt(record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[0] is not None and issubclass(record.exc_info[0], KeyboardInterrupt))

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self._shield_depth == 0:
            raise KeyboardInterrupt

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                previous = signal.getsignal(signum)
                if previous is not signal.SIG_IGN:  # started with it ignored (nohup, `&` in a script): keep it so
                    self._previous[signum] = previous
                    signal.signal(signum, self._handle)
            if self._previous:
                logging.getLogger().addFilter(self._not_our_interrupt)
                self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
            self._previous.clear()
            logging.getLogger().removeFilter(self._not_our_interrupt)
            self._installed = False

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a SIGINT arrived (and was swallowed on its way)."""
        if self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Defer a SIGINT that arrives inside the block to its end."""
        self._shield_depth += 1
        try:
            yield
        finally:
            self._shield_depth -= 1
        self.check()
