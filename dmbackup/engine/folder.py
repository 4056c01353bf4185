"""Capturing one Maildir folder: its new/ and cur/ together, each message once.

A live store renames messages while it is read (a flag set, new/ -> cur/, an expunge), and
readdir makes no promise then: a message can be listed twice or not at all. So a folder's
new/ and cur/ are written together, once every message of both is known: a message seen under
two names is written under one (the name that exists now; failing that, the one renamed
last), the directories are listed again until no message the first listing missed turns up,
and a message captured and then expunged or moved away before the folder's dovecot-uidlist
was read is left out (Dovecot serving the restored folder would give it a new UID, one the
live server may have handed to another message).
"""

from __future__ import annotations

import os
import stat
import time

from dmbackup.archive.catalog import Entry, PageRow
from dmbackup.engine.filecapture import VANISHED, join
from dmbackup.source import mailstore


def unchanged_row(pv, scan: mailstore.DirScan) -> PageRow | None:
    """The parent's row for a cur/ or new/ that provably did not change since the parent.

    Messages are immutable and every change to a message directory (delivery, flag
    rename, expunge, move) changes the directory's mtime. A directory whose mtime and
    entry count equal the parent's, with that mtime settled before the parent started
    (``ParentView.settled``: git's "racy" rule, timestamps are coarse), is taken over without
    matching its files one by one. Metadata-only changes of a message file (chmod) inside such
    a directory are picked up by the next full backup. (dmbackup.engine.dirrecord applies the
    same rule from the local record, without reading the folder's page.)
    """
    if pv is None or not scan.maildir_sub or scan.others or scan.dirs:
        return None
    prow = pv.rows.get(scan.rel)
    if prow is None or prow.entries != len(scan.files) + len(scan.links):
        return None
    folder, _, name = scan.rel.rpartition("/")
    pdir = pv.dir_entry(folder, name)
    if pdir is None or pdir.mtime_ns != scan.st.st_mtime_ns or not pv.settled(scan.st.st_mtime_ns):
        return None
    return prow


