"""A local cache of which contents each stored page lists, so ``find`` reads only the pages
that can hold what it looks for.

``find`` (dmbackup.engine.find) learns from the header indexes the content keys of the
messages that match, then has to learn where those messages are: which folders of which
snapshots list them. Without help that means reading, authenticating and inflating every
stored page of every message directory in scope (on the bench's 30-night chain: 5,900
pages, half the time of a search). A page is immutable once its snapshot commits, so what
it lists can be remembered.

``state_dir/pagekeys/<repository id>/<chain>/<owner snapshot>``, one file per snapshot that
stored pages, holds for each page of that snapshot's ``.pages`` object that is known here:

    MAGIC ("DMPK\\x01\\n")
    then per page:  offset u64 LE | length u32 LE | count u32 LE | count x 4-byte key prefix
    then:           SHA-256 of everything above (32 bytes)

A key prefix is the first 4 bytes of the SHA-256 of a file the page lists (``entry.hash``),
in the page's order. The prefix only decides which pages to skip: a page with no prefix
of a wanted content cannot list it; a page with one is read and searched as before, so a
false match (about one page in the whole bench chain) costs one read and changes no result.

Who writes it: a mail backup, for the message-directory pages it stores (it has their entries
at hand), and ``find`` for every page it had to read (the page's hashes are found by the one
pass that searches it). A machine whose state_dir is new (an appliance rebuilt after a
disaster) builds it by searching once. A file that does not parse or whose digest does not
match is ignored and rebuilt; one of a snapshot that is gone is removed by the next backup,
``prune`` or ``find`` (``forget_pruned``).
The cache lives in root's state_dir, never on the medium, and holds nothing secret (32 bits
of content hashes the catalog lists in full). Losing it costs one slower search.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import sys

from dmbackup.archive.layout import CHAIN_RE, SNAP_RE
from dmbackup.state import forget_snapshot_files, private_dirs, read_cache_file, write_atomic

MAGIC = b"DMPK\x01\n"
_REC = struct.Struct("<QII")
_DIGEST = 32
SMALL = 16                          # up to this many wanted prefixes: each is looked for alone
_REPO_RE = re.compile(r"[0-9a-f]{32}")
MAX_FILE = 256 << 20                # a snapshot of 60 million files; more is no file of ours


def prefix(sha256_hex: str) -> bytes:
    """The 4-byte key prefix of a content (the hex SHA-256 of a catalog entry, or its first 32)."""
    return bytes.fromhex(sha256_hex[:8])


def prefixes_of_entries(entries) -> bytes:
    """The key prefixes of the files of a page (catalog entries), in its order."""
    return bytes.fromhex("".join([e.hash[:8] for e in entries if e.type == "f" and e.hash]))


def save_stored(state_dir: str, repo_id: str, chain: str, snap: str, pages) -> None:
    """Record the pages a backup stored (``(offset, length, prefixes)``): its snapshot committed."""
    if not pages:
        return
    pk = PageKeys(state_dir, repo_id)
    for offset, length, keys in pages:
        pk.add(chain, snap, offset, length, keys)
    pk.save()


def prefixes_of_hex(hashes) -> bytes:
    """The key prefixes of hex hashes (str or ASCII bytes, at least 8 digits each), joined."""
    return bytes.fromhex(b"".join(h[:8] for h in hashes).decode("ascii"))


def encode(pages: dict[tuple[int, int], bytes]) -> bytes:
    out = bytearray(MAGIC)
    for (offset, length), keys in sorted(pages.items()):
        out += _REC.pack(offset, length, len(keys) // 4)
        out += keys
    out += hashlib.sha256(out).digest()
    return bytes(out)


def decode(data: bytes) -> dict[tuple[int, int], bytes] | None:
    """The pages of a cache file, or None when it is not one whole file written by ``encode``."""
    if len(data) < len(MAGIC) + _DIGEST or not data.startswith(MAGIC):
        return None
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        return None
    pages: dict[tuple[int, int], bytes] = {}
    i, end = len(MAGIC), len(body)
    while i < end:
        if i + _REC.size > end:
            return None
        offset, length, count = _REC.unpack_from(body, i)
        i += _REC.size
        if i + 4 * count > end:
            return None
        pages[(offset, length)] = body[i:i + 4 * count]
        i += 4 * count
    return pages


class Wanted:
    """The contents a search wants (32-hex-digit keys), by prefix, and which of them a page
    may list."""

    def __init__(self, keys) -> None:
        self.by_prefix: dict[bytes, list[bytes]] = {}
        for k in keys:
            self.by_prefix.setdefault(prefix(k), []).append(k.encode("ascii"))
        # the prefixes as native ints, as ``memoryview(keys).cast("I")`` gives a page's (and
        # catalog.Delta.may_put a packed delta's)
        by_int = {int.from_bytes(p, sys.byteorder): ks for p, ks in self.by_prefix.items()}
        self.ints = frozenset(by_int)
        self._by_int = by_int if len(by_int) > SMALL else None

    def present(self, keys: bytes) -> list[bytes]:
        """The wanted keys (ASCII) whose prefix is among a page's ``keys``: an empty list means
        the page lists none of them."""
        if self._by_int is not None:
            by_int = self._by_int
            hit = by_int.keys() & set(memoryview(keys).cast("I"))
            return [k for i in hit for k in by_int[i]]
        out = []
        for p, ks in self.by_prefix.items():
            i = keys.find(p)
            while i >= 0:
                if i % 4 == 0:
                    out += ks
                    break
                i = keys.find(p, i + 1)
        return out


class PageKeys:
    """The cache of one repository (see the module docstring). Every failure to read or write
    it is silent: it only ever makes a search faster."""

    def __init__(self, state_dir: str, repo_id: str) -> None:
        self.state_dir, self.repo_id = state_dir, repo_id
        self.root = os.path.join(state_dir, "pagekeys", repo_id) if _REPO_RE.fullmatch(repo_id) else None
        self._files: dict[tuple[str, str], dict[tuple[int, int], bytes]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self.added: list[tuple] = []        # (chain, owner, offset, length, keys) learned, in order

    def _path(self, chain: str, owner: str) -> str | None:
        if self.root is None or not CHAIN_RE.match(chain) or not SNAP_RE.match(owner):
            return None
        return os.path.join(self.root, chain, owner)

    def _file(self, chain: str, owner: str) -> dict[tuple[int, int], bytes]:
        got = self._files.get((chain, owner))
        if got is None:
            got = {}
            path = self._path(chain, owner)
            if path is not None:
                data = read_cache_file(path, MAX_FILE)
                got = (decode(data) if data is not None else None) or {}
            self._files[(chain, owner)] = got
        return got

    def get(self, chain: str, owner: str, offset: int, length: int) -> bytes | None:
        """The key prefixes the page at (``owner``, ``offset``, ``length``) lists, if known."""
        return self._file(chain, owner).get((offset, length))

    def add(self, chain: str, owner: str, offset: int, length: int, keys: bytes) -> None:
        f = self._file(chain, owner)
        if f.get((offset, length)) != keys:
            f[(offset, length)] = keys
            self._dirty.add((chain, owner))
            self.added.append((chain, owner, offset, length, keys))

    def save(self) -> None:
        for chain, owner in sorted(self._dirty):
            path = self._path(chain, owner)
            if path is None:
                continue
            try:
                private_dirs(self.state_dir, "pagekeys", self.repo_id, chain)
                write_atomic(path, encode(self._files[(chain, owner)]), durable=False)
            except OSError:
                pass
        self._dirty.clear()

    def forget_others(self, live: set[tuple[str, str]]) -> None:
        """Remove the files of snapshots that are no longer in the repository (pruned)."""
        forget_snapshot_files(self.root, live, SNAP_RE.match)


def forget_pruned(app, repo, live: set[tuple[str, str]]) -> None:
    """After a backup or a prune: drop what this machine remembers of snapshots no longer in the
    repository (``live``: (chain, snapshot id) of those that are): their parsed catalogs
    (dmbackup.archive.tablecache) and their page keys (this module). Both only ever make a
    reader faster, so nothing here fails the run."""
    if repo.table_cache is not None:
        repo.table_cache.forget_others(live)
    state = getattr(app, "state", None)
    if state is not None:
        PageKeys(state.dir, repo.id).forget_others(live)
