"""Writing restored entries into the destination: directories, symlinks, files, uidlists.

Files are created with O_EXCL through directory file descriptors (never through a symlink,
never one that exists), written, checked against their recorded SHA-256, then given their
owner (the recorded numeric ids, when running as root, or the ones asked for), mode and
mtime, in that order: a file is complete once its mtime is set, which is what ``--resume``
relies on. A file that fails anywhere is removed, never left half-written. Directories get
their metadata last, deepest first (``apply_dir_meta``), since writing into a directory
changes its mtime. A folder's ``dovecot-uidlist`` is written with its next UID raised
(dmbackup.engine.dovecot).
"""

from __future__ import annotations

import hashlib
import os
import stat

from dmbackup.archive.catalog import Entry
from dmbackup.engine.safetree import SafeTree, split_rel
from dmbackup.errors import CorruptObject, RestoreError


class EntryWriter:
    """Writes entries for a restorer (dmbackup.engine.restore.TreeRestorer, which subclasses it).

    ``result`` counts what was written; ``dir_meta`` collects directories whose metadata is
    applied at the end; ``made`` the directories restored so far. ``uid_gap``: raise next UIDs
    of restored uidlists by this; None: only in folders that hold messages their uidlist gives
    no UID (``unnumbered``, which the restorer answers from the catalog)."""

    def __init__(self, reader, chain: str, result, *, chown: bool, resume: bool, uid_gap: int | None,
                 owner: tuple[int, int] | None, modes: tuple[int, int] | None):
        self.reader, self.chain, self.result = reader, chain, result
        self.chown = chown
        self.resume = resume
        self.uid_gap = uid_gap
        self.owner = owner                          # (uid, gid) for everything, instead of the recorded
        self.modes = modes                          # (dir mode, file mode), instead of the recorded
        self.dir_meta: list[tuple[str, Entry]] = []
        self.made: set[str] = {""}                  # directories restored so far (rows must be one)

    def warn(self, msg: str) -> None:
        self.result.warnings.append(msg)

    def fail(self, path: str, error: str, *, damage: bool) -> None:
        raise NotImplementedError

    def unnumbered(self, folder: str, uidlist: bytes) -> bool:
        """Does this folder hold a message its uidlist gives no UID? (the restorer knows)"""
        return False

    def write_entry(self, fd: int, path_rel: str, e: Entry) -> None:
        if e.type == "d":
            try:
                os.mkdir(e.name, 0o700, dir_fd=fd)
            except FileExistsError:
                st = os.stat(e.name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise RestoreError(f"{path_rel} exists in the destination and is not a directory") from None
            self.dir_meta.append((path_rel, e))
            self.made.add(path_rel)
            self.result.dirs += 1
        elif e.type == "l":
            try:
                os.symlink(e.link, e.name, dir_fd=fd)
            except FileExistsError:
                if not self.resume:
                    raise RestoreError(f"{path_rel} already exists in the destination: restore into an empty "
                                       "directory, or add --resume to finish an interrupted restore") from None
                st = os.stat(e.name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode) and os.readlink(e.name, dir_fd=fd) == e.link:
                    pass
                elif stat.S_ISDIR(st.st_mode):
                    raise RestoreError(f"{path_rel} exists in the destination and is a directory") from None
                else:
                    os.unlink(e.name, dir_fd=fd)
                    os.symlink(e.link, e.name, dir_fd=fd)
            if self.chown or self.owner is not None:
                os.chown(e.name, *self._ids(e), dir_fd=fd, follow_symlinks=False)
            os.utime(e.name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=fd, follow_symlinks=False)
        elif e.type == "f":
            self._file(fd, path_rel, e)

    def _complete(self, dfd: int, e: Entry) -> bool | None:
        """--resume: True if the file is already restored, False if a partial one was removed,
        None if there is nothing in the way."""
        try:
            st = os.stat(e.name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISREG(st.st_mode) and st.st_size == e.size and st.st_mtime_ns == e.mtime_ns \
                and stat.S_IMODE(st.st_mode) == e.mode:
            return True
        if stat.S_ISDIR(st.st_mode):
            raise RestoreError(f"{e.name} exists in the destination and is a directory")
        os.unlink(e.name, dir_fd=dfd)
        return False

    def _ids(self, e: Entry) -> tuple[int, int]:
        return self.owner if self.owner is not None else (e.uid, e.gid)

    def _mode(self, e: Entry) -> int:
        # a mail store needs no set-uid, set-gid or sticky bit: one in a catalog (a forged one
        # from an unauthenticated repository) is never put on the disk
        if self.modes is None:
            return e.mode & 0o777
        return self.modes[0] if e.type == "d" else self.modes[1]

    def _file(self, dfd: int, path_rel: str, e: Entry) -> None:
        if e.name == "dovecot-uidlist" and (self.uid_gap is None or self.uid_gap > 0):
            return self._uidlist(dfd, path_rel, e)
        if self.resume and self._complete(dfd, e):
            self.result.skipped_complete += 1
            self.result.files += 1
            self.result.bytes += e.size
            return
        h = hashlib.sha256()

        def blocks():
            for ext in e.extents:
                data = self.reader.extent(self.chain, ext)
                h.update(data)
                yield data

        def check(written: int) -> None:
            if written != e.size or h.hexdigest() != e.hash:
                raise CorruptObject(f"{path_rel}: restored content does not match its recorded hash")

        self._write(dfd, path_rel, e, blocks(), check)

    def _write(self, dfd: int, path_rel: str, e: Entry, chunks, check=None) -> None:
        """Create ``e`` (O_EXCL, no symlink), write ``chunks``, check, set owner/mode/mtime; a
        file that fails anywhere is removed, never left half-written."""
        fd = self._create(dfd, path_rel, e.name)
        written = 0
        try:
            for data in chunks:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                written += len(data)
            if check is not None:
                check(written)
            self._finish(fd, e)
        except BaseException:
            os.close(fd)
            os.unlink(e.name, dir_fd=dfd)
            raise
        os.close(fd)
        self.result.files += 1
        self.result.bytes += written

    @staticmethod
    def _create(dfd: int, path_rel: str, name: str) -> int:
        """A new file, never one that exists, never through a symlink."""
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                           dir_fd=dfd)
        except FileExistsError:
            raise RestoreError(f"{path_rel} already exists in the destination: restore into an empty directory, "
                               "or add --resume to finish an interrupted restore") from None

    def _finish(self, fd: int, e: Entry) -> None:
        if self.chown or self.owner is not None:
            os.fchown(fd, *self._ids(e))
        os.fchmod(fd, self._mode(e))
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))

    def _uidlist(self, dfd: int, path_rel: str, e: Entry) -> None:
        """A folder's dovecot-uidlist with its next UID raised (dmbackup.engine.dovecot)."""
        from dmbackup.engine.dovecot import MAX_UIDLIST, UID_GAP, raise_uidlist

        if e.size > MAX_UIDLIST:
            raise CorruptObject(f"{path_rel}: {e.size} bytes is not a plausible dovecot-uidlist")
        data = b"".join(self.reader.extent(self.chain, x) for x in e.extents)
        if len(data) != e.size or hashlib.sha256(data).hexdigest() != e.hash:
            raise CorruptObject(f"{path_rel}: restored content does not match its recorded hash")
        gap = self.uid_gap
        if gap is None:
            gap = UID_GAP if self.unnumbered(path_rel.rpartition("/")[0], data) else 0
        raised = raise_uidlist(data, gap) if gap else data
        if raised is None:
            self.warn(f"{path_rel}: not a version 3 uidlist, next UID not raised")
            raised = data
        elif gap:
            self.result.uid_gap_folders += 1
        if self.resume:
            try:
                os.unlink(e.name, dir_fd=dfd)
            except FileNotFoundError:
                pass
        self._write(dfd, path_rel, e, [raised])

    def apply_dir_meta(self, tree: SafeTree) -> None:
        for rel, e in sorted(self.dir_meta, key=lambda x: -len(split_rel(x[0]))):
            try:
                fd = tree.dir_fd(rel, create=False)
            except (OSError, RestoreError) as exc:
                self.fail(rel, f"directory metadata not applied: {getattr(exc, 'strerror', None) or exc}",
                          damage=False)
                continue
            self._finish(fd, e)
