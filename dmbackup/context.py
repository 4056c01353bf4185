"""The context every operation runs in: config, local state, logger, passphrase, stop flag.

The core takes an ``App``; the CLI and the daemon build one. ``stop`` is set by signal
handlers (SIGTERM in the daemon, SIGINT in the CLI); long operations call ``check_stop()``
between files and volumes, so an interrupted run aborts at a point where nothing half-written
is visible.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from dmbackup import credentials
from dmbackup.errors import Interrupted
from dmbackup.log import Logger, Progress, null_logger
from dmbackup.state import State

if TYPE_CHECKING:
    from dmbackup.config import Config


class App:
    def __init__(self, config: Config, *, log: Logger | None = None, progress: Progress | None = None):
        self.config = config
        self.state = State(config.state_dir)
        self.log = log or null_logger()
        self.progress = progress or Progress()
        self.stop = threading.Event()
        self._passphrase: bytes | None = None

    def passphrase(self) -> bytes:
        if self._passphrase is None:
            self._passphrase = credentials.passphrase(self.config)
        return self._passphrase

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted("interrupted: the run was stopped; nothing of it was committed")

    def target(self, name: str):
        """The target, opened by the caller; a network target (its capabilities say so) retries
        transient errors."""
        from dmbackup.targets import registry

        t = registry.build(self.config.target(name), self)
        if t.capabilities.network:
            from dmbackup.targets.retry import RetryingTarget

            t = RetryingTarget(t)
        return t
