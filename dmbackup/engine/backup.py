"""Backing up the mail store into a repository: full or incremental (format: dmbackup.archive).

Commit protocol: volumes, then the pages object, then (optionally) the config bundle are
written under temporary names and renamed; the target is synced; the catalog is written last.
Until the catalog exists the snapshot does not exist; any failure aborts the writers (their
temporary files are removed) and the next run deletes whatever a killed run left behind.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from datetime import timedelta

from dmbackup import utctime
from dmbackup.archive import layout
from dmbackup.source import mailstore
from dmbackup.archive import BLOCK_SIZE
from dmbackup.archive.blocks import BlockWriter
from dmbackup.archive.contentindex import IndexBuilder
from dmbackup.archive.catalog import (
    Entry,
    Header,
    PageRow,
    compress,
    encode_catalog,
    encode_index,
    encode_page,
    make_delta,
    tree_order,
    page_aad,
)
from dmbackup.archive.repository import Repository, SnapshotRef
from dmbackup.archive.layout import snap_time
from dmbackup.errors import CorruptObject, DmError, NoSpace, SourceError, EXIT_OK, EXIT_WARNING

MiB = 1 << 20


@dataclass
class BackupResult:
    snapshot_id: str
    chain: str
    kind: str
    files: int
    bytes: int
    stored_bytes: int
    time: str
    target: str
    warnings: list[str] = field(default_factory=list)
    config_bundle: str | None = None
    unchanged_dirs: int = 0
    duplicates: int = 0
    gone: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_WARNING if self.warnings else EXIT_OK

    def as_dict(self) -> dict:
        return {"id": self.snapshot_id, "chain": self.chain, "kind": self.kind, "time": self.time,
                "files": self.files, "bytes": self.bytes, "stored_bytes": self.stored_bytes,
                "target": self.target, "warnings": self.warnings, "config_bundle": self.config_bundle,
                "unchanged_dirs": self.unchanged_dirs, "duplicate_names_dropped": self.duplicates,
                "expunged_during_backup": self.gone,
                "exit_code": self.exit_code}


def open_repository(app, target, target_name: str, *, require_enrolled: bool = True) -> Repository:
    """The repository, unlocked with the config's mode and checked against this machine's
    enrolment (key fingerprint, repo.json MAC, newest snapshot seen): dmbackup.archive.trust."""
    from dmbackup.archive.trust import open_trusted

    return open_trusted(app, target, target_name, require_enrolled=require_enrolled)


class ParentView:
    """The parent snapshot's tree and the chain's content index, loaded lazily."""

    def __init__(self, repo: Repository, chain_snaps: list[SnapshotRef], parent: SnapshotRef | None):
        self.repo = repo
        self.parent = parent
        self.chain_snaps = chain_snaps
        self.rows: dict[str, PageRow] = {}
        self._index: dict | None = None
        if parent is not None:
            rows, _ = repo.catalog_body(parent)
            self.table_depth = repo.table_depth(parent)

            self.start_ns = int(utctime.parse_time(parent.header.time).timestamp()) * 1_000_000_000
            for r in rows:
                self.rows[r.dir] = r

    def entries(self, rel: str) -> list[Entry]:
        row = self.rows.get(rel)
        return self.repo.page(self.parent.chain, row) if row is not None else []

    def page_entries(self, row: PageRow) -> list[Entry]:
        return self.repo.page(self.parent.chain, row)

    def dir_entry(self, rel: str, name: str) -> Entry | None:
        for e in self.entries(rel):
            if e.name == name:
                return e if e.type == "d" else None
        return None

    def lookup(self, digest: str):
        if self._index is None:
            self._index = [i for i in (self.repo.content_index(s) for s in self.chain_snaps) if i is not None]
        for idx in reversed(self._index):
            ext = idx.get(digest)
            if ext is not None:
                return ext
        return None


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


_VANISHED = object()      # a file that could not be captured (the run already warned)


class _Folder:
    """One Maildir folder being captured: its new/ and cur/ are written together, once every
    message of both is known, so a message seen under two names is written under one."""

    def __init__(self, rel: str, mbox: str, fds: dict[str, int]):
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
        return [_join(self.rel, "new"), _join(self.rel, "cur")]


class BackupRun:
    def __init__(self, app, repo: Repository, target_name: str, *, parent: SnapshotRef | None,
                 chain: str, snap: str, seq: int, now, job_name: str | None):
        self.app, self.repo, self.target_name = app, repo, target_name
        self.log = app.log
        self.root = app.config.source.mail_store
        self.chain, self.snap, self.seq, self.now = chain, snap, seq, now
        self.job_name = job_name
        chain_snaps = [s for s in repo.snapshots() if s.chain == chain] if parent else []
        self.parent_view = ParentView(repo, chain_snaps, parent) if parent else None
        self.parent = parent
        self.warnings: list[str] = []
        self.files = self.dirs = self.bytes = 0
        self.new_index = IndexBuilder()       # content stored by this run, compact
        self.pending: list[tuple[str, list[Entry], int, bool, int]] = []   # + oldest block used
        self.rows: list[PageRow] = []
        self.held: _Folder | None = None      # the Maildir folder whose new/ and cur/ are being captured
        self.duplicates = 0                   # second names of one message seen by the listing, dropped
        self.gone = 0                         # captured, then expunged or moved away before the uidlist
        self.max_file_size = app.config.source.max_file_size
        self.inode_map: dict[tuple[int, int], tuple[str, list]] = {}
        self.pinned: set[int] = set()         # block seqs a hardlinked file may still refer to
        self.writer = BlockWriter(repo.t, repo.id, chain, snap, repo.keys.data,
                                  min(app.config.volume_size, repo.t.capabilities.max_object_size),
                                  stop_check=app.check_stop,
                                  # incrementals are small: a stronger level costs little CPU
                                  level=3 if parent is None else 9)
        self.pages_writer = None
        self.pages_hash = hashlib.sha256()
        self.mailbox = None
        self.mailboxes: dict[str, list[int]] = {}   # domain/user -> [messages, bytes, folders]
        self.bundle_bytes = 0
        self.unchanged_dirs = 0

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.log.warning("backup_warning", message=msg)

    # --- the walk --------------------------------------------------------------------------
    def run(self) -> BackupResult:
        try:
            root_st = os.lstat(self.root)
        except OSError as exc:
            raise SourceError(f"mail store {self.root} cannot be read ({exc.strerror}): check [source] mail_store") from None
        if not stat.S_ISDIR(root_st.st_mode):
            raise SourceError(f"mail store {self.root} is not a directory: check [source] mail_store")
        try:
            with os.scandir(self.root):
                pass
        except OSError as exc:
            # never commit an empty snapshot of a store we could not read
            raise SourceError(f"mail store {self.root} cannot be listed ({exc.strerror}): "
                              "check its permissions; nothing was committed") from None
        self.pages_writer = self.repo.t.writer(f"chains/{self.chain}/{self.snap}.pages")
        try:
            for scan in mailstore.walk(self.root, self.warn):
                self.app.check_stop()
                self._directory(scan)
            self._flush_folder()
            self.writer.drain()
            self._finalize_pages(force=True)
            volumes = self.writer.finish()
            pages_info = index_info = None
            if self.pages_writer.size:
                self.pages_writer.commit()
                pages_info = {"name": f"{self.snap}.pages", "size": self.pages_writer.size,
                              "sha256": self.pages_hash.hexdigest()}
            else:
                self.pages_writer.abort()
            if self.new_index:
                index_blob = encode_index(self.new_index, self.repo.keys.catalog, self.repo.id, self.chain, self.snap)
                self.new_index = None
                index_info = {"name": f"{self.snap}.index", "size": len(index_blob),
                              "sha256": hashlib.sha256(index_blob).hexdigest()}
                self.repo.t.put(f"chains/{self.chain}/{self.snap}.index", index_blob)
            bundle_name = self._config_bundle()
            self.repo.t.sync()
            table = self._table()
            stored = (sum(v["size"] for v in volumes) + sum(i["size"] for i in (pages_info, index_info) if i)
                      + self.bundle_bytes)
            header = Header(
                id=self.snap, chain=self.chain, seq=self.seq,
                parent=self.parent.id if self.parent else None,
                kind="incremental" if self.parent else "full", what="mail", time=utctime.iso(self.now),
                hostname=self.app.config.hostname, files=self.files, dirs=self.dirs, bytes=self.bytes,
                stored_bytes=stored,
                root=[stat.S_IMODE(root_st.st_mode), root_st.st_uid, root_st.st_gid, root_st.st_mtime_ns],
                volumes=volumes, pages=pages_info, index=index_info, config_bundle=bundle_name,
                warnings=len(self.warnings), job=self.job_name)
            body = encode_catalog(header, table, self.warnings, self.repo.keys.catalog, self.repo.id)
            header.stored_bytes = stored + len(body)
            body = encode_catalog(header, table, self.warnings, self.repo.keys.catalog, self.repo.id)
            self.repo.t.put(f"chains/{self.chain}/{self.snap}.catalog", body)
            self.repo.t.sync()
        except BaseException:
            self.writer.abort()
            if self.pages_writer is not None:
                self.pages_writer.abort()
            self._remove_committed()
            raise
        return BackupResult(self.snap, self.chain, header.kind, self.files, self.bytes,
                            header.stored_bytes, header.time, self.target_name, self.warnings,
                            bundle_name, self.unchanged_dirs, self.duplicates, self.gone)

    TABLE_MAX_DEPTH = 30

    def _remove_committed(self) -> None:
        """After a failure: delete what this snapshot already committed (volumes, pages, index,
        bundle), so a full disk does not stay full. Best effort: a vanished target is cleaned
        by the next run (everything here belongs to a snapshot without a catalog)."""
        names = [f"chains/{self.chain}/{v['name']}" for v in self.writer.volumes]
        names += [f"chains/{self.chain}/{self.snap}.pages", f"chains/{self.chain}/{self.snap}.index",
                  f"config/{self.snap}.bundle"]
        for n in names:
            try:
                self.repo.t.delete(n)
            except Exception:   # noqa: BLE001 - the original error is what the user must see
                break

    def _table(self) -> dict:
        """The page table: only the rows that differ from the parent's, unless that is most of them."""
        rows = tree_order(self.rows)
        pv = self.parent_view
        if pv is None or pv.table_depth >= self.TABLE_MAX_DEPTH:
            return {"pages": rows}
        current = {r.dir for r in rows}
        changed = [r for r in rows if (p := pv.rows.get(r.dir)) is None or p.encode() != r.encode()]
        removed = sorted(d for d in pv.rows if d not in current)
        if len(changed) + len(removed) > len(rows) // 2 + 8:
            return {"pages": rows}
        return {"base": self.parent.id, "depth": pv.table_depth + 1, "changed": changed, "removed": removed}

    def _config_bundle(self) -> str | None:
        """Every mail snapshot carries the config bundle: one disk restores the whole appliance."""
        from dmbackup.engine.configbundle import make_config_bundle

        name = f"config/{self.snap}.bundle"
        try:
            b = make_config_bundle(self.app.config, key=self.repo.keys.bundle,
                                   context=layout.bundle_aad(self.repo.id, self.snap),
                                   time=self.now, domains=self.mailbox_stats())
        except DmError as exc:     # the mail snapshot stays useful without it
            self.warn(f"config bundle not included: {exc}")
            return None
        for w in b.manifest.get("warnings", []):
            self.warn(f"config bundle: {w}")
        self.repo.t.put(name, b.data)
        self.bundle_bytes = len(b.data)
        return name

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

    def _unchanged_message_dir(self, scan: mailstore.DirScan) -> PageRow | None:
        """The parent's row for a cur/ or new/ that provably did not change since the parent.

        Messages are immutable and every change to a message directory (delivery, flag
        rename, expunge, move) changes the directory's mtime. A directory whose mtime and
        entry count equal the parent's, with that mtime at least 2 s older than the parent's
        start (git's "racy" rule: timestamps are coarse), is taken over without matching its
        files one by one. Metadata-only changes of a message file (chmod) inside such a
        directory are picked up by the next full backup.
        """
        pv = self.parent_view
        if pv is None or not scan.maildir_sub or scan.others or scan.dirs:
            return None
        prow = pv.rows.get(scan.rel)
        if prow is None or prow.entries != len(scan.files) + len(scan.links):
            return None
        folder, _, name = scan.rel.rpartition("/")
        pdir = pv.dir_entry(folder, name)
        if pdir is None or pdir.mtime_ns != scan.st.st_mtime_ns:
            return None
        if scan.st.st_mtime_ns >= pv.start_ns - 2_000_000_000:
            return None
        return prow

    def _count(self, mbox: str, files: int, size: int, cur: bool) -> None:
        stats = self.mailboxes.setdefault(mbox, [0, 0, 0])
        stats[0] += files
        stats[1] += size
        stats[2] += cur

    def _directory(self, scan: mailstore.DirScan) -> None:
        mbox = mailstore.mailbox_key(scan.rel)
        if mbox != self.mailbox:
            self.writer.flush()
            self.mailbox = mbox
        held = self.held
        if scan.maildir_sub:
            folder = scan.rel.rpartition("/")[0]
            if held is not None and held.rel != folder:
                self._flush_folder()
            if self.held is None:
                self.held = _Folder(folder, mbox, scan.siblings)
            self._message_dir(self.held, scan)
            return
        own_files = held is not None and scan.rel == held.rel
        if held is not None and not own_files and not any(
                scan.rel == p or scan.rel.startswith(f"{p}/") for p in held.sub_rels() + [_join(held.rel, "tmp")]):
            self._flush_folder()

        parent_entries: dict[str, Entry] = {}
        if self.parent_view is not None:
            parent_entries = {e.name: e for e in self.parent_view.entries(scan.rel)}
        self.dirs += 1
        entries = self._dir_and_link_entries(scan)
        if not scan.skip_files:
            names = {e.name for e in entries}
            for name, st in scan.files:
                self.app.check_stop()
                if name in names:
                    continue
                got = self._capture(scan.fd, scan.rel, name, st, parent_entries.get(name), message=False)
                if got is not None and got is not _VANISHED:
                    entries.append(got[0])
                    names.add(name)
        self._queue_page(scan.rel, entries, maildir=False)
        if own_files:
            # its dovecot-uidlist has just been read: now the folder's messages can be settled
            self._flush_folder()

    def _dir_and_link_entries(self, scan: mailstore.DirScan) -> list[Entry]:
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

    def _queue_page(self, rel: str, entries: list[Entry], maildir: bool, *, finalize: bool = True) -> None:
        entries.sort(key=lambda e: e.name)
        seqs = [x[0] for e in entries if e.type == "f" and e.extents for x in e.extents if len(x) == 3]
        max_seq = max(seqs, default=-1)
        self.pending.append((rel, entries, max_seq, maildir, min(seqs, default=max_seq)))
        if finalize:
            self._finalize_pages()

    # --- message directories: one Maildir folder's new/ and cur/ are captured together ---------
    def _message_dir(self, h: "_Folder", scan: mailstore.DirScan) -> None:
        sub = scan.maildir_sub
        h.scans[sub] = scan
        self.dirs += 1
        if sub not in h.entries:        # nothing relocated into it yet: it may be unchanged
            row = self._unchanged_message_dir(scan)
            if row is not None:
                size = sum(st.st_size for _, st in scan.files)
                self._count(h.mbox, len(scan.files), size, sub == "cur")
                self.files += len(scan.files)
                self.bytes += size
                self.app.progress.update(len(scan.files), size)
                h.fast[sub] = row
                self.unchanged_dirs += 1
                return
        h.other[sub] = self._dir_and_link_entries(scan)
        h.entries.setdefault(sub, [])
        for name, st in scan.files:
            self.app.check_stop()
            self._capture_message(h, sub, name, st)

    def _parent_by_base(self, h: "_Folder") -> dict[str, Entry]:
        if h.by_base is None:
            h.by_base = {}
            if self.parent_view is not None:
                for sub in ("new", "cur"):
                    for e in self.parent_view.entries(_join(h.rel, sub)):
                        h.by_base[mailstore.base_name(e.name)] = e
        return h.by_base

    def _capture_message(self, h: "_Folder", sub: str, name: str, st) -> None:
        base = mailstore.base_name(name)
        prev = self._parent_by_base(h).get(base)
        got = self._capture(h.fd(sub), _join(h.rel, sub), name, st, prev, message=True)
        if got is None:
            # renamed since the listing: find it under its new name in this folder
            for other in ("cur", "new"):
                new_name = mailstore.find_base(h.fd(other), base)
                if new_name is None:
                    continue
                try:
                    nst = os.stat(new_name, dir_fd=h.fd(other), follow_symlinks=False)
                except OSError:
                    continue
                got = self._capture(h.fd(other), _join(h.rel, other), new_name, nst, prev, message=True)
                if got is not None and got is not _VANISHED:
                    sub = other
                    break
            if got is None or got is _VANISHED:
                msg = f"message vanished during the backup (expunged or moved): {_join(h.rel, sub)}/{name}"
                if got is None and base not in h.vanished:
                    h.vanished[base] = msg
                    self.warn(msg)
                h.failed.add(base)
                return
        elif got is _VANISHED:
            h.failed.add(base)
            return
        if base in h.vanished:          # it turned up again under another name: not lost after all
            self.warnings.remove(h.vanished.pop(base))
        h.failed.discard(base)
        entry, ctime = got
        if sub in h.fast:                  # relocated into a directory taken over from the parent
            row = h.fast.pop(sub)
            h.other[sub] = [e for e in self.parent_view.page_entries(row) if e.type != "f"]
            h.entries[sub] = [(e, 0) for e in self.parent_view.page_entries(row) if e.type == "f"]
            self.unchanged_dirs -= 1
        h.entries.setdefault(sub, []).append((entry, ctime))

    def _flush_folder(self) -> None:
        """Write the held folder's new/ and cur/ pages: exactly one file per base name, and only
        messages that still exist once the folder's dovecot-uidlist has been read.

        A message captured and then expunged or moved away before the uidlist was read is not
        kept: the folder's index files (read just before the uidlist) record its expunge, and a
        Dovecot serving the restored folder would give the "reappeared" file a new UID, one the
        live server may have handed to another message."""
        h, self.held = self.held, None
        if h is None:
            return
        present = self._relist(h)
        if present is not None:
            present |= self._confirm_gone(h, present)
        # base name -> candidates (sub, entry, ctime)
        cands: dict[str, list[tuple[str, Entry, int]]] = {}
        for sub, lst in h.entries.items():
            for entry, ctime in lst:
                b = mailstore.base_name(entry.name)
                if present is not None and b not in present:
                    self.files -= 1
                    self.bytes -= entry.size
                    self.gone += 1
                    continue
                cands.setdefault(b, []).append((sub, entry, ctime))
        keep: dict[str, list[Entry]] = {sub: [] for sub in h.entries}
        for base, cs in cands.items():
            best = cs[0]
            if len(cs) > 1:
                live = [c for c in cs if self._still_there(h, c[0], c[1].name)]
                # the name that exists now; failing that, the one renamed last (rename sets ctime)
                best = max(live or cs, key=lambda c: (c[2], c[0] == "cur", c[1].name))
                for c in cs:
                    if c is not best:
                        self.files -= 1
                        self.bytes -= c[1].size
                self.duplicates += len(cs) - 1
            keep[best[0]].append(best[1])
        for sub in ("new", "cur"):
            if sub in h.fast:
                self.rows.append(h.fast[sub])
                continue
            if sub not in keep:
                continue
            files = keep[sub]
            self._count(h.mbox, len(files), sum(e.size for e in files), sub == "cur")
            names = {e.name for e in files}
            entries = files + [e for e in h.other.get(sub, []) if e.name not in names]
            # both pages are queued before blocks are released: the held folder no longer
            # pins its blocks, the pending pages do
            self._queue_page(_join(h.rel, sub), entries, maildir=True, finalize=False)
        self._finalize_pages()

    def _confirm_gone(self, h: "_Folder", present: set[str]) -> set[str]:
        """Of the captured messages the last listing did not show, those that still exist.

        A listing taken while messages are renamed can miss one, so "gone" must be certain
        before a message is left out: its captured name is looked up, and two more listings
        of both directories must miss it too."""
        missing = {mailstore.base_name(e.name): (sub, e.name) for sub, lst in h.entries.items()
                   for e, _ in lst if mailstore.base_name(e.name) not in present}
        found: set[str] = set()
        for b, (sub, name) in missing.items():
            if self._still_there(h, sub, name):
                found.add(b)
        for _ in range(2):
            if len(found) == len(missing):
                break
            for sub in ("new", "cur"):
                if h.fd(sub) < 0:
                    continue
                try:
                    with os.scandir(h.fd(sub)) as it:
                        found |= {b for e in it if (b := mailstore.base_name(e.name)) in missing}
                except OSError:
                    pass
        return found

    def _still_there(self, h: "_Folder", sub: str, name: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(name, dir_fd=h.fd(sub), follow_symlinks=False).st_mode)
        except (OSError, ValueError):
            return False

    def _relist(self, h: "_Folder") -> set[str] | None:
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
                scan = h.scans.get(sub)
                if scan is None or sub in h.fast or scan.fd < 0:
                    continue
                now = os.fstat(scan.fd)
                if (now.st_mtime_ns == scan.st.st_mtime_ns
                        and scan.listed_ns - now.st_mtime_ns > 2_000_000_000):
                    continue
                again = mailstore.DirScan(scan.rel, now, fd=scan.fd, listed_ns=time.time_ns())
                mailstore.fill(again)
                present[sub] = {mailstore.base_name(n) for n, _ in again.files}
                scan.st, scan.listed_ns = again.st, again.listed_ns
                have = {mailstore.base_name(e.name) for lst in h.entries.values() for e, _ in lst}
                have |= h.failed - set(h.vanished)      # unreadable ones were warned about once
                for name, st in again.files:
                    if mailstore.base_name(name) not in have:
                        self._capture_message(h, sub, name, st)
                        found = True
            if not found:
                break
        if not present:
            return None
        out: set[str] = set()
        for sub in ("new", "cur"):
            if sub in present:
                out |= present[sub]
            elif sub not in h.fast:    # quiet since its listing: what was captured there is there
                # (a directory taken over from the parent holds no candidates, and nothing
                # moved into it: its mtime did not change)
                out |= {mailstore.base_name(e.name) for e, _ in h.entries.get(sub, [])}
        return out

    def _capture(self, dir_fd: int, rel_dir: str, name: str, st, prev, *, message: bool):
        """Capture one file: (entry, ctime), None when it vanished (ENOENT), or _VANISHED when it
        cannot be captured for another reason (already warned)."""
        if (prev is not None and prev.type == "f" and prev.size == st.st_size
                and prev.mtime_ns == st.st_mtime_ns and (message or prev.ino in (0, st.st_ino))):
            self.files += 1
            self.bytes += st.st_size
            self.app.progress.update(1, st.st_size)
            return Entry(name, "f", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                         st.st_size, st.st_ino, prev.hash, prev.extents), st.st_ctime_ns
        try:
            fd = self._open(name, dir_fd)
        except FileNotFoundError:
            if message:
                return None
            self.warn(f"file vanished during the backup: {rel_dir}/{name}")
            return _VANISHED
        except PermissionError:
            self.warn(f"permission denied reading {rel_dir}/{name}: skipped")
            return _VANISHED
        except OSError as exc:
            self.warn(f"cannot read {rel_dir}/{name} ({exc.strerror}): skipped")
            return _VANISHED
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode):
                self.warn(f"{rel_dir}/{name} is no longer a regular file: skipped")
                return _VANISHED
            if fst.st_size > self.max_file_size:
                self.warn(f"{rel_dir}/{name} is {fst.st_size} bytes, over [source] max_file_size "
                          f"({self.max_file_size}): not stored")
                return _VANISHED
            key = (fst.st_dev, fst.st_ino)
            if fst.st_nlink > 1 and key in self.inode_map:
                digest, extents = self.inode_map[key]
                size = sum(x[-1] for x in extents)
                if size == fst.st_size:
                    self.files += 1
                    self.bytes += size
                    self.app.progress.update(1, size)
                    return Entry(name, "f", stat.S_IMODE(fst.st_mode), fst.st_uid, fst.st_gid, fst.st_mtime_ns,
                                 size, fst.st_ino, digest, extents), fst.st_ctime_ns
            entry, _ = self._store(fd, fst, name)
            if fst.st_nlink > 1:
                self.inode_map[key] = (entry.hash, entry.extents)
                self.pinned.update(x[0] for x in entry.extents if len(x) == 3)
            return entry, fst.st_ctime_ns
        finally:
            os.close(fd)

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

    def _store(self, fd: int, fst, name: str):
        h = hashlib.sha256()
        # read what fstat says (+1 to notice growth), never a 4 MiB buffer per small file
        head = self._read_upto(fd, min(fst.st_size, BLOCK_SIZE) + 1)
        if len(head) > fst.st_size and len(head) <= BLOCK_SIZE:
            head += self._read_upto(fd, BLOCK_SIZE + 1 - len(head))
        if len(head) <= BLOCK_SIZE:
            data = head
            if self.parent_view is None and data:
                # a full backup looks nothing up by content: the block workers hash it
                if len(data) > self.writer.room():
                    self.writer.flush()
                ref, hidx = self.writer.add(data, want_hash=True)
                extents, seq = [ref], ref[0]
                digest = ("pending", ref[0], hidx)
                size = len(data)
                self.files += 1
                self.bytes += size
                self.app.progress.update(1, size)
                return Entry(name, "f", stat.S_IMODE(fst.st_mode), fst.st_uid, fst.st_gid, fst.st_mtime_ns,
                             size, fst.st_ino, digest, extents), seq
            h.update(data)
            digest = h.hexdigest()
            known = self._known(digest, len(data))
            if known is not None:
                extents, seq = known
            else:
                if len(data) > self.writer.room():
                    self.writer.flush()
                extents = [self.writer.add(data)] if data else []
                seq = extents[0][0] if extents else -1
            size = len(data)
        else:
            # Large file: stream it into blocks; hash as we go.
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
        self.files += 1
        self.bytes += size
        self.app.progress.update(1, size)
        e = Entry(name, "f", stat.S_IMODE(fst.st_mode), fst.st_uid, fst.st_gid, fst.st_mtime_ns, size,
                  fst.st_ino, digest, extents)
        return e, seq

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

    # --- pages -----------------------------------------------------------------------------
    def _resolve(self, extents: list) -> list:
        out = []
        for x in extents:
            if len(x) == 3:
                vol, voff, vlen = self.writer.location(x[0])
                out.append([vol, voff, vlen, x[1], x[2]])
            else:
                out.append(x)
        return out

    def _finalize_pages(self, force: bool = False) -> None:
        done = self.writer.written_seq
        keep = []
        for rel, entries, max_seq, maildir, min_seq in self.pending:
            if max_seq > done and not force:
                keep.append((rel, entries, max_seq, maildir, min_seq))
                continue
            for e in entries:
                if e.type == "f" and e.extents and any(len(x) == 3 for x in e.extents):
                    e.extents = self._resolve(e.extents)
                    if isinstance(e.hash, tuple):                 # hashed by a block worker
                        e.hash = self.writer.hash_of(e.hash[1], e.hash[2])
                    self.new_index.add(e.hash, e.extents)    # stored by this run
            self._write_page(rel, entries, maildir)
        self.pending = keep
        # blocks no waiting entry refers to any more: their locations and digests can go
        low = min((m for *_, m in keep if m >= 0), default=done + 1)
        if self.held is not None:              # messages of the folder being captured
            for lst in self.held.entries.values():
                low = min([low] + [x[0] for e, _ in lst if e.extents for x in e.extents if len(x) == 3])
        self.writer.release(min(low, done + 1), self.pinned)

    def _write_page(self, rel: str, entries: list[Entry], maildir: bool) -> None:
        """Reuse the parent's row if unchanged; else an inline delta on the parent's stored base
        page while the accumulated changes stay small; else store a new full page."""
        plain = encode_page(entries)
        digest = hashlib.sha256(plain).hexdigest()[:32]
        prow = self.parent_view.rows.get(rel) if self.parent_view else None
        if prow is not None and prow.sha256 == digest:
            self.rows.append(prow)
            return
        if prow is not None:
            base = self.repo.page_at(self.chain, prow.owner, prow.offset, prow.length, rel)
            delta = make_delta(base, entries, maildir)
            if delta.size <= max(16, len(entries) // 4):
                self.rows.append(PageRow(rel, prow.owner, prow.offset, prow.length, digest, len(entries),
                                         delta if delta.size else None))
                return
        offset = self.pages_writer.size
        sealed = self.repo.keys.catalog.seal(compress(plain), page_aad(self.repo.id, self.chain, self.snap, offset))
        self.pages_writer.write(sealed)
        self.pages_hash.update(sealed)
        self.rows.append(PageRow(rel, self.snap, offset, len(sealed), digest, len(entries)))


def _store_size(root: str) -> int:
    """Bytes the store really holds: allocated blocks, so a sparse file planted by a mail user
    (8 TiB of holes) does not make every full backup fail its space check."""
    total = 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            st = e.stat(follow_symlinks=False)
                            total += min(st.st_size, st.st_blocks * 512)
                    except OSError:
                        pass
        except OSError:
            pass
    return total


def backup_mail(app, target_name: str, *, full: bool = False, job=None) -> BackupResult:
    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name)
        repo.lock("backup")
        try:
            repo.cleanup_leftovers(app.log)
            snaps = repo.snapshots()
            parent = snaps[-1] if snaps else None
            if parent is not None and job is not None and job.full_every is not None:
                incs = sum(1 for s in snaps if s.chain == parent.chain) - 1
                if incs >= job.full_every:
                    parent = None
            if full:
                parent = None
            start_warning = None
            if parent is not None:
                try:
                    repo.catalog_body(parent)
                except CorruptObject as exc:
                    # never let one damaged catalog stop every scheduled backup after it
                    start_warning = (f"the newest snapshot {parent.id} cannot be read ({exc}): this backup "
                                     "starts a new chain with a full backup; run `dmbackup verify`")
                    parent = None
            now = utctime.utc_now()
            # one snapshot per second, whatever its kind: --at TIME must name exactly one
            taken = {s.id.split("-", 1)[0] for s in snaps} | {d[1].split("-", 1)[0] for d in repo.damaged}
            kind = "full" if parent is None else "inc"
            while snap_time(now) in taken:
                now += timedelta(seconds=1)
            snap = f"{snap_time(now)}-{kind}"
            if parent is None:
                n = max((s.chain_no for s in snaps), default=0)
                n = max(n, max((int(c[:4]) for c in repo.chains()), default=0)) + 1
                chain, seq = f"{n:04d}-{snap_time(now)}", 0
            else:
                chain, seq = parent.chain, parent.header.seq + 1
            _check_space(app, repo, parent, snaps)
            app.log.info("backup_start", target=target_name, snapshot=snap, chain=chain,
                         kind="full" if parent is None else "incremental")
            run = BackupRun(app, repo, target_name, parent=parent, chain=chain, snap=snap, seq=seq,
                            now=now, job_name=job.name if job else None)
            for c, bad, why in repo.damaged:
                run.warn(f"snapshot {c}/{bad} is damaged and was skipped ({why}): run `dmbackup verify`")
            if start_warning:
                run.warn(start_warning)
            result = run.run()
            app.log.info("backup_done", **result.as_dict())
            return result
        finally:
            repo.unlock_repo()


def _check_space(app, repo, parent, snaps) -> None:
    if parent is not None:
        app.progress.total_bytes = parent.header.bytes   # yesterday's size: a good ETA
    free = repo.t.free_space()
    if free is None and parent is not None:
        return
    if parent is None:
        total = _store_size(app.config.source.mail_store)
        app.progress.total_bytes = total          # lets the progress line show an ETA
        need = int(total * 0.4) + 16 * MiB
        what = "a full backup"
    else:
        recent = [s.header.stored_bytes for s in snaps if s.header.kind == "incremental"][-3:]
        need = max(recent, default=0) + 16 * MiB
        what = "an incremental backup"
    if free is not None and free < need:
        raise NoSpace(
            f"{repo.t.describe()} has {free // MiB} MiB free, {what} needs about {need // MiB} MiB: "
            "free space (dmbackup prune) or use a larger disk; nothing was written")
