"""Flushing one file system, not the whole machine: syncfs(2).

Python has no ``os.syncfs``, so the targets used to fall back to ``os.sync()``, which writes
back every file system on the machine (the mail store's, the system's, everyone's dirty pages)
and made a backup wait for all of it, twice. ``syncfs(fd)`` writes back and flushes only the
file system that ``fd`` lives on: for that file system it does what sync(2) does for each.

Not for a FUSE file system backed by a block device (fusefat, ntfs-3g: "fuseblk", "fuse.*"):
its daemon writes the medium through the device node, and those writes sit in the block
device's page cache, which only sync(2) (or an fsync of the device) flushes. Callers that know
the file system type keep ``os.sync()`` there (``dmbackup.system.diskmount``).
"""

from __future__ import annotations

import os

_syncfs = None          # libc's syncfs, looked up on first use (ctypes is not free at start-up)


def syncfs(fd: int) -> None:
    """Write back and flush the file system of ``fd``; ``os.sync()`` where syncfs(2) is missing.
    Raises OSError as syncfs(2) fails (EIO: a write-back error on that file system)."""
    global _syncfs
    if hasattr(os, "syncfs"):               # a future Python
        os.syncfs(fd)
        return
    if _syncfs is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).syncfs
            fn.argtypes = [ctypes.c_int]
            fn.restype = ctypes.c_int
            _syncfs = fn
        except (OSError, AttributeError):
            _syncfs = False
    if _syncfs is False:
        os.sync()
        return
    if _syncfs(fd) != 0:
        import ctypes

        err = ctypes.get_errno()
        if err == 38:                       # ENOSYS: a kernel or seccomp filter without it
            os.sync()
            return
        raise OSError(err, os.strerror(err))


def syncfs_path(path: str) -> None:
    """``syncfs`` of the file system ``path`` (a directory) is on."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs(fd)
    finally:
        os.close(fd)
