"""Writing and reading blocks in volumes (format: see dmbackup.archive).

The writer groups content into blocks, compresses and seals them on a small thread pool
(zstd, AES-GCM and the kernel read all release the GIL) and appends them in order to the
current volume, rotating volumes before they pass the size cap. Callers get a provisional
``(block seq, offset, length)`` for each piece of content and learn the final volume
location through ``location(seq)`` once the block is written.

On a target whose methods may run on two threads at once (``Capabilities.concurrent``: a local
or mounted file system) the sealed blocks are framed, written and hashed by a thread of their
own, "volume-writer", in sequence order, so volume offsets are what the synchronous path gives
(no format change); the caller's thread only fills blocks (issue 17). Elsewhere (SMB, libnfs:
one connection, no lock) the caller's thread writes them, as before.
"""

from __future__ import annotations

import collections
import struct
import threading
from typing import TYPE_CHECKING, Callable

import zstandard

from dmbackup.errors import CorruptObject, NotFound, OperationFailed
from dmbackup.archive import BLOCK_SIZE
from dmbackup.archive.catalog import decompress
from dmbackup.archive import layout
from dmbackup.archive.layout import block_aad

if TYPE_CHECKING:
    from concurrent.futures import Future

FRAME = struct.Struct("<I")
ZLEVEL = 3
_STOP = object()          # ends the volume-writer thread


