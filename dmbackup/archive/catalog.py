"""Catalogs and pages (format: see dmbackup.archive): encoding, decoding, validation.

Everything read from a repository is validated here before the engine sees it: a catalog or
page that does not have exactly the documented shape raises ``CorruptObject``, whatever the
bytes are (the parsers are fuzzed in tests/archive/test_parsers_fuzz.py).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import zstandard

from ..errors import CorruptObject
from . import CATALOG_MAGIC, FORMAT_VERSION

U32 = struct.Struct("<I")
TYPES = ("f", "d", "l")
MAX_PAGE_PLAIN = 64 << 20
MAX_BODY_PLAIN = 1 << 30


def head_aad(repo_id: str, chain: str, snap: str) -> bytes:
    return f"{repo_id}|cat-head|{chain}|{snap}".encode()


def body_aad(repo_id: str, chain: str, snap: str) -> bytes:
    return f"{repo_id}|cat-body|{chain}|{snap}".encode()


def page_aad(repo_id: str, chain: str, owner: str, offset: int) -> bytes:
    return f"{repo_id}|page|{chain}|{owner}|{offset}".encode()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def loads(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CorruptObject(f"{what} is not valid JSON") from None


def compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def decompress(data: bytes, what: str, limit: int) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)
    except zstandard.ZstdError:
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


def _int(v: Any, what: str, lo: int = 0, hi: int = 1 << 63) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise CorruptObject(f"{what}: bad number {v!r}")
    return v


def decode_entry(raw: Any, what: str) -> Entry:
    if not isinstance(raw, list) or len(raw) != 10:
        raise CorruptObject(f"{what}: malformed entry")
    name, typ, mode, uid, gid, mtime, size, ino, h, tail = raw
    if not isinstance(name, str) or typ not in TYPES:
        raise CorruptObject(f"{what}: malformed entry name or type")
    e = Entry(name, typ, _int(mode, what, 0, 0o7777), _int(uid, what, 0, 1 << 32),
              _int(gid, what, 0, 1 << 32), _int(mtime, what, -(1 << 63)), _int(size, what),
              _int(ino, what))
    if typ == "f":
        if not (isinstance(h, str) and len(h) == 64) or not isinstance(tail, list):
            raise CorruptObject(f"{what}: file entry without hash or extents")
        total = 0
        for ext in tail:
            if (not isinstance(ext, list) or len(ext) != 5 or not isinstance(ext[0], str)):
                raise CorruptObject(f"{what}: malformed extent")
            for v in ext[1:]:
                _int(v, what, 0, 1 << 40)
            total += ext[4]
        if total != e.size:
            raise CorruptObject(f"{what}: extents do not add up to the file size")
        e.hash, e.extents = h, tail
    elif typ == "l":
        if not isinstance(tail, str):
            raise CorruptObject(f"{what}: symlink without target")
        e.link = tail
    return e


def encode_page(entries: list[Entry]) -> bytes:
    return dumps([e.encode() for e in entries])


def decode_page(plain: bytes, what: str) -> list[Entry]:
    raw = loads(plain, what)
    if not isinstance(raw, list):
        raise CorruptObject(f"{what}: not a list of entries")
    return [decode_entry(r, what) for r in raw]


def split_points(names: list[str]) -> list[int]:
    """Content-defined page boundaries: indexes after which a page ends."""
    cuts = []
    for i, n in enumerate(names[:-1]):
        if i - (cuts[-1] if cuts else -1) >= 64 and hashlib.blake2b(
                n.encode("utf-8", "surrogatepass"), digest_size=2).digest()[1] == 0:
            cuts.append(i)
    return cuts


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
    for v in data["volumes"]:
        if not (isinstance(v, dict) and isinstance(v.get("name"), str) and isinstance(v.get("size"), int)
                and isinstance(v.get("sha256"), str)):
            raise CorruptObject(f"{what}: malformed volume list")
    known = set(Header.__dataclass_fields__)
    return Header(**{k: v for k, v in data.items() if k in known})


@dataclass
class PageRow:
    dir: str
    owner: str
    offset: int
    length: int
    sha256: str
    entries: int

    def encode(self) -> list:
        return [self.dir, self.owner, self.offset, self.length, self.sha256, self.entries]


def decode_rows(raw: Any, what: str) -> list[PageRow]:
    if not isinstance(raw, list):
        raise CorruptObject(f"{what}: page table is not a list")
    rows = []
    for r in raw:
        if (not isinstance(r, list) or len(r) != 6 or not isinstance(r[0], str)
                or not isinstance(r[1], str) or not isinstance(r[4], str)):
            raise CorruptObject(f"{what}: malformed page table row")
        rows.append(PageRow(r[0], r[1], _int(r[2], what), _int(r[3], what, 1, MAX_PAGE_PLAIN),
                            r[4], _int(r[5], what)))
    return rows


def encode_catalog(header: Header, rows: list[PageRow], index: dict, warnings: list[str],
                   sealer, repo_id: str) -> bytes:
    head = sealer.seal(dumps(header.as_dict()), head_aad(repo_id, header.chain, header.id))
    body_obj = {"pages": [r.encode() for r in rows], "index": index, "warnings": warnings[:1000]}
    body = sealer.seal(compress(dumps(body_obj)), body_aad(repo_id, header.chain, header.id))
    return CATALOG_MAGIC + U32.pack(len(head)) + head + body


def decode_catalog_header(data: bytes, sealer, repo_id: str, chain: str, snap: str) -> tuple[Header, int]:
    what = f"catalog {chain}/{snap}"
    if not data.startswith(CATALOG_MAGIC) or len(data) < len(CATALOG_MAGIC) + 4:
        raise CorruptObject(f"{what} has no catalog signature")
    (n,) = U32.unpack_from(data, len(CATALOG_MAGIC))
    start = len(CATALOG_MAGIC) + 4
    if start + n > len(data):
        raise CorruptObject(f"{what} is truncated")
    plain = sealer.open(data[start:start + n], head_aad(repo_id, chain, snap), what)
    header = decode_header(loads(plain, what), what)
    if header.id != snap or header.chain != chain:
        raise CorruptObject(f"{what} names another snapshot ({header.chain}/{header.id})")
    return header, start + n


def decode_catalog_body(data: bytes, sealer, repo_id: str, chain: str, snap: str):
    what = f"catalog {chain}/{snap}"
    plain = decompress(sealer.open(data, body_aad(repo_id, chain, snap), what), what, MAX_BODY_PLAIN)
    obj = loads(plain, what)
    if not isinstance(obj, dict):
        raise CorruptObject(f"{what}: body is not an object")
    rows = decode_rows(obj.get("pages"), what)
    index = obj.get("index")
    if not isinstance(index, dict):
        raise CorruptObject(f"{what}: content index missing")
    warnings = obj.get("warnings") or []
    return rows, index, warnings
