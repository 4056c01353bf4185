"""A local cache of decoded catalog bodies, so a reader of many snapshots parses no JSON twice.

Reading a snapshot's tree starts with its catalog's page table, which in an incremental is a
table of changes resolved through its parents' tables (dmbackup.archive). On the bench's
30-night chain the 30 catalog bodies are 73 MB of JSON: ``find`` parses all of them (0.75 s of
a 2.6 s search) and every incremental parses its parent's table and the tables it builds on.
Catalogs are immutable, so the parse can be remembered; Python's ``marshal`` loads the same
structure about five times faster than ``json``.

``state_dir/tables/<repository id>/<chain>/<snapshot>``, one file per catalog read or written
here:

    MAGIC ("DMTC\\x02\\n") | marshal format version (1 byte)
    | SHA-256 of the catalog's sealed body as stored on the medium (32 bytes)
    | zstd frame (level 1) of marshal.dumps(the decoded body: the JSON value, as parsed,
      with each page table row's delta packed, see below)
    | SHA-256 of everything above (32 bytes)

A packed delta is the tuple ``(marshal.dumps(the delta's JSON value), its size (deletions +
renames + added entries), the 4-byte key prefixes of the files it adds, joined)``: loading a
month of tables then costs one bytes object per changed directory instead of a Python
object per entry every busy folder gained, and ``catalog.Delta`` unpacks it (and checks it,
as a parsed delta is checked) only when it is used. A search answers from the prefixes
whether a delta can add a wanted message (``Delta.may_put``) and from its bytes whether it
names a wanted one at all (``Delta.may_touch``), without unpacking it. A value that is not a
well-formed delta is kept as parsed, so it fails where the parsed body fails. (Version 1
files, with the deltas as parsed, read as missing and are written again.)

What it stands for: the body is used only when the medium's sealed body has exactly the
recorded SHA-256, i.e. the very bytes that were authenticated (AES-GCM) and parsed when the
file was written; so the cache never vouches for anything the medium did not. Its content is
then checked as a parsed body always is (``catalog.table_of_body``). A file that is torn,
flipped, of another Python's marshal format, bigger than a catalog can be, or for other
bytes is ignored and written again; it is opened with O_NOFOLLOW, only under names that are
ids, in directories made 0700 level by level. Every failure to read or write it is silent:
it only ever makes a reader faster. It lives in root's state_dir, never on the medium; it
holds what the catalog holds (directory names and file names, sizes, hashes), which is why it
is private to root like the rest of state_dir. ``forget_others`` removes the files of pruned
snapshots (a backup and ``find`` call it with the snapshots they listed).
"""

from __future__ import annotations

import hashlib
import marshal
import os
import re

import zstandard

from dmbackup.archive.layout import CHAIN_RE, SNAP_RE
from dmbackup.state import forget_snapshot_files, private_dirs, read_cache_file, write_atomic

MAGIC = b"DMTC\x02\n"
_DIGEST = 32
_HEAD = len(MAGIC) + 1 + _DIGEST
MAX_FILE = 256 << 20                # no catalog body is larger (dmbackup.archive.reader.MAX_CATALOG)
MAX_PLAIN = 1 << 30                 # nor inflates further (catalog.MAX_BODY_PLAIN)
_REPO_RE = re.compile(r"[0-9a-f]{32}")
_HEX8 = re.compile(r"[0-9a-f]{8}")


def body_digest(sealed_body: bytes | memoryview) -> bytes:
    return hashlib.sha256(sealed_body).digest()


