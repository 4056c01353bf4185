"""A small ctypes binding to the synchronous API of Debian's libnfs.so.13 (libnfs 4.0).

The userspace NFS transport speaks NFSv3 through this binding, so dmbackup can use an export
on a machine without a kernel NFS client (or without the privilege to mount). Only what the
target needs is bound; signatures follow /usr/include/nfsc/libnfs.h of libnfs 4.0 (package
libnfs-dev). Every call returns ``-errno`` on failure; ``Context`` turns that into ``NfsError``
carrying the errno and libnfs's own message (``nfs_get_error``), and leaves the mapping onto
dmbackup's error tree to the caller.

Facts that shaped it (tried against nfs-ganesha 4.3 here):
- Without ``nfs_set_timeout`` a sync call on a dead server never returns; with it, calls end
  with an error after about the timeout. ``Context`` therefore refuses to exist without one.
  The timeout does not cover TCP connect: a host that silently drops SYNs held ``nfs_mount``
  for 134 s, so the SYN retries are capped too (``nfs_set_tcp_syncnt``).
- libnfs 4.0's NFSv4 writes over ~2.5 KB fail, so the version is pinned to 3.
- A context is not thread-safe; every call holds the context's lock. ctypes releases the GIL
  during a call, so other Python threads keep running while one waits on the network.
- After a timeout or a dropped connection the context is not trusted again: the owner drops
  it (``destroy``) and makes a new one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from dataclasses import dataclass

NFS_V3 = 3
NF3REG = 1
NF3DIR = 2

_LIBNAMES = ("libnfs.so.13", "libnfs.so")


class NfsError(OSError):
    """A libnfs call failed: ``errno`` is set, ``strerror`` is libnfs's message."""


class LibraryMissing(RuntimeError):
    pass


class _Stat64(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "nfs_dev", "nfs_ino", "nfs_mode", "nfs_nlink", "nfs_uid", "nfs_gid", "nfs_rdev",
        "nfs_size", "nfs_blksize", "nfs_blocks", "nfs_atime", "nfs_mtime", "nfs_ctime",
        "nfs_atime_nsec", "nfs_mtime_nsec", "nfs_ctime_nsec", "nfs_used")]


class _StatVfs64(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
        "f_favail", "f_fsid", "f_flag", "f_namemax")]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Dirent(ctypes.Structure):
    pass


_Dirent._fields_ = [
    ("next", ctypes.POINTER(_Dirent)),
    ("name", ctypes.c_char_p),
    ("inode", ctypes.c_uint64),
    ("type", ctypes.c_uint32),
    ("mode", ctypes.c_uint32),
    ("size", ctypes.c_uint64),
    ("atime", _Timeval),
    ("mtime", _Timeval),
    ("ctime", _Timeval),
    ("uid", ctypes.c_uint32),
    ("gid", ctypes.c_uint32),
    ("nlink", ctypes.c_uint32),
    ("dev", ctypes.c_uint64),
    ("rdev", ctypes.c_uint64),
    ("blksize", ctypes.c_uint64),
    ("blocks", ctypes.c_uint64),
    ("used", ctypes.c_uint64),
    ("atime_nsec", ctypes.c_uint32),
    ("mtime_nsec", ctypes.c_uint32),
    ("ctime_nsec", ctypes.c_uint32),
]

_ctx_p = ctypes.c_void_p
_fh_p = ctypes.c_void_p
_dir_p = ctypes.c_void_p
_lib = None
_lib_lock = threading.Lock()


