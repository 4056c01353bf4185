"""The NFS target's ``userspace`` transport: NFSv3 through libnfs (dmbackup.system.libnfs).

No mount, no kernel NFS client, no privilege needed. Every RPC is bounded by ``timeout``; a
dead or hung server ends the call with TransientTargetError (exit 7, worth a retry) and the
next call reconnects. Writes go to ``name + TMP_MARK + random`` created with O_EXCL (an NFSv3
EXCLUSIVE create), are COMMITted, and are renamed over ``name`` (NFS RENAME replaces
atomically); ``create_exclusive`` is the same EXCLUSIVE create on the final name. An
interrupted write leaves only a temporary name for the next run's cleaner.
"""

from __future__ import annotations

import errno
import os
import posixpath
import threading
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from dmbackup.errors import AuthFailed, NoSpace, NotFound, TargetUnavailable, TransientTargetError
from dmbackup.targets.base import AlreadyExists, Capabilities, ObjectInfo, ObjectWriter, Target, validate_name
from dmbackup.targets.writer import TempRenameWriter

if TYPE_CHECKING:
    from dmbackup.targets.nfs import NfsConfig

T = TypeVar("T")

_TRANSIENT = frozenset({
    errno.EINTR, errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
    errno.ECONNABORTED, errno.EPIPE, errno.ENOTCONN, errno.EAGAIN, errno.ESTALE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
})


class _NfsWriter(TempRenameWriter):
    def __init__(self, target: "NfsUserspaceTarget", name: str):
        super().__init__(name, target._path(name))
        self.target = target
        self.f = target._create(name, self.tmp)

    def _write(self, data) -> None:
        self.target._do(self.name, lambda ctx: self.f.pwrite(data, self._size))

    def _commit(self) -> None:
        def finish(ctx):
            self.f.fsync()          # NFS COMMIT: the bytes are on the server's disk
            self.f.close()
            ctx.rename(self.tmp, self.final)
        self.target._do(self.name, finish)

    def _discard(self, error) -> None:
        self.target._discard(self.f, self.tmp)


