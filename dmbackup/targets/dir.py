"""The ``dir`` target: objects are files under a local or already-mounted directory.

Atomicity comes from write-to-temporary + fsync + rename(2) in the same directory. With
``require_mount`` the root (or one of its parents below it) must be a mount point according to
/proc/self/mountinfo, so a share that failed to mount never fills the root file system. The
root directory itself must exist: dmbackup never creates a missing target path (a missing
path usually means an unmounted disk).

The medium is not trusted (docs/threat-model.md): whoever holds the disk can put symbolic
links, FIFOs or device nodes where dmbackup expects its own files and directories. So every
name is resolved beneath the root with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_XDEV) (on kernels without openat2, a descriptor walk with O_NOFOLLOW that checks
the device), only regular files are read, and a link, another file system or a special file
met on the way is damage (exit 4), never followed. The root itself comes from the trusted
config and is opened normally. Everything created is mode 0600 (files) or 0700 (directories)
whatever the caller's umask.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
from typing import Iterator

from dmbackup.errors import CorruptObject, NoSpace, NotFound, TargetUnavailable
from dmbackup.targets.base import (
    TMP_MARK,
    AlreadyExists,
    Capabilities,
    ObjectInfo,
    ObjectWriter,
    Target,
    validate_name,
)
from dmbackup.system.mountinfo import is_mount_point

FILE_MODE = 0o600
DIR_MODE = 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
# O_NONBLOCK: opening a FIFO planted under an object's name must not wait for a writer
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK

# openat2(2), Linux 5.6+; the syscall number is the same on every architecture
_SYS_OPENAT2 = 437
_RESOLVE_NO_XDEV, _RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x01, 0x02, 0x04, 0x08
_RESOLVE = _RESOLVE_NO_XDEV | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
    _have_openat2 = True
except (OSError, AttributeError):      # not glibc-like: the O_NOFOLLOW walk still holds
    _have_openat2 = False


def _openat2(dirfd: int, rel: str, flags: int, mode: int = 0) -> int:
    global _have_openat2
    how = _OpenHow(flags, mode, _RESOLVE)
    fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(rel)),
                  ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            _have_openat2 = False
            return _walk_open(dirfd, rel, flags, mode)
        raise OSError(err, os.strerror(err), rel)
    return fd


def _walk_open(dirfd: int, rel: str, flags: int, mode: int = 0) -> int:
    """openat2's guarantees by hand: one component at a time, no links, same device."""
    dev = os.fstat(dirfd).st_dev
    parts = rel.split("/")
    fd = os.dup(dirfd)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if os.fstat(fd).st_dev != dev:
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), rel)
        out = os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=fd)
        if os.fstat(out).st_dev != dev:
            os.close(out)
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), rel)
        return out
    finally:
        os.close(fd)


def _link_on_the_way(dirfd: int, rel: str) -> bool:
    """Is a component of ``rel`` a symbolic link? (O_DIRECTORY | O_NOFOLLOW on a link says
    ENOTDIR, which must not pass for "not found".)"""
    fd = os.dup(dirfd)
    try:
        for part in rel.split("/"):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except OSError:
                return False
            if stat.S_ISLNK(st.st_mode):
                return True
            if not stat.S_ISDIR(st.st_mode):
                return False
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return False
    finally:
        os.close(fd)


def open_beneath(dirfd: int, rel: str, flags: int, mode: int = 0) -> int:
    """Open ``rel`` (a validated relative name) beneath ``dirfd``, never through a link,
    never onto another file system; ELOOP or EXDEV otherwise."""
    try:
        if _have_openat2:
            return _openat2(dirfd, rel, flags, mode)
        return _walk_open(dirfd, rel, flags, mode)
    except NotADirectoryError:
        if _link_on_the_way(dirfd, rel):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), rel) from None
        raise


def _map_oserror(target: "DirTarget", exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ELOOP, errno.EXDEV):
        return CorruptObject(
            f"{what} on {target.describe()} is reached through a symbolic link or another file "
            "system; dmbackup never follows a link on a backup medium: someone changed the disk; "
            f"check where the link points, remove it and run again")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return NoSpace(f"{target.describe()} is full while writing {what}: free space on {target.root} and run again")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(f"{what} not found on {target.describe()}")
    if exc.errno in (errno.EROFS,):
        return TargetUnavailable(f"{target.describe()} is read-only ({target.root}): remount it read-write")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return TargetUnavailable(f"permission denied on {target.describe()} ({what}): check ownership of {target.root}")
    return TargetUnavailable(f"{target.describe()} I/O error on {what}: {exc.strerror or exc}")


def _private(fd: int, mode: int) -> None:
    """Exactly ``mode``, whatever the umask; a file system without POSIX modes (FAT through
    FUSE answers ENOSYS) keeps what it has, which is no less private for the medium."""
    try:
        os.fchmod(fd, mode)
    except OSError:
        pass


def _not_regular(target: "DirTarget", name: str) -> CorruptObject:
    return CorruptObject(f"{name} on {target.describe()} is not a regular file (a device, FIFO, socket or "
                         "directory was put in its place): someone changed the disk; remove it and run again")


