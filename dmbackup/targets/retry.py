"""A wrapper that is itself a target: bounded retries of transient errors.

``App.target()`` (dmbackup/context.py) puts it around every target whose capabilities say
``network`` (SMB, NFS).

``RetryingTarget`` retries a call that failed with ``TransientTargetError`` (a dropped
connection, a silent server) up to ``attempts`` times in all, sleeping ``backoff``,
``2*backoff``, ``4*backoff``... (capped at ``max_backoff``) in between. Nothing else is ever
retried: ``AuthFailed``, ``NotFound``, permission errors, ``NoSpace`` and ``AlreadyExists``
are answers, not accidents, and asking again would only lock an account or waste time.
The targets reconnect on their own after a transient error (the SMB target resets its
connection cache before raising), so a retry is just the same call again.

What is retried, and why it is safe:
- ``open``, ``get``, ``stat``, ``exists``, ``list``, ``list_dirs``, ``delete``,
  ``free_space``, ``sync``: idempotent. ``list``/``list_dirs`` are read completely inside
  the attempt, so a caller never sees half a listing followed by a repetition.
- ``put``: the whole object is in hand and a put is write-temporary-then-rename, so a
  repeated put leaves the same object; a failed attempt may leave a temporary name, which
  the next run's cleaner removes (temporaries are listed).
- ``create_exclusive``: a repeat can find the object that the failed attempt created before
  its answer was lost. When the existing object holds exactly our bytes, it is ours and the
  call succeeds; otherwise ``AlreadyExists`` stands (lock files carry host, PID and time,
  so another writer's lock never matches ours). A partial object left by an attempt that
  died mid-write is NOT taken over: it raises ``AlreadyExists`` like any foreign lock.
- ``writer``: only opening it (creating the temporary) is retried. Once bytes have been
  streamed, a failure cannot be replayed without keeping the whole stream, which for a
  1 GiB volume we will not do: ``write``/``commit`` failures surface unchanged as
  ``TransientTargetError`` after the writer aborted itself, and the engine, which can
  regenerate the volume from its source, decides whether to write it again.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

from dmbackup.errors import NotFound, TransientTargetError
from dmbackup.targets.base import AlreadyExists, Capabilities, ObjectWriter, Target

log = logging.getLogger("dmbackup.targets")


class ForwardingTarget(Target):
    """Shared plumbing of wrappers: identity and capabilities come from the inner target."""

    def __init__(self, inner: Target):
        self.inner = inner
        self.name = inner.name
        self.kind = inner.kind

    @property
    def capabilities(self) -> Capabilities:    # type: ignore[override]
        """Read through: a target may learn its medium's limits only when opened (USB)."""
        return self.inner.capabilities

    def describe(self) -> str:
        return self.inner.describe()


class RetryingTarget(ForwardingTarget):
    def __init__(self, inner: Target, attempts: int = 4, backoff: float = 2.0, *,
                 max_backoff: float = 60.0, sleep: Callable[[float], None] = time.sleep,
                 logger: logging.Logger | None = None):
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        super().__init__(inner)
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.log = logger or log

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return min(self.max_backoff, self.backoff * (2 ** (retry - 1)))

    def _retry(self, op: str, name: str, fn, *, on_retry=None):
        failures = 0
        while True:
            try:
                return fn()
            except TransientTargetError as exc:
                failures += 1
                if failures >= self.attempts:
                    self.log.warning("%s %s on %s failed after %d attempts: %s",
                                     op, name, self.describe(), failures, exc)
                    raise
                wait = self.delay(failures)
                self.log.warning("%s %s on %s failed (%s); retry %d of %d in %.1fs",
                                 op, name, self.describe(), exc, failures, self.attempts - 1, wait)
                self.sleep(wait)
                if on_retry is not None:
                    on_retry()

    def open(self):
        self._retry("open", "", self.inner.open)

    def close(self):
        self.inner.close()

    def put(self, name, data):
        self._retry("put", name, lambda: self.inner.put(name, data))

    def writer(self, name) -> ObjectWriter:
        return self._retry("writer", name, lambda: self.inner.writer(name))

    def create_exclusive(self, name, data):
        retried = False

        def attempt():
            try:
                self.inner.create_exclusive(name, data)
            except AlreadyExists:
                # our own earlier attempt may have succeeded before its answer was lost
                if retried and self._holds(name, data):
                    return
                raise

        def mark():
            nonlocal retried
            retried = True

        self._retry("create_exclusive", name, attempt, on_retry=mark)

    def _holds(self, name, data) -> bool:
        try:
            return self.get(name) == bytes(data)      # itself retried
        except NotFound:
            return False

    def get(self, name, offset=0, length=None):
        return self._retry("get", name, lambda: self.inner.get(name, offset, length))

    def stat(self, name):
        return self._retry("stat", name, lambda: self.inner.stat(name))

    def exists(self, name):
        return self._retry("exists", name, lambda: self.inner.exists(name))

    def list(self, directory="") -> Iterator[str]:
        yield from self._retry("list", directory, lambda: list(self.inner.list(directory)))

    def list_dirs(self, directory="") -> Iterator[str]:
        yield from self._retry("list_dirs", directory, lambda: list(self.inner.list_dirs(directory)))

    def delete(self, name):
        self._retry("delete", name, lambda: self.inner.delete(name))

    def rmdir(self, name):
        self.inner.rmdir(name)

    def free_space(self):
        return self._retry("free_space", "", self.inner.free_space)

    def sync(self):
        self._retry("sync", "", self.inner.sync)