def _bind(lib) -> None:
    c_int, c_char_p, c_void_p, c_uint64 = ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_uint64
    sigs = {
        "nfs_init_context": (_ctx_p, []),
        "nfs_destroy_context": (None, [_ctx_p]),
        "nfs_get_error": (c_char_p, [_ctx_p]),
        "nfs_set_timeout": (None, [_ctx_p, c_int]),
        "nfs_get_timeout": (c_int, [_ctx_p]),
        "nfs_set_version": (c_int, [_ctx_p, c_int]),
        "nfs_set_autoreconnect": (None, [_ctx_p, c_int]),
        "nfs_set_dircache": (None, [_ctx_p, c_int]),
        "nfs_set_tcp_syncnt": (None, [_ctx_p, c_int]),
        "nfs_set_uid": (None, [_ctx_p, c_int]),
        "nfs_set_gid": (None, [_ctx_p, c_int]),
        "nfs_mount": (c_int, [_ctx_p, c_char_p, c_char_p]),
        "nfs_umount": (c_int, [_ctx_p]),
        "nfs_get_readmax": (c_uint64, [_ctx_p]),
        "nfs_get_writemax": (c_uint64, [_ctx_p]),
        "nfs_open": (c_int, [_ctx_p, c_char_p, c_int, ctypes.POINTER(_fh_p)]),
        "nfs_creat": (c_int, [_ctx_p, c_char_p, c_int, ctypes.POINTER(_fh_p)]),
        "nfs_create": (c_int, [_ctx_p, c_char_p, c_int, c_int, ctypes.POINTER(_fh_p)]),
        "nfs_close": (c_int, [_ctx_p, _fh_p]),
        "nfs_pread": (c_int, [_ctx_p, _fh_p, c_uint64, c_uint64, c_void_p]),
        "nfs_pwrite": (c_int, [_ctx_p, _fh_p, c_uint64, c_uint64, c_void_p]),
        "nfs_fsync": (c_int, [_ctx_p, _fh_p]),
        "nfs_fstat64": (c_int, [_ctx_p, _fh_p, ctypes.POINTER(_Stat64)]),
        "nfs_stat64": (c_int, [_ctx_p, c_char_p, ctypes.POINTER(_Stat64)]),
        "nfs_opendir": (c_int, [_ctx_p, c_char_p, ctypes.POINTER(_dir_p)]),
        "nfs_readdir": (ctypes.POINTER(_Dirent), [_ctx_p, _dir_p]),
        "nfs_closedir": (None, [_ctx_p, _dir_p]),
        "nfs_mkdir": (c_int, [_ctx_p, c_char_p]),
        "nfs_rmdir": (c_int, [_ctx_p, c_char_p]),
        "nfs_rename": (c_int, [_ctx_p, c_char_p, c_char_p]),
        "nfs_unlink": (c_int, [_ctx_p, c_char_p]),
        "nfs_statvfs64": (c_int, [_ctx_p, c_char_p, ctypes.POINTER(_StatVfs64)]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


def library():
    """The loaded libnfs, or LibraryMissing with what to install."""
    global _lib
    with _lib_lock:
        if _lib is None:
            names = list(_LIBNAMES)
            found = ctypes.util.find_library("nfs")
            if found:
                names.append(found)
            last = None
            for n in names:
                try:
                    lib = ctypes.CDLL(n, use_errno=True)
                    _bind(lib)
                except (OSError, AttributeError) as exc:
                    last = exc
                    continue
                _lib = lib
                break
            else:
                raise LibraryMissing(f"libnfs.so.13 cannot be loaded ({last}): install the libnfs13 package")
        return _lib


def available() -> bool:
    try:
        library()
        return True
    except LibraryMissing:
        return False


def syn_retries(timeout: int) -> int:
    """TCP SYN retransmissions whose total wait (1 + 2 + 4 ... s) stays within ``timeout``."""
    n = 1
    while n < 6 and 2 ** (n + 2) - 1 <= timeout:
        n += 1
    return n


def _b(path: str) -> bytes:
    return os.fsencode(path)


@dataclass(frozen=True)
class Stat:
    size: int
    mode: int
    is_dir: bool
    is_file: bool


@dataclass(frozen=True)
class DirEntry:
    name: str
    is_dir: bool
    is_file: bool
    size: int


class File:
    """An open NFS file handle; use through ``Context.open``/``Context.create``."""

    def __init__(self, ctx: "Context", fh, path: str):
        self.ctx, self._fh, self.path = ctx, fh, path

    def pwrite(self, data, offset: int) -> int:
        """Write all of ``data`` at ``offset``; returns the byte count."""
        if not isinstance(data, bytes):
            data = bytes(data)
        # Pass the bytes object's own buffer (no copy); ``keep`` holds it alive meanwhile.
        keep = ctypes.c_char_p(data)
        base = ctypes.cast(keep, ctypes.c_void_p).value
        total, done = len(data), 0
        limit = max(4096, self.ctx.writemax)
        while done < total:
            want = min(limit, total - done)
            n = self.ctx._call("pwrite", self.path, "nfs_pwrite", self._fh, offset + done, want,
                               ctypes.c_void_p(base + done))
            if n == 0:
                raise NfsError(errno.EIO, f"pwrite {self.path}: server wrote nothing")
            done += n
        del keep
        return done

    def pread(self, offset: int, count: int) -> bytes:
        """Up to ``count`` bytes at ``offset`` (fewer only at the end of the file)."""
        out = bytearray()
        limit = max(4096, self.ctx.readmax)
        while len(out) < count:
            want = min(limit, count - len(out))
            buf = ctypes.create_string_buffer(want)
            n = self.ctx._call("pread", self.path, "nfs_pread", self._fh, offset + len(out), want, buf)
            if n == 0:
                break
            out += buf.raw[:n]
        return bytes(out)

    def fsync(self) -> None:
        self.ctx._call("fsync", self.path, "nfs_fsync", self._fh)

    def fstat(self) -> Stat:
        st = _Stat64()
        self.ctx._call("fstat", self.path, "nfs_fstat64", self._fh, ctypes.byref(st))
        return _stat(st)

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None and self.ctx._ctx is not None:
            self.ctx._call("close", self.path, "nfs_close", fh)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.close()
        except NfsError:
            if exc[0] is None:
                raise
        return False


def _stat(st: _Stat64) -> Stat:
    fmt = st.nfs_mode & 0o170000
    return Stat(size=st.nfs_size, mode=st.nfs_mode & 0o7777,
                is_dir=fmt == 0o040000, is_file=fmt == 0o100000)


class Context:
    """One NFSv3 session with one export: ``Context(server, export, timeout=...)``.

    ``timeout`` (seconds, whole, at least 1) bounds every RPC; there is no way to make a
    Context without one. Paths are absolute inside the export ("/dir/file").
    """

    def __init__(self, server: str, export: str, *, timeout: int, uid: int | None = None,
                 gid: int | None = None):
        if not isinstance(timeout, int) or timeout < 1:
            raise ValueError("libnfs needs a timeout of at least one whole second")
        self.server, self.export, self.timeout = server, export, timeout
        self._lib = library()
        self._lock = threading.RLock()
        self._ctx = self._lib.nfs_init_context()
        if not self._ctx:
            raise NfsError(errno.ENOMEM, "nfs_init_context failed")
        try:
            self._lib.nfs_set_timeout(self._ctx, timeout * 1000)
            # The RPC timeout does not cover connect(): to a host that drops SYNs (powered off
            # behind a router, filtered) the kernel retries for ~130 s. TCP_SYNCNT caps that:
            # n retries take 2**(n+1) - 1 s, so pick the largest n that fits the timeout.
            self._lib.nfs_set_tcp_syncnt(self._ctx, syn_retries(timeout))
            rc = self._lib.nfs_set_version(self._ctx, NFS_V3)
            if rc < 0:
                raise NfsError(-rc, "nfs_set_version(3) failed")
            # A reconnect loop on a dead server is exactly the hang we must avoid: fail the
            # call and let the caller (retry wrapper) decide.
            self._lib.nfs_set_autoreconnect(self._ctx, 0)
            # The directory cache would hide objects written by another client (a second
            # appliance on the same NAS, a cleaner) from list(): always ask the server.
            self._lib.nfs_set_dircache(self._ctx, 0)
            if uid is not None:
                self._lib.nfs_set_uid(self._ctx, uid)
            if gid is not None:
                self._lib.nfs_set_gid(self._ctx, gid)
            self._call("mount", f"{server}:{export}", "nfs_mount", _b(server), _b(export))
            self.readmax = int(self._lib.nfs_get_readmax(self._ctx)) or 65536
            self.writemax = int(self._lib.nfs_get_writemax(self._ctx)) or 65536
        except BaseException:
            self.destroy()
            raise

    # -- plumbing -----------------------------------------------------------------------
    def _error_text(self) -> str:
        if not self._ctx:
            return ""
        msg = self._lib.nfs_get_error(self._ctx)
        return msg.decode("utf-8", "replace") if msg else ""

    def _call(self, op: str, path: str, fname: str, *args) -> int:
        with self._lock:
            if not self._ctx:
                raise NfsError(errno.ENOTCONN, f"{op} {path}: NFS session is closed")
            rc = getattr(self._lib, fname)(self._ctx, *args)
            if isinstance(rc, int) and rc < 0:
                code = -rc
                text = self._error_text() or os.strerror(code)
                raise NfsError(code, f"{op} {path}: {text}")
            return rc

    def destroy(self) -> None:
        """Free the context without talking to the server (safe on a dead connection)."""
        with self._lock:
            ctx, self._ctx = self._ctx, None
            if ctx:
                self._lib.nfs_destroy_context(ctx)

    @property
    def alive(self) -> bool:
        return bool(self._ctx)

    # -- file system operations ---------------------------------------------------------
    def stat(self, path: str) -> Stat:
        st = _Stat64()
        self._call("stat", path, "nfs_stat64", _b(path), ctypes.byref(st))
        return _stat(st)

    def open(self, path: str, flags: int = os.O_RDONLY) -> File:
        fh = _fh_p()
        self._call("open", path, "nfs_open", _b(path), flags, ctypes.byref(fh))
        return File(self, fh, path)

    def create(self, path: str, flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode: int = 0o600) -> File:
        """Create ``path``; with O_EXCL the server refuses an existing name (EEXIST)."""
        fh = _fh_p()
        self._call("create", path, "nfs_create", _b(path), flags, mode, ctypes.byref(fh))
        return File(self, fh, path)

    def mkdir(self, path: str) -> None:
        self._call("mkdir", path, "nfs_mkdir", _b(path))

    def rmdir(self, path: str) -> None:
        self._call("rmdir", path, "nfs_rmdir", _b(path))

    def rename(self, old: str, new: str) -> None:
        self._call("rename", f"{old} -> {new}", "nfs_rename", _b(old), _b(new))

    def unlink(self, path: str) -> None:
        self._call("unlink", path, "nfs_unlink", _b(path))

    def listdir(self, path: str) -> list[DirEntry]:
        d = _dir_p()
        self._call("opendir", path, "nfs_opendir", _b(path), ctypes.byref(d))
        out = []
        try:
            with self._lock:
                while True:
                    ent = self._lib.nfs_readdir(self._ctx, d)
                    if not ent:
                        break
                    e = ent.contents
                    name = os.fsdecode(e.name)
                    if name in (".", ".."):
                        continue
                    out.append(DirEntry(name, e.type == NF3DIR, e.type == NF3REG, e.size))
        finally:
            with self._lock:
                if self._ctx:
                    self._lib.nfs_closedir(self._ctx, d)
        return out

    def statvfs(self, path: str) -> tuple[int, int]:
        """(bytes available to us, total bytes) of the file system holding ``path``."""
        sv = _StatVfs64()
        self._call("statvfs", path, "nfs_statvfs64", _b(path), ctypes.byref(sv))
        frsize = sv.f_frsize or sv.f_bsize
        return sv.f_bavail * frsize, sv.f_blocks * frsize

    def umount(self) -> None:
        self._call("umount", self.export, "nfs_umount")

    def close(self) -> None:
        """Tell the MOUNT daemon we are gone (best effort) and free the context."""
        try:
            if self._ctx:
                self.umount()
        except NfsError:
            pass
        finally:
            self.destroy()
