"""The ``dir`` target: objects are files under a local or already-mounted directory.

Atomicity comes from write-to-temporary + fsync + rename(2) in the same directory. With
``require_mount`` the root (or one of its parents below it) must be a mount point according to
/proc/self/mountinfo, so a share that failed to mount never fills the root file system. The
root directory itself must exist: dmbackup never creates a missing target path (a missing
path usually means an unmounted disk).
"""

from __future__ import annotations

import errno
import os
import secrets
from typing import Iterator

from ..errors import NoSpace, NotFound, TargetUnavailable
from .base import (
    TMP_MARK,
    AlreadyExists,
    Capabilities,
    ObjectInfo,
    ObjectWriter,
    Target,
    validate_name,
)
from .mounts import is_mount_point


def _map_oserror(target: "DirTarget", exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return NoSpace(f"{target.describe()} is full while writing {what}: free space on {target.root} and run again")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(f"{what} not found on {target.describe()}")
    if exc.errno in (errno.EROFS,):
        return TargetUnavailable(f"{target.describe()} is read-only ({target.root}): remount it read-write")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return TargetUnavailable(f"permission denied on {target.describe()} ({what}): check ownership of {target.root}")
    return TargetUnavailable(f"{target.describe()} I/O error on {what}: {exc.strerror or exc}")


class _FileWriter(ObjectWriter):
    def __init__(self, target: "DirTarget", name: str):
        self.target = target
        self.name = name
        self.final = target._path(name)
        self.tmp = f"{self.final}{TMP_MARK}{secrets.token_hex(4)}"
        target._mkparents(name)
        try:
            self.f = open(self.tmp, "xb", buffering=0)
        except OSError as exc:
            raise _map_oserror(target, exc, name) from None
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                n = self.f.write(view)
                view = view[n:]
        except OSError as exc:
            self.abort()
            raise _map_oserror(self.target, exc, self.name) from None
        self._size += len(data)

    def commit(self) -> None:
        if self._done:
            return
        try:
            os.fsync(self.f.fileno())
            self.f.close()
            os.replace(self.tmp, self.final)
            self.target._fsync_dir(os.path.dirname(self.final))
        except OSError as exc:
            self.abort()
            raise _map_oserror(self.target, exc, self.name) from None
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self.f.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


class DirTarget(Target):
    kind = "dir"

    def __init__(self, name: str, path: str, *, require_mount: bool = False,
                 max_object_size: int | None = None):
        self.name = name
        self.root = os.path.abspath(path)
        self.require_mount = require_mount
        caps = Capabilities()
        if max_object_size:
            caps = Capabilities(max_object_size=max_object_size)
        self.capabilities = caps

    def describe(self) -> str:
        return f"dir target {self.name!r} ({self.root})"

    def open(self) -> None:
        if not os.path.isdir(self.root):
            raise TargetUnavailable(
                f"{self.describe()}: path {self.root} does not exist or is not a directory: "
                "mount the disk or share, or fix the target path"
            )
        if self.require_mount and not is_mount_point(self.root):
            raise TargetUnavailable(
                f"{self.describe()}: {self.root} is not a mount point (require_mount = true): "
                "mount the share first; nothing was written"
            )

    def _path(self, name: str) -> str:
        validate_name(name)
        return os.path.join(self.root, name)

    def _mkparents(self, name: str) -> None:
        parent = os.path.dirname(self._path(name))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise _map_oserror(self, exc, name) from None

    def _fsync_dir(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def put(self, name: str, data: bytes) -> None:
        with self.writer(name) as w:
            w.write(data)

    def writer(self, name: str) -> ObjectWriter:
        return _FileWriter(self, name)

    def create_exclusive(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self._mkparents(name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise AlreadyExists(f"{name} already exists") from None
        except OSError as exc:
            raise _map_oserror(self, exc, name) from None
        try:
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass           # a pulled disk or read-only file system: the first error matters
            raise _map_oserror(self, exc, name) from None
        os.close(fd)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            with open(self._path(name), "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read() if length is None else f.read(length)
        except OSError as exc:
            raise _map_oserror(self, exc, name) from None

    def stat(self, name: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(name))
        except OSError as exc:
            raise _map_oserror(self, exc, name) from None
        return ObjectInfo(name, st.st_size)

    def list(self, directory: str = "") -> Iterator[str]:
        path = self._path(directory) if directory else self.root
        try:
            entries = sorted(e.name for e in os.scandir(path) if e.is_file(follow_symlinks=False))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _map_oserror(self, exc, directory or ".") from None
        for n in entries:
            yield f"{directory}/{n}" if directory else n

    def list_dirs(self, directory: str = "") -> Iterator[str]:
        path = self._path(directory) if directory else self.root
        try:
            entries = sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _map_oserror(self, exc, directory or ".") from None
        for n in entries:
            yield f"{directory}/{n}" if directory else n

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _map_oserror(self, exc, name) from None

    def rmdir(self, name: str) -> None:
        """Remove an empty directory (used after prune); not part of the Target contract."""
        os.rmdir(self._path(name))

    def free_space(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def sync(self) -> None:
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.syncfs(fd) if hasattr(os, "syncfs") else os.sync()
            finally:
                os.close(fd)
        except OSError:
            pass
