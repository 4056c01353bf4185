"""Catalogs and pages (format: see dmbackup.archive): encoding, decoding, validation.

Everything read from a repository is validated here before the engine sees it: a catalog or
page that does not have exactly the documented shape raises ``CorruptObject``, whatever the
bytes are (the parsers are fuzzed in tests/faults/test_parsers_fuzz.py).
"""

from __future__ import annotations

import json
import marshal
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import zstandard

from dmbackup.archive.layout import OBJECT_RE, VOLUME_RE, body_aad, head_aad, index_aad
from dmbackup.errors import CorruptObject
from dmbackup.archive import BLOCK_SIZE, CATALOG_MAGIC, FORMAT_VERSION

U32 = struct.Struct("<I")
TYPES = ("f", "d", "l")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
MAX_ID = (1 << 32) - 2          # uid_t/gid_t; 0xFFFFFFFF means "unchanged" to chown
MAX_PAGE_PLAIN = 64 << 20
MAX_BODY_PLAIN = 1 << 30
# Past this floor, plaintext may be at most MAX_RATIO times its compressed size: JSON of
# a page table compresses perhaps 20:1, a zstd bomb 30000:1 (and an unencrypted repository
# lets anyone write one).
RATIO_FLOOR = 64 << 20
MAX_RATIO = 256
MAX_HEADER = 16 << 20           # a sealed catalog header (its volume list) is far smaller
# a sealed block: zstd's worst case for 4 MiB (plus its frame) and the seal's overhead
MAX_SEALED_BLOCK = BLOCK_SIZE + (BLOCK_SIZE >> 7) + 4096


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def loads(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CorruptObject(f"{what} is not valid JSON") from None


def compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def decompress(data: bytes, what: str, limit: int, dctx=None) -> bytes:
    """One zstd frame, never more than ``limit`` bytes (nor MAX_RATIO times its input once
    past RATIO_FLOOR): a size the frame declares is checked before anything is allocated,
    a frame that declares none is streamed under the cap."""
    limit = min(limit, max(RATIO_FLOOR, len(data) * MAX_RATIO))
    dctx = dctx or zstandard.ZstdDecompressor()
    try:
        declared = zstandard.frame_content_size(data)
        if declared > limit:
            raise CorruptObject(f"{what} claims {declared} bytes uncompressed, more than the "
                                f"{limit} allowed: refused")
        if declared >= 0:
            return dctx.decompress(data, max_output_size=limit)
        reader = dctx.stream_reader(data, read_across_frames=False)
        out = bytearray()
        while True:
            piece = reader.read(min(1 << 20, limit + 1 - len(out)))
            if not piece:
                return bytes(out)
            out += piece
            if len(out) > limit:
                raise CorruptObject(f"{what} inflates beyond the {limit} bytes allowed: refused")
    except (zstandard.ZstdError, MemoryError):
        raise CorruptObject(f"{what} does not decompress") from None


# --- entries -----------------------------------------------------------------------------
@dataclass(slots=True)
class Entry:
    name: str
    type: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    ino: int = 0
    hash: str | None = None
    extents: list | None = None     # files: [[volume, voff, vlen, boff, blen], ...]
    link: str | None = None         # symlinks: target

    def encode(self) -> list:
        tail = self.link if self.type == "l" else self.extents
        return [self.name, self.type, self.mode, self.uid, self.gid, self.mtime_ns, self.size,
                self.ino, self.hash, tail]

    def __reduce__(self):
        # pickled as its fields (a forked ``find`` sends half its answer back so): about 60%
        # of the time of the default for slots, a dict of them per entry, and 20% fewer bytes
        return Entry, (self.name, self.type, self.mode, self.uid, self.gid, self.mtime_ns, self.size, self.ino,
                       self.hash, self.extents, self.link)


def _int(v: Any, what: str, lo: int = 0, hi: int = 1 << 63) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise CorruptObject(f"{what}: bad number {v!r}")
    return v


_I = int
_VOLUMES_SEEN: set = set()      # volume names already matched by VOLUME_RE (str only)


def decode_entry(raw: Any, what: str) -> Entry:
    if type(raw) is not list or len(raw) != 10:
        raise CorruptObject(f"{what}: malformed entry")
    name, typ, mode, uid, gid, mtime, size, ino, h, tail = raw
    if type(name) is not str or typ not in TYPES:
        raise CorruptObject(f"{what}: malformed entry name or type")
    if (type(mode) is _I and type(uid) is _I and type(gid) is _I and type(mtime) is _I
            and type(size) is _I and type(ino) is _I and 0 <= mode <= 0o7777 and 0 <= uid <= MAX_ID
            and 0 <= gid <= MAX_ID and 0 <= size < 1 << 63 and 0 <= ino < 1 << 63
            and -(1 << 63) <= mtime < 1 << 63):
        e = Entry(name, typ, mode, uid, gid, mtime, size, ino)
    else:
        e = Entry(name, typ, _int(mode, what, 0, 0o7777), _int(uid, what, 0, MAX_ID),
                  _int(gid, what, 0, MAX_ID), _int(mtime, what, -(1 << 63)), _int(size, what),
                  _int(ino, what))
    if typ == "f":
        if not (isinstance(h, str) and len(h) == 64) or not isinstance(tail, list):
            raise CorruptObject(f"{what}: file entry without hash or extents")
        total = 0
        for ext in tail:
            if type(ext) is not list or len(ext) != 5:
                raise CorruptObject(f"{what}: malformed extent")
            vol, voff, vlen, boff, blen = ext
            if type(vol) is not str or vol not in _VOLUMES_SEEN:
                if type(vol) is not str or not VOLUME_RE.match(vol):
                    raise CorruptObject(f"{what}: malformed extent")
                if len(_VOLUMES_SEEN) > 4096:
                    _VOLUMES_SEEN.clear()
                _VOLUMES_SEEN.add(vol)
            # bounded here, so no later read or slice trusts a length from the medium (the
            # usual case in one test, the checks one by one only to say what is wrong)
            if not (type(voff) is _I and type(vlen) is _I and type(boff) is _I and type(blen) is _I
                    and 0 <= voff <= 1 << 40 and 0 <= vlen <= MAX_SEALED_BLOCK and 0 <= boff
                    and 0 <= blen and boff + blen <= BLOCK_SIZE):
                for v in ext[1:]:
                    _int(v, what, 0, 1 << 40)
                if vlen > MAX_SEALED_BLOCK or boff + blen > BLOCK_SIZE:
                    raise CorruptObject(f"{what}: extent larger than a block")
            total += blen
        if total != e.size:
            raise CorruptObject(f"{what}: extents do not add up to the file size")
        e.hash, e.extents = h, tail
    elif typ == "l":
        if not isinstance(tail, str) or not tail or "\0" in tail:
            raise CorruptObject(f"{what}: symlink without a usable target")
        e.link = tail
    return e


def encode_page(entries: list[Entry]) -> bytes:
    return dumps([e.encode() for e in entries])


def decode_page_list(plain: bytes, what: str) -> list[Entry]:
    raw = loads(plain, what)
    if not isinstance(raw, list):
        raise CorruptObject(f"{what}: not a list of entries")
    return [decode_entry(r, what) for r in raw]


class Delta:
    """Changes from a directory's stored base page to its state in this snapshot.

    Kept inline in the catalog's page table (all deltas of a snapshot compress together).
    ``rens`` are Maildir flag renames: [old name, new name's part after the base name,
    new mtime_ns or null when unchanged].

    Read from a catalog, the deletions and renames are validated when first used, the added
    entries (``puts``) entry by entry (``decode_entry``) when first used: the catalog is
    authenticated before it is parsed, and a search over a month of snapshots (``find``) then
    validates only the entries it uses (``wanted_puts``) instead of every entry added to every
    busy folder every night. Nothing gets an entry that has not been validated. A delta from
    the local cache of parsed catalogs (``Delta.packed``, dmbackup.archive.tablecache) is
    not even unpacked until used, and answers ``may_put``/``may_touch`` from what the cache
    kept beside it.
    """

    __slots__ = ("_dels", "_rens", "_checked", "_puts", "_raw", "_what", "_packed", "_size", "_keys")

    def __init__(self, dels: list[str], rens: list[list], puts: "list[Entry] | None" = None, *,
                 raw_puts: list | None = None, what: str = "delta"):
        self._dels, self._rens = dels, rens
        self._checked = raw_puts is None            # read from a catalog: checked when first used
        self._puts, self._raw, self._what = puts, raw_puts, what
        if puts is None and raw_puts is None:
            self._puts = []
        self._packed = self._keys = None

    @classmethod
    def packed(cls, blob: bytes, size: int, keys: bytes, what: str) -> "Delta":
        """A delta from the local cache of parsed catalogs (dmbackup.archive.tablecache): the
        marshal bytes of its parsed JSON value, unpacked and checked as ``decode_delta`` does
        when first used; ``size`` and ``keys`` (the 4-byte key prefixes of its added files,
        ``may_put``) were taken from the same value when the cache file was written."""
        d = cls([], [], raw_puts=[], what=what)
        d._packed, d._size, d._keys = blob, size, keys
        return d

    def read_once(self) -> "Delta":
        """This delta for a caller that reads it once: a packed delta's twin, unpacked when used
        and dropped with the caller's reference, while this one stays packed and small (the
        catalogs of 30 nights keep their deltas as bytes, not as millions of objects); any
        other delta is itself."""
        if self._packed is None:
            return self
        return Delta.packed(self._packed, self._size, self._keys, self._what)

    def _unpack(self) -> None:
        blob, what = self._packed, self._what
        try:
            raw = marshal.loads(blob)
        except (ValueError, EOFError, TypeError):
            raise CorruptObject(f"{what}: malformed delta") from None
        d = decode_delta(raw, what)
        if d is None:
            raise CorruptObject(f"{what}: malformed delta")
        self._dels, self._rens, self._raw = d._dels, d._rens, d._raw
        self._packed = self._keys = None

    def may_put(self, prefixes) -> bool:
        """False when no file this delta adds has a content key whose first 4 bytes (as a
        native ``int``, pagekeys-style) are in ``prefixes``: only a packed delta knows, any
        other answers True."""
        keys = self._keys
        return keys is None or not prefixes.isdisjoint(memoryview(keys).cast("I"))

    def may_touch(self, names) -> bool:
        """False when this delta deletes, renames and replaces none of ``names`` (and renames
        nothing onto one): only a packed delta knows, by looking for each name's Maildir base
        name (the part before ``:``, which a rename keeps) in its marshal bytes, where every
        string of it is written out as UTF-8 (a name that is not there cannot be in it); any
        other answers True."""
        blob = self._packed
        if blob is None:
            return True
        for n in names:
            if n.split(":", 1)[0].encode("utf-8", "surrogatepass") in blob:
                return True
        return False

    def _check(self) -> None:
        if self._packed is not None:
            self._unpack()
        what = self._what
        if not all(type(d) is str for d in self._dels):
            raise CorruptObject(f"{what}: malformed delta")
        for r in self._rens:
            if not (type(r) is list and len(r) == 3 and type(r[0]) is str and type(r[1]) is str):
                raise CorruptObject(f"{what}: malformed rename in delta")
            if r[2] is not None:
                _int(r[2], what, -(1 << 63))
        self._checked = True

    @property
    def dels(self) -> list[str]:
        if not self._checked:
            self._check()
        return self._dels

    @property
    def rens(self) -> list[list]:
        if not self._checked:
            self._check()
        return self._rens

    @property
    def puts(self) -> list[Entry]:
        if self._packed is not None:
            self._unpack()
        if self._puts is None:
            what = self._what
            self._puts = [decode_entry(e, what) for e in self._raw]
            self._raw = None
        return self._puts

    def wanted_puts(self, want: set[str]) -> tuple[list[Entry], list[str]]:
        """(validated file entries among the puts whose content key, the first 32 hex digits
        of their SHA-256, is in ``want``; the names of the other puts), validating only the
        former."""
        if self._packed is not None:
            self._unpack()
        if self._raw is None:
            keep, other = [], []
            for e in self._puts:
                if e.type == "f" and e.hash is not None and e.hash[:32] in want:
                    keep.append(e)
                else:
                    other.append(e.name)
            return keep, other
        keep, other, what = [], [], self._what
        for r in self._raw:
            if type(r) is not list or len(r) != 10 or type(r[0]) is not str:
                raise CorruptObject(f"{what}: malformed entry")
            h = r[8]
            if r[1] == "f" and type(h) is str and h[:32] in want:
                keep.append(decode_entry(r, what))
            else:
                other.append(r[0])
        return keep, other

    @property
    def size(self) -> int:
        if self._packed is not None:
            return self._size
        return len(self._dels) + len(self._rens) + len(self._raw if self._puts is None else self._puts)

    def encode(self) -> dict:
        return {"del": self.dels, "ren": self.rens, "put": [e.encode() for e in self.puts]}

    def __eq__(self, other) -> bool:
        return isinstance(other, Delta) and self.encode() == other.encode()

    def __repr__(self) -> str:
        return f"Delta(dels={self.dels!r}, rens={self.rens!r}, puts={self.puts!r})"


def decode_delta(raw, what: str) -> "Delta | None":
    if raw is None:
        return None
    if type(raw) is tuple:          # packed by the local cache (JSON never makes a tuple)
        if not (len(raw) == 3 and type(raw[0]) is bytes and type(raw[1]) is int and raw[1] >= 0
                and type(raw[2]) is bytes and len(raw[2]) % 4 == 0):
            raise CorruptObject(f"{what}: malformed delta")
        return Delta.packed(raw[0], raw[1], raw[2], what)
    if not isinstance(raw, dict):
        raise CorruptObject(f"{what}: malformed delta")
    dels, rens, puts = raw.get("del"), raw.get("ren"), raw.get("put")
    if type(dels) is not list or type(rens) is not list or type(puts) is not list:
        raise CorruptObject(f"{what}: malformed delta")
    return Delta(dels, rens, raw_puts=puts, what=what)


def apply_delta(base: list[Entry], delta: "Delta | None", what: str) -> list[Entry]:
    if delta is None:
        return base
    d = {e.name: e for e in base}
    for n in delta.dels:
        d.pop(n, None)
    for old, suffix, mtime in delta.rens:
        e = d.pop(old, None)
        if e is None:
            raise CorruptObject(f"{what}: delta renames {old!r}, which its base page does not have")
        new = old.split(":", 1)[0] + suffix
        d[new] = Entry(new, e.type, e.mode, e.uid, e.gid, e.mtime_ns if mtime is None else mtime, e.size,
                       e.ino, e.hash, e.extents, e.link)
    for e in delta.puts:
        d[e.name] = e
    return [d[k] for k in sorted(d)]


def make_delta(old: list[Entry], new: list[Entry], maildir: bool) -> Delta:
    """Changes from ``old`` to ``new``. Renames keep everything but the name and mtime."""
    olds = {e.name: e for e in old}
    news = {e.name: e for e in new}
    dels = [n for n in olds if n not in news]
    puts = [e for n, e in news.items() if n not in olds or olds[n].encode() != e.encode()]
    rens = []
    if maildir and dels and puts:
        by_base = {n.split(":", 1)[0]: olds[n] for n in dels}
        keep_puts, gone = [], set()
        for e in puts:
            base = e.name.split(":", 1)[0]
            o = by_base.get(base)
            if (o is not None and e.name not in olds and o.name not in gone
                    and (o.type, o.mode, o.uid, o.gid, o.size, o.ino, o.hash, o.extents, o.link)
                    == (e.type, e.mode, e.uid, e.gid, e.size, e.ino, e.hash, e.extents, e.link)):
                rens.append([o.name, e.name[len(base):], None if e.mtime_ns == o.mtime_ns else e.mtime_ns])
                gone.add(o.name)
            else:
                keep_puts.append(e)
        puts = keep_puts
        dels = [n for n in dels if n not in gone]
    return Delta(dels, rens, puts)


# --- catalog -----------------------------------------------------------------------------
@dataclass
class Header:
    id: str
    chain: str
    seq: int
    parent: str | None
    kind: str                      # "full" | "incremental"
    what: str                      # "mail"
    time: str                      # ISO 8601 UTC
    hostname: str
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    stored_bytes: int = 0
    root: list = field(default_factory=lambda: [0o755, 0, 0, 0])
    volumes: list = field(default_factory=list)   # [{"name","size","sha256"}]
    pages: dict | None = None                    # {"name","size","sha256"} or None
    index: dict | None = None                    # {"name","size","sha256"} or None
    config_bundle: str | None = None
    warnings: int = 0
    job: str | None = None
    format: int = FORMAT_VERSION

    def as_dict(self) -> dict:
        return dict(self.__dict__)


HEADER_FIELDS = {
    "id": str, "chain": str, "seq": int, "kind": str, "what": str, "time": str, "hostname": str,
    "files": int, "dirs": int, "bytes": int, "stored_bytes": int, "root": list, "volumes": list,
    "warnings": int, "format": int,
}


def decode_header(data: Any, what: str) -> Header:
    if not isinstance(data, dict):
        raise CorruptObject(f"{what}: header is not an object")
    for k, t in HEADER_FIELDS.items():
        if not isinstance(data.get(k), t) or isinstance(data.get(k), bool):
            raise CorruptObject(f"{what}: header field {k!r} missing or malformed")
    if data["format"] != FORMAT_VERSION:
        raise CorruptObject(f"{what}: unsupported format version {data['format']}")
    if data["kind"] not in ("full", "incremental"):
        raise CorruptObject(f"{what}: unknown snapshot kind")
    def object_ok(v) -> bool:
        return (isinstance(v, dict) and isinstance(v.get("name"), str) and bool(OBJECT_RE.match(v["name"]))
                and type(v.get("size")) is int and v["size"] >= 0 and isinstance(v.get("sha256"), str))

    if not all(object_ok(v) and VOLUME_RE.match(v["name"]) for v in data["volumes"]):
        raise CorruptObject(f"{what}: malformed volume list")
    for k in ("pages", "index"):
        if data.get(k) is not None and not object_ok(data[k]):
            raise CorruptObject(f"{what}: malformed {k} record")
    root = data["root"]
    if not (len(root) == 4 and all(type(x) is int for x in root) and 0 <= root[0] <= 0o7777
            and 0 <= root[1] <= MAX_ID and 0 <= root[2] <= MAX_ID):
        raise CorruptObject(f"{what}: malformed root record")
    if not TIME_RE.match(data["time"]):
        raise CorruptObject(f"{what}: malformed time")
    if data.get("parent") is not None and not isinstance(data["parent"], str):
        raise CorruptObject(f"{what}: malformed parent")
    if data.get("config_bundle") is not None and not isinstance(data["config_bundle"], str):
        raise CorruptObject(f"{what}: malformed config bundle name")
    known = set(Header.__dataclass_fields__)
    return Header(**{k: v for k, v in data.items() if k in known})


@dataclass(slots=True)
class PageRow:
    dir: str
    owner: str
    offset: int
    length: int
    sha256: str                     # first 128 bits (hex) of SHA-256 of the directory's full page
    entries: int
    delta: "Delta | None" = None    # inline changes applied to the stored base page

    def encode(self) -> list:
        return [self.dir, self.owner, self.offset, self.length, self.sha256, self.entries,
                self.delta.encode() if self.delta else None]


def decode_rows(raw: Any, what: str) -> list[PageRow]:
    if not isinstance(raw, list):
        raise CorruptObject(f"{what}: page table is not a list")
    rows = []
    append, top = rows.append, 1 << 63
    for r in raw:       # a month of tables is 100,000 rows: the checks of _int, inline
        if type(r) is not list or len(r) != 7:
            raise CorruptObject(f"{what}: malformed page table row")
        d, owner, offset, length, sha, entries, delta = r
        if type(d) is not str or type(owner) is not str or type(sha) is not str:
            raise CorruptObject(f"{what}: malformed page table row")
        if not (type(offset) is int and 0 <= offset <= top and type(length) is int and 1 <= length <= MAX_PAGE_PLAIN
                and type(entries) is int and 0 <= entries <= top):
            _int(offset, what), _int(length, what, 1, MAX_PAGE_PLAIN), _int(entries, what)    # raises
        append(PageRow(d, owner, offset, length, sha, entries, None if delta is None else decode_delta(delta, what)))
    return rows


def encode_index_parts(builder, sealer, repo_id: str, chain: str, snap: str) -> tuple[bytes, bytes]:
    """The sealed content index as two parts to write one after the other: a million files
    make 38 MB of incompressible hashes, and joining the parts would hold a third copy."""
    return sealer.seal_parts(compress(builder.encode()), index_aad(repo_id, chain, snap))


def decode_index(data: bytes, sealer, repo_id: str, chain: str, snap: str):
    from dmbackup.archive.contentindex import Index

    what = f"content index {chain}/{snap}"
    return Index(decompress(sealer.open(data, index_aad(repo_id, chain, snap), what), what, MAX_BODY_PLAIN), what)


def encode_catalog(header: Header, table: dict, warnings: list[str], sealer, repo_id: str, *,
                   count_self: bool = False) -> bytes:
    """``table`` is {"pages": rows} (a full table) or {"base": parent id, "depth": n,
    "changed": rows, "removed": dirs} (changes to the parent's table).

    ``count_self``: first add the size of this very catalog to ``header.stored_bytes`` (the
    size it has with the header as given, as a backup records it); the body, which does not
    depend on the header, is encoded once either way."""
    body_obj = dict(table)
    for k in ("pages", "changed"):
        if k in body_obj:
            body_obj[k] = [r.encode() for r in body_obj[k]]
    body_obj["warnings"] = warnings[:1000]
    body = sealer.seal(compress(dumps(body_obj)), body_aad(repo_id, header.chain, header.id))
    head = sealer.seal(dumps(header.as_dict()), head_aad(repo_id, header.chain, header.id))
    if count_self:
        header.stored_bytes += len(CATALOG_MAGIC) + U32.size + len(head) + len(body)
        head = sealer.seal(dumps(header.as_dict()), head_aad(repo_id, header.chain, header.id))
    return CATALOG_MAGIC + U32.pack(len(head)) + head + body


def decode_catalog_header(data: bytes, sealer, repo_id: str, chain: str, snap: str) -> tuple[Header, int]:
    what = f"catalog {chain}/{snap}"
    if not data.startswith(CATALOG_MAGIC) or len(data) < len(CATALOG_MAGIC) + 4:
        raise CorruptObject(f"{what} has no catalog signature")
    (n,) = U32.unpack_from(data, len(CATALOG_MAGIC))
    start = len(CATALOG_MAGIC) + 4
    if n > MAX_HEADER:
        raise CorruptObject(f"{what} claims a {n}-byte header, more than any catalog has")
    if start + n > len(data):
        raise CorruptObject(f"{what} is truncated")
    plain = sealer.open(data[start:start + n], head_aad(repo_id, chain, snap), what)
    header = decode_header(loads(plain, what), what)
    if header.id != snap or header.chain != chain:
        raise CorruptObject(f"{what} names another snapshot ({header.chain}/{header.id})")
    return header, start + n


@dataclass
class Table:
    rows: list[PageRow] | None = None         # a full table
    base: str | None = None                   # or: changes to this (parent) snapshot's table
    depth: int = 0
    changed: list[PageRow] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def decode_catalog_body(data: bytes, sealer, repo_id: str, chain: str, snap: str) -> tuple[Table, list]:
    what = f"catalog {chain}/{snap}"
    return table_of_body(open_catalog_body(data, sealer, repo_id, chain, snap), what)


def open_catalog_body(data: bytes, sealer, repo_id: str, chain: str, snap: str):
    """The sealed body of catalog ``chain/snap`` authenticated, inflated and parsed (the JSON
    value, not yet checked: ``table_of_body``)."""
    what = f"catalog {chain}/{snap}"
    return loads(decompress(sealer.open(data, body_aad(repo_id, chain, snap), what), what, MAX_BODY_PLAIN), what)


def table_of_body(obj, what: str) -> tuple[Table, list]:
    """The page table and warnings of a parsed catalog body, every part checked."""
    if not isinstance(obj, dict):
        raise CorruptObject(f"{what}: body is not an object")
    warnings = obj.get("warnings") or []
    if "pages" in obj:
        return Table(rows=decode_rows(obj["pages"], what)), warnings
    base, removed = obj.get("base"), obj.get("removed")
    if not isinstance(base, str) or not isinstance(removed, list) or not all(isinstance(r, str) for r in removed):
        raise CorruptObject(f"{what}: malformed page table")
    return Table(base=base, depth=_int(obj.get("depth"), what, 1, 1000),
                 changed=decode_rows(obj.get("changed"), what), removed=removed), warnings


def tree_order(rows) -> list:
    return sorted(rows, key=lambda r: tuple(r.dir.split("/")) if r.dir else ())