class BlockWriter:
    def __init__(self, target, repo_id: str, chain: str, snap: str, sealer,
                 volume_size: int, on_stored: Callable[[int], None] | None = None,
                 workers: int = 2, stop_check: Callable[[], None] | None = None, level: int = ZLEVEL):
        self.target, self.repo_id, self.chain, self.snap = target, repo_id, chain, snap
        self.sealer = sealer
        self.volume_size = volume_size
        self.on_stored = on_stored or (lambda n: None)
        self.stop_check = stop_check or (lambda: None)
        self.chunks: list[bytes] = []     # the open block, joined once when it is flushed
        self.fill = 0
        self.to_hash: list[tuple[int, int, bool]] = []   # (offset, length, a message?) in the open block
        self.hashes: dict[int, list[str]] = {}     # seq -> SHA-256 hex of those slices
        self.headers: dict[int, list] = {}        # seq -> headerindex.Headers of the messages among them
        self.seq = 0                      # seq of the block being filled
        self.written_seq = -1             # highest seq whose location is known
        self.locations: dict[int, tuple[str, int, int]] = {}
        self.pending: collections.deque[tuple[int, Future]] = collections.deque()
        from concurrent.futures import ThreadPoolExecutor   # here: listing snapshots never writes (issue 17)

        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seal")
        self.depth = workers * 2
        self.level = level
        self.vol_no = 0
        self.vol = None
        self.vol_name = ""
        self.volumes: list[dict] = []     # {"name", "size", "sha256"} of committed volumes
        self.stored_bytes = 0
        self._hash = None
        self._lock = threading.Lock()
        # the volume-writer thread (``Capabilities.concurrent`` targets): blocks to write, in order
        self._threaded = bool(getattr(target.capabilities, "concurrent", False))
        self._cond = threading.Condition(self._lock)
        self._queue: collections.deque = collections.deque()   # (seq, future), or _STOP
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # --- filling ---------------------------------------------------------------------------
    def room(self) -> int:
        return BLOCK_SIZE - self.fill

    def add(self, data: bytes | memoryview, *, want_hash: bool = False, message: bool = False):
        """Append content that fits in the current block; returns (seq, offset, length), and
        with ``want_hash`` also the index under which the workers will record its SHA-256
        (``hash_of(seq, index)`` once the block is written): hashing then runs in parallel.
        ``message`` (with ``want_hash``): the workers also extract its headers for the header
        index (``headers_of(seq, index)``), so a full backup indexes off the main thread."""
        assert len(data) <= self.room()
        off = self.fill
        self.chunks.append(data)
        self.fill += len(data)
        ref = (self.seq, off, len(data))
        hidx = None
        if want_hash:
            hidx = len(self.to_hash)
            self.to_hash.append((off, len(data), message))
        if not self.room():
            self.flush()
        return (ref, hidx) if want_hash else ref

    def hash_of(self, seq: int, index: int) -> str:
        return self.hashes[seq][index]

    def headers_of(self, seq: int, index: int):
        """The headers the workers extracted for a ``message`` added with ``want_hash``: a Headers,
        False when its first bytes are not a header block, None when it was not a message."""
        h = self.headers.get(seq)
        return h[index] if h is not None else None

    def release(self, below: int, keep: set[int]) -> None:
        """Forget locations and digests of blocks below ``below`` (every entry using them is
        final), except the ``keep`` ones (still referenced, e.g. by hardlinked files)."""
        with self._lock:          # the volume-writer thread adds to these dicts
            for d in (self.locations, self.hashes, self.headers):
                for seq in [q for q in d if q < below and q not in keep]:
                    del d[seq]

    def flush(self) -> None:
        """Close the current block (called at mailbox boundaries and when full)."""
        if not self.fill:
            return
        chunks, self.chunks, self.fill = self.chunks, [], 0
        slices, self.to_hash = self.to_hash, []
        seq = self.seq
        self.seq += 1
        fut = self.pool.submit(self._compress, chunks, self.level, slices)
        if self._threaded:
            self.stop_check()
            self._start()
            with self._cond:
                self._queue.append((seq, fut))
                self._cond.notify_all()
                # back pressure: at most ``depth`` blocks compressed or written ahead
                while seq - self.written_seq > self.depth and self._error is None:
                    self._cond.wait()
            self._raise_error()
            return
        self.pending.append((seq, fut))
        while len(self.pending) > self.depth:
            self._write_one()

    @staticmethod
    def _compress(chunks: list[bytes], level: int, slices: list[tuple[int, int, bool]]):
        import hashlib

        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        view = memoryview(data)
        digests = [hashlib.sha256(view[o:o + n]).hexdigest() for o, n, _ in slices]
        headers = None
        if any(m for _, _, m in slices):
            from dmbackup.archive.headerparse import extract

            # False: a message whose first bytes are not a header block (counted, not indexed)
            headers = [(extract(data, start=o, end=o + n) or False) if m else None for o, n, m in slices]
        return zstandard.ZstdCompressor(level=level).compress(data), digests, headers

    # --- the volume-writer thread ---------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="volume-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """Write queued blocks in sequence order until ``_STOP``; an error is kept for the
        caller's thread (``_raise_error``) and ends the thread."""
        try:
            while True:
                with self._cond:
                    while not self._queue:
                        self._cond.wait()
                    item = self._queue.popleft()
                if item is _STOP:
                    return
                seq, fut = item
                self._write_block(seq, fut.result())
        except BaseException as exc:     # noqa: BLE001 (re-raised on the caller's thread)
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _stop_thread(self) -> None:
        if self._thread is None:
            return
        with self._cond:
            self._queue.append(_STOP)
            self._cond.notify_all()
        self._thread.join()
        self._thread = None

    # --- writing ---------------------------------------------------------------------------
    def _write_one(self) -> None:
        self.stop_check()
        seq, fut = self.pending.popleft()
        self._write_block(seq, fut.result())

    def _write_block(self, seq: int, result) -> None:
        """Seal, frame, append and hash one compressed block (on the caller's thread, or on
        the volume-writer thread); then publish its digests, headers and location."""
        import hashlib

        compressed, digests, headers = result
        framed_len = FRAME.size + len(compressed) + 64
        if self.vol is not None and self.vol.size + framed_len > self.volume_size:
            self._close_volume()
        if self.vol is None:
            self.vol_no += 1
            self.vol_name = layout.volume_name(self.snap, self.vol_no)
            self.vol = self.target.writer(layout.chain_object(self.chain, self.vol_name))
            self._hash = hashlib.sha256()
        offset = self.vol.size + FRAME.size
        nonce, body = self.sealer.seal_parts(compressed, block_aad(self.repo_id, self.chain, self.vol_name, offset))
        sealed_len = len(nonce) + len(body)
        parts = (FRAME.pack(sealed_len), nonce, body)
        if self._threaded:        # a local file: three writes cost less than copying 4 MiB
            for part in parts:
                self.vol.write(part)
        else:                     # a share: one request per frame, as always
            self.vol.write(b"".join(parts))
        for part in parts:
            self._hash.update(part)
        with self._cond:
            if digests:
                self.hashes[seq] = digests
            if headers:
                self.headers[seq] = headers
            self.locations[seq] = (self.vol_name, offset, sealed_len)
            self.written_seq = seq                  # last: the caller reads the dicts up to it
            self.stored_bytes += FRAME.size + sealed_len
            self._cond.notify_all()
        self.on_stored(FRAME.size + sealed_len)

    def _close_volume(self) -> None:
        if self.vol is None:
            return
        self.vol.commit()
        info = {"name": self.vol_name, "size": self.vol.size, "sha256": self._hash.hexdigest()}
        self.volumes.append(info)
        self.vol = None
        if self.target.capabilities.read_back:
            self._read_back(info)

    def _read_back(self, info: dict, window: int = 16 << 20) -> None:
        """Prove a committed volume arrived whole: its size and SHA-256 as read back from the
        target must be what was written (a share can acknowledge writes it then loses)."""
        import hashlib

        name = layout.chain_object(self.chain, info["name"])
        h, pos = hashlib.sha256(), 0
        size = self.target.stat(name).size
        while pos < size:
            self.stop_check()
            data = self.target.get(name, pos, min(window, size - pos))
            if not data:
                break
            h.update(data)
            pos += len(data)
        if size != info["size"] or h.hexdigest() != info["sha256"]:
            raise OperationFailed(f"volume {name} read back from the target differs from what was written "
                                f"({size} of {info['size']} bytes): the target is not storing data reliably; "
                                "nothing was committed")

    def location(self, seq: int) -> tuple[str, int, int]:
        return self.locations[seq]

    def drain(self) -> None:
        """Write everything added so far (flushes the open block)."""
        self.flush()
        if self._threaded:
            with self._cond:
                while self.written_seq < self.seq - 1 and self._error is None:
                    self._cond.wait()
            self._raise_error()
            return
        while self.pending:
            self._write_one()

    def finish(self) -> list[dict]:
        self.drain()
        self._stop_thread()          # idle now: the last volume is closed on the caller's thread
        self._close_volume()
        self.pool.shutdown(wait=True)
        return self.volumes

    def abort(self) -> None:
        with self._cond:
            for item in self._queue:
                if item is not _STOP:
                    item[1].cancel()
            self._queue.clear()
        self._stop_thread()          # it finishes the block in hand, then stops
        for _, fut in self.pending:
            fut.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.vol is not None:
            self.vol.abort()
            self.vol = None


