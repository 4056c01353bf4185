"""Restoring a snapshot (or one mailbox / folder of it) into a directory.

The page table is in tree order, so parents are created before children. Only the pages of
the selected subtree are fetched, and only the blocks its files use: restoring one mailbox
reads roughly that mailbox's stored bytes. Files are written with O_EXCL through SafeTree
(never outside the destination, never through a symlink), then chowned/chmodded to the
recorded numeric ids and modes, and given their mtimes; directories get their metadata last,
deepest first, since writing into a directory changes its mtime.

A restore never gives up on the whole tree for one entry. A catalog that holds one name twice
in a directory, or one message under two names in a Maildir folder (snapshots written by
releases before the capture fix), restores one copy (cur/ over new/, then the name with more
flags) with a warning (exit 1). A damaged block or an unsafe name is damage (exit 4), an entry
that cannot be written is a failure (exit 3): either way everything else is restored and the
result lists what was not. A full destination file system ends the restore (exit 3).

Crash semantics and ``--resume``: a file is complete once its mtime is set, which is the last
thing done to it (content, owner, mode, mtime). A restore killed half way leaves complete files,
at most one partial file per worker, and directories without their final metadata; run again
with ``--resume`` into the same destination, it skips every file whose size and mtime already
match the catalog, rewrites the rest, and applies directory metadata at the end. Nothing is
fsynced file by file: a power cut during a restore is handled the same way, by ``--resume``
(or by restoring again). Once everything is written, one syncfs(2) of the destination's file
system (dmbackup.engine.restoredir.written_back; for a live restore, before anything is moved
into a mailbox) puts it on the disk before the restore reports success; a write-back error
there fails the restore (exit 3).

What is restored and in which order is here; how an entry is written is
dmbackup.engine.restorewrite.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from dmbackup import humanize
from dmbackup.archive.blocks import PREFETCH_BLOCKS
from dmbackup.archive.catalog import Entry
from dmbackup.engine.restorewrite import EntryWriter
from dmbackup.engine.result import Result
from dmbackup.errors import CorruptObject, DmError, RestoreError, UsageError, EXIT_DAMAGE, EXIT_FAILED, EXIT_OK, EXIT_WARNING
from dmbackup.source.mailstore import base_name, is_transient
from dmbackup.engine.safetree import SafeTree, check_name, split_rel

MAX_LISTED_FAILURES = 1000
# blocks a restore keeps (128 MiB at most): a message moved to another folder is read from its
# original folder's block, which a cache of 8 had dropped before that folder's turn came (a
# restore from an incremental fetched 1.37 GB of a 1.04 GB repository)
RESTORE_CACHE_BLOCKS = 32


@dataclass
class RestoreResult(Result):
    snapshot_id: str
    destination: str
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    bytes_fetched: int = 0
    selection: str = ""
    failed: list[dict] = field(default_factory=list)     # {"path", "error", "damage"}
    failed_count: int = 0
    damaged: bool = False
    skipped_complete: int = 0                            # --resume: files already there
    uid_gap: int | None = 0                              # None: automatic (see TreeRestorer)
    uid_gap_folders: int = 0                             # folders whose next UID was raised

    @property
    def exit_code(self) -> int:
        if self.damaged:
            return EXIT_DAMAGE
        if self.failed_count:
            return EXIT_FAILED
        return EXIT_WARNING if self.warnings else EXIT_OK

    def as_dict(self) -> dict:
        return {"snapshot": self.snapshot_id, "destination": self.destination, "files": self.files,
                "dirs": self.dirs, "bytes": self.bytes, "bytes_fetched": self.bytes_fetched,
                "selection": self.selection or "/", "warnings": self.warnings, "failed": self.failed,
                "failed_count": self.failed_count, "skipped_complete": self.skipped_complete,
                "uid_gap": "auto" if self.uid_gap is None else self.uid_gap,
                "uid_gap_folders": self.uid_gap_folders, "exit_code": self.exit_code}

    def summary(self) -> str:
        """What was restored, and every entry that was not (the warnings are shown on their own)."""
        text = (f"restored {self.files} files ({humanize.size(self.bytes)}) from "
                f"{self.snapshot_id} into {self.destination}")
        if self.skipped_complete:
            text += f"; {self.skipped_complete} already complete (--resume)"
        if self.failed:
            text += f"\nNOT restored ({self.failed_count}):" + "".join(
                f"\n  {f.get('path')}: {f.get('error')}" for f in self.failed[:200])
        return text

    def incomplete(self) -> str | None:
        """The error line of a restore that left entries out (None when nothing was left out)."""
        if not self.failed:
            return None
        n, first = self.failed_count, self.failed[0]
        why = ("damaged or unsafe in the backup: run `dmbackup verify --read-data` and restore them from "
               "another snapshot" if self.exit_code == EXIT_DAMAGE else
               "they could not be written: fix the destination and run the same restore with --resume")
        return (f"restore incomplete: {n} entr{'y' if n == 1 else 'ies'} not restored (first: "
                f"{first.get('path')}: {first.get('error')}), everything else was restored; {why}")


def in_selection(rel: str, prefix: str) -> bool:
    return not prefix or rel == prefix or rel.startswith(prefix + "/")


def _flag_count(name: str) -> int:
    return len(name.partition(":2,")[2])


class TreeRestorer(EntryWriter):
    def __init__(self, repo, ref, dest: str, *, prefix: str = "", only_dir_files: bool = False,
                 chown: bool | None = None, app=None, resume: bool = False, uid_gap: int | None = 0,
                 owner: tuple[int, int] | None = None, modes: tuple[int, int] | None = None,
                 root_fd: int | None = None):
        # uid_gap: raise next UIDs of restored uidlists by this; None: only in folders that hold
        # messages their uidlist gives no UID (dmbackup.engine.dovecot explains why)
        super().__init__(repo.block_reader(cache_blocks=RESTORE_CACHE_BLOCKS), ref.chain,
                         RestoreResult(ref.id, dest, selection=prefix, uid_gap=uid_gap),
                         chown=(os.geteuid() == 0) if chown is None else chown, resume=resume,
                         uid_gap=uid_gap, owner=owner, modes=modes)
        self.repo, self.ref, self.dest, self.prefix = repo, ref, dest, prefix
        self.only_dir_files = only_dir_files        # INBOX: the folder's own dir, not subfolders
        self.root_fd = root_fd
        self.app = app
        self._rows_by_dir: dict[str, object] = {}
        self._drop: dict[str, set[str]] = {}        # message dir -> names not to restore (duplicates)
        self._ahead_next = 0                        # the next selected row whose blocks are not queued

    def warn(self, msg: str) -> None:
        self.result.warnings.append(msg)
        if self.app:
            self.app.log.warning("restore_warning", message=msg)

    def fail(self, path: str, error: str, *, damage: bool) -> None:
        r = self.result
        r.failed_count += 1
        r.damaged = r.damaged or damage
        if len(r.failed) < MAX_LISTED_FAILURES:
            r.failed.append({"path": path or "/", "error": error, "damage": damage})
        if self.app:
            self.app.log.warning("restore_failed", path=path or "/", error=error)

    def run(self, rows) -> RestoreResult:
        tree = SafeTree(self.dest, self.root_fd)
        self._rows_by_dir = {r.dir: r for r in rows}
        try:
            if self.prefix:
                self._ancestors(tree, rows)
            else:
                root = self.ref.header.root
                self.dir_meta.append(("", Entry("", "d", root[0], root[1], root[2], root[3], 0)))
            selected = [row for row in rows if self._selected_row(row.dir)]
            for i, row in enumerate(selected):
                if self.app:
                    self.app.check_stop()
                self._read_ahead(selected, i)
                self._row(tree, row)
            self.apply_dir_meta(tree)
        finally:
            self.reader.close()
            tree.close()
        self.result.bytes_fetched = self.repo.bytes_read
        return self.result

    def _row(self, tree: SafeTree, row) -> None:
        if row.dir not in self.made:
            self.fail(row.dir, "no directory entry in the catalog leads to this directory: not restored",
                      damage=True)
            return
        try:
            entries = self._entries(row)
        except (CorruptObject, DmError) as exc:
            self.fail(row.dir, f"the directory's page cannot be read: {exc}", damage=True)
            return
        try:
            fd = tree.dir_fd(row.dir)
        except (RestoreError, CorruptObject, OSError) as exc:
            self.fail(row.dir, getattr(exc, "message", None) or str(exc), damage=isinstance(exc, CorruptObject))
            return
        for e in entries:
            path_rel = f"{row.dir}/{e.name}" if row.dir else e.name
            if self.only_dir_files and row.dir == self.prefix and e.type == "d" and e.name not in ("cur", "new", "tmp"):
                continue
            try:
                check_name(e.name)
                if e.type == "f" and is_transient(e.name):
                    continue            # a Dovecot lock or temp file captured by an older release
                self.write_entry(fd, path_rel, e)
            except CorruptObject as exc:
                self.fail(path_rel, str(exc), damage=True)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise RestoreError(f"the restore destination {self.dest} is full ({exc.strerror}) at "
                                       f"{path_rel}: free space and run the same restore with --resume") from None
                self.fail(path_rel, exc.strerror or str(exc), damage=False)
            except RestoreError as exc:
                self.fail(path_rel, str(exc), damage=False)
            fd = tree.dir_fd(row.dir)

    def _read_ahead(self, rows, i: int) -> None:
        """Keep the reader opening, on its worker, the blocks of the files about to be written
        (of ``rows[i]`` and the directories after it, each page looked at once), while this
        thread writes. A page that cannot be read is left to ``_row`` to report."""
        self._ahead_next = max(self._ahead_next, i)
        while (self._ahead_next < len(rows) and self._ahead_next <= i + 16
               and self.reader.queued_ahead() < 2 * PREFETCH_BLOCKS):
            row = rows[self._ahead_next]
            self._ahead_next += 1
            try:
                page = self.repo.page(self.ref.chain, row)
            except (CorruptObject, DmError):
                continue
            self.reader.prefetch(self.ref.chain, [x for e in page if e.type == "f" and e.extents for x in e.extents])

    def _entries(self, row) -> list[Entry]:
        """The row's entries, one per name, and one per base name in a Maildir folder."""
        entries = self.repo.page(self.ref.chain, row)
        by_name: dict[str, Entry] = {}
        clash: set[str] = set()
        for e in entries:
            old = by_name.get(e.name)
            if old is not None and old.type != e.type:
                clash.add(e.name)       # a directory and a symlink under one name: forged, not a race
            if old is None or e.mtime_ns > old.mtime_ns:
                by_name[e.name] = e
        for name in sorted(clash):
            del by_name[name]
            self.fail(f"{row.dir}/{name}" if row.dir else name,
                      "the catalog holds this name twice with different types: refused", damage=True)
        dups = len(entries) - len(by_name) - sum(1 for e in entries if e.name in clash)
        if dups:
            self.warn(f"{row.dir or '/'}: the catalog holds {dups} name(s) twice; "
                      "one copy of each was restored (run `dmbackup verify`)")
        entries = sorted(by_name.values(), key=lambda e: e.name)
        folder, _, sub = row.dir.rpartition("/")
        if sub in ("new", "cur") or (row.dir in ("new", "cur") and not folder):
            if row.dir not in self._drop:
                self._plan_folder(folder if sub in ("new", "cur") else "", row.dir, entries)
            drop = self._drop.pop(row.dir, set())
            if drop:
                entries = [e for e in entries if not (e.type == "f" and e.name in drop)]
        return entries

    def _plan_folder(self, folder: str, rel: str, entries: list[Entry]) -> None:
        """Decide, for a Maildir folder, which name of a message seen twice is restored."""
        subs = {}
        for sub in ("new", "cur"):
            srel = f"{folder}/{sub}" if folder else sub
            if srel == rel:
                subs[sub] = (srel, entries)
            elif srel in self._rows_by_dir and self._selected_row(srel):
                try:
                    subs[sub] = (srel, self.repo.page(self.ref.chain, self._rows_by_dir[srel]))
                except (CorruptObject, DmError):
                    continue
        seen: dict[str, tuple[str, str, Entry]] = {}
        drop: dict[str, set[str]] = {srel: set() for srel, _ in subs.values()}
        for sub in ("new", "cur"):
            if sub not in subs:
                continue
            srel, ents = subs[sub]
            for e in ents:
                if e.type != "f":
                    continue
                b = base_name(e.name)
                prev = seen.get(b)
                if prev is None:
                    seen[b] = (sub, srel, e)
                    continue
                rank = lambda s, x: (s == "cur", _flag_count(x.name), x.name)   # noqa: E731
                if rank(sub, e) > rank(prev[0], prev[2]):
                    drop[prev[1]].add(prev[2].name)
                    seen[b] = (sub, srel, e)
                else:
                    drop[srel].add(e.name)
                self.warn(f"{folder or '/'}: message {b} is in the catalog under two names; "
                          f"restored as {seen[b][2].name} (run `dmbackup verify`)")
        for srel, names in drop.items():
            self._drop[srel] = names

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
                        self.made.add(rel)
                        if i == len(parts) - 1:
                            found_self = True
        if not found_self:
            raise UsageError(f"{self.prefix!r} is not in snapshot {self.ref.id}: see the snapshot's mailboxes "
                             "with `dmbackup snapshots --json` or restore without a selection")

    def unnumbered(self, folder: str, uidlist: bytes) -> bool:
        """Does this folder hold a message its uidlist gives no UID (delivered to new/ while the
        uidlist was locked, or by Postfix directly)? A Dovecot serving the restored folder
        hands such messages the next UIDs in its own order; the live server handed out the same
        UIDs in another, so without a gap a client could see one message's UID on another."""
        from dmbackup.engine.dovecot import uidlist_bases

        listed = uidlist_bases(uidlist)
        for sub in ("new", "cur"):
            rel = f"{folder}/{sub}" if folder else sub
            row = self._rows_by_dir.get(rel)
            if row is None:
                continue
            try:
                entries = self.repo.page(self.ref.chain, row)
            except (CorruptObject, DmError):
                continue
            if any(x.type == "f" and base_name(x.name) not in listed for x in entries):
                return True
        return False
