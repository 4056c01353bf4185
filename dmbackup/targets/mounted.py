"""The base of the targets that mount something and then are a ``dir`` target under it.

The USB target mounts a disk (dmbackup.system.diskmount), the NFS target's ``mount`` transport
an export (dmbackup.system.nfsmount); from then on every object operation goes to a
``DirTarget`` rooted at the mount point. What they share lives here: the session (``open``
mounts and makes the dir target, ``close`` unmounts what ``open`` mounted), the delegation of
every operation, and the guard.

The guard: before anything that writes or lists, and before a writer's rename makes an
object visible, the target checks (``_gone``) that what it mounted is still mounted where it
writes. A medium that was pulled or unmounted in the middle of a run therefore fails the run
with TargetUnavailable (exit 7) instead of filling the empty mount-point directory on the root
file system, or making an unmounted directory look like a repository with no snapshots. Reads
check only after a miss, so a missing object on a medium that vanished is "unavailable", not
"damaged". An error that happened because the medium vanished becomes the target's
``_gone_error`` (``_mapped``).

A subclass provides ``_attach`` (mount, build and open the DirTarget; nothing stays mounted
when it fails), ``_detach`` (sync and unmount what ``_attach`` mounted), ``_gone`` and
``_gone_error``; it may refine ``_check_name`` and ``_failure``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from dmbackup.errors import TargetUnavailable
from dmbackup.targets.base import ObjectInfo, ObjectWriter, Target, validate_name
from dmbackup.targets.dir import DirTarget


class _GuardedWriter(ObjectWriter):
    """The dir target's writer, re-checking the mount before the rename makes the object visible."""

    def __init__(self, target: "MountedDirTarget", inner: ObjectWriter):
        self.target, self.inner = target, inner

    @property
    def size(self) -> int:
        return self.inner.size

    def write(self, data: bytes) -> None:
        # an open file keeps writing to the file system it was opened on: no path, no guard
        # needed; a failed write already removed its temporary, so its bytes are free again
        with self.target._mapped(released=self.inner.size + len(data)):
            self.inner.write(data)

    def commit(self) -> None:
        try:
            self.target._guard()
        except TargetUnavailable:
            self.inner.abort()
            raise
        with self.target._mapped():
            self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()


class MountedDirTarget(Target):
    """See the module docstring."""

    _dir: DirTarget | None = None

    # -- what a subclass provides ------------------------------------------------------------
    def _attach(self) -> DirTarget:
        raise NotImplementedError

    def _detach(self, inner: DirTarget | None) -> None:
        raise NotImplementedError

    def _gone(self) -> bool:
        raise NotImplementedError

    def _gone_error(self) -> TargetUnavailable:
        raise NotImplementedError

    def _check_name(self, name: str) -> None:
        validate_name(name)         # names are checked before anything else, as base.py promises

    def _failure(self, exc: TargetUnavailable, released: int) -> Exception | None:
        """A better error for ``exc``, raised by the dir target while the medium is still
        there, or None to let it stand. ``released``: bytes a failed write gave back."""
        return None

    # -- session -----------------------------------------------------------------------------
    @property
    def root(self) -> str | None:
        """The directory objects live under, while open."""
        return self._dir.root if self._dir is not None else None

    def open(self) -> None:
        if self._dir is None:
            self._dir = self._attach()

    def close(self) -> None:
        inner, self._dir = self._dir, None
        self._detach(inner)

    # -- guard and error mapping ---------------------------------------------------------------
    def _inner(self) -> DirTarget:
        if self._dir is None:
            self.open()
        assert self._dir is not None
        return self._dir

    def _guard(self, name: str | None = None) -> DirTarget:
        if name is not None:
            self._check_name(name)
        inner = self._inner()
        if self._gone():
            raise self._gone_error()
        return inner

    @contextmanager
    def _mapped(self, released: int = 0):
        """Turn an error that happened because the medium vanished into ``_gone_error``."""
        try:
            yield
        except TargetUnavailable as exc:
            if self._gone():
                raise self._gone_error() from None
            better = self._failure(exc, released)
            if better is not None:
                raise better from None
            raise
        except OSError as exc:
            # the dir target maps its errors, but a cleanup step on a dying medium (unlink
            # after a failed fsync) can still raise a raw OSError: never a traceback
            if self._gone():
                raise self._gone_error() from None
            raise TargetUnavailable(f"{self.describe()}: I/O error: {exc}") from None

    # -- objects: all through the dir target ----------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        with self.writer(name) as w:
            w.write(data)

    def writer(self, name: str) -> ObjectWriter:
        inner = self._guard(name)
        with self._mapped():
            return _GuardedWriter(self, inner.writer(name))

    def create_exclusive(self, name: str, data: bytes) -> None:
        inner = self._guard(name)
        with self._mapped():
            inner.create_exclusive(name, data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._check_name(name)
        inner = self._inner()
        with self._mapped():
            return inner.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        self._check_name(name)
        inner = self._inner()
        with self._mapped():
            return inner.stat(name)

    def list(self, directory: str = "") -> Iterator[str]:
        # an unmounted medium would list as an empty repository: guard first
        inner = self._guard(directory or None)
        with self._mapped():
            names = list(inner.list(directory))
        yield from names

    def list_dirs(self, directory: str = "") -> Iterator[str]:
        inner = self._guard(directory or None)
        with self._mapped():
            names = list(inner.list_dirs(directory))
        yield from names

    def delete(self, name: str) -> None:
        inner = self._guard(name)
        with self._mapped():
            inner.delete(name)

    def rmdir(self, name: str) -> None:
        """Remove an empty directory (the engine tidies pruned chains); errors stay raw, as
        DirTarget.rmdir's: callers ignore them."""
        self._guard(name).rmdir(name)

    def free_space(self) -> int | None:
        return self._guard().free_space()

    def sync(self) -> None:
        self._guard().sync()
