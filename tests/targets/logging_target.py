"""``LoggingTarget``: a test helper that logs each call of the target it wraps.

It logs operation, name, bytes, duration and outcome at DEBUG and failures at WARNING,
through ``logging`` ("dmbackup.targets"), and never object contents. Shipped code has no use
for it (the engine logs its own events), so it lives with the tests, as a wrapper that is
itself a target and passes the contract suite (tests/targets/test_retry.py).
"""

from __future__ import annotations

import logging
import time

from dmbackup.errors import NotFound
from dmbackup.targets.base import AlreadyExists, ObjectWriter, Target
from dmbackup.targets.retry import ForwardingTarget

log = logging.getLogger("dmbackup.targets")


class _LoggingWriter(ObjectWriter):
    def __init__(self, target: "LoggingTarget", name: str, inner: ObjectWriter):
        self.target, self.name, self.inner = target, name, inner
        self.started = time.monotonic()

    @property
    def size(self) -> int:
        return self.inner.size

    def write(self, data):
        try:
            self.inner.write(data)
        except Exception as exc:
            self.target._failed("write", self.name, exc, self.started)
            raise

    def commit(self):
        try:
            self.inner.commit()
        except Exception as exc:
            self.target._failed("commit", self.name, exc, self.started)
            raise
        self.target._ok("commit", self.name, self.started, self.inner.size)

    def abort(self):
        self.inner.abort()
        self.target._ok("abort", self.name, self.started, self.inner.size)


class LoggingTarget(ForwardingTarget):
    def __init__(self, inner: Target, logger: logging.Logger | None = None):
        super().__init__(inner)
        self.log = logger or log

    def _ok(self, op, name, started, nbytes=None):
        if self.log.isEnabledFor(logging.DEBUG):
            extra = f" {nbytes} bytes" if nbytes is not None else ""
            self.log.debug("%s %s %s ok%s in %.3fs", self.inner.name, op, name, extra,
                           time.monotonic() - started)

    def _failed(self, op, name, exc, started):
        # NotFound and AlreadyExists are answers callers ask for (exists checks, locks)
        level = logging.DEBUG if isinstance(exc, (AlreadyExists, NotFound)) else logging.WARNING
        self.log.log(level, "%s %s %s failed after %.3fs: %s: %s", self.inner.name, op, name,
                     time.monotonic() - started, type(exc).__name__, exc)

    def _run(self, op, name, fn, size=None):
        started = time.monotonic()
        try:
            result = fn()
        except Exception as exc:
            self._failed(op, name, exc, started)
            raise
        self._ok(op, name, started, size(result) if size else None)
        return result

    def open(self):
        self._run("open", "", self.inner.open)

    def close(self):
        self._run("close", "", self.inner.close)

    def put(self, name, data):
        self._run("put", name, lambda: self.inner.put(name, data), size=lambda _: len(data))

    def writer(self, name):
        return _LoggingWriter(self, name, self._run("writer", name, lambda: self.inner.writer(name)))

    def create_exclusive(self, name, data):
        self._run("create_exclusive", name, lambda: self.inner.create_exclusive(name, data),
                  size=lambda _: len(data))

    def get(self, name, offset=0, length=None):
        return self._run("get", name, lambda: self.inner.get(name, offset, length), size=len)

    def stat(self, name):
        return self._run("stat", name, lambda: self.inner.stat(name))

    def exists(self, name):
        return self._run("exists", name, lambda: self.inner.exists(name))

    def list(self, directory=""):
        yield from self._run("list", directory, lambda: list(self.inner.list(directory)))

    def list_dirs(self, directory=""):
        yield from self._run("list_dirs", directory, lambda: list(self.inner.list_dirs(directory)))

    def delete(self, name):
        self._run("delete", name, lambda: self.inner.delete(name))

    def rmdir(self, name):
        self._run("rmdir", name, lambda: self.inner.rmdir(name))

    def free_space(self):
        return self._run("free_space", "", self.inner.free_space)

    def sync(self):
        self._run("sync", "", self.inner.sync)
