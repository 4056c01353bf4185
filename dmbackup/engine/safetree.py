"""Writing a restored tree that can never escape its destination.

Every path is opened component by component from a directory file descriptor with
``O_NOFOLLOW | O_DIRECTORY`` (``openat``), so neither a ``..`` nor a symlink — one already in
the destination or one the restore created a moment earlier — can lead a write outside it.
Names from a catalog are checked before use: no separators, no ``.``/``..``, no NUL.
"""

from __future__ import annotations

import os

from dmbackup.errors import CorruptObject, RestoreError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def check_name(name: str, what: str = "name") -> str:
    try:
        encoded = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else b""
    except UnicodeEncodeError:          # a surrogate no file system name can have
        encoded = b""
    if (not encoded or name in (".", "..") or "/" in name or "\0" in name or len(encoded) > 255):
        raise CorruptObject(f"unsafe {what} {name!r} in the catalog: refused")
    return name


def split_rel(rel: str) -> list[str]:
    if rel == "":
        return []
    if rel.startswith("/"):
        raise CorruptObject(f"absolute path {rel!r} in the catalog: refused")
    return [check_name(p, "path component") for p in rel.split("/")]


def open_below(root_fd: int, parts: list[str]) -> int:
    """A new fd for the directory ``parts`` below ``root_fd``, opened component by component
    with O_NOFOLLOW: OSError (ELOOP, ENOTDIR, ENOENT) when any of them is not a real directory."""
    fd = os.dup(root_fd)
    try:
        for p in parts:
            nfd = os.open(check_name(p, "path component"), DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


class SafeTree:
    def __init__(self, root: str, root_fd: int | None = None):
        """``root_fd``: an already opened destination (the tree takes a duplicate of it), for a
        destination inside a directory that others can write to (a live mail store)."""
        self.root = os.path.abspath(root)
        try:
            self.root_fd = os.dup(root_fd) if root_fd is not None else os.open(self.root, DIR_FLAGS)
        except OSError as exc:
            raise RestoreError(f"cannot open restore destination {self.root}: {exc.strerror}") from None
        self._cache: tuple[str, int] | None = None

    def close(self) -> None:
        if self._cache:
            os.close(self._cache[1])
            self._cache = None
        os.close(self.root_fd)

    def dir_fd(self, rel: str, *, create: bool = True, mode: int = 0o700) -> int:
        """A borrowed fd for directory ``rel`` (valid until the next call)."""
        if self._cache and self._cache[0] == rel:
            return self._cache[1]
        parts = split_rel(rel)
        fd = os.dup(self.root_fd)
        try:
            for p in parts:
                try:
                    nfd = os.open(p, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(p, mode, dir_fd=fd)
                    nfd = os.open(p, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise RestoreError(
                        f"cannot enter {rel!r} in the destination ({exc.strerror}): a file or symlink is in the way"
                    ) from None
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        if self._cache:
            os.close(self._cache[1])
        self._cache = (rel, fd)
        return fd

    def path(self, rel: str, name: str | None = None) -> str:
        parts = split_rel(rel) + ([check_name(name)] if name else [])
        return os.path.join(self.root, *parts)
