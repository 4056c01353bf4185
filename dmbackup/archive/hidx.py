"""A snapshot's header index object, ``chains/<chain>/<snap>.hidx``: storing and loading it.

The plaintext is ``dmbackup.archive.headerindex.IndexWriter.encode()``: one record per
message whose content the snapshot stored (new to its chain), keyed by the first 16 bytes of
the content's SHA-256 (``key_of``: the ``sha256-hex`` of the catalog entries that use it).
It is zstd-compressed (level 9) and sealed with the repository's catalog key, AAD
``"<repo id>|hidx|<chain>|<snap>"`` (dmbackup.archive.layout): the medium learns nothing of
the headers, and an index copied to another snapshot, or to another repository, fails to
open.

The object is optional and NOT listed in the catalog header: catalogs are immutable, and
``dmbackup reindex`` adds indexes to snapshots made before they existed. Its absence means
"not indexed". It is written like every object (temporary name, then rename) and never
replaced: ``write_hidx`` refuses when one exists. Reads are bounded: at most ``MAX_HIDX``
sealed bytes are read and at most ``MAX_HIDX_PLAIN`` inflated (``catalog.decompress``);
anything that does not open or decode is ``CorruptObject`` (exit 4), which ``find`` reports
per snapshot and treats as "not indexed".

Standard library, zstandard and the archive package only: no engine, no typer.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import zstandard

from dmbackup.archive import layout
from dmbackup.archive.catalog import decompress
from dmbackup.archive.headerindex import HEADER_CAP, HeaderIndexError, IndexWriter, Record, decode, search
from dmbackup.archive.headerparse import extract
from dmbackup.errors import CorruptObject, NotFound, OperationFailed

__all__ = ["MAX_HIDX", "MAX_HIDX_PLAIN", "LEVEL", "KEY_BYTES", "HidxExists", "key_of", "key_hex",
           "index_message", "seal_hidx", "open_hidx", "write_hidx", "has_hidx", "read_hidx",
           "iter_hidx", "search_hidx", "load_hidx"]

MAX_HIDX = 256 << 20            # sealed bytes read (about 5 million messages at ~50 bytes each)
MAX_HIDX_PLAIN = 1 << 30        # plaintext inflated (about 185 bytes a message)
LEVEL = 9
KEY_BYTES = 16


class HidxExists(OperationFailed):
    """The snapshot already has a header index: it is never replaced."""


def key_of(sha256_hex: str) -> bytes:
    """A record's key: the first 16 bytes of the content's SHA-256 (from a catalog entry's hex)."""
    return bytes.fromhex(sha256_hex[:2 * KEY_BYTES])


def key_hex(key: bytes) -> str:
    """The key as the first 32 hex digits of the SHA-256 (what ``entry.hash[:32]`` is)."""
    return key.hex()


def index_message(writer: IndexWriter, sha256_hex: str, size: int, head: bytes) -> bool:
    """Add one stored message to ``writer``: ``head`` is its first bytes (at least the header
    block; ``HEADER_CAP`` is plenty). Never raises for what the message holds: a message that
    is not a header block is counted as skipped. True when a record was added."""
    try:
        headers = extract(head[:HEADER_CAP] if len(head) > HEADER_CAP else head)
        if headers is None:
            writer.add(b"", 0, None)          # counted as skipped
            return False
        writer.add(key_of(sha256_hex), size, headers)
        return True
    except (ValueError, TypeError):            # a size or key out of range: never stops a backup
        writer.counts["skipped"] += 1
        return False


def seal_hidx(plain: bytes, sealer, repo_id: str, chain: str, snap: str) -> bytes:
    return sealer.seal(zstandard.ZstdCompressor(level=LEVEL).compress(plain),
                       layout.hidx_aad(repo_id, chain, snap))


def open_hidx(sealed: bytes, sealer, repo_id: str, chain: str, snap: str) -> bytes:
    """The plaintext of a sealed header index (CorruptObject if it does not open or inflate)."""
    what = f"header index {chain}/{snap}"
    if len(sealed) > MAX_HIDX:
        raise CorruptObject(f"{what} is larger than {MAX_HIDX >> 20} MiB: damaged")
    return decompress(sealer.open(sealed, layout.hidx_aad(repo_id, chain, snap), what), what, MAX_HIDX_PLAIN)


def has_hidx(repo, chain: str, snap: str) -> bool:
    try:
        repo.object_size(chain, layout.hidx_name(snap))
        return True
    except NotFound:
        return False


def write_hidx(repo, chain: str, snap: str, writer: IndexWriter) -> dict:
    """Seal ``writer``'s records and store them as ``<snap>.hidx`` (temporary name, then rename).

    Raises HidxExists when the snapshot has one already (call it under the repository lock).
    Returns ``{"name", "size", "sha256", "records", "counts"}`` (``counts``: the writer's tally of
    records, messages whose first bytes were not a header block, and header problems by name)."""
    name = layout.hidx_name(snap)
    if has_hidx(repo, chain, snap):
        raise HidxExists(f"snapshot {chain}/{snap} already has a header index ({name}): it is never replaced")
    blob = seal_hidx(writer.encode(), repo.keys.catalog, repo.id, chain, snap)
    repo.put_object(chain, name, blob)
    return {"name": name, "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), "records": len(writer),
            "counts": dict(writer.counts)}


def read_hidx(repo, ref) -> bytes | None:
    """The plaintext of a snapshot's header index; None when it has none (not indexed)."""
    name = layout.hidx_name(ref.id)
    try:
        size = repo.object_size(ref.chain, name)
        if size > MAX_HIDX:
            raise CorruptObject(f"header index {ref.chain}/{ref.id} is larger than {MAX_HIDX >> 20} MiB: damaged")
        sealed = repo.read_object(ref.chain, name, 0, size + 1)     # +1: notice one that grew
    except NotFound:
        return None
    return open_hidx(sealed, repo.keys.catalog, repo.id, ref.chain, ref.id)


def iter_hidx(plain: bytes, what: str = "header index") -> Iterator[Record]:
    """The records of a header index plaintext; CorruptObject (at the bad chunk) on garbage."""
    try:
        for rec in decode(plain):
            if len(rec.key) != KEY_BYTES:
                raise CorruptObject(f"{what}: a record key is not {KEY_BYTES} bytes")
            yield rec
    except HeaderIndexError as exc:
        raise CorruptObject(f"{what}: {exc}") from None


def search_hidx(plain: bytes, query, keys: set[bytes] | None = None, what: str = "header index") -> Iterator[Record]:
    """The records of a header index plaintext that ``query`` (a headerindex.Query) matches and,
    with ``keys``, whose key is in ``keys``; CorruptObject on garbage (headerindex.search)."""
    try:
        for rec in search(plain, query, keys):
            if len(rec.key) != KEY_BYTES:
                raise CorruptObject(f"{what}: a record key is not {KEY_BYTES} bytes")
            yield rec
    except HeaderIndexError as exc:
        raise CorruptObject(f"{what}: {exc}") from None


def load_hidx(repo, ref) -> dict[bytes, Record] | None:
    """A snapshot's header index as {key: Record}, None when it has none (CorruptObject if damaged)."""
    plain = read_hidx(repo, ref)
    if plain is None:
        return None
    return {r.key: r for r in iter_hidx(plain, f"header index {ref.chain}/{ref.id}")}
