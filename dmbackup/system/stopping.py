"""Forcing a run that does not stop out of a blocked system call.

A stop request (SIGTERM, SIGINT, a job's time limit) sets ``app.stop``, which the engine checks
at safe points. A run blocked in a system call (a share that accepted a connection and went
silent, a hung disk) never reaches one, so a ``Kicker`` sends the signal again to the main
thread every ``STOP_GRACE`` seconds; its handler raises, and the blocked call returns EINTR.
Post-run hooks are never cut short that way: they run inside ``teardown()``, and while any does
``tearing_down()`` is true. This module is small and
imported up front by the CLI: a signal handler must never import a module that may be half
imported at that moment.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

STOP_GRACE = 10.0                # seconds from a stop request to forcing a stuck run out

_teardown_lock = threading.Lock()
_teardowns = 0                   # post/on-failure hook phases running now, in any thread


def tearing_down() -> bool:
    """True while teardown (post or on-failure hooks) runs: it must not be interrupted by force."""
    return _teardowns > 0


@contextmanager
def teardown() -> Iterator[None]:
    global _teardowns
    with _teardown_lock:
        _teardowns += 1
    try:
        yield
    finally:
        with _teardown_lock:
            _teardowns -= 1


class Kicker:
    """Sends ``signum`` to the main thread every ``grace`` seconds until cancelled, except while
    teardown hooks run. The handler of ``signum`` decides whether to raise; the signal itself
    is what gets a blocked call in the main thread to return (EINTR) so that it can."""

    def __init__(self, signum: int, grace: float, *, delay: float | None = None,
                 before_first: Callable[[], None] | None = None):
        self.signum, self.grace = signum, grace
        self.delay = grace if delay is None else delay
        self.before_first = before_first
        self._done = threading.Event()
        self._main = threading.main_thread().ident
        self._thread = threading.Thread(target=self._run, name="dmbackup-stop-kicker", daemon=True)

    def start(self) -> "Kicker":
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop kicking; once this returns no further signal is sent (safe to restore handlers)."""
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def cancelled(self) -> bool:
        return self._done.is_set()

    def _run(self) -> None:
        if self._done.wait(self.delay):
            return
        if self.before_first is not None:
            self.before_first()
        while True:
            if not tearing_down():
                try:
                    signal.pthread_kill(self._main, self.signum)
                except (OSError, ValueError):
                    return
            if self._done.wait(self.grace):
                return
