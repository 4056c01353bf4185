"""Capturing the mail store: the walk, directory by directory, into pages and blocks.

Directories come from ``mailstore.walk`` in tree order. A block is never shared between two
mailboxes: the block writer is flushed when the top-level ``<domain>/<user>`` changes, so
restoring one mailbox reads only its blocks. A Maildir folder's message directories are held
(dmbackup.engine.folder) until the folder's own directory, with its dovecot-uidlist, has been
read, or the walk has left the folder; every other directory's page is queued at once
(dmbackup.engine.pages).
"""

from __future__ import annotations

import os
import stat

from dmbackup.archive.catalog import Entry
from dmbackup.engine import dirrecord
from dmbackup.engine.filecapture import VANISHED, FileCapture, join
from dmbackup.engine.folder import Folder
from dmbackup.source import mailstore


class Capture(FileCapture):
    def __init__(self, app, writer, pages, parent_view):
        super().__init__(app, writer, pages, parent_view)
        self.dirs = 0
        self.held: Folder | None = None       # the Maildir folder whose new/ and cur/ are being captured
        self.duplicates = 0                   # second names of one message seen by the listing, dropped
        self.gone = 0                         # captured, then expunged or moved away before the uidlist
        self.unchanged_dirs = 0               # message directories taken over from the parent
        self.mailbox = None
        self.mailboxes: dict[str, list[int]] = {}   # domain/user -> [messages, bytes, folders]
        self.dir_record: dict | None = None   # the local record of the parent's directories (dmbackup.engine.dirrecord)
        self.msgdir_bytes: dict[str, int] = {}  # this run's, for the next one's record
        self.subdir_mtimes: dict[str, int] = {}  # rel of a cur/ or new/ -> its mtime in its folder's page

    def walk(self, root: str) -> None:
        for scan in mailstore.walk(root, self.warn, quick=self.quick if self.dir_record else None):
            self.app.check_stop()
            self._directory(scan)
        self.flush_folder()

    def quick(self, rel: str, st) -> int | None:
        """How many files the message directory ``rel`` holds, when it may be listed by name
        only: the local record says it is unchanged since the parent (dmbackup.engine.dirrecord)."""
        got = dirrecord.unchanged_msgdir(self.dir_record, self.parent_view, rel, st)
        return got[0].entries if got is not None else None

    def recorded_msgdir(self, scan: mailstore.DirScan):
        """(the parent's row, bytes) of a message directory listed by name only, or None."""
        return dirrecord.unchanged_msgdir(self.dir_record, self.parent_view, scan.rel, scan.st)

    def held_blocks(self) -> list[int]:
        """Blocks the held folder's captured messages use (for the page queue)."""
        return self.held.blocks() if self.held is not None else []

    def flush_folder(self) -> None:
        """Queue the held folder's pages (dmbackup.engine.folder) and let go of it."""
        h, self.held = self.held, None
        if h is not None:
            h.flush()

    def count(self, mbox: str, files: int, size: int, cur: bool) -> None:
        stats = self.mailboxes.setdefault(mbox, [0, 0, 0])
        stats[0] += files
        stats[1] += size
        stats[2] += cur

    def mailbox_stats(self) -> list[dict]:
        """Per-domain mailboxes with message counts and bytes, from this run's own walk."""
        doms: dict[str, list] = {}
        for key, (n, size, folders) in sorted(self.mailboxes.items()):
            if key.count("/") != 1:
                continue
            dom, user = key.split("/")
            doms.setdefault(dom, []).append({"user": user, "address": f"{user}@{dom}", "messages": n,
                                             "bytes": size, "folders": folders})
        return [{"domain": d, "mailboxes": boxes, "messages": sum(b["messages"] for b in boxes),
                 "bytes": sum(b["bytes"] for b in boxes)} for d, boxes in doms.items()]

    def _directory(self, scan: mailstore.DirScan) -> None:
        mbox = mailstore.mailbox_key(scan.rel)
        if mbox != self.mailbox:
            self.writer.flush()
            self.mailbox = mbox
        held = self.held
        if scan.maildir_sub:
            folder = scan.rel.rpartition("/")[0]
            if held is not None and held.rel != folder:
                self.flush_folder()
            if self.held is None:
                self.held = Folder(self, folder, mbox, scan.siblings)
            self.held.add(scan)
            return
        own_files = held is not None and scan.rel == held.rel
        if held is not None and not own_files and not any(
                scan.rel == p or scan.rel.startswith(f"{p}/") for p in held.sub_rels() + [join(held.rel, "tmp")]):
            self.flush_folder()

        for name, st in scan.dirs:
            if name in ("cur", "new"):
                self.subdir_mtimes[join(scan.rel, name)] = st.st_mtime_ns
        if self._same_as_recorded(scan):
            if own_files:
                self.flush_folder()
            return
        parent_entries: dict[str, Entry] = {}
        if self.parent_view is not None and scan.files and not scan.skip_files:
            parent_entries = {e.name: e for e in self.parent_view.entries(scan.rel)}
        self.dirs += 1
        entries = self.dir_and_link_entries(scan)
        if not scan.skip_files:
            names = {e.name for e in entries}
            for name, st in scan.files:
                self.app.check_stop()
                if name in names:
                    continue
                got = self.capture(scan.fd, scan.rel, name, st, parent_entries.get(name), message=False)
                if got is not None and got is not VANISHED:
                    entries.append(got[0])
                    names.add(name)
        self.pages.queue(scan.rel, entries, maildir=False)
        if own_files:
            # its dovecot-uidlist has just been read: now the folder's messages can be settled
            self.flush_folder()

    def _same_as_recorded(self, scan: mailstore.DirScan) -> bool:
        """Take over the parent's page of a directory (not a message directory) whose listing is
        the one the local record has for that page (dmbackup.engine.dirrecord): every file the
        same size, mtime, inode, mode and owner, so capture would rebuild that very page."""
        if self.dir_record is None or scan.skip_files or scan.links or scan.others:
            return False
        prow = self.parent_view.rows.get(scan.rel)
        listing = dirrecord.listing_of_scan(scan.files, scan.dirs)
        if not dirrecord.same_listing(self.dir_record, prow, listing):
            return False
        self.dirs += 1
        self.tally(len(scan.files), sum(st.st_size for _, st in scan.files))
        self.pages.rows.append(prow)
        self.pages.listings[scan.rel] = listing
        return True

    def dir_and_link_entries(self, scan: mailstore.DirScan) -> list[Entry]:
        entries = [Entry(name, "d", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, 0)
                   for name, st in scan.dirs]
        for name, st in scan.links:
            try:
                link = os.readlink(name, dir_fd=scan.fd)
            except OSError:
                self.warn(f"symlink vanished during the scan: {scan.rel}/{name}")
                continue
            entries.append(Entry(name, "l", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                                 len(link), link=link))
        for name in scan.others:
            self.warn(f"not a file, directory or symlink, skipped: {scan.rel}/{name}")
        return entries
