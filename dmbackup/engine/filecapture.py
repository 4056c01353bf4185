"""Capturing one file of the mail store: its entry, and its content stored or found again.

A file whose size and mtime (and, outside Maildir message directories, inode) match the
parent's entry is taken over without being read. Any other is opened without following
links and without blocking (a FIFO swapped in under a message's name must not hang the
backup), and read in blocks: small files are grouped into one block, a large one spans
several (dmbackup.archive.blocks). Content the chain already holds (a message moved to
another folder) is found by its SHA-256 in the chain's content index and not stored again;
a second name of a hardlinked file reuses the first name's extents.
"""

from __future__ import annotations

import hashlib
import os
import stat

from dmbackup.archive.headerindex import HEADER_CAP
from dmbackup.archive.headerparse import extract
from dmbackup.archive import BLOCK_SIZE
from dmbackup.archive.catalog import Entry

VANISHED = object()      # a file that could not be captured (the run already warned)


def join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


class FileCapture:
    """Files into entries and blocks; counts what it captured and collects the run's warnings."""

    def __init__(self, app, writer, pages, parent_view):
        self.app = app
        self.log = app.log
        self.writer = writer                  # the snapshot's BlockWriter
        self.pages = pages                    # its PageQueue (blocks pinned by hardlinks)
        self.parent_view = parent_view        # None for a full backup
        self.max_file_size = app.config.source.max_file_size
        self.warnings: list[str] = []
        self.files = self.bytes = 0
        self.inode_map: dict[tuple[int, int], tuple[str, list]] = {}

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.log.warning("backup_warning", message=msg)

    def tally(self, files: int, size: int) -> None:
        """Count captured files (and report progress)."""
        self.files += files
        self.bytes += size
        self.app.progress.update(files, size)

    def capture(self, dir_fd: int, rel_dir: str, name: str, st, prev, *, message: bool):
        """Capture one file: (entry, ctime), None when it vanished (ENOENT), or VANISHED when it
        cannot be captured for another reason (already warned)."""
        if (prev is not None and prev.type == "f" and prev.size == st.st_size
                and prev.mtime_ns == st.st_mtime_ns and (message or prev.ino in (0, st.st_ino))):
            self.tally(1, st.st_size)
            return Entry(name, "f", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                         st.st_size, st.st_ino, prev.hash, prev.extents), st.st_ctime_ns
        try:
            fd = self._open(name, dir_fd)
        except FileNotFoundError:
            if message:
                return None
            self.warn(f"file vanished during the backup: {rel_dir}/{name}")
            return VANISHED
        except PermissionError:
            self.warn(f"permission denied reading {rel_dir}/{name}: skipped")
            return VANISHED
        except OSError as exc:
            self.warn(f"cannot read {rel_dir}/{name} ({exc.strerror}): skipped")
            return VANISHED
        try:
            return self._capture_open(fd, rel_dir, name, message)
        finally:
            os.close(fd)

    def _capture_open(self, fd: int, rel_dir: str, name: str, message: bool = False):
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            self.warn(f"{rel_dir}/{name} is no longer a regular file: skipped")
            return VANISHED
        if fst.st_size > self.max_file_size:
            self.warn(f"{rel_dir}/{name} is {fst.st_size} bytes, over [source] max_file_size "
                      f"({self.max_file_size}): not stored")
            return VANISHED
        key = (fst.st_dev, fst.st_ino)
        if fst.st_nlink > 1 and key in self.inode_map:
            digest, extents = self.inode_map[key]
            size = sum(x[-1] for x in extents)
            if size == fst.st_size:
                self.tally(1, size)
                return Entry(name, "f", stat.S_IMODE(fst.st_mode), fst.st_uid, fst.st_gid, fst.st_mtime_ns,
                             size, fst.st_ino, digest, extents), fst.st_ctime_ns
        entry, _ = self._store(fd, fst, name, message)
        if fst.st_nlink > 1:
            self.inode_map[key] = (entry.hash, entry.extents)
            self.pages.pinned.update(x[0] for x in entry.extents if len(x) == 3)
        return entry, fst.st_ctime_ns

    @staticmethod
    def _open(name: str, dir_fd: int) -> int:
        # O_NONBLOCK: a FIFO swapped in under a message's name must not hang the backup
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(name, flags | getattr(os, "O_NOATIME", 0), dir_fd=dir_fd)
        except PermissionError:
            if getattr(os, "O_NOATIME", 0):
                return os.open(name, flags, dir_fd=dir_fd)
            raise

    def _store(self, fd: int, fst, name: str, message: bool = False):
        """Store a file's content (unless the chain holds it); a message's headers go to the
        header index: extracted by the block workers in a full backup, here otherwise."""
        # read what fstat says (+1 to notice growth), never a 4 MiB buffer per small file
        head = self._read_upto(fd, min(fst.st_size, BLOCK_SIZE) + 1)
        if len(head) > fst.st_size and len(head) <= BLOCK_SIZE:
            head += self._read_upto(fd, BLOCK_SIZE + 1 - len(head))
        if len(head) > BLOCK_SIZE:
            digest, extents, seq, size = self._store_large(fd)
        elif self.parent_view is None and head:
            # a full backup looks nothing up by content: the block workers hash it
            if len(head) > self.writer.room():
                self.writer.flush()
            ref, hidx = self.writer.add(head, want_hash=True, message=message)
            extents, seq, size = [ref], ref[0], len(head)
            digest = ("pending", ref[0], hidx)
            message = False                       # the workers index it
        else:
            digest, extents, seq, size = self._store_small(head)
        self.tally(1, size)
        e = Entry(name, "f", stat.S_IMODE(fst.st_mode), fst.st_uid, fst.st_gid, fst.st_mtime_ns, size,
                  fst.st_ino, digest, extents)
        if message and seq >= 0:                  # stored by this run (not found in the chain)
            self.pages.note_headers(e, extract(head[:HEADER_CAP]) or False)   # False: not a header block
        return e, seq

    def _store_small(self, data: bytes):
        """(digest, extents, oldest block seq, size) of content that fits in one block."""
        digest = hashlib.sha256(data).hexdigest()
        known = self._known(digest, len(data))
        if known is not None:
            extents, seq = known
        else:
            if len(data) > self.writer.room():
                self.writer.flush()
            extents = [self.writer.add(data)] if data else []
            seq = extents[0][0] if extents else -1
        return digest, extents, seq, len(data)

    def _store_large(self, fd: int):
        """Stream a large file into blocks, hashing as it goes."""
        h = hashlib.sha256()
        extents = []
        size = 0
        os.lseek(fd, 0, os.SEEK_SET)
        while True:
            chunk = self._read_upto(fd, self.writer.room())
            if not chunk:
                break
            self.app.check_stop()
            h.update(chunk)
            size += len(chunk)
            extents.append(self.writer.add(chunk))
        digest = h.hexdigest()
        seq = max((x[0] for x in extents), default=-1)
        known = self._known(digest, size)
        if known is not None:      # stored twice in this volume; harmless, keep the old refs
            extents, seq = known
        return digest, extents, seq, size

    def _known(self, digest: str, size: int):
        """Extents of content the chain already holds (a message moved to another folder)."""
        if self.parent_view is not None and size > 0:
            ext = self.parent_view.lookup(digest)
            if ext is not None:
                return ext, -1
        return None

    @staticmethod
    def _read_upto(fd: int, n: int) -> bytes:
        chunks, total = [], 0
        while total < n:
            b = os.read(fd, n - total)
            if not b:
                break
            chunks.append(b)
            total += len(b)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
