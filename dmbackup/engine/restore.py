"""Restoring a snapshot (or one mailbox / folder of it) into a directory.

The page table is in tree order, so parents are created before children. Only the pages of
the selected subtree are fetched, and only the blocks its files use: restoring one mailbox
reads roughly that mailbox's stored bytes. Files are written with O_EXCL through SafeTree
(never outside the destination, never through a symlink), then chowned/chmodded to the
recorded numeric ids and modes, and given their mtimes; directories get their metadata last,
deepest first, since writing into a directory changes its mtime.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field

from ..archive.blocks import BlockReader
from ..archive.catalog import Entry
from ..errors import CorruptObject, RestoreError, UsageError, EXIT_OK, EXIT_WARNING
from .safetree import SafeTree, check_name, split_rel


@dataclass
class RestoreResult:
    snapshot_id: str
    destination: str
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    bytes_fetched: int = 0
    selection: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_WARNING if self.warnings else EXIT_OK

    def as_dict(self) -> dict:
        return {"snapshot": self.snapshot_id, "destination": self.destination, "files": self.files,
                "dirs": self.dirs, "bytes": self.bytes, "bytes_fetched": self.bytes_fetched,
                "selection": self.selection or "/", "warnings": self.warnings, "exit_code": self.exit_code}


def in_selection(rel: str, prefix: str) -> bool:
    return not prefix or rel == prefix or rel.startswith(prefix + "/")


class TreeRestorer:
    def __init__(self, repo, ref, dest: str, *, prefix: str = "", only_dir_files: bool = False,
                 chown: bool | None = None, app=None):
        self.repo, self.ref, self.dest, self.prefix = repo, ref, dest, prefix
        self.only_dir_files = only_dir_files        # INBOX: the folder's own dir, not subfolders
        self.reader = BlockReader(repo.t, repo.id, repo.keys.data)
        self.chown = (os.geteuid() == 0) if chown is None else chown
        self.result = RestoreResult(ref.id, dest, selection=prefix)
        self.dir_meta: list[tuple[str, Entry]] = []
        self.app = app

    def warn(self, msg: str) -> None:
        self.result.warnings.append(msg)
        if self.app:
            self.app.log.warning("restore_warning", message=msg)

    def run(self, rows) -> RestoreResult:
        tree = SafeTree(self.dest)
        try:
            if self.prefix:
                self._ancestors(tree, rows)
            else:
                root = self.ref.header.root
                self.dir_meta.append(("", Entry("", "d", root[0], root[1], root[2], root[3], 0)))
            for row in rows:
                if not self._selected_row(row.dir):
                    continue
                if self.app:
                    self.app.check_stop()
                entries = self.repo.page(self.ref.chain, row)
                fd = tree.dir_fd(row.dir)
                for e in entries:
                    check_name(e.name)
                    if self.only_dir_files and row.dir == self.prefix and e.type == "d" and e.name not in ("cur", "new", "tmp"):
                        continue
                    self._entry(tree, fd, row.dir, e)
                    fd = tree.dir_fd(row.dir)
            self._apply_dir_meta(tree)
        finally:
            tree.close()
        self.result.bytes_fetched = self.repo.t.bytes_read
        return self.result

    def _selected_row(self, d: str) -> bool:
        if not in_selection(d, self.prefix):
            return False
        if self.only_dir_files and d != self.prefix:
            rest = d[len(self.prefix):].lstrip("/") if self.prefix else d
            return rest.split("/", 1)[0] in ("cur", "new", "tmp")
        return True

    def _ancestors(self, tree: SafeTree, rows) -> None:
        """Create the selection's ancestors with their recorded metadata."""
        parts = split_rel(self.prefix)
        by_dir = {}
        for r in rows:
            by_dir.setdefault(r.dir, []).append(r)
        found_self = False
        for i in range(len(parts)):
            parent = "/".join(parts[:i])
            name = parts[i]
            for row in by_dir.get(parent, []):
                for e in self.repo.page(self.ref.chain, row):
                    if e.name == name and e.type == "d":
                        rel = "/".join(parts[: i + 1])
                        tree.dir_fd(rel)
                        self.dir_meta.append((rel, e))
                        if i == len(parts) - 1:
                            found_self = True
        if not found_self:
            raise UsageError(f"{self.prefix!r} is not in snapshot {self.ref.id}: see the snapshot's mailboxes "
                             "with `dmbackup snapshots --json` or restore without a selection")

    def _entry(self, tree: SafeTree, fd: int, rel: str, e: Entry) -> None:
        path_rel = f"{rel}/{e.name}" if rel else e.name
        if e.type == "d":
            try:
                os.mkdir(e.name, 0o700, dir_fd=fd)
            except FileExistsError:
                st = os.stat(e.name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise RestoreError(f"{path_rel} exists in the destination and is not a directory") from None
            self.dir_meta.append((path_rel, e))
            self.result.dirs += 1
        elif e.type == "l":
            try:
                os.symlink(e.link, e.name, dir_fd=fd)
            except FileExistsError:
                raise RestoreError(f"{path_rel} already exists in the destination: restore into an empty directory") from None
            if self.chown:
                os.chown(e.name, e.uid, e.gid, dir_fd=fd, follow_symlinks=False)
            os.utime(e.name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=fd, follow_symlinks=False)
        elif e.type == "f":
            self._file(tree, fd, path_rel, e)

    def _file(self, tree: SafeTree, dfd: int, path_rel: str, e: Entry) -> None:
        try:
            fd = os.open(e.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
        except FileExistsError:
            raise RestoreError(f"{path_rel} already exists in the destination: restore into an empty directory") from None
        h = hashlib.sha256()
        written = 0
        try:
            for ext in e.extents:
                data = self.reader.extent(self.ref.chain, ext)
                h.update(data)
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                written += len(data)
            if written != e.size or h.hexdigest() != e.hash:
                raise CorruptObject(f"{path_rel}: restored content does not match its recorded hash")
            if self.chown:
                os.fchown(fd, e.uid, e.gid)
            os.fchmod(fd, e.mode)
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        except BaseException:
            os.close(fd)
            os.unlink(e.name, dir_fd=dfd)
            raise
        os.close(fd)
        self.result.files += 1
        self.result.bytes += written

    def _apply_dir_meta(self, tree: SafeTree) -> None:
        for rel, e in sorted(self.dir_meta, key=lambda x: -len(split_rel(x[0]))):
            fd = tree.dir_fd(rel, create=False)
            if self.chown:
                os.fchown(fd, e.uid, e.gid)
            os.fchmod(fd, e.mode)
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
