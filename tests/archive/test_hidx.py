"""dmbackup.archive.hidx: the sealed header index object of a snapshot (issue 15)."""

from __future__ import annotations

import hashlib
import os

import pytest

from dmbackup.archive import headerindex, hidx, layout
from dmbackup.archive.crypto import Keys
from dmbackup.archive.headerindex import IndexWriter, Query
from dmbackup.archive.headerparse import extract
from dmbackup.archive.reader import SnapshotRef
from dmbackup.errors import CorruptObject, NotFound, OperationFailed

RID = "0123456789abcdef0123456789abcdef"
CHAIN = "0001-20261128T023000Z"
FULL = "20261128T023000Z-full"
INC = "20261129T023000Z-inc"
MSG = b"Message-ID: <a@b>\nDate: Mon, 3 Nov 2025 09:00:00 +0100\nFrom: Anna <a@b>\nSubject: Caff\xc3\xa8\n\nbody\n"


class Repo:
    def __init__(self, encrypted: bool = True):
        self.id = RID
        self.keys = Keys(os.urandom(64) if encrypted else None)
        self.objects: dict[str, bytes] = {}

    def object_size(self, chain, name):
        try:
            return len(self.objects[f"{chain}/{name}"])
        except KeyError:
            raise NotFound(name) from None

    def read_object(self, chain, name, offset=0, length=None):
        data = self.objects[f"{chain}/{name}"]
        return data[offset:offset + length if length is not None else None]

    def put_object(self, chain, name, data):
        self.objects[f"{chain}/{name}"] = data

    def object_writer(self, chain, name):
        return Writer(self, f"{chain}/{name}")


class Writer:
    """An object writer: parts as they come (``written``), visible after commit."""

    def __init__(self, repo, key, fail_after: int | None = None):
        self.repo, self.key, self.parts, self.fail_after = repo, key, [], fail_after
        repo.writers = getattr(repo, "writers", []) + [self]
        self.state = "open"

    def write(self, data):
        if self.fail_after is not None and len(self.parts) >= self.fail_after:
            raise OSError(28, "No space left on device")
        self.parts.append(bytes(data))

    @property
    def size(self):
        return sum(map(len, self.parts))

    def commit(self):
        self.repo.objects[self.key] = b"".join(self.parts)
        self.state = "committed"

    def abort(self):
        self.state = "aborted"


def ref(snap: str) -> SnapshotRef:
    return SnapshotRef(CHAIN, snap, None)


def writer(n: int = 3) -> IndexWriter:
    w = IndexWriter()
    for i in range(n):
        hidx.index_message(w, hashlib.sha256(b"%d" % i).hexdigest(), 100 + i, MSG)
    return w


def test_names_and_aad():
    assert layout.hidx_name(FULL) == f"{FULL}.hidx"
    assert layout.hidx(CHAIN, FULL) == f"chains/{CHAIN}/{FULL}.hidx"
    assert layout.hidx_aad(RID, CHAIN, FULL) == f"{RID}|hidx|{CHAIN}|{FULL}".encode()
    assert layout.object_owner(layout.hidx_name(INC)) == INC


@pytest.mark.parametrize("encrypted", [True, False])
def test_round_trip_sealed_and_bound_to_its_snapshot(encrypted):
    repo = Repo(encrypted)
    assert hidx.load_hidx(repo, ref(FULL)) is None and not hidx.has_hidx(repo, CHAIN, FULL)
    info = hidx.write_hidx(repo, CHAIN, FULL, writer())
    assert info["records"] == 3 and info["name"] == f"{FULL}.hidx"
    blob = repo.objects[f"{CHAIN}/{FULL}.hidx"]
    assert info["size"] == len(blob) and info["sha256"] == hashlib.sha256(blob).hexdigest()
    if encrypted:
        assert b"Anna" not in blob and b"a@b" not in blob
    got = hidx.load_hidx(repo, ref(FULL))
    k = hidx.key_of(hashlib.sha256(b"1").hexdigest())
    assert len(k) == 16 and got[k].size == 101 and got[k].subject == "Caffè" and got[k].from_ == "Anna <a@b>"
    with pytest.raises(hidx.HidxExists):
        hidx.write_hidx(repo, CHAIN, FULL, writer(1))
    # copied to another snapshot: does not open
    repo.objects[f"{CHAIN}/{INC}.hidx"] = blob
    with pytest.raises(CorruptObject):
        hidx.load_hidx(repo, ref(INC))
    # a flipped byte
    bad = bytearray(blob)
    bad[-5] ^= 1
    repo.objects[f"{CHAIN}/{FULL}.hidx"] = bytes(bad)
    with pytest.raises(CorruptObject):
        hidx.load_hidx(repo, ref(FULL))


