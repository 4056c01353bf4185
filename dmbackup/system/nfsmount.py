"""Mounting an NFS export with the system's mount command for one session.

``ExportMount`` is the NFS target's ``mount`` transport below the target: it knows export,
mount point and commands, nothing of objects. ``open()`` reuses a mount of the same export
that is already there (at the mount point, else anywhere, whole) or mounts it, and returns
the directory; ``close()`` unmounts only what ``open()`` mounted and removes the mount-point
directories it created.

A mount helper can report success without mounting anything (``bg`` retries in the
background), and writing then would fill the root file system under the empty mount point:
so after the helper, /proc/self/mountinfo must show exactly the export (trailing slashes
aside) mounted on the mount point, with nosuid,nodev,noexec (dmbackup.system.mounting), or
whatever was mounted is taken away again. ``is_mounted()`` is the check the target repeats
before each write: the export, on the mount point, still the same file system.

Every failure is a TargetUnavailable whose message starts with ``what`` (the target's own
description) and says what to do.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time

from dmbackup.errors import TargetUnavailable
from dmbackup.system.childenv import child_env
from dmbackup.system.mountinfo import Mount, MountPointDirs, mount_at, mounts_of, unescape
from dmbackup.system.mounting import enforce_safe_flags, run_helper, wait_for_mount

log = logging.getLogger(__name__)

_SETTLE = 1.0          # seconds a mount may take to show up in mountinfo after the helper returns


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


def export_string(server: str, path: str) -> str:
    return f"[{server}]:{path}" if ":" in server else f"{server}:{path}"


def mount_root(mount_point: str) -> str | None:
    """The 'root' field of mountinfo for ``mount_point``: "/" unless it is a bind of a subtree."""
    root = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and unescape(fields[4]) == mount_point:
                    root = unescape(fields[3])
    except OSError:
        return None
    return root


def _run(argv: list[str], timeout: int) -> tuple[int, str]:
    # LC_ALL=C: "busy" in umount's answer is what decides whether to try again
    code, output = run_helper(argv, timeout, env=child_env({"LC_ALL": "C"}))
    if code == 124:
        output += " (server not answering?)"
    return code, output


class ExportMount:
    """``server:/path`` mounted on ``mount_point`` for one session; see the module docstring.
    ``mount_argv`` is the whole mount command line, ``umount_command`` gets the mount point
    appended; ``timeout`` bounds each command."""

    def __init__(self, export: str, mount_point: str, mount_argv: list[str], umount_command: tuple[str, ...],
                 timeout: int, *, what: str):
        self.export = export
        self.server, self.export_path = split_export(export)
        self.mount_point = mount_point
        self.mount_argv = list(mount_argv)
        self.umount_command = tuple(umount_command)
        self.timeout = timeout
        self.what = what
        self.path: str | None = None          # where the export is mounted, while open
        self.mounted_by_us = False
        self._dev: int | None = None
        self._mp_dirs = MountPointDirs()

    def is_export(self, m: Mount) -> bool:
        try:
            server, path = split_export(m.source)
        except ValueError:
            return False
        return (server, path) == (self.server, self.export_path)

    def _existing(self) -> Mount | None:
        """A mount of our export we may reuse: at our mount point first, else anywhere whole."""
        here = mount_at(self.mount_point)
        if here is not None and self.is_export(here):
            return here
        candidates = mounts_of(self.export) + mounts_of(export_string(self.server, self.export_path))
        for m in candidates:
            if self.is_export(m) and mount_root(m.mount_point) == "/" and mount_at(m.mount_point) == m:
                return m
        return None

    # -- session ---------------------------------------------------------------------------
    def open(self) -> str:
        """Mount (or reuse a mount) and return where the export is."""
        if self.path is not None:
            return self.path
        existing = self._existing()
        if existing is not None:
            log.info("%s is already mounted on %s: using that mount", self.export, existing.mount_point)
            self.path, self.mounted_by_us = existing.mount_point, False
        else:
            self._mount()
        try:
            self._dev = os.stat(self.path).st_dev
        except OSError as exc:
            path = self.path
            self.release()
            raise TargetUnavailable(f"{self.what}: cannot use {path}: {exc.strerror}") from None
        return self.path

    def _mount(self) -> None:
        mp = self.mount_point
        taken = mount_at(mp)
        if taken is not None:
            raise TargetUnavailable(
                f"{self.what}: cannot mount on {mp}: {taken.source} ({taken.fstype}) is already "
                "mounted there; unmount it or choose another mount_point. Nothing was written")
        self._make_mount_point(mp)
        code, output = _run(self.mount_argv, self.timeout)
        mounted = wait_for_mount(mp, _SETTLE, lambda m: True) if code == 0 else None
        if mounted is None or not self.is_export(mounted):
            stray = mount_at(mp)
            if code == 0 and stray is not None:
                # the helper mounted something, but not our export: take it away again
                _run([*self.umount_command, mp], self.timeout)
            self._mp_dirs.remove()
            raise TargetUnavailable(f"{self.what}: cannot mount {self.export} on {mp}: "
                                    f"{self._why_not(code, output, stray)}. Check that the server is up "
                                    "and exports it to this host; nothing was written")
        unsafe = enforce_safe_flags(mp, self.timeout, env=child_env({"LC_ALL": "C"}))
        if unsafe is not None:
            _run([*self.umount_command, mp], self.timeout)
            self._mp_dirs.remove()
            raise TargetUnavailable(f"{self.what}: mounted {self.export} on {mp}, but {unsafe}; an "
                                    "untrusted share is never used without nosuid,nodev,noexec, so it was "
                                    "unmounted again. Nothing was written")
        self.path, self.mounted_by_us = mp, True
        log.info("mounted %s on %s", self.export, mp)

    def _why_not(self, code: int, output: str, stray: Mount | None) -> str:
        helper = self.mount_argv[0]
        if code != 0:
            return output or f"exit status {code}"
        if stray is not None:
            return (f"{helper} reported success but {stray.source} ({stray.fstype}) was mounted "
                    f"there, not {self.export}")
        return (f"{helper} reported success but /proc/self/mountinfo does not show "
                f"{self.export} on {self.mount_point} (a 'bg' mount still retrying?)")

    def _make_mount_point(self, mp: str) -> None:
        try:
            self._mp_dirs.make(mp)
        except OSError as exc:
            raise TargetUnavailable(f"{self.what}: mount point {mp}: {exc.strerror}") from None

    def is_mounted(self) -> bool:
        """Is the export still mounted where this session writes (same file system)?"""
        if self.path is None:
            return False
        m = mount_at(self.path)
        try:
            same_dev = os.stat(self.path).st_dev == self._dev
        except OSError:
            same_dev = False
        return m is not None and self.is_export(m) and same_dev

    def release(self) -> None:
        """Unmount what we mounted, without waiting (after a failed open)."""
        if self.mounted_by_us and self.path:
            _run([*self.umount_command, self.path], self.timeout)
            self._mp_dirs.remove()
        self.path, self.mounted_by_us, self._dev = None, False, None

    def close(self) -> None:
        """Unmount what open() mounted. Raises TargetUnavailable if it stays mounted."""
        if not self.mounted_by_us or not self.path:
            self.path, self._dev = None, None
            return
        mp = self.path
        last = ""
        for attempt in range(5):
            if mount_at(mp) is None:
                break
            code, last = _run([*self.umount_command, mp], self.timeout)
            if mount_at(mp) is None:
                break
            if "busy" not in last.lower():
                break
            time.sleep(0.2 * (attempt + 1))     # a just-closed file may still be referenced
        if mount_at(mp) is not None:
            raise TargetUnavailable(
                f"{self.what}: the backup was written and synced, but {mp} cannot be unmounted: "
                f"{last or 'busy'}. Close programs using it (fuser -vm {mp}), then umount {mp}")
        self._mp_dirs.remove()
        self.path, self.mounted_by_us, self._dev = None, False, None
        log.info("unmounted %s from %s", self.export, mp)
