"""The ``nfs`` target: an NFS export, mounted by the system or spoken to from user space.

Two transports, one target type:

- ``transport = "mount"`` (default): ``open()`` mounts ``server:/path`` with the system's
  ``mount -t nfs`` (or reuses a mount of the same export that is already there), then checks
  /proc/self/mountinfo that the export really is mounted on the mount point before a byte is
  written: a mount helper can report success without mounting anything (``bg`` retries in
  the background), and writing then would fill the root file system under the empty mount
  point. Objects go to a ``dir`` target under ``mount_point/path``; every write re-checks
  that the mount point is still the same file system. ``close()`` syncs and unmounts only
  what ``open()`` mounted. Without explicit ``options`` the mount is ``soft`` with a timeout
  derived from ``timeout``: a hard mount of a dead NAS would hang the backup, and then the
  daemon, in the kernel forever.
- ``transport = "userspace"``: NFSv3 through libnfs (dmbackup.system.libnfs), no mount, no
  kernel NFS client, no privilege needed. Every RPC is bounded by ``timeout``; a dead or hung
  server ends the call with TransientTargetError (exit 7, worth a retry) and the next call
  reconnects. Writes go to ``name + TMP_MARK + random`` created with O_EXCL (an NFSv3
  EXCLUSIVE create), are COMMITted, and are renamed over ``name`` (NFS RENAME replaces
  atomically); ``create_exclusive`` is the same EXCLUSIVE create on the final name. An
  interrupted write leaves only a temporary name for the next run's cleaner.

Config keys (``[targets.NAME]`` with ``type = "nfs"``):
  export = "nas.example.it:/srv/backup"   the export, server:/path ([v6addr]:/path for IPv6)
  path = "appliances"        optional sub-directory inside the export (created if missing)
  transport = "mount"        "mount" (default) or "userspace"
  timeout = 30               seconds: per RPC (userspace), per mount/umount command (mount)
  mount_point = "/run/dmbackup/NAME"     mount transport only; created, removed after
  options = "vers=4.2,soft"  mount transport only: the -o string; default
                             "soft,timeo=<timeout*10>,retrans=2"; "" passes none of these.
                             nosuid,nodev,noexec are always appended (the NAS is untrusted:
                             no set-uid program, device node or executable on it may work), and
                             suid, dev, exec or defaults here are a config error
  mount_command = ["mount", "-t", "nfs"]   mount transport only; argv to which
                             [-o OPTIONS] EXPORT MOUNT_POINT are appended
  umount_command = ["umount"]   mount transport only; MOUNT_POINT is appended

After the mount, its flags are checked in mountinfo too: a mount command that dropped
nosuid/nodev/noexec gets a bind-remount that sets them, or the share is unmounted again.

The mount point is checked by source: mountinfo must show exactly the configured export
(trailing slashes aside) mounted on it. A stand-in command in tests therefore mounts
something whose source reads like the export, e.g. ``mount -t tmpfs SERVER:/PATH MP``.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import secrets
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

from dmbackup.system.childenv import child_env
from dmbackup.errors import (
    AuthFailed,
    NoSpace,
    NotFound,
    TargetUnavailable,
    TransientTargetError,
)
from dmbackup.targets.base import (
    TMP_MARK,
    AlreadyExists,
    Capabilities,
    ObjectInfo,
    ObjectWriter,
    Target,
    validate_name,
)
from dmbackup.targets.dir import DirTarget
from dmbackup.system.mountinfo import Mount, MountPointDirs, mount_at, mounts_of
from dmbackup.system.mountinfo import unescape as _unescape

log = logging.getLogger(__name__)

DEFAULT_MOUNT_ROOT = "/run/dmbackup"
DEFAULT_MOUNT_COMMAND = ("mount", "-t", "nfs")
DEFAULT_UMOUNT_COMMAND = ("umount",)
TRANSPORTS = ("mount", "userspace")
_MOUNT_ONLY_KEYS = ("mount_point", "options", "mount_command", "umount_command")
_SAFE_DIR = re.compile(r"[^A-Za-z0-9._-]")
_SETTLE = 1.0          # seconds a mount may take to show up in mountinfo after the helper returns
SAFE_OPTIONS = ("nosuid", "nodev", "noexec")
_UNSAFE_OPTIONS = frozenset({"suid", "dev", "exec", "defaults"})     # would undo SAFE_OPTIONS

T = TypeVar("T")


# --- config --------------------------------------------------------------------------------
@dataclass(frozen=True)
class NfsConfig:
    name: str
    type: str
    export: str                          # as configured: "server:/path"
    server: str                          # host name or address, IPv6 without brackets
    export_path: str                     # "/path", normalised
    transport: str = "mount"
    path: str | None = None              # sub-directory inside the export
    timeout: int = 30
    mount_point: str = ""
    options: str | None = None           # None: the soft default; "": no -o
    mount_command: tuple[str, ...] = DEFAULT_MOUNT_COMMAND
    umount_command: tuple[str, ...] = DEFAULT_UMOUNT_COMMAND
    repository = True

    def mount_options(self) -> str:
        if self.options is not None:
            return self.options
        return f"soft,timeo={min(600, self.timeout * 10)},retrans=2"


def split_export(export: str) -> tuple[str, str]:
    """``"server:/path"`` -> ("server", "/path"); ``"[::1]:/p"`` -> ("::1", "/p")."""
    if not isinstance(export, str) or any(c.isspace() for c in export):
        raise ValueError("expected server:/path")
    if export.startswith("["):
        host, sep, rest = export[1:].partition("]:")
    else:
        host, sep, rest = export.partition(":")
    if not sep or not host or not rest.startswith("/") or "/" in host:
        raise ValueError("expected server:/path")
    path = posixpath.normpath(rest)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return host, path


def _export_string(server: str, path: str) -> str:
    return f"[{server}]:{path}" if ":" in server else f"{server}:{path}"


def parse_config(name: str, s, kind: str) -> NfsConfig:
    export = s.str("export")
    try:
        server, export_path = split_export(export)
    except ValueError:
        raise s.error("export", f"expected \"server:/path\" (e.g. \"nas.example.it:/srv/backup\"), got {export!r}") from None
    transport = s.str("transport", "mount", choices=TRANSPORTS)
    raw_path = s.str("path", None)
    path = None
    if raw_path is not None:
        path = raw_path.strip("/") or None
        if path is not None:
            try:
                validate_name(path)
            except ValueError:
                raise s.error("path", "expected a relative sub-directory of safe names "
                                      f"(letters, digits, ._-+), got {raw_path!r}") from None
    timeout = s.int("timeout", 30, min=1, max=3600)
    if transport == "userspace":
        given = [k for k in _MOUNT_ONLY_KEYS if k in s.data]
        if given:
            raise s.error(given[0], "applies only to transport = \"mount\"; the userspace transport "
                                    "speaks NFS itself and mounts nothing")
        return NfsConfig(name=name, type=kind, export=export, server=server, export_path=export_path,
                         transport=transport, path=path, timeout=timeout)
    default_mp = posixpath.join(DEFAULT_MOUNT_ROOT, _SAFE_DIR.sub("_", name) or "nfs")
    mount_point = posixpath.normpath(s.abs_path("mount_point", default_mp))
    if mount_point == "/":
        raise s.error("mount_point", "must not be /")
    options = s.str("options", None)
    if options is not None and any(c.isspace() for c in options):
        raise s.error("options", f"mount options are one comma-separated string without spaces, got {options!r}")
    for opt in (options or "").split(","):
        if opt.lower() in _UNSAFE_OPTIONS:
            raise s.error("options", f"{opt!r} is not allowed: the share is untrusted medium and is always "
                                     f"mounted {','.join(SAFE_OPTIONS)}")
    mount_command = s.str_list("mount_command", DEFAULT_MOUNT_COMMAND)
    if not mount_command:
        raise s.error("mount_command", "must name a command")
    umount_command = s.str_list("umount_command", DEFAULT_UMOUNT_COMMAND)
    if not umount_command:
        raise s.error("umount_command", "must name a command")
    return NfsConfig(name=name, type=kind, export=export, server=server, export_path=export_path,
                     transport=transport, path=path, timeout=timeout, mount_point=mount_point,
                     options=options, mount_command=tuple(mount_command),
                     umount_command=tuple(umount_command))


def build(cfg: NfsConfig, app=None) -> Target:
    if cfg.transport == "userspace":
        return NfsUserspaceTarget(cfg)
    return NfsMountTarget(cfg)


def mount_argv(cfg: NfsConfig, mount_point: str) -> list[str]:
    """mount_command + -o OPTIONS + EXPORT + MOUNT_POINT; the safe flags come last, so no
    earlier option can switch them off (mount(8): the last of two contradicting options wins)."""
    opts = [o for o in cfg.mount_options().split(",") if o] + list(SAFE_OPTIONS)
    return [*cfg.mount_command, "-o", ",".join(opts), cfg.export, mount_point]


def _describe(cfg: NfsConfig) -> str:
    sub = f", path {cfg.path}" if cfg.path else ""
    return f"nfs target {cfg.name!r} ({cfg.export}{sub})"


# --- mount transport ---------------------------------------------------------------------
def _one_line(text: str, limit: int = 300) -> str:
    line = "; ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _run(argv: list[str], timeout: int) -> tuple[int, str]:
    """Run a mount helper in its own session; output through a file (a helper that leaves a
    daemon behind would hold a pipe open forever). On timeout the whole session is killed."""
    env = child_env({"LC_ALL": "C"})
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    env=env, start_new_session=True)
        except FileNotFoundError:
            return 127, f"{argv[0]}: command not found"
        except OSError as exc:
            return 126, f"{argv[0]}: {exc.strerror}"
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait()
            return 124, f"{argv[0]} did not finish within {timeout} s (server not answering?)"
        out.seek(0)
        text = out.read(8192).decode("utf-8", "replace")
    return code, _one_line(text)


def _mount_root(mount_point: str) -> str | None:
    """The 'root' field of mountinfo for ``mount_point``: "/" unless it is a bind of a subtree."""
    root = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == mount_point:
                    root = _unescape(fields[3])
    except OSError:
        return None
    return root


class _GuardedWriter(ObjectWriter):
    """The dir target's writer, re-checking the mount before the rename makes it visible."""

    def __init__(self, target: "NfsMountTarget", inner: ObjectWriter):
        self.target, self.inner = target, inner

    @property
    def size(self) -> int:
        return self.inner.size

    def write(self, data: bytes) -> None:
        self.inner.write(data)      # an open file stays on the file system it was opened on

    def commit(self) -> None:
        try:
            self.target._guard()
        except TargetUnavailable:
            self.inner.abort()
            raise
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()


