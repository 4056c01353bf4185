"""Reading a repository's sealed objects, bounded: small files, catalogs, page tables, pages, indexes.

Nothing here believes a size the medium states: small files are read with a fixed cap, a
catalog header with the cap of ``MAX_HEADER``, a whole catalog with ``MAX_CATALOG``, and a
page or index at the offset and length an authenticated catalog recorded. Page tables of
incrementals are resolved through their parents' (format: dmbackup.archive) and cached, as
are the last pages read (a restore asks for the same directory's page more than once).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dmbackup import gcpause
from dmbackup.archive import CATALOG_MAGIC, layout
from dmbackup.archive.catalog import (
    MAX_HEADER,
    MAX_PAGE_PLAIN,
    Header,
    PageRow,
    apply_delta,
    decode_catalog_header,
    decode_index,
    decode_page_list,
    decompress,
    open_catalog_body,
    table_of_body,
    tree_order,
)
from dmbackup.archive.layout import SNAP_RE
from dmbackup.errors import CorruptObject, NotFound

# Small files are read with a cap: a repo.json, key file or lock that is a link to /dev/zero
# or a multi-gigabyte file must not be read whole.
SMALL_MAX = 64 * 1024
# a whole catalog (header + page table) is read into memory: refuse anything larger
MAX_CATALOG = 256 << 20
HEAD_READ = 64 * 1024           # a catalog's first read: the whole header, unless its volume list is long
TABLES_CACHED = 64
PAGES_CACHED = 16


def read_small(t, name: str, what: str) -> bytes:
    """A small file of the repository, read with a cap (never a medium's idea of a size)."""
    data = t.get(name, 0, SMALL_MAX + 1)
    if len(data) > SMALL_MAX:
        raise CorruptObject(f"{what} on {t.describe()} is damaged: larger than {SMALL_MAX} bytes")
    return data


@dataclass
class SnapshotRef:
    chain: str
    id: str
    header: Header

    @property
    def chain_no(self) -> int:
        return layout.chain_number(self.chain)


class CatalogReader:
    """The catalogs, page tables, pages and content indexes of one open, unlocked repository."""

    def __init__(self, repo):
        self.repo = repo
        self._tables: dict = {}                 # resolved rows, in no particular order
        self._sorted: dict = {}                 # the same in tree order (``body``)
        self._warnings: dict = {}
        self._depths: dict = {}
        self._pages: dict = {}
        self.cache = None           # dmbackup.archive.tablecache.TableCache, set by whoever knows state_dir

    def header(self, chain: str, snap: str) -> Header:
        repo = self.repo
        name = layout.catalog(chain, snap)
        head = repo.t.get(name, 0, HEAD_READ)
        try:
            header, _ = decode_catalog_header(head, repo.keys.catalog, repo.id, chain, snap)
        except CorruptObject:
            start = len(CATALOG_MAGIC) + 4
            if len(head) < HEAD_READ:
                raise
            (n,) = struct.unpack_from("<I", head, len(CATALOG_MAGIC))
            if n > MAX_HEADER or start + n <= len(head):
                raise
            # a long volume list: read exactly the header, whose length is capped above
            header, _ = decode_catalog_header(repo.t.get(name, 0, start + n),
                                              repo.keys.catalog, repo.id, chain, snap)
        return header

    def body(self, ref: SnapshotRef):
        """(page rows in tree order, warnings) of a snapshot, its table resolved through its parents."""
        key = (ref.chain, ref.id)
        rows = self._sorted.get(key)
        if rows is None:
            rows = self._sorted[key] = tree_order(self.table(ref.chain, ref.id, 0))
            if len(self._sorted) > TABLES_CACHED:
                self._sorted.pop(next(iter(self._sorted)))
        return rows, self._warnings.get(key, [])

    def rows(self, ref: SnapshotRef) -> list[PageRow]:
        """The page rows of a snapshot in no particular order (``body`` without the sort: for
        a reader that looks at every row anyway, such as ``find``)."""
        return self.table(ref.chain, ref.id, 0)

    def depth(self, ref: SnapshotRef) -> int:
        self.table(ref.chain, ref.id, 0)
        return self._depths.get((ref.chain, ref.id), 0)

    def table(self, chain: str, snap: str, depth: int) -> list[PageRow]:
        key = (chain, snap)
        hit = self._tables.get(key)
        if hit is not None:
            return hit
        if depth > 1000 or not SNAP_RE.match(snap):
            raise CorruptObject(f"catalog {chain}/{snap}: bad page table chain")
        repo = self.repo
        name = layout.catalog(chain, snap)
        if repo.t.stat(name).size > MAX_CATALOG:
            raise CorruptObject(f"catalog {chain}/{snap} is larger than {MAX_CATALOG >> 20} MiB: damaged")
        data = repo.t.get(name)
        _, start = decode_catalog_header(data, repo.keys.catalog, repo.id, chain, snap)
        # a busy month's table is megabytes of JSON: no collection walks it while it is built
        with gcpause.paused():
            table, warnings = table_of_body(self._body(chain, snap, data[start:]),
                                            f"catalog {chain}/{snap}")
        self._warnings[key] = warnings
        self._depths[key] = table.depth
        if table.rows is not None:
            rows = table.rows
        else:
            try:
                base = {r.dir: r for r in self.table(chain, table.base, depth + 1)}
            except NotFound:
                raise CorruptObject(
                    f"catalog {chain}/{snap} builds on snapshot {table.base}, whose catalog is missing") from None
            for d in table.removed:
                base.pop(d, None)
            for r in table.changed:
                base[r.dir] = r
            rows = list(base.values())
        self._tables[key] = rows
        if len(self._tables) > TABLES_CACHED:
            self._tables.pop(next(iter(self._tables)))
        return rows

    def _body(self, chain: str, snap: str, sealed):
        """The parsed body of a catalog: from the local cache (dmbackup.archive.tablecache) when
        it holds these very sealed bytes, else authenticated and parsed (and then remembered)."""
        repo, cache = self.repo, self.cache
        if cache is None:
            return open_catalog_body(sealed, repo.keys.catalog, repo.id, chain, snap)
        from dmbackup.archive.tablecache import body_digest

        digest = body_digest(sealed)
        obj = cache.get(chain, snap, digest)
        if obj is None:
            obj = open_catalog_body(sealed, repo.keys.catalog, repo.id, chain, snap)
            cache.put(chain, snap, digest, obj)
        return obj

    def content_index(self, ref: SnapshotRef):
        if not ref.header.index:
            return None
        repo = self.repo
        size = ref.header.index["size"]         # recorded by the authenticated header
        data = repo.t.get(layout.chain_object(ref.chain, ref.header.index["name"]), 0, size + 1)
        if len(data) != size:
            raise CorruptObject(f"content index {ref.chain}/{ref.id} has {len(data)} bytes, the catalog says {size}")
        return decode_index(data, repo.keys.catalog, repo.id, ref.chain, ref.id)

    def page(self, chain: str, row: PageRow) -> list:
        base = self.page_at(chain, row.owner, row.offset, row.length, row.dir)
        return apply_delta(base, row.delta, f"page of {row.dir or '/'} in {chain}")

    def page_at(self, chain: str, owner: str, offset: int, length: int, d: str = "") -> list:
        key = (chain, owner, offset)
        hit = self._pages.get(key)
        if hit is not None:
            return hit
        what = f"page of {d or '/'} in {chain}/{owner}@{offset}"
        if not SNAP_RE.match(owner):
            raise CorruptObject(f"{what}: bad owner name")
        repo = self.repo
        sealed = repo.t.get(layout.pages(chain, owner), offset, length)
        plain = decompress(
            repo.keys.catalog.open(sealed, layout.page_aad(repo.id, chain, owner, offset), what),
            what, MAX_PAGE_PLAIN)
        page = decode_page_list(plain, what)
        self._pages[key] = page
        if len(self._pages) > PAGES_CACHED:
            self._pages.pop(next(iter(self._pages)))
        return page
