"""dmbackup.archive.hidx: the sealed header index object of a snapshot (issue 15)."""

from __future__ import annotations

import hashlib
import os

import pytest

from dmbackup.archive import hidx, layout
from dmbackup.archive.crypto import Keys
from dmbackup.archive.headerindex import IndexWriter
from dmbackup.archive.headerparse import extract
from dmbackup.archive.reader import SnapshotRef
from dmbackup.errors import CorruptObject, NotFound

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