class NfsMountTarget(Target):
    """NFS through the kernel: mount, verify, delegate to DirTarget, unmount what we mounted."""

    kind = "nfs"

    def __init__(self, cfg: NfsConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.capabilities = Capabilities()
        self.mount_path: str | None = None       # where the export is mounted, while open
        self.mounted_by_us = False
        self._dir: DirTarget | None = None
        self._dev: int | None = None
        self._mp_dirs = MountPointDirs()

    def describe(self) -> str:
        return _describe(self.cfg)

    @property
    def root(self) -> str | None:
        return self._dir.root if self._dir is not None else None

    def _is_export(self, m: Mount) -> bool:
        try:
            server, path = split_export(m.source)
        except ValueError:
            return False
        return (server, path) == (self.cfg.server, self.cfg.export_path)

    def _existing(self) -> Mount | None:
        """A mount of our export we may reuse: at our mount point first, else anywhere whole."""
        here = mount_at(self.cfg.mount_point)
        if here is not None and self._is_export(here):
            return here
        candidates = mounts_of(self.cfg.export) + mounts_of(
            _export_string(self.cfg.server, self.cfg.export_path))
        for m in candidates:
            if self._is_export(m) and _mount_root(m.mount_point) == "/" and mount_at(m.mount_point) == m:
                return m
        return None

    # -- session ---------------------------------------------------------------------------
    def open(self) -> None:
        if self._dir is not None:
            return
        existing = self._existing()
        if existing is not None:
            log.info("%s is already mounted on %s: using that mount", self.cfg.export, existing.mount_point)
            self.mount_path, self.mounted_by_us = existing.mount_point, False
        else:
            self._mount()
        try:
            self._dev = os.stat(self.mount_path).st_dev
            base = self.mount_path
            if self.cfg.path:
                base = os.path.join(base, self.cfg.path)
                # safe to create: the mount was just verified, this is the share, not the root fs
                os.makedirs(base, exist_ok=True)
            inner = DirTarget(self.name, base)
            inner.open()
        except OSError as exc:
            self._release()
            raise TargetUnavailable(f"{self.describe()}: cannot use {self.mount_path}: {exc.strerror}") from None
        except BaseException:
            self._release()
            raise
        self._dir = inner

    def _mount(self) -> None:
        cfg = self.cfg
        mp = cfg.mount_point
        taken = mount_at(mp)
        if taken is not None:
            raise TargetUnavailable(
                f"{self.describe()}: cannot mount on {mp}: {taken.source} ({taken.fstype}) is already "
                "mounted there; unmount it or choose another mount_point. Nothing was written")
        self._make_mount_point(mp)
        argv = mount_argv(cfg, mp)
        code, output = _run(argv, cfg.timeout)
        mounted = self._settle(mp) if code == 0 else None
        if mounted is None or not self._is_export(mounted):
            stray = mount_at(mp)
            if code == 0 and stray is not None:
                # the helper mounted something, but not our export: take it away again
                _run(list(cfg.umount_command) + [mp], cfg.timeout)
            self._remove_mount_point()
            if code != 0:
                detail = output or f"exit status {code}"
            elif stray is not None:
                detail = (f"{argv[0]} reported success but {stray.source} ({stray.fstype}) was mounted "
                          f"there, not {cfg.export}")
            else:
                detail = (f"{argv[0]} reported success but /proc/self/mountinfo does not show "
                          f"{cfg.export} on {mp} (a 'bg' mount still retrying?)")
            raise TargetUnavailable(f"{self.describe()}: cannot mount {cfg.export} on {mp}: {detail}. "
                                    "Check that the server is up and exports it to this host; nothing was written")
        unsafe = self._enforce_safe_flags(mp)
        if unsafe is not None:
            _run(list(cfg.umount_command) + [mp], cfg.timeout)
            self._remove_mount_point()
            raise TargetUnavailable(f"{self.describe()}: mounted {cfg.export} on {mp}, but {unsafe}; an "
                                    "untrusted share is never used without nosuid,nodev,noexec, so it was "
                                    "unmounted again. Nothing was written")
        self.mount_path, self.mounted_by_us = mp, True
        log.info("mounted %s on %s", cfg.export, mp)

    def _enforce_safe_flags(self, mp: str) -> str | None:
        """None when the mount on ``mp`` is nosuid,nodev,noexec (after a bind-remount that sets
        them, if the mount command left one out), else what is missing and why."""
        def missing() -> list[str]:
            m = mount_at(mp)
            have = set(m.options.split(",")) if m is not None else set()
            return [f for f in SAFE_OPTIONS if f not in have]

        if not missing():
            return None
        code, output = _run(["mount", "-o", "remount,bind," + ",".join(SAFE_OPTIONS), mp], self.cfg.timeout)
        left = missing()
        if not left:
            return None
        return (f"the mount command left out {','.join(left)} and a remount could not set it "
                f"({output or f'exit status {code}'})")

    def _settle(self, mp: str) -> Mount | None:
        deadline = time.monotonic() + _SETTLE
        while True:
            m = mount_at(mp)
            if m is not None or time.monotonic() > deadline:
                return m
            time.sleep(0.05)

    def _make_mount_point(self, mp: str) -> None:
        try:
            self._mp_dirs.make(mp)
        except OSError as exc:
            raise TargetUnavailable(f"{self.describe()}: mount point {mp}: {exc.strerror}") from None

    def _remove_mount_point(self) -> None:
        self._mp_dirs.remove()

    def _release(self) -> None:
        """Unmount what we mounted (after a failed open)."""
        if self.mounted_by_us and self.mount_path:
            _run(list(self.cfg.umount_command) + [self.mount_path], self.cfg.timeout)
            self._remove_mount_point()
        self.mount_path, self.mounted_by_us, self._dev = None, False, None

    def close(self) -> None:
        """Sync, then unmount what open() mounted. Raises TargetUnavailable if it stays mounted."""
        inner, self._dir = self._dir, None
        if inner is not None:
            inner.sync()
        if not self.mounted_by_us or not self.mount_path:
            self.mount_path, self._dev = None, None
            return
        mp = self.mount_path
        last = ""
        for attempt in range(5):
            if mount_at(mp) is None:
                break
            code, last = _run(list(self.cfg.umount_command) + [mp], self.cfg.timeout)
            if mount_at(mp) is None:
                break
            if "busy" not in last.lower():
                break
            time.sleep(0.2 * (attempt + 1))     # a just-closed file may still be referenced
        if mount_at(mp) is not None:
            raise TargetUnavailable(
                f"{self.describe()}: the backup was written and synced, but {mp} cannot be unmounted: "
                f"{last or 'busy'}. Close programs using it (fuser -vm {mp}), then umount {mp}")
        self._remove_mount_point()
        self.mount_path, self.mounted_by_us, self._dev = None, False, None
        log.info("unmounted %s from %s", self.cfg.export, mp)

    # -- guard -----------------------------------------------------------------------------
    def _guard(self) -> DirTarget:
        if self._dir is None:
            self.open()
        assert self._dir is not None and self.mount_path is not None
        m = mount_at(self.mount_path)
        try:
            same_dev = os.stat(self.mount_path).st_dev == self._dev
        except OSError:
            same_dev = False
        if m is None or not self._is_export(m) or not same_dev:
            raise TargetUnavailable(
                f"{self.describe()}: {self.cfg.export} is no longer mounted on {self.mount_path} "
                "(unmounted while dmbackup was using it); nothing more was written. Run again")
        return self._dir

    def _inner(self) -> DirTarget:
        if self._dir is None:
            self.open()
        assert self._dir is not None
        return self._dir

    # -- objects: all through the dir target -----------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        with self.writer(name) as w:
            w.write(data)

    def writer(self, name: str) -> ObjectWriter:
        return _GuardedWriter(self, self._guard().writer(name))

    def create_exclusive(self, name: str, data: bytes) -> None:
        self._guard().create_exclusive(name, data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            return self._inner().get(name, offset, length)
        except TargetUnavailable:
            self._guard()           # a miss on an unmounted share is "unavailable", not "damaged"
            raise

    def stat(self, name: str) -> ObjectInfo:
        try:
            return self._inner().stat(name)
        except TargetUnavailable:
            self._guard()
            raise

    def list(self, directory: str = "") -> Iterator[str]:
        # an unmounted share would list as an empty repository: check first
        yield from list(self._guard().list(directory))

    def list_dirs(self, directory: str = "") -> Iterator[str]:
        yield from list(self._guard().list_dirs(directory))

    def delete(self, name: str) -> None:
        self._guard().delete(name)

    def rmdir(self, name: str) -> None:
        self._guard().rmdir(name)

    def free_space(self) -> int | None:
        return self._guard().free_space()

    def sync(self) -> None:
        self._guard().sync()


# --- userspace transport -----------------------------------------------------------------
_TRANSIENT = frozenset({
    errno.EINTR, errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
    errno.ECONNABORTED, errno.EPIPE, errno.ENOTCONN, errno.EAGAIN, errno.ESTALE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
})


class _NfsWriter(ObjectWriter):
    def __init__(self, target: "NfsUserspaceTarget", name: str):
        self.target, self.name = target, name
        self.final = target._path(name)
        self.tmp = f"{self.final}{TMP_MARK}{secrets.token_hex(4)}"
        self._size = 0
        self._done = False
        self.f = target._create(name, self.tmp)

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if self._done:
            raise ValueError(f"write to a finished writer for {self.name}")
        try:
            self.target._do(self.name, lambda ctx: self.f.pwrite(data, self._size))
        except BaseException:
            self.abort()
            raise
        self._size += len(data)

    def commit(self) -> None:
        if self._done:
            return
        try:
            def finish(ctx):
                self.f.fsync()          # NFS COMMIT: the bytes are on the server's disk
                self.f.close()
                ctx.rename(self.tmp, self.final)
            self.target._do(self.name, finish)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self.target._discard(self.f, self.tmp)


class NfsUserspaceTarget(Target):
    """NFSv3 through libnfs; see the module docstring."""

    kind = "nfs"

    def __init__(self, cfg: NfsConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.capabilities = Capabilities()
        self.base = "/" + cfg.path if cfg.path else "/"
        self._ctx = None
        self._lock = threading.RLock()
        self._dirs: set[str] = set()          # directories known to exist (saves MKDIR round trips)
        self._opened = False

    def describe(self) -> str:
        return _describe(self.cfg)

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