def test_garbage_and_bombs_are_corrupt_objects(monkeypatch):
    import zstandard

    monkeypatch.setattr(hidx, "MAX_HIDX_PLAIN", 1 << 20)
    repo = Repo()
    s = repo.keys.catalog
    aad = layout.hidx_aad(RID, CHAIN, FULL)
    for plain in (b"", b"DMHIX\x01", b"not an index", writer().encode()[:-1], writer().encode() + b"x"):
        repo.objects[f"{CHAIN}/{FULL}.hidx"] = s.seal(zstandard.ZstdCompressor().compress(plain), aad)
        with pytest.raises(CorruptObject):
            hidx.load_hidx(repo, ref(FULL))
    repo.objects[f"{CHAIN}/{FULL}.hidx"] = s.seal(b"not zstd", aad)
    with pytest.raises(CorruptObject):
        hidx.load_hidx(repo, ref(FULL))
    # declares more than the cap
    big = zstandard.ZstdCompressor().compress(b"\0" * (2 << 20))
    repo.objects[f"{CHAIN}/{FULL}.hidx"] = s.seal(big, aad)
    with pytest.raises(CorruptObject):
        hidx.load_hidx(repo, ref(FULL))


def test_a_huge_object_is_refused_before_it_is_read(monkeypatch):
    repo = Repo()
    monkeypatch.setattr(repo, "object_size", lambda chain, name: hidx.MAX_HIDX + 1)
    monkeypatch.setattr(repo, "read_object", lambda *a: pytest.fail("read"))
    with pytest.raises(CorruptObject):
        hidx.read_hidx(repo, ref(FULL))


def test_index_message_never_raises():
    w = IndexWriter()
    assert not hidx.index_message(w, "00" * 32, 0, b"")
    assert not hidx.index_message(w, "00" * 32, 0, b"\x00\x01 binary")
    assert hidx.index_message(w, "ab" * 32, 5, b"Subject: x\n\n")
    assert hidx.index_message(w, "ab" * 32, 5, b"Subject: " + b"\xff" * 100000)
    assert not hidx.index_message(w, "ab" * 32, -1, MSG)           # an impossible size: skipped
    assert w.counts["records"] == 2 and w.counts["skipped"] == 3
    assert extract(MSG).subject == "Caffè"


def many(n: int):
    for i in range(n):
        yield hidx.key_of(hashlib.sha256(b"%d" % i).hexdigest()), 100 + i, extract(MSG)