def _pack_delta(delta):
    """A row's delta as the cache keeps it: ``(marshal bytes of the JSON value, its size, the
    4-byte key prefixes of the files it adds)``; a value that is not a well-formed delta is
    kept as it is, to fail where the parse of the catalog fails."""
    if type(delta) is not dict:
        return delta
    dels, rens, puts = delta.get("del"), delta.get("ren"), delta.get("put")
    if type(dels) is not list or type(rens) is not list or type(puts) is not list:
        return delta
    keys = []
    for p in puts:
        if type(p) is not list or len(p) != 10 or type(p[0]) is not str:
            return delta
        h = p[8]
        if p[1] == "f" and type(h) is str and _HEX8.match(h):
            keys.append(h[:8])
    return (marshal.dumps(delta), len(dels) + len(rens) + len(puts), bytes.fromhex("".join(keys)))


def _packed(body):
    """``body`` with the delta of every page table row packed (``_pack_delta``); a new value."""
    if type(body) is not dict:
        return body
    out = dict(body)
    for k in ("pages", "changed"):
        rows = out.get(k)
        if type(rows) is list:
            out[k] = [r[:6] + [_pack_delta(r[6])] if type(r) is list and len(r) == 7 and r[6] is not None else r
                      for r in rows]
    return out


def encode(digest: bytes, body) -> bytes:
    out = bytearray(MAGIC)
    out.append(marshal.version)
    out += digest
    out += zstandard.ZstdCompressor(level=1).compress(marshal.dumps(_packed(body)))
    out += hashlib.sha256(out).digest()
    return bytes(out)


def decode(data: bytes, digest: bytes):
    """The body a cache file holds for the sealed body of SHA-256 ``digest``, or None when it
    is not one whole file written by ``encode`` for those bytes by this Python."""
    if (len(data) < _HEAD + _DIGEST or not data.startswith(MAGIC) or data[len(MAGIC)] != marshal.version
            or data[len(MAGIC) + 1:_HEAD] != digest):
        return None
    if hashlib.sha256(memoryview(data)[:-_DIGEST]).digest() != data[-_DIGEST:]:
        return None
    try:
        plain = zstandard.ZstdDecompressor().decompress(memoryview(data)[_HEAD:-_DIGEST], max_output_size=MAX_PLAIN)
        return marshal.loads(plain)
    except (zstandard.ZstdError, ValueError, EOFError, TypeError, MemoryError):
        return None


class TableCache:
    """The cache of one repository in ``state_dir`` (see the module docstring)."""

    def __init__(self, state_dir: str, repo_id: str) -> None:
        self.state_dir, self.repo_id = state_dir, repo_id
        self.root = os.path.join(state_dir, "tables", repo_id) if _REPO_RE.fullmatch(repo_id) else None
        self.hits = self.misses = 0

    def _path(self, chain: str, snap: str) -> str | None:
        if self.root is None or not CHAIN_RE.fullmatch(chain) or not SNAP_RE.fullmatch(snap):
            return None
        return os.path.join(self.root, chain, snap)

    def get(self, chain: str, snap: str, digest: bytes):
        """The decoded body of catalog ``chain/snap`` whose sealed body has SHA-256 ``digest``, or None."""
        path = self._path(chain, snap)
        body = None
        if path is not None:
            data = read_cache_file(path, MAX_FILE)
            if data is not None:
                body = decode(data, digest)
        if body is None:
            self.misses += 1
        else:
            self.hits += 1
        return body

    def put(self, chain: str, snap: str, digest: bytes, body) -> None:
        """Remember the decoded ``body`` of catalog ``chain/snap`` (sealed body of SHA-256 ``digest``)."""
        path = self._path(chain, snap)
        if path is None:
            return
        try:
            data = encode(digest, body)
        except (ValueError, TypeError):       # marshal refuses what JSON never gives; be sure
            return
        if len(data) > MAX_FILE:
            return
        try:
            private_dirs(self.state_dir, "tables", self.repo_id, chain)
            write_atomic(path, data, durable=False)
        except OSError:
            pass

    def forget_others(self, live: set[tuple[str, str]]) -> None:
        """Remove the files of snapshots that are no longer in the repository (pruned), and
        leftovers of a write cut short."""
        forget_snapshot_files(self.root, live, lambda n: SNAP_RE.fullmatch(n) or ".tmp" in n)
