"""Opening a name beneath a directory without following a link or leaving its file system.

A backup medium is not trusted (docs/threat-model.md): whoever holds the disk can put a
symbolic link where dmbackup expects its own directory. ``open_beneath(dirfd, rel, flags)``
resolves ``rel`` with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV), or on
kernels without openat2 with a descriptor walk that opens one component at a time with
O_NOFOLLOW and checks the device. A link on the way is ELOOP, another file system EXDEV.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW

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
            nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
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
            nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
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
