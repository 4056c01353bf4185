"""The in-memory target: a dict of name -> bytes, for unit tests and dry runs.

It keeps the same contracts as a real target (validated names, atomic commit, exclusive
create, NotFound) and counts the bytes read, so tests can measure what a restore fetched.
``fail_after_bytes`` makes it run out of space after that many bytes have been written.
"""

from __future__ import annotations

import threading
from typing import Iterator

from dmbackup.errors import NoSpace, NotFound
from dmbackup.targets.base import AlreadyExists, Capabilities, ObjectInfo, ObjectWriter, Target, validate_name


class _MemWriter(ObjectWriter):
    def __init__(self, target: "MemoryTarget", name: str):
        self.target, self.name = target, name
        self.buf = bytearray()
        self._done = False

    @property
    def size(self) -> int:
        return len(self.buf)

    def write(self, data: bytes) -> None:
        self.target._charge(len(data))
        self.buf += data

    def commit(self) -> None:
        if not self._done:
            self._done = True
            with self.target._lock:
                self.target.objects[self.name] = bytes(self.buf)

    def abort(self) -> None:
        self._done = True


class MemoryTarget(Target):
    kind = "memory"

    def __init__(self, name: str = "mem", *, max_object_size: int | None = None,
                 fail_after_bytes: int | None = None):
        self.name = name
        self.objects: dict[str, bytes] = {}
        self.bytes_read = 0
        self.bytes_written = 0
        self.fail_after_bytes = fail_after_bytes
        self._lock = threading.Lock()
        if max_object_size:
            self.capabilities = Capabilities(max_object_size=max_object_size)

    def _charge(self, n: int) -> None:
        self.bytes_written += n
        if self.fail_after_bytes is not None and self.bytes_written > self.fail_after_bytes:
            raise NoSpace(f"{self.describe()} is full")

    def put(self, name, data):
        validate_name(name)
        with self.writer(name) as w:
            w.write(data)

    def writer(self, name):
        validate_name(name)
        return _MemWriter(self, name)

    def create_exclusive(self, name, data):
        validate_name(name)
        with self._lock:
            if name in self.objects:
                raise AlreadyExists(f"{name} already exists")
            self.objects[name] = bytes(data)

    def get(self, name, offset=0, length=None):
        validate_name(name)
        try:
            data = self.objects[name]
        except KeyError:
            raise NotFound(f"{name} not found on {self.describe()}") from None
        out = data[offset:] if length is None else data[offset:offset + length]
        self.bytes_read += len(out)
        return out

    def stat(self, name):
        validate_name(name)
        try:
            return ObjectInfo(name, len(self.objects[name]))
        except KeyError:
            raise NotFound(f"{name} not found on {self.describe()}") from None

    def list(self, directory: str = "") -> Iterator[str]:
        if directory:
            validate_name(directory)
        prefix = f"{directory}/" if directory else ""
        with self._lock:
            names = sorted(self.objects)
        for n in names:
            if n.startswith(prefix) and "/" not in n[len(prefix):]:
                yield n

    def list_dirs(self, directory: str = "") -> Iterator[str]:
        if directory:
            validate_name(directory)
        prefix = f"{directory}/" if directory else ""
        out = set()
        for n in self.objects:
            if n.startswith(prefix) and "/" in n[len(prefix):]:
                out.add(prefix + n[len(prefix):].split("/", 1)[0])
        yield from sorted(out)

    def delete(self, name):
        validate_name(name)
        with self._lock:
            self.objects.pop(name, None)

    def free_space(self):
        if self.fail_after_bytes is None:
            return None
        return max(0, self.fail_after_bytes - self.bytes_written)
