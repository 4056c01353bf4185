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
met on the way is damage (exit 4), never followed (dmbackup.system.beneath). The root itself
comes from the trusted config and is opened normally. Everything created is mode 0600 (files)
or 0700 (directories) whatever the caller's umask, where the medium has modes
(``Capabilities.posix_metadata``; FAT's come from its mount options).

On a medium whose rename over an existing name is not atomic (``Capabilities.atomic_rename``
False: FAT, exFAT) an object is replaced in steps that never rely on it, and a crash between
any two of them leaves the old or the new object findable: see ``_replace_stepwise``.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Iterator

from dmbackup.errors import CorruptObject, NoSpace, NotFound, TargetUnavailable
from dmbackup.system.beneath import DIR_FLAGS, open_beneath
from dmbackup.system.mountinfo import is_mount_point
from dmbackup.targets.base import (
    TMP_MARK,
    AlreadyExists,
    Capabilities,
    ObjectInfo,
    ObjectWriter,
    Target,
    validate_name,
)
from dmbackup.targets.writer import TempRenameWriter

FILE_MODE = 0o600
DIR_MODE = 0o700
# O_NONBLOCK: opening a FIFO planted under an object's name must not wait for a writer
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# a complete new object waiting to be renamed over its name (media without atomic rename)
PENDING = TMP_MARK + "ready"


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


def _not_regular(target: "DirTarget", name: str) -> CorruptObject:
    return CorruptObject(f"{name} on {target.describe()} is not a regular file (a device, FIFO, socket or "
                         "directory was put in its place): someone changed the disk; remove it and run again")


def _fsync_dir(dirfd: int) -> None:
    try:
        os.fsync(dirfd)
    except OSError:
        pass            # not every file system syncs a directory; the rename itself stands


def _unlink_if_there(dirfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dirfd)
    except FileNotFoundError:
        pass


def _exists(dirfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _replace_stepwise(pfd: int, tmp: str, base: str) -> None:
    """Put the complete, synced temporary ``tmp`` in place of ``base`` (both in ``pfd``) on a
    medium whose rename over an existing name is not atomic (FAT, exFAT: the driver unlinks
    and renames with no journal, a crash in between may lose both). Only renames to a free
    name are used. Catalogs and volumes are never replaced and take the first branch; the
    objects that are (repo.json, README-RESTORE.txt) take the second, where a crash between
    any two steps leaves the old or the new object findable:

    1. remove a stale ``base.tmp-ready``: with ``base`` present it never became the object
    2. rename ``tmp`` -> ``base.tmp-ready``     crash: ``base`` is the old object; the ready
                                                  one is a leftover, as in step 1
    3. unlink ``base``                           crash: ``base`` is missing and
                                                  ``base.tmp-ready`` holds the whole new
                                                  object: ``get``/``stat``/``exists`` (and
                                                  the cleaner's ``delete``) roll it forward
    4. rename ``base.tmp-ready`` -> ``base``
    """
    pending = base + PENDING
    if not _exists(pfd, base):
        os.rename(tmp, base, src_dir_fd=pfd, dst_dir_fd=pfd)
        _unlink_if_there(pfd, pending)      # an interrupted replacement, superseded now
        return
    _unlink_if_there(pfd, pending)
    os.rename(tmp, pending, src_dir_fd=pfd, dst_dir_fd=pfd)
    _fsync_dir(pfd)
    os.unlink(base, dir_fd=pfd)
    _fsync_dir(pfd)
    os.rename(pending, base, src_dir_fd=pfd, dst_dir_fd=pfd)


class _FileWriter(TempRenameWriter):
    def __init__(self, target: "DirTarget", name: str):
        super().__init__(name, validate_name(name).rsplit("/", 1)[-1])   # final: a name in pfd
        self.target = target
        # the parent stays open until commit: the rename lands where the file was written
        self.pfd = target._parent(name, create=True)
        try:
            self.fd = os.open(self.tmp, _CREATE_FLAGS, FILE_MODE, dir_fd=self.pfd)
            target._private(self.fd, FILE_MODE)
        except OSError as exc:
            os.close(self.pfd)
            raise _map_oserror(target, exc, name) from None

    def _map(self, exc):
        return _map_oserror(self.target, exc, self.name) if isinstance(exc, OSError) else exc

    def _write(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def _commit(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        if self.target.capabilities.atomic_rename:
            os.rename(self.tmp, self.final, src_dir_fd=self.pfd, dst_dir_fd=self.pfd)
        else:
            _replace_stepwise(self.pfd, self.tmp, self.final)
        _fsync_dir(self.pfd)
        pfd, self.pfd = self.pfd, -1
        os.close(pfd)

    def _discard(self, error) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        if self.pfd >= 0:
            try:
                os.unlink(self.tmp, dir_fd=self.pfd)
            except OSError:
                pass
            os.close(self.pfd)
            self.pfd = -1


class DirTarget(Target):
    kind = "dir"

    def __init__(self, name: str, path: str, *, require_mount: bool = False,
                 max_object_size: int | None = None, capabilities: Capabilities | None = None):
        """``capabilities``: what the medium under ``path`` can do, when the caller knows it
        (the USB target, from the file system it mounted); else the defaults, with
        ``max_object_size`` from the config."""
        self.name = name
        self.root = os.path.abspath(path)
        self.require_mount = require_mount
        if capabilities is None:
            capabilities = Capabilities(max_object_size=max_object_size or Capabilities.max_object_size,
                                        concurrent=True)
        self.capabilities = capabilities

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

    def _private(self, fd: int, mode: int) -> None:
        """Exactly ``mode``, whatever the umask, where the medium has modes. FAT has none
        (its mount options make everything private) and through FUSE answers ENOSYS."""
        if not self.capabilities.posix_metadata:
            return
        try:
            os.fchmod(fd, mode)
        except OSError:
            pass

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
                return open_beneath(root, directory, DIR_FLAGS)
            fd = os.dup(root)
            try:
                for part in directory.split("/"):
                    made = False
                    try:
                        os.mkdir(part, DIR_MODE, dir_fd=fd)
                        made = True
                    except FileExistsError:
                        pass
                    nfd = open_beneath(fd, part, DIR_FLAGS)
                    os.close(fd)
                    fd = nfd
                    if made:
                        self._private(fd, DIR_MODE)
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

    def _roll_forward(self, name: str) -> bool:
        """Finish a replacement that a crash interrupted after the old object went (step 3 of
        ``_replace_stepwise``): True when ``name`` is back. Only on media without atomic
        rename; on a read-only medium the new object stays under its ready name."""
        if self.capabilities.atomic_rename:
            return False
        try:
            pfd = self._parent(name)
        except (ValueError, TargetUnavailable):
            return False
        base = name.rsplit("/", 1)[-1]
        try:
            if _exists(pfd, base):
                return False
            os.rename(base + PENDING, base, src_dir_fd=pfd, dst_dir_fd=pfd)
            _fsync_dir(pfd)
            return True
        except OSError:
            return False
        finally:
            os.close(pfd)

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
                fd = os.open(base, _CREATE_FLAGS, FILE_MODE, dir_fd=pfd)
            except FileExistsError:
                raise AlreadyExists(f"{name} already exists") from None
            except OSError as exc:
                raise _map_oserror(self, exc, name) from None
            try:
                self._private(fd, FILE_MODE)
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
        try:
            fd = self._open_file(name)
        except NotFound:
            if not self._roll_forward(name):
                raise
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
        try:
            return self._stat(name)
        except NotFound:
            if not self._roll_forward(name):
                raise
            return self._stat(name)

    def _stat(self, name: str) -> ObjectInfo:
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
        if name.endswith(PENDING) and self._roll_forward(name[:-len(PENDING)]):
            return      # the cleaner met an interrupted replacement: completed, not thrown away
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
        """Write back the target's file system only (syncfs(2): ``dmbackup.system.fssync``), not
        every file system on the machine as ``os.sync()`` did (issue 17).

        Crash semantics do not rest on this call: every object is already durable when its
        writer commits (``_FileWriter._commit``: fsync of the file, rename, fsync of its
        directory; new directories are fsynced into their parent), and the backup writes the
        catalog, which commits a snapshot, only after every volume, page and index object has
        committed that way; the catalog itself is committed the same way, so when ``put``
        returns it is on disk with its directory entry. A crash before that leaves no catalog
        (the snapshot does not exist, its objects are swept later); after it, the snapshot is
        complete. The syncfs before and after the catalog is a second line for media whose
        fsync of a directory is a no-op or fails (``_fsync_dir`` ignores that): it flushes
        whatever the file system still holds for this target, and nothing of anyone else's."""
        try:
            from dmbackup.system.fssync import syncfs_path

            syncfs_path(self.root)
        except OSError:
            pass
