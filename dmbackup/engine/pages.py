"""The page table a backup writes, and the parent snapshot it builds on (format: dmbackup.archive).

A captured directory's page waits in the ``PageQueue`` until every block its files use is
written (only then are their extents final: volume, offset, sealed length); it is then
stored as the parent's row when unchanged, as a delta on the parent's stored page while the
changes stay small, or as a new page in ``<snap>.pages``. Blocks no waiting page refers to
any more are released from the block writer's memory.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable

from dmbackup import utctime
from dmbackup.archive.hidx import HidxWriter, key_of
from dmbackup.archive import layout
from dmbackup.archive.catalog import (
    Entry,
    PageRow,
    compress,
    encode_page,
    make_delta,
    tree_order,
)
from dmbackup.archive.contentindex import IndexBuilder
from dmbackup.engine.dirrecord import listing_of_entries
from dmbackup.engine.pagekeys import prefixes_of_entries

# a whole table again after this many tables of changes: each reader of a snapshot (the next
# backup, a restore, verify) resolves the tables back to the last whole one. On a busy server
# nearly every folder's row changes every night and a table of changes is nearly a whole one:
# at 30 a day-30 incremental of the find bench parsed 30 tables (73 MB of JSON); a week bounds
# that while a search over 30 nights (which reads every table anyway) reads few whole ones
TABLE_MAX_DEPTH = 7
RACY_NS = 2_000_000_000           # git's "racy" margin for directory mtimes


class ParentView:
    """The parent snapshot's tree and the chain's content index, loaded lazily."""

    def __init__(self, repo, chain_snaps: list, parent):
        self.repo = repo
        self.parent = parent
        self.chain_snaps = chain_snaps
        self.rows: dict[str, PageRow] = {}
        self._index: list | None = None
        self._dirs: dict[str, dict[str, Entry]] = {}    # rel -> its subdirectories in the parent
        rows, _ = repo.catalog_body(parent)
        self.table_depth = repo.table_depth(parent)
        self.start_ns = int(utctime.parse_time(parent.header.time).timestamp()) * 1_000_000_000
        for r in rows:
            self.rows[r.dir] = r

    def settled(self, mtime_ns: int) -> bool:
        """Whether an mtime is older than the parent's start by the "racy" margin: a directory
        whose mtime is the parent's and settled holds what the parent recorded (timestamps are
        coarse: a change in the same tick as the parent's listing would not move it)."""
        return mtime_ns < self.start_ns - RACY_NS

    def entries(self, rel: str) -> list[Entry]:
        row = self.rows.get(rel)
        return self.repo.page(self.parent.chain, row) if row is not None else []

    def page_entries(self, row: PageRow) -> list[Entry]:
        return self.repo.page(self.parent.chain, row)

    def dir_entry(self, rel: str, name: str) -> Entry | None:
        dirs = self._dirs.get(rel)
        if dirs is None:
            dirs = self._dirs[rel] = {e.name: e for e in self.entries(rel) if e.type == "d"}
        return dirs.get(name)

    def lookup(self, digest: str):
        if self._index is None:
            self._index = [i for i in (self.repo.content_index(s) for s in self.chain_snaps) if i is not None]
        for idx in reversed(self._index):
            ext = idx.get(digest)
            if ext is not None:
                return ext
        return None