PREFETCH_BLOCKS = 4          # blocks a reader opens ahead (4 MiB each at most)


class BlockReader:
    """Fetches, opens and caches blocks; counts bytes fetched from the target.

    ``prefetch`` (a restore calls it with the extents of the files it is about to write, in that
    order) has a worker thread fetch, authenticate and decompress up to ``PREFETCH_BLOCKS``
    blocks ahead while the caller writes files: zstd and the reads release the GIL. Only on a
    target whose methods may run on two threads at once (``Capabilities.concurrent``). A block
    is used exactly as if it had been read when asked for: the same checks, the same errors,
    raised when it is asked for; one opened ahead and never asked for is dropped."""

    def __init__(self, target, repo_id: str, sealer, cache_blocks: int = 8):
        self.target, self.repo_id, self.sealer = target, repo_id, sealer
        self.cache: collections.OrderedDict = collections.OrderedDict()
        self.cache_blocks = cache_blocks
        self.bytes_fetched = 0
        self._dctx = zstandard.ZstdDecompressor()
        self._pool = None                           # the prefetch worker, started on first use
        self._wdctx = None                          # its decompressor (one per thread)
        self._pending: dict[tuple, tuple] = {}      # key -> (Future of (plain, bytes fetched), args, seq)
        self._backlog: collections.deque = collections.deque()     # args of blocks queued, not submitted
        self._queued: set[tuple] = set()
        self._seq = 0

    def block(self, chain: str, volume: str, offset: int, length: int) -> bytes:
        key = (chain, volume, offset)
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return hit
        fut = self._take(key, (chain, volume, offset, length)) if self._pending else None
        if fut is not None:
            plain, fetched = fut.result()
        else:
            plain, fetched = self._fetch_open(chain, volume, offset, length, self._dctx)
        self.bytes_fetched += fetched
        self.cache[key] = plain
        if len(self.cache) > self.cache_blocks:
            self.cache.popitem(last=False)
        self._top_up()
        return plain

    def _fetch_open(self, chain: str, volume: str, offset: int, length: int, dctx) -> tuple[bytes, int]:
        try:
            sealed = self.target.get(layout.chain_object(chain, volume), offset, length)
        except NotFound:
            raise CorruptObject(f"volume {chain}/{volume} is missing from the repository") from None
        return self.open_block(chain, volume, offset, sealed, dctx), len(sealed)

    def open_block(self, chain: str, volume: str, offset: int, sealed: bytes, dctx=None) -> bytes:
        what = f"block at {chain}/{volume}@{offset}"
        compressed = self.sealer.open(sealed, block_aad(self.repo_id, chain, volume, offset), what)
        return decompress(compressed, what, BLOCK_SIZE, dctx or self._dctx)

    def extent(self, chain: str, ext) -> bytes:
        volume, voff, vlen, boff, blen = ext
        data = self.block(chain, volume, voff, vlen)
        if boff + blen > len(data):
            raise CorruptObject(f"extent {volume}@{voff}+{boff}:{blen} lies outside its block")
        return data[boff:boff + blen]

    # --- reading ahead ---------------------------------------------------------------------------
    def prefetch(self, chain: str, extents) -> None:
        """Queue the blocks of ``extents`` (in the order they are about to be read), after what
        is queued already, to be opened ahead on the worker (a block is queued once per reader)."""
        if not getattr(self.target.capabilities, "concurrent", False):
            return
        for x in extents:
            if len(x) == 5 and (chain, x[0], x[1]) not in self._queued:
                self._queued.add((chain, x[0], x[1]))
                self._backlog.append((chain, x[0], x[1], x[2]))
        self._top_up()

    def queued_ahead(self) -> int:
        """Blocks queued or being opened ahead, not yet asked for."""
        return len(self._pending) + len(self._backlog)

    def _take(self, key: tuple, args: tuple):
        """The block of ``key`` opened ahead (None if it was not, or for other arguments). The
        blocks queued before it and not asked for are dropped: the caller skipped them."""
        got = self._pending.pop(key, None)
        if got is None:
            return None
        fut, fargs, seq = got
        for k in [k for k, v in self._pending.items() if v[2] < seq]:
            self._pending.pop(k)[0].cancel()
        return fut if fargs == args else None

    def _top_up(self) -> None:
        while self._backlog and len(self._pending) < PREFETCH_BLOCKS:
            args = self._backlog.popleft()
            if args[:3] in self.cache or args[:3] in self._pending:
                continue
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="open-blocks")
            self._seq += 1
            self._pending[args[:3]] = (self._pool.submit(self._ahead, *args), args, self._seq)

    def _ahead(self, chain: str, volume: str, offset: int, length: int) -> tuple[bytes, int]:
        if self._wdctx is None:
            self._wdctx = zstandard.ZstdDecompressor()
        return self._fetch_open(chain, volume, offset, length, self._wdctx)

    def close(self) -> None:
        """Stop the worker (what it has in hand is finished and dropped)."""
        self._backlog.clear()
        for fut, _, _ in self._pending.values():
            fut.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def walk_volume(data: bytes):
    """Yield (offset, sealed) for each framed block in a volume's bytes."""
    pos = 0
    while pos < len(data):
        if pos + FRAME.size > len(data):
            raise CorruptObject(f"truncated block frame at offset {pos}")
        (n,) = FRAME.unpack_from(data, pos)
        start = pos + FRAME.size
        if n <= 0 or start + n > len(data):
            raise CorruptObject(f"block frame at offset {pos} runs past the end of the volume")
        yield start, data[start:start + n]
        pos = start + n