class _FileWriter(ObjectWriter):
    def __init__(self, target: "DirTarget", name: str):
        self.target = target
        self.name = validate_name(name)
        self.base = name.rsplit("/", 1)[-1]
        self.tmp = f"{self.base}{TMP_MARK}{secrets.token_hex(4)}"
        # the parent stays open until commit: the rename lands where the file was written
        self.pfd = target._parent(name, create=True)
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              FILE_MODE, dir_fd=self.pfd)
            _private(self.fd, FILE_MODE)
        except OSError as exc:
            os.close(self.pfd)
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
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            self.abort()
            raise _map_oserror(self.target, exc, self.name) from None
        self._size += len(data)

    def commit(self) -> None:
        if self._done:
            return
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.rename(self.tmp, self.base, src_dir_fd=self.pfd, dst_dir_fd=self.pfd)
            try:
                os.fsync(self.pfd)
            except OSError:
                pass
        except OSError as exc:
            self.abort()
            raise _map_oserror(self.target, exc, self.name) from None
        self._done = True
        os.close(self.pfd)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
        try:
            os.unlink(self.tmp, dir_fd=self.pfd)
        except OSError:
            pass
        os.close(self.pfd)


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

    # --- resolution beneath the root ------------------------------------------------------
    # The root is opened afresh for every operation: holding it open between operations
    # would keep a USB disk busy when its target unmounts it.
    def _root_fd(self, what: str) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _map_oserror(self, exc, what) from None

    def _dir_fd(self, directory: str, what: str, create: bool = False) -> int:
        """A descriptor for ``directory`` ("" = the root) beneath the root; with ``create``
        missing components are made (mode 0700)."""
        root = self._root_fd(what)
        if not directory:
            return root
        try:
            if not create:
                return open_beneath(root, directory, _DIR_FLAGS)
            fd = os.dup(root)
            try:
                for part in directory.split("/"):
                    made = False
                    try:
                        os.mkdir(part, DIR_MODE, dir_fd=fd)
                        made = True
                    except FileExistsError:
                        pass
                    nfd = open_beneath(fd, part, _DIR_FLAGS)
                    os.close(fd)
                    fd = nfd
                    if made:
                        _private(fd, DIR_MODE)
                return fd
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            raise _map_oserror(self, exc, what) from None
        finally:
            os.close(root)

    def _parent(self, name: str, create: bool = False) -> int:
        validate_name(name)
        return self._dir_fd(name.rsplit("/", 1)[0] if "/" in name else "", name, create)

    def _path(self, name: str) -> str:
        validate_name(name)
        return os.path.join(self.root, name)

    def _open_file(self, name: str) -> int:
        """A regular file beneath the root, opened for reading; anything else is damage."""
        validate_name(name)
        root = self._root_fd(name)
        try:
            fd = open_beneath(root, name, _READ_FLAGS)
        except OSError as exc:
            raise _map_oserror(self, exc, name) from None
        finally:
            os.close(root)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _not_regular(self, name)
        return fd

    # --- the Target interface -------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        with self.writer(name) as w:
            w.write(data)

    def writer(self, name: str) -> ObjectWriter:
        return _FileWriter(self, name)

    def create_exclusive(self, name: str, data: bytes) -> None:
        validate_name(name)
        pfd = self._parent(name, create=True)
        base = name.rsplit("/", 1)[-1]
        try:
            try:
                fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             FILE_MODE, dir_fd=pfd)
            except FileExistsError:
                raise AlreadyExists(f"{name} already exists") from None
            except OSError as exc:
                raise _map_oserror(self, exc, name) from None
            try:
                _private(fd, FILE_MODE)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as exc:
                os.close(fd)
                try:
                    os.unlink(base, dir_fd=pfd)
                except OSError:
                    pass           # a pulled disk or read-only file system: the first error matters
                raise _map_oserror(self, exc, name) from None
            os.close(fd)
        finally:
            os.close(pfd)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        fd = self._open_file(name)
        try:
            if length is None:
                length = max(0, os.fstat(fd).st_size - offset)
            parts, got = [], 0
            while got < length:
                piece = os.pread(fd, min(length - got, 16 << 20), offset + got)
                if not piece:
                    break
                parts.append(piece)
                got += len(piece)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        except OSError as exc:
            raise _map_oserror(self, exc, name) from None
        finally:
            os.close(fd)

    def stat(self, name: str) -> ObjectInfo:
        validate_name(name)
        pfd = self._parent(name)
        try:
            st = os.stat(name.rsplit("/", 1)[-1], dir_fd=pfd, follow_symlinks=False)
        except OSError as exc:
            raise _map_oserror(self, exc, name) from None
        finally:
            os.close(pfd)
        if stat.S_ISLNK(st.st_mode):
            raise _map_oserror(self, OSError(errno.ELOOP, "link"), name)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(self, name)
        return ObjectInfo(name, st.st_size)

    def _scan(self, directory: str, want_dirs: bool) -> list[str]:
        if directory:
            validate_name(directory)
        try:
            fd = self._dir_fd(directory, directory or ".")
        except NotFound:
            return []
        try:
            with os.scandir(fd) as it:
                return sorted(e.name for e in it
                              if (e.is_dir(follow_symlinks=False) if want_dirs else e.is_file(follow_symlinks=False)))
        except OSError as exc:
            raise _map_oserror(self, exc, directory or ".") from None
        finally:
            os.close(fd)

    def list(self, directory: str = "") -> Iterator[str]:
        for n in self._scan(directory, False):
            yield f"{directory}/{n}" if directory else n

    def list_dirs(self, directory: str = "") -> Iterator[str]:
        for n in self._scan(directory, True):
            yield f"{directory}/{n}" if directory else n

    def delete(self, name: str) -> None:
        validate_name(name)
        try:
            pfd = self._parent(name)
        except NotFound:
            return
        try:
            os.unlink(name.rsplit("/", 1)[-1], dir_fd=pfd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _map_oserror(self, exc, name) from None
        finally:
            os.close(pfd)

    def rmdir(self, name: str) -> None:
        """Remove an empty directory (used after prune); not part of the Target contract."""
        validate_name(name)
        pfd = self._parent(name)
        try:
            os.rmdir(name.rsplit("/", 1)[-1], dir_fd=pfd)
        finally:
            os.close(pfd)

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
