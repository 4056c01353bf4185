"""Reading /proc/self/mountinfo: is a path really a mount point, and what is mounted where.

``os.path.ismount`` is wrong for bind mounts on the same file system and for FUSE mounts
seen through some paths, so every target that must refuse an unmounted directory asks here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Mount:
    mount_point: str
    source: str
    fstype: str
    options: str


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) + 0 and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    result = []
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return result
    for line in lines:
        left, _, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 2:
            continue
        result.append(Mount(_unescape(lf[4]), _unescape(rf[1]), rf[0], lf[5] if len(lf) > 5 else ""))
    return result


def mount_at(path: str) -> Mount | None:
    """The mount whose mount point is exactly ``path`` (last one wins, as the kernel does)."""
    path = os.path.realpath(path)
    found = None
    for m in mounts():
        if m.mount_point == path:
            found = m
    return found


def is_mount_point(path: str) -> bool:
    return mount_at(path) is not None


def mounts_of(source: str) -> list[Mount]:
    """Mounts of a device node or remote export (``server:/path``)."""
    real = os.path.realpath(source) if source.startswith("/") else source
    return [m for m in mounts() if m.source in (source, real)]


class MountPointDirs:
    """Creates the missing directories of a mount point and removes exactly those again
    (innermost first, only while empty and not mounted): nothing of the administrator's is
    ever removed. Used by every target that mounts something (USB, NFS)."""

    def __init__(self):
        self.created: list[str] = []

    def make(self, mp: str) -> None:
        """Raises OSError (with strerror) when the directories cannot be made."""
        missing, p = [], mp
        while not os.path.lexists(p):
            missing.append(p)
            p = os.path.dirname(p)
        try:
            for d in reversed(missing):
                os.mkdir(d, 0o700 if d == mp else 0o755)
                self.created.append(d)
        except OSError:
            self.remove()
            raise
        if not os.path.isdir(mp):
            raise NotADirectoryError(20, "exists but is not a directory", mp)

    def remove(self) -> None:
        for d in reversed(self.created):
            if mount_at(d) is not None:
                break
            try:
                os.rmdir(d)
            except OSError:
                break
        self.created = []


def unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (space, tab, newline, backslash)."""
    return _unescape(field)