class PageQueue:
    """Pages waiting for their blocks, the rows of the new table, and what this run stored.

    ``held_blocks`` tells which blocks captured but not yet queued entries use (the messages
    of the Maildir folder being captured): those are not released either. ``pinned`` blocks
    (hardlinked files may refer to them again) are never released."""

    def __init__(self, repo, chain: str, snap: str, writer, parent_view: ParentView | None,
                 held_blocks: Callable[[], Iterable[int]]):
        self.repo, self.chain, self.snap, self.writer = repo, chain, snap, writer
        self.parent_view = parent_view
        self.held_blocks = held_blocks
        self.pending: list[tuple[str, list[Entry], int, bool, int]] = []   # + oldest block used
        self.rows: list[PageRow] = []
        self.listings: dict[str, str | None] = {}   # rel -> listing digest (dmbackup.engine.dirrecord)
        self.new_index = IndexBuilder()       # content stored by this run, compact
        # headers of the messages stored by this run, written out frame by frame as they come
        self.hidx = HidxWriter(repo, chain, snap)
        # content SHA-256 -> Headers of messages stored by this run, until their entry is final. Keyed
        # by content, not by entry: an entry the capture drops (a message seen under two names
        # while renamed) can never lend its headers to another file, and a copy has the same ones
        self._headers: dict[str, object] = {}
        self.pinned: set[int] = set()
        self.out = None                       # the writer of <snap>.pages
        # (offset, length, key prefixes) of the message-directory pages stored by this run
        self.page_keys: list[tuple[int, int, bytes]] = []
        self.hash = hashlib.sha256()

    def open(self) -> None:
        self.out = self.repo.object_writer(self.chain, layout.pages_name(self.snap))

    def queue(self, rel: str, entries: list[Entry], maildir: bool, *, finalize: bool = True) -> None:
        entries.sort(key=lambda e: e.name)
        seqs = [x[0] for e in entries if e.type == "f" and e.extents for x in e.extents if len(x) == 3]
        max_seq = max(seqs, default=-1)
        self.pending.append((rel, entries, max_seq, maildir, min(seqs, default=max_seq)))
        if finalize:
            self.finalize()

    def note_headers(self, entry: Entry, headers) -> None:
        """Headers of a message whose content this run stores (extracted in the main thread)."""
        self._headers[entry.hash] = headers

    def finalize(self, force: bool = False) -> None:
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
                        _, seq, i = e.hash
                        e.hash = self.writer.hash_of(seq, i)
                        headers = self.writer.headers_of(seq, i)
                    else:
                        headers = self._headers.pop(e.hash, None)
                    self.new_index.add(e.hash, e.extents)    # stored by this run
                    if headers is not None:                  # a message (False: no header block, counted)
                        self.hidx.add(key_of(e.hash), e.size, headers or None)
            self._write_page(rel, entries, maildir)
        self.pending = keep
        # blocks no waiting entry refers to any more: their locations and digests can go
        low = min((m for *_, m in keep if m >= 0), default=done + 1)
        low = min([low, *self.held_blocks()])
        self.writer.release(min(low, done + 1), self.pinned)

    def _resolve(self, extents: list) -> list:
        out = []
        for x in extents:
            if len(x) == 3:
                vol, voff, vlen = self.writer.location(x[0])
                out.append([vol, voff, vlen, x[1], x[2]])
            else:
                out.append(x)
        return out

    def _write_page(self, rel: str, entries: list[Entry], maildir: bool) -> None:
        """Reuse the parent's row if unchanged; else an inline delta on the parent's stored base
        page while the accumulated changes stay small; else store a new full page."""
        plain = encode_page(entries)
        digest = hashlib.sha256(plain).hexdigest()[:32]
        if not maildir:
            self.listings[rel] = listing_of_entries(entries)
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
        offset = self.out.size
        sealed = self.repo.keys.catalog.seal(compress(plain),
                                             layout.page_aad(self.repo.id, self.chain, self.snap, offset))
        self.out.write(sealed)
        self.hash.update(sealed)
        self.rows.append(PageRow(rel, self.snap, offset, len(sealed), digest, len(entries)))
        if maildir:     # what find's local cache keeps of it (dmbackup.engine.pagekeys)
            self.page_keys.append((offset, len(sealed), prefixes_of_entries(entries)))

    def commit(self) -> dict | None:
        """Commit ``<snap>.pages`` (if any page was stored): its record for the catalog header."""
        if not self.out.size:
            self.out.abort()
            return None
        self.out.commit()
        return {"name": layout.pages_name(self.snap), "size": self.out.size, "sha256": self.hash.hexdigest()}

    def abort(self) -> None:
        if self.out is not None:
            self.out.abort()
        if self.hidx is not None:
            self.hidx.abort()

    def table(self, parent_id: str | None) -> dict:
        """The page table: only the rows that differ from the parent's, on top of the parent's
        table, unless that is most of them, or the parent's table is already TABLE_MAX_DEPTH
        tables of changes away from a whole one (every reader, the next backup first, resolves
        them all)."""
        rows = tree_order(self.rows)
        pv = self.parent_view
        if pv is None or pv.table_depth >= TABLE_MAX_DEPTH:
            return {"pages": rows}
        current = {r.dir for r in rows}
        changed = [r for r in rows if (p := pv.rows.get(r.dir)) is None or p.encode() != r.encode()]
        removed = sorted(d for d in pv.rows if d not in current)
        if len(changed) + len(removed) > len(rows) // 2 + 8:
            return {"pages": rows}
        return {"base": parent_id, "depth": pv.table_depth + 1, "changed": changed, "removed": removed}