def test_a_backup_streams_its_index_in_frames(monkeypatch):
    """Version 2: sealed frames written as the records come (memory bounded by a frame), read
    back as one plaintext; a frame moved, dropped, added or copied elsewhere does not open."""
    monkeypatch.setattr(hidx, "FRAME_PLAIN", 2000)
    monkeypatch.setattr(hidx.IndexWriter, "__init__", _small_chunks(IndexWriter.__init__))
    repo = Repo()
    w = hidx.HidxWriter(repo, CHAIN, FULL)
    for k, size, h in many(200):
        w.add(k, size, h)
        assert w._len < 2000 + 4000          # never more than a frame and a chunk held
    out = repo.writers[0]
    assert out.state == "open" and len(out.parts) > 3          # frames went out during the run
    info = hidx.write_hidx(repo, CHAIN, FULL, w)
    blob = repo.objects[f"{CHAIN}/{FULL}.hidx"]
    assert blob.startswith(hidx.MAGIC2) and info["size"] == len(blob) and info["records"] == 200
    assert info["sha256"] == hashlib.sha256(blob).hexdigest()
    assert b"Anna" not in blob
    got = hidx.load_hidx(repo, ref(FULL))
    assert len(got) == 200 and got[hidx.key_of(hashlib.sha256(b"7").hexdigest())].size == 107
    frames, pos = [], len(hidx.MAGIC2)
    while pos < len(blob):
        (n,) = hidx.FRAME.unpack_from(blob, pos)
        frames.append(blob[pos:pos + 4 + n])
        pos += 4 + n
    assert len(frames) > 3
    # find reads it frame by frame: never the whole object at once
    reads = []
    orig = repo.read_object
    repo.read_object = lambda c, n, o=0, ln=None: reads.append(ln) or orig(c, n, o, ln)
    found = list(hidx.search_pieces_hidx(hidx.hidx_pieces(repo, ref(FULL)), Query(subject="caffe")))
    repo.read_object = orig
    assert len(found) == 200 and max(reads) < len(blob) // 3
    for bad in (frames[1:], frames[:-1], [frames[1], frames[0]] + frames[2:], frames + frames[-1:],
                frames[:2] + frames[3:]):
        repo.objects[f"{CHAIN}/{FULL}.hidx"] = hidx.MAGIC2 + b"".join(bad)
        with pytest.raises(CorruptObject):
            hidx.read_hidx(repo, ref(FULL))
        with pytest.raises(CorruptObject):
            list(hidx.search_pieces_hidx(hidx.hidx_pieces(repo, ref(FULL)), Query()))
    for cut in (len(hidx.MAGIC2), len(hidx.MAGIC2) + 2, len(blob) - 1):
        repo.objects[f"{CHAIN}/{FULL}.hidx"] = blob[:cut]
        with pytest.raises(CorruptObject):
            hidx.read_hidx(repo, ref(FULL))
        with pytest.raises(CorruptObject):
            list(hidx.search_pieces_hidx(hidx.hidx_pieces(repo, ref(FULL)), Query()))
    repo.objects[f"{CHAIN}/{INC}.hidx"] = blob
    with pytest.raises(CorruptObject):
        hidx.read_hidx(repo, ref(INC))


def _small_chunks(init):
    def small(self, chunk_records=7, on_chunk=None):
        init(self, 7, on_chunk)
    return small


def test_an_index_written_before_frames_still_reads():
    repo = Repo()
    w = writer(5)
    repo.objects[f"{CHAIN}/{FULL}.hidx"] = hidx.seal_hidx(w.encode(), repo.keys.catalog, RID, CHAIN, FULL)   # version 1
    assert len(hidx.load_hidx(repo, ref(FULL))) == 5
    assert len(list(hidx.search_pieces_hidx(hidx.hidx_pieces(repo, ref(FULL)), Query()))) == 5
    assert hidx.hidx_pieces(repo, ref(INC)) is None


def test_a_failing_target_drops_the_index_not_the_backup(monkeypatch):
    monkeypatch.setattr(hidx, "FRAME_PLAIN", 2000)
    monkeypatch.setattr(hidx.IndexWriter, "__init__", _small_chunks(IndexWriter.__init__))
    repo = Repo()
    monkeypatch.setattr(repo, "object_writer", lambda chain, name: Writer(repo, f"{chain}/{name}", fail_after=2))
    w = hidx.HidxWriter(repo, CHAIN, FULL)
    for k, size, h in many(200):
        w.add(k, size, h)                       # no error here: the backup goes on
    assert repo.writers[0].state == "aborted"
    with pytest.raises(OperationFailed, match="No space left"):
        hidx.write_hidx(repo, CHAIN, FULL, w)
    assert f"{CHAIN}/{FULL}.hidx" not in repo.objects
    assert w.counts["records"] == 200          # still counted


def test_a_long_header_closes_its_chunk_early():
    w = IndexWriter()
    h = extract(MSG)._replace(subject="x" * 3999, from_="y" * 3999, to="z" * 3999)
    chunks = []
    w.on_chunk = chunks.append
    for i in range(200):
        w.add(b"%016d" % i, 1, h)
    w.flush()
    assert len(chunks) > 1 and max(map(len, chunks)) < 2 * headerindex.CHUNK_BYTES
