"""The storage interface every target implements, and nothing more.

A target stores named objects under its root; it knows nothing about the archive format.
Names are relative POSIX paths made of safe components (letters, digits, ``._-+``), checked
by ``validate_name`` before any I/O, so a name can never climb out of the root or smuggle a
separator. Contracts (tested by ONE suite, tests/targets/contract.py, against every target):

- ``put(name, data)`` and ``writer(name)...commit()`` are atomic: readers see the whole
  object under ``name`` or nothing. Implementations write ``name + TMP_MARK + random`` and
  rename it over ``name`` (replace semantics); ``abort()`` removes the temporary. That
  protocol is written once, in ``dmbackup.targets.writer.TempRenameWriter``.
- ``create_exclusive(name, data)`` fails with ``AlreadyExists`` when ``name`` exists: the
  primitive that locks are built on.
- ``get(name, offset, length)`` returns exactly the requested bytes (fewer only at the end of
  the object); a missing object raises ``NotFound``.
- ``list(directory)`` yields the names (full relative names) of the objects directly in that
  directory, temporary names included so a cleaner can find them; a missing directory lists
  nothing.
- ``list_dirs(directory)`` yields the sub-directories directly in ``directory``; a target
  without real directories (object stores) derives them from the names.
- ``delete(name)`` removes an object; deleting a missing object is not an error.
- Errors are mapped to the tree in dmbackup.errors: ``NotFound``, ``AuthFailed``,
  ``TransientTargetError`` (worth a retry), ``TargetUnavailable``, ``NoSpace``.

``open()``/``close()`` bracket a session (mount a disk, connect to a server); targets are
context managers. Capabilities are declared, not discovered by trial.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator

from dmbackup.errors import DmError

TMP_MARK = ".tmp-"
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}\Z")


class AlreadyExists(DmError):
    """The object already exists."""


@dataclass(frozen=True)
class Capabilities:
    """What a medium can do, declared by its target. Each flag is read where it matters:"""

    #: largest object the medium holds (vfat: 4 GiB - 1): the repository caps volumes by it
    max_object_size: int = 1 << 62
    #: rename over an existing name is atomic: without it (FAT, exFAT) the dir target replaces
    #: an object stepwise (targets/dir.py, ``_replace_stepwise``)
    atomic_rename: bool = True
    #: modes work: the dir target sets 0600/0700 only where they do (never relied upon by the format)
    posix_metadata: bool = True
    #: re-read each committed volume (network shares): archive/blocks.py does
    read_back: bool = False
    #: reached over a network, so a call may fail transiently: App.target() (dmbackup/context.py)
    #: wraps the target in retry.RetryingTarget
    network: bool = False
    #: its methods may run on two threads at once (a local or mounted file system: dir, usb,
    #: nfs mount; not SMB or libnfs, one connection without a lock): archive/blocks.py then
    #: writes volumes on a thread of their own while the engine writes and reads pages
    concurrent: bool = False


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


def validate_name(name: str) -> str:
    """Reject anything but a relative path of safe components, before any I/O."""
    if not isinstance(name, str) or not name or name.startswith("/") or len(name) > 1024:
        raise ValueError(f"invalid object name {name!r}")
    for part in name.split("/"):
        if part in (".", "..") or not _COMPONENT.match(part):
            raise ValueError(f"invalid object name {name!r}")
    return name


def is_temporary(name: str) -> bool:
    return TMP_MARK in name.rsplit("/", 1)[-1]


class ObjectWriter(ABC):
    """Streams one object; visible under its name only after ``commit``."""

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...

    @property
    @abstractmethod
    def size(self) -> int: ...

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


class Target(ABC):
    """A place that stores objects. See the module docstring for the contracts."""

    name: str = "target"
    kind: str = "abstract"
    capabilities = Capabilities()

    def open(self) -> None:
        """Make the target usable (mount, connect). Idempotent."""

    def close(self) -> None:
        """Release what open() acquired (unmount what we mounted, disconnect)."""

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def describe(self) -> str:
        return f"{self.kind} target {self.name!r}"

    @abstractmethod
    def put(self, name: str, data: bytes) -> None: ...

    @abstractmethod
    def writer(self, name: str) -> ObjectWriter: ...

    @abstractmethod
    def create_exclusive(self, name: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    @abstractmethod
    def stat(self, name: str) -> ObjectInfo: ...

    @abstractmethod
    def list(self, directory: str = "") -> Iterator[str]: ...

    @abstractmethod
    def list_dirs(self, directory: str = "") -> Iterator[str]:
        """Names of the sub-directories directly in ``directory`` (full relative names)."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    def rmdir(self, name: str) -> None:
        """Remove an EMPTY directory (after prune). Best effort: a target without real
        directories does nothing; a directory that is not empty stays (OSError or a
        target error, which callers ignore)."""

    def exists(self, name: str) -> bool:
        from dmbackup.errors import NotFound

        try:
            self.stat(name)
            return True
        except NotFound:
            return False

    def free_space(self) -> int | None:
        """Bytes available for new objects, or None when the medium cannot tell."""
        return None

    def sync(self) -> None:
        """Make committed objects durable (fsync / flush); called before a catalog is written."""


class PrefixedTarget(Target):
    """A view of another target under a fixed prefix (``dmbackup/<hostname>``)."""

    def __init__(self, inner: Target, prefix: str):
        validate_name(prefix)
        self.inner = inner
        self.prefix = prefix
        self.name = inner.name
        self.kind = inner.kind
        self.bytes_read = 0          # everything fetched through this view (restore efficiency)

    @property
    def capabilities(self) -> Capabilities:    # type: ignore[override]
        """Read through: a USB disk knows its file system's limits only once mounted."""
        return self.inner.capabilities

    def _n(self, name: str) -> str:
        """An object name under the prefix (validated: never the prefix itself)."""
        return f"{self.prefix}/{validate_name(name)}"

    def _d(self, directory: str) -> str:
        """A directory under the prefix; "" is the prefix itself."""
        return f"{self.prefix}/{validate_name(directory)}" if directory else self.prefix

    def describe(self) -> str:
        return self.inner.describe()

    def open(self):
        self.inner.open()

    def close(self):
        self.inner.close()

    def put(self, name, data):
        self.inner.put(self._n(name), data)

    def writer(self, name):
        return self.inner.writer(self._n(name))

    def create_exclusive(self, name, data):
        self.inner.create_exclusive(self._n(name), data)

    def get(self, name, offset=0, length=None):
        data = self.inner.get(self._n(name), offset, length)
        self.bytes_read += len(data)
        return data

    def stat(self, name):
        info = self.inner.stat(self._n(name))
        return ObjectInfo(name, info.size)

    def list(self, directory=""):
        cut = len(self.prefix) + 1
        for n in self.inner.list(self._d(directory)):
            yield n[cut:]

    def list_dirs(self, directory=""):
        cut = len(self.prefix) + 1
        for n in self.inner.list_dirs(self._d(directory)):
            yield n[cut:]

    def delete(self, name):
        self.inner.delete(self._n(name))

    def rmdir(self, name):
        self.inner.rmdir(self._n(name))

    def free_space(self):
        return self.inner.free_space()

    def sync(self):
        self.inner.sync()