def stream_volume(target, name: str, size: int, hasher, window: int = 16 << 20):
    """Yield (offset, sealed) for each block of a volume read in windows (bounded memory),
    feeding every byte read to ``hasher``. Raises CorruptObject on a broken frame."""
    pos = 0
    buf = b""
    buf_start = 0
    while True:
        # make sure a whole frame header and body are buffered
        need_hdr = pos + FRAME.size - buf_start
        if need_hdr > len(buf):
            if buf_start + len(buf) >= size:
                if pos < size:
                    raise CorruptObject(f"truncated block frame at offset {pos}")
                return
            more = target.get(name, buf_start + len(buf), window)
            if not more:
                if pos < buf_start + len(buf):
                    raise CorruptObject(f"truncated block frame at offset {pos}")
                return
            hasher.update(more)
            buf = buf[pos - buf_start:] + more
            buf_start = pos
            continue
        (n,) = FRAME.unpack_from(buf, pos - buf_start)
        start = pos + FRAME.size
        end = start + n
        if n <= 0 or end > size:
            raise CorruptObject(f"block frame at offset {pos} runs past the end of the volume")
        if end - buf_start > len(buf):
            more = target.get(name, buf_start + len(buf), max(window, end - buf_start - len(buf)))
            if not more:
                raise CorruptObject(f"block frame at offset {pos} runs past the end of the volume")
            hasher.update(more)
            buf = buf[pos - buf_start:] + more
            buf_start = pos
            continue
        yield start, buf[start - buf_start:end - buf_start]
        pos = end
        if pos >= size:
            # hash whatever lies beyond the recorded size (a volume that grew is damaged)
            tail = target.get(name, buf_start + len(buf), window) if buf_start + len(buf) < size + 1 else b""
            if tail:
                hasher.update(tail)
            return