class NfsUserspaceTarget(Target):
    """NFSv3 through libnfs; see the module docstring."""

    kind = "nfs"

    def __init__(self, cfg: NfsConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.capabilities = Capabilities(network=True)
        self.base = "/" + cfg.path if cfg.path else "/"
        self._ctx = None
        self._lock = threading.RLock()
        self._dirs: set[str] = set()          # directories known to exist (saves MKDIR round trips)
        self._opened = False

    def describe(self) -> str:
        return self.cfg.describe()

    # -- session ---------------------------------------------------------------------------
    def _connect(self):
        from dmbackup.system import libnfs
        with self._lock:
            if self._ctx is not None and self._ctx.alive:
                return self._ctx
            try:
                ctx = libnfs.Context(self.cfg.server, self.cfg.export_path, timeout=self.cfg.timeout)
            except libnfs.LibraryMissing as exc:
                raise TargetUnavailable(f"{self.describe()}: {exc}") from None
            except OSError as exc:
                raise self._mount_error(exc) from None
            self._ctx = ctx
            self._dirs = set()
            return ctx

    def _mount_error(self, exc: OSError) -> TargetUnavailable:
        why = str(exc.strerror or exc)
        if exc.errno in (errno.EACCES, errno.EPERM):
            return AuthFailed(f"{self.describe()}: the server refused to mount {self.cfg.export_path}: {why}. "
                              "Check that it is exported to this host (and the export's security flavour)")
        if exc.errno == errno.ENOENT:
            return TargetUnavailable(f"{self.describe()}: the server does not export {self.cfg.export_path}: {why}")
        if exc.errno in _TRANSIENT:
            return TransientTargetError(f"{self.describe()}: NFS server {self.cfg.server} unreachable or not "
                                        f"answering within {self.cfg.timeout} s: {why}")
        return TargetUnavailable(f"{self.describe()}: cannot mount {self.cfg.export}: {why}")

    def open(self) -> None:
        if self._opened:
            return
        self._connect()
        if self.cfg.path:
            self._do(self.cfg.path, lambda ctx: self._makedirs(ctx, self.base))
        else:
            self._do(".", lambda ctx: ctx.stat("/"))
        self._opened = True

    def close(self) -> None:
        with self._lock:
            ctx, self._ctx = self._ctx, None
            self._opened = False
            self._dirs = set()
        if ctx is not None:
            ctx.close()

    def _drop(self) -> None:
        """Forget a session that failed in transit; the next call makes a new one."""
        with self._lock:
            ctx, self._ctx = self._ctx, None
            self._dirs = set()
        if ctx is not None:
            ctx.destroy()

    # -- error mapping ---------------------------------------------------------------------
    def _map(self, exc: OSError, what: str) -> Exception:
        code = exc.errno
        why = str(exc.strerror or exc)
        if code in (errno.ENOENT, errno.ENOTDIR):     # ENOTDIR: a name below an object
            return NotFound(f"{what} not found on {self.describe()}")
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return NoSpace(f"{self.describe()} is full while writing {what}: free space on the share and run again")
        if code == errno.EROFS:
            return TargetUnavailable(f"{self.describe()} is exported read-only: export it read-write")
        if code in (errno.EACCES, errno.EPERM):
            return TargetUnavailable(f"permission denied on {self.describe()} ({what}): check the export's "
                                     "squash settings and directory ownership")
        if code in _TRANSIENT:
            return TransientTargetError(f"{self.describe()}: NFS server {self.cfg.server} failed or did not answer "
                                        f"within {self.cfg.timeout} s ({what}): {why}")
        return TargetUnavailable(f"{self.describe()}: NFS error on {what}: {why}")

    def _do(self, what: str, fn: Callable[..., T]) -> T:
        ctx = self._connect()
        try:
            return fn(ctx)
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                self._drop()
            raise self._map(exc, what) from None

    # -- paths -----------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        validate_name(name)
        return posixpath.join(self.base, name)

    def _makedirs(self, ctx, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        cur = ""
        for p in parts:
            cur += "/" + p
            if cur in self._dirs:
                continue
            try:
                ctx.mkdir(cur)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
            self._dirs.add(cur)

    def _create(self, name: str, path: str, *, exclusive: bool = False):
        """Create ``path`` with O_EXCL, making its parents; a parent removed behind our back
        (cached as existing) is made again once. With ``exclusive`` an existing ``path`` is
        AlreadyExists (the lock primitive); for a temporary name it cannot happen twice."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL

        def create(ctx):
            parent = posixpath.dirname(path)
            self._makedirs(ctx, parent)
            try:
                try:
                    return ctx.create(path, flags, 0o600)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                    self._dirs = {d for d in self._dirs if not (parent + "/").startswith(d + "/")}
                    self._makedirs(ctx, parent)
                    return ctx.create(path, flags, 0o600)
            except OSError as exc:
                if exclusive and exc.errno == errno.EEXIST:
                    raise AlreadyExists(f"{name} already exists") from None
                raise
        return self._do(name, create)

    def _discard(self, f, path: str) -> None:
        """Best effort: close and remove a temporary; never raises, never reconnects (after a
        failure the server may be gone: the next run's cleaner removes the temporary)."""
        with self._lock:
            ctx = self._ctx
        if ctx is None or not ctx.alive or f.ctx is not ctx:
            return
        try:
            f.close()
        except OSError:
            pass
        try:
            ctx.unlink(path)
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                self._drop()

    # -- objects ---------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        with self.writer(name) as w:
            w.write(data)

    def writer(self, name: str) -> ObjectWriter:
        return _NfsWriter(self, name)

    def create_exclusive(self, name: str, data: bytes) -> None:
        path = self._path(name)
        f = self._create(name, path, exclusive=True)
        try:
            def fill(ctx):
                if data:            # an NFSv3 CREATE is itself on stable storage when it returns
                    f.pwrite(data, 0)
                    f.fsync()
                f.close()
            self._do(name, fill)
        except BaseException:
            self._discard(f, path)
            raise

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)

        def read(ctx):
            with ctx.open(path) as f:
                if length is None:
                    return f.pread(offset, max(0, f.fstat().size - offset))
                return f.pread(offset, length)
        return self._do(name, read)

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)
        st = self._do(name, lambda ctx: ctx.stat(path))
        return ObjectInfo(name, st.size)

    def _entries(self, directory: str):
        path = self._path(directory) if directory else self.base
        try:
            return self._do(directory or ".", lambda ctx: ctx.listdir(path))
        except NotFound:
            return []

    def list(self, directory: str = "") -> Iterator[str]:
        names = sorted(e.name for e in self._entries(directory) if e.is_file)
        for n in names:
            yield f"{directory}/{n}" if directory else n

    def list_dirs(self, directory: str = "") -> Iterator[str]:
        names = sorted(e.name for e in self._entries(directory) if e.is_dir)
        for n in names:
            yield f"{directory}/{n}" if directory else n

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            self._do(name, lambda ctx: ctx.unlink(path))
        except NotFound:
            pass

    def rmdir(self, name: str) -> None:
        path = self._path(name)
        self._do(name, lambda ctx: ctx.rmdir(path))

    def free_space(self) -> int | None:
        avail, _total = self._do(".", lambda ctx: ctx.statvfs(self.base))
        return avail

    def sync(self) -> None:
        """Nothing to do: every object was COMMITted to stable storage before its rename."""
