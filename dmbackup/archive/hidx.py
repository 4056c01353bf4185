"""A snapshot's header index object, ``chains/<chain>/<snap>.hidx``: storing and loading it.

The plaintext is ``dmbackup.archive.headerindex.IndexWriter.encode()``: one record per
message whose content the snapshot stored (new to its chain), keyed by the first 16 bytes of
the content's SHA-256 (``key_of``: the ``sha256-hex`` of the catalog entries that use it).
Version 2 (``HidxWriter``, what backups and ``reindex`` write): ``MAGIC2`` then frames, each
``u32 LE length | sealed frame``; a frame is about ``FRAME_PLAIN`` bytes of whole chunks of
the plaintext, zstd-compressed (level 3) and sealed with the repository's catalog key, AAD
``"<repo id>|hidx|<chain>|<snap>|<n>|more"`` (``|last`` for the final one:
dmbackup.archive.layout.hidx_frame_aad). Frames are written while the backup runs, so its
memory holds one frame, not the index. Version 1 (``seal_hidx``, still read): the whole
plaintext zstd-compressed (level 9) and sealed, AAD ``"<repo id>|hidx|<chain>|<snap>"``.
The medium learns nothing of the headers; an index copied to another snapshot or repository,
or a frame dropped, reordered, repeated or cut off, fails to open.

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
import struct
from typing import Iterator

import zstandard

from dmbackup.archive import layout
from dmbackup.archive.catalog import decompress
from dmbackup.archive.headerindex import (HEADER_CAP, MAGIC, VERSION, HeaderIndexError, IndexWriter, Record, decode,
                                          keys_pieces, search, search_pieces)
from dmbackup.errors import CorruptObject, DmError, NotFound, OperationFailed

__all__ = ["MAX_HIDX", "MAX_HIDX_PLAIN", "LEVEL", "KEY_BYTES", "HidxExists", "key_of", "key_hex",
           "index_message", "seal_hidx", "open_hidx", "HidxWriter", "write_hidx", "has_hidx", "read_hidx",
           "iter_hidx", "search_hidx", "hidx_pieces", "search_pieces_hidx", "keys_pieces_hidx", "load_hidx"]

MAX_HIDX = 256 << 20            # sealed bytes read (about 5 million messages at ~50 bytes each)
MAX_HIDX_PLAIN = 1 << 30        # plaintext inflated (about 185 bytes a message)
LEVEL = 9
FRAME_LEVEL = 3                 # level 9's tables cost a backup ~30 MB more memory for 4% less size
MAGIC2 = b"DMHIDX\x02\n"         # a version 2 (framed) object begins with these 8 bytes
FRAME = struct.Struct("<I")
FRAME_PLAIN = 2 << 20           # plaintext per frame, whole chunks (about 11,000 messages)
MAX_FRAME = 16 << 20            # a sealed frame read
MAX_FRAME_PLAIN = 64 << 20      # a frame inflated (a frame holds FRAME_PLAIN plus one chunk)
KEY_BYTES = 16


class HidxExists(OperationFailed):
    """The snapshot already has a header index: it is never replaced."""


def key_of(sha256_hex: str) -> bytes:
    """A record's key: the first 16 bytes of the content's SHA-256 (from a catalog entry's hex)."""
    return bytes.fromhex(sha256_hex[:2 * KEY_BYTES])


def key_hex(key: bytes) -> str:
    """The key as the first 32 hex digits of the SHA-256 (what ``entry.hash[:32]`` is)."""
    return key.hex()


def index_message(writer: "IndexWriter | HidxWriter", sha256_hex: str, size: int, head: bytes) -> bool:
    """Add one stored message to ``writer``: ``head`` is its first bytes (at least the header
    block; ``HEADER_CAP`` is plenty). Never raises for what the message holds: a message that
    is not a header block is counted as skipped. True when a record was added."""
    try:
        from dmbackup.archive.headerparse import extract      # only when messages are indexed

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


class HidxWriter:
    """Writes ``<snap>.hidx`` (version 2) while records are added: each ``FRAME_PLAIN`` bytes of
    plaintext are compressed, sealed and written as a frame at once, so a backup never holds
    its index (about 185 bytes a message: 185 MB for a million) in memory. ``add`` as
    ``IndexWriter.add``; ``commit()`` writes the last frame and makes the object visible,
    ``abort()`` drops it. Raises HidxExists (at the first frame or at commit) when the snapshot
    has an index already."""

    def __init__(self, repo, chain: str, snap: str):
        self.repo, self.chain, self.snap = repo, chain, snap
        self.index = IndexWriter(on_chunk=self._chunk)
        self.counts = self.index.counts
        self._buf: list[bytes] = [MAGIC + bytes((VERSION,))]
        self._len = len(self._buf[0])
        self._frames = 0
        self._out = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False
        self._broken: BaseException | None = None

    def __len__(self) -> int:
        return len(self.index)

    def add(self, key: bytes, size: int, headers) -> None:
        self.index.add(key, size, headers)

    def _chunk(self, data: bytes) -> None:
        if self._broken is not None:
            return
        self._buf.append(data)
        self._len += len(data)
        if self._len >= FRAME_PLAIN:
            try:
                self._emit(last=False)
            except (DmError, OSError) as exc:     # the index never fails a backup: reported at commit
                self._broken = exc
                self._buf, self._len = [], 0
                self.abort()

    def _emit(self, last: bool) -> None:
        repo = self.repo
        plain = b"".join(self._buf)
        self._buf, self._len = [], 0
        nonce, body = repo.keys.catalog.seal_parts(
            zstandard.ZstdCompressor(level=FRAME_LEVEL).compress(plain),
            layout.hidx_frame_aad(repo.id, self.chain, self.snap, self._frames, last))
        if self._out is None:
            self._refuse_existing()
            self._out = repo.object_writer(self.chain, layout.hidx_name(self.snap))
            self._write(MAGIC2)
        for part in (FRAME.pack(len(nonce) + len(body)), nonce, body):
            self._write(part)
        self._frames += 1

    def _refuse_existing(self) -> None:
        if has_hidx(self.repo, self.chain, self.snap):
            raise HidxExists(f"snapshot {self.chain}/{self.snap} already has a header index "
                             f"({layout.hidx_name(self.snap)}): it is never replaced")

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._hash.update(data)
        self._size += len(data)

    def commit(self) -> dict:
        """Write the last frame and commit; ``{"name", "size", "sha256", "records", "counts"}``."""
        if self._broken is not None:
            raise OperationFailed(f"header index {self.chain}/{self.snap} could not be written: {self._broken}")
        try:
            self.index.flush()
            self._buf.append(b"\x00")            # the codec's end marker
            self._len += 1
            self._emit(last=True)
            self._refuse_existing()
            self._out.commit()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return {"name": layout.hidx_name(self.snap), "size": self._size, "sha256": self._hash.hexdigest(),
                "records": len(self.index), "counts": dict(self.counts)}

    def abort(self) -> None:
        if self._out is not None and not self._done:
            self._out.abort()
        self._out = None
        self._done = True


def write_hidx(repo, chain: str, snap: str, writer) -> dict:
    """Seal ``writer``'s records and store them as ``<snap>.hidx`` (temporary name, then rename):
    a HidxWriter is committed, an IndexWriter's records are written through one.

    Raises HidxExists when the snapshot has one already (call it under the repository lock).
    Returns ``{"name", "size", "sha256", "records", "counts"}`` (``counts``: the writer's tally of
    records, messages whose first bytes were not a header block, and header problems by name)."""
    if isinstance(writer, HidxWriter):
        return writer.commit()
    out = HidxWriter(repo, chain, snap)
    writer.flush()
    try:
        for chunk in writer.chunks:
            out._chunk(chunk)
    except BaseException:
        out.abort()
        raise
    out.index.count = writer.count
    out.index.counts.clear()
    out.index.counts.update(writer.counts)
    return out.commit()


def _frames(read, size: int, sealer, repo_id: str, chain: str, snap: str) -> Iterator[bytes]:
    """The plaintext of each frame of a version 2 object of ``size`` bytes, opened in order;
    ``read(offset, length)`` reads it. Every length is checked against what is left, every
    frame authenticated (its place and whether it is the last) before it is inflated, under
    the caps of the module's constants; CorruptObject otherwise."""
    what = f"header index {chain}/{snap}"
    pos, n, total = len(MAGIC2), 0, 0
    if pos >= size:
        raise CorruptObject(f"{what} has no frame")
    while pos < size:
        head = read(pos, FRAME.size) if size - pos >= FRAME.size else b""
        if len(head) != FRAME.size:
            raise CorruptObject(f"{what} is truncated")
        (length,) = FRAME.unpack(head)
        pos += FRAME.size
        if length > MAX_FRAME or length > size - pos:
            raise CorruptObject(f"{what}: frame {n} does not fit")
        sealed = read(pos, length)
        if len(sealed) != length:
            raise CorruptObject(f"{what} is truncated")
        pos += length
        plain = decompress(sealer.open(sealed, layout.hidx_frame_aad(repo_id, chain, snap, n, pos == size), what),
                           what, min(MAX_FRAME_PLAIN, MAX_HIDX_PLAIN - total))
        total += len(plain)
        n += 1
        yield plain


def hidx_pieces(repo, ref):
    """The plaintext of a snapshot's header index as an iterator of pieces of whole chunks (a
    version 2 object is read and opened frame by frame: one frame in memory at a time; a
    version 1 object is one piece), or None when it has none. CorruptObject comes from the
    iteration, or at once for an object too large to be one."""
    name = layout.hidx_name(ref.id)
    try:
        size = repo.object_size(ref.chain, name)
    except NotFound:
        return None
    if size > MAX_HIDX:
        raise CorruptObject(f"header index {ref.chain}/{ref.id} is larger than {MAX_HIDX >> 20} MiB: damaged")
    if repo.read_object(ref.chain, name, 0, min(size, len(MAGIC2))) == MAGIC2:
        return _frames(lambda pos, length: repo.read_object(ref.chain, name, pos, length), size,
                       repo.keys.catalog, repo.id, ref.chain, ref.id)
    sealed = repo.read_object(ref.chain, name, 0, size + 1)     # +1: notice one that grew (open_hidx caps it)
    return iter([open_hidx(sealed, repo.keys.catalog, repo.id, ref.chain, ref.id)])


def read_hidx(repo, ref) -> bytes | None:
    """The plaintext of a snapshot's header index (either version); None when it has none."""
    pieces = hidx_pieces(repo, ref)
    return None if pieces is None else b"".join(pieces)


def _checked(records: Iterator[Record], what: str) -> Iterator[Record]:
    """Records with dmbackup's key size; HeaderIndexError (garbage) becomes CorruptObject."""
    try:
        for rec in records:
            if len(rec.key) != KEY_BYTES:
                raise CorruptObject(f"{what}: a record key is not {KEY_BYTES} bytes")
            yield rec
    except HeaderIndexError as exc:
        raise CorruptObject(f"{what}: {exc}") from None


def iter_hidx(plain: bytes, what: str = "header index") -> Iterator[Record]:
    """The records of a header index plaintext; CorruptObject (at the bad chunk) on garbage."""
    return _checked(decode(plain), what)


def search_hidx(plain: bytes, query, keys: set[bytes] | None = None, what: str = "header index") -> Iterator[Record]:
    """The records of a header index plaintext that ``query`` (a headerindex.Query) matches and,
    with ``keys``, whose key is in ``keys``; CorruptObject on garbage (headerindex.search)."""
    return _checked(search(plain, query, keys), what)


def search_pieces_hidx(pieces, query, keys: set[bytes] | None = None, what: str = "header index") -> Iterator[Record]:
    """``search_hidx`` over ``hidx_pieces``: CorruptObject on garbage, one frame in memory."""
    return _checked(search_pieces(pieces, query, keys), what)


def keys_pieces_hidx(pieces, what: str = "header index") -> Iterator[list[bytes]]:
    """The record keys of ``hidx_pieces``, a chunk at a time (``headerindex.keys_pieces``: the
    structure checked, no text decoded); CorruptObject on garbage or a key of another size."""
    try:
        for keys in keys_pieces(pieces):
            for k in keys:
                if len(k) != KEY_BYTES:
                    raise CorruptObject(f"{what}: a record key is not {KEY_BYTES} bytes")
            yield keys
    except HeaderIndexError as exc:
        raise CorruptObject(f"{what}: {exc}") from None


def load_hidx(repo, ref) -> dict[bytes, Record] | None:
    """A snapshot's header index as {key: Record}, None when it has none (CorruptObject if damaged)."""
    plain = read_hidx(repo, ref)
    if plain is None:
        return None
    return {r.key: r for r in iter_hidx(plain, f"header index {ref.chain}/{ref.id}")}