class Folder:
    """One Maildir folder being captured by ``cap`` (a dmbackup.engine.capture.Capture)."""

    def __init__(self, cap, rel: str, mbox: str, fds: dict[str, int]):
        self.cap = cap
        self.rel, self.mbox, self.fds = rel, mbox, fds
        self.scans: dict[str, mailstore.DirScan] = {}
        self.fast: dict[str, PageRow] = {}                    # subs taken over from the parent
        self.entries: dict[str, list[tuple[Entry, int]]] = {}  # sub -> [(message, ctime)]
        self.other: dict[str, list[Entry]] = {}               # sub -> dirs and links in it
        self.by_base: dict[str, Entry] | None = None
        self.failed: set[str] = set()                         # base names that could not be read
        self.vanished: dict[str, str] = {}                    # base name -> its warning

    def fd(self, sub: str) -> int:
        return self.fds.get(sub, -1)

    def sub_rels(self) -> list[str]:
        return [join(self.rel, "new"), join(self.rel, "cur")]

    def blocks(self) -> list[int]:
        """Blocks the captured messages use (not released before they are queued)."""
        return [x[0] for lst in self.entries.values() for e, _ in lst if e.extents for x in e.extents if len(x) == 3]

    # --- capturing -----------------------------------------------------------------------------
    def add(self, scan: mailstore.DirScan) -> None:
        """One of the folder's message directories, as listed."""
        cap = self.cap
        sub = scan.maildir_sub
        self.scans[sub] = scan
        cap.dirs += 1
        if sub not in self.entries:        # nothing relocated into it yet: it may be unchanged
            if scan.names_only:
                row, size = cap.recorded_msgdir(scan) or (None, None)
                if row is not None and row.entries != len(scan.files):   # new/ lost a name to cur/
                    row = None
            else:
                row = unchanged_row(cap.parent_view, scan)
                size = sum(st.st_size for _, st in scan.files) if row is not None else None
            if row is not None:
                cap.count(self.mbox, len(scan.files), size, sub == "cur")
                cap.tally(len(scan.files), size)
                cap.msgdir_bytes[scan.rel] = size
                self.fast[sub] = row
                cap.unchanged_dirs += 1
                return
        if scan.names_only:
            # listed by name only, yet not taken over (a message was relocated into it, or the
            # local record of its bytes does not fit): listed again with stats. A message seen
            # in both new/ and cur/ this way is kept once by flush (_one_per_base).
            mailstore.refill(scan)
        self.other[sub] = cap.dir_and_link_entries(scan)
        self.entries.setdefault(sub, [])
        for name, st in scan.files:
            cap.app.check_stop()
            self.capture_message(sub, name, st)

    def _parent_by_base(self) -> dict[str, Entry]:
        if self.by_base is None:
            self.by_base = {}
            if self.cap.parent_view is not None:
                for sub in ("new", "cur"):
                    for e in self.cap.parent_view.entries(join(self.rel, sub)):
                        self.by_base[mailstore.base_name(e.name)] = e
        return self.by_base

    def capture_message(self, sub: str, name: str, st) -> None:
        cap = self.cap
        base = mailstore.base_name(name)
        prev = self._parent_by_base().get(base)
        got = cap.capture(self.fd(sub), join(self.rel, sub), name, st, prev, message=True)
        if got is None:
            got, sub = self._renamed(base, prev, sub)
            if got is None or got is VANISHED:
                msg = f"message vanished during the backup (expunged or moved): {join(self.rel, sub)}/{name}"
                if got is None and base not in self.vanished:
                    self.vanished[base] = msg
                    cap.warn(msg)
                self.failed.add(base)
                return
        elif got is VANISHED:
            self.failed.add(base)
            return
        if base in self.vanished:          # it turned up again under another name: not lost after all
            cap.warnings.remove(self.vanished.pop(base))
        self.failed.discard(base)
        entry, ctime = got
        if sub in self.fast:                  # relocated into a directory taken over from the parent
            row = self.fast.pop(sub)
            self.other[sub] = [e for e in cap.parent_view.page_entries(row) if e.type != "f"]
            self.entries[sub] = [(e, 0) for e in cap.parent_view.page_entries(row) if e.type == "f"]
            cap.unchanged_dirs -= 1
        self.entries.setdefault(sub, []).append((entry, ctime))

    def _renamed(self, base: str, prev, sub: str):
        """A message renamed since the listing: (what capturing it under its new name in this
        folder gave, the directory it is in now), or (what the last try gave, ``sub``)."""
        got = None
        for other in ("cur", "new"):
            new_name = mailstore.find_base(self.fd(other), base)
            if new_name is None:
                continue
            try:
                nst = os.stat(new_name, dir_fd=self.fd(other), follow_symlinks=False)
            except OSError:
                continue
            got = self.cap.capture(self.fd(other), join(self.rel, other), new_name, nst, prev, message=True)
            if got is not None and got is not VANISHED:
                return got, other
        return got, sub

    # --- writing its pages ---------------------------------------------------------------------
    def flush(self) -> None:
        """Queue the folder's new/ and cur/ pages: exactly one file per base name, and only
        messages that still exist once the folder's dovecot-uidlist has been read.

        A message captured and then expunged or moved away before the uidlist was read is not
        kept: the folder's index files (read just before the uidlist) record its expunge, and a
        Dovecot serving the restored folder would give the "reappeared" file a new UID, one the
        live server may have handed to another message."""
        cap = self.cap
        present = self._relist()
        if present is not None:
            present |= self._confirm_gone(present)
        keep = self._one_per_base(present)
        for sub in ("new", "cur"):
            if sub in self.fast:
                cap.pages.rows.append(self.fast[sub])
                continue
            if sub not in keep:
                continue
            files = keep[sub]
            size = sum(e.size for e in files)
            cap.count(self.mbox, len(files), size, sub == "cur")
            cap.msgdir_bytes[join(self.rel, sub)] = size
            names = {e.name for e in files}
            entries = files + [e for e in self.other.get(sub, []) if e.name not in names]
            # both pages are queued before blocks are released: the held folder no longer
            # pins its blocks, the pending pages do
            cap.pages.queue(join(self.rel, sub), entries, maildir=True, finalize=False)
        cap.pages.finalize()

    def _one_per_base(self, present: set[str] | None) -> dict[str, list[Entry]]:
        """sub -> the messages written there: those still ``present`` (all when None), each
        base name once; what is left out is taken off the run's counts."""
        cap = self.cap
        cands: dict[str, list[tuple[str, Entry, int]]] = {}     # base name -> (sub, entry, ctime)
        for sub, lst in self.entries.items():
            for entry, ctime in lst:
                b = mailstore.base_name(entry.name)
                if present is not None and b not in present:
                    cap.files -= 1
                    cap.bytes -= entry.size
                    cap.gone += 1
                    continue
                cands.setdefault(b, []).append((sub, entry, ctime))
        keep: dict[str, list[Entry]] = {sub: [] for sub in self.entries}
        for base, cs in cands.items():
            best = cs[0]
            if len(cs) > 1:
                live = [c for c in cs if self._still_there(c[0], c[1].name)]
                # the name that exists now; failing that, the one renamed last (rename sets ctime)
                best = max(live or cs, key=lambda c: (c[2], c[0] == "cur", c[1].name))
                for c in cs:
                    if c is not best:
                        cap.files -= 1
                        cap.bytes -= c[1].size
                cap.duplicates += len(cs) - 1
            keep[best[0]].append(best[1])
        return keep

    def _confirm_gone(self, present: set[str]) -> set[str]:
        """Of the captured messages the last listing did not show, those that still exist.

        A listing taken while messages are renamed can miss one, so "gone" must be certain
        before a message is left out: its captured name is looked up, and two more listings
        of both directories must miss it too."""
        missing = {mailstore.base_name(e.name): (sub, e.name) for sub, lst in self.entries.items()
                   for e, _ in lst if mailstore.base_name(e.name) not in present}
        found: set[str] = set()
        for b, (sub, name) in missing.items():
            if self._still_there(sub, name):
                found.add(b)
        for _ in range(2):
            if len(found) == len(missing):
                break
            for sub in ("new", "cur"):
                if self.fd(sub) < 0:
                    continue
                try:
                    with os.scandir(self.fd(sub)) as it:
                        found |= {b for e in it if (b := mailstore.base_name(e.name)) in missing}
                except OSError:
                    pass
        return found

    def _still_there(self, sub: str, name: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(name, dir_fd=self.fd(sub), follow_symlinks=False).st_mode)
        except (OSError, ValueError):
            return False

    def _relist(self) -> set[str] | None:
        """List new/ and cur/ again until no message the first listing missed turns up.

        readdir makes no promise while entries are renamed in the same directory: a message
        being flagged can be returned twice, or not at all. A directory whose mtime did not
        move since it was listed (and was older than the listing by the racy margin) was
        listed consistently; any other is listed again, up to three times, and every base
        name not captured yet is captured.

        Returns the base names present in the folder at the last listing, or None when no
        message directory changed since it was listed (nothing can have gone)."""
        present: dict[str, set[str]] = {}
        for _ in range(3):
            found = False
            for sub in ("new", "cur"):
                scan = self.scans.get(sub)
                if scan is None or sub in self.fast or scan.fd < 0:
                    continue
                now = os.fstat(scan.fd)
                if (now.st_mtime_ns == scan.st.st_mtime_ns
                        and scan.listed_ns - now.st_mtime_ns > 2_000_000_000):
                    continue
                again = mailstore.DirScan(scan.rel, now, fd=scan.fd, listed_ns=time.time_ns())
                mailstore.fill(again)
                present[sub] = {mailstore.base_name(n) for n, _ in again.files}
                scan.st, scan.listed_ns = again.st, again.listed_ns
                have = {mailstore.base_name(e.name) for lst in self.entries.values() for e, _ in lst}
                have |= self.failed - set(self.vanished)      # unreadable ones were warned about once
                for name, st in again.files:
                    if mailstore.base_name(name) not in have:
                        self.capture_message(sub, name, st)
                        found = True
            if not found:
                break
        if not present:
            return None
        out: set[str] = set()
        for sub in ("new", "cur"):
            if sub in present:
                out |= present[sub]
            elif sub not in self.fast:    # quiet since its listing: what was captured there is there
                # (a directory taken over from the parent holds no candidates, and nothing
                # moved into it: its mtime did not change)
                out |= {mailstore.base_name(e.name) for e, _ in self.entries.get(sub, [])}
        return out
