"""The block writer's read-back of committed volumes (network shares can lose acknowledged data)."""

import os

import pytest

from dmbackup.archive.blocks import BlockReader, BlockWriter
from dmbackup.archive.crypto import Keys
from dmbackup.errors import CorruptObject, OperationFailed
from dmbackup.targets.base import Capabilities
from dmbackup.targets.memory import MemoryTarget


class LossyShare(MemoryTarget):
    """Acknowledges every write, then stores one byte wrong (what a flaky NAS can do)."""

    capabilities = Capabilities(read_back=True)

    def __init__(self, lose: bool):
        super().__init__("nas")
        self.lose = lose

    def writer(self, name):
        w = super().writer(name)
        commit = w.commit

        def lossy_commit():
            commit()
            if self.lose:
                data = bytearray(self.objects[name])
                data[len(data) // 2] ^= 1
                self.objects[name] = bytes(data)

        w.commit = lossy_commit
        return w


def _write(target) -> list:
    keys = Keys(os.urandom(64))
    w = BlockWriter(target, "repo", "0001-x", "20261128T000000Z-full", keys.data, 8 << 20)
    refs = [w.add(os.urandom(100_000)) for _ in range(30)]
    w.finish()
    return keys, refs, w


def test_volumes_read_back_intact_pass():
    t = LossyShare(lose=False)
    keys, refs, w = _write(t)
    assert w.volumes and t.bytes_read >= sum(v["size"] for v in w.volumes)   # every volume re-read
    r = BlockReader(t, "repo", keys.data)
    vol, voff, vlen = w.location(refs[0][0])
    assert r.block("0001-x", vol, voff, vlen)


def test_a_share_that_loses_data_fails_the_backup():
    with pytest.raises(OperationFailed, match="read back"):
        _write(LossyShare(lose=True))


class LocalDisk(MemoryTarget):
    """A target whose methods may run on two threads at once: volumes go to the writer thread."""

    capabilities = Capabilities(concurrent=True)


class SingleConnection(MemoryTarget):
    capabilities = Capabilities()


def _fill(target, keys, contents, volume_size=1 << 20):
    w = BlockWriter(target, "repo", "0001-x", "20261128T000000Z-full", keys.data, volume_size)
    refs = []
    for data in contents:
        if len(data) > w.room():
            w.flush()
        refs.append(w.add(data, want_hash=True))
    w.finish()
    return w, refs


def test_the_volume_writer_thread_writes_what_the_caller_thread_writes():
    """Same volumes, offsets, digests and bytes (no format change), with volume rotation."""
    import hashlib
    import random

    rnd = random.Random(7)
    contents = [rnd.randbytes(rnd.randrange(1, 300_000)) for _ in range(60)]

    class Fixed:                      # one key, one nonce sequence: byte-identical volumes
        def __init__(self):
            self.n = 0

        def seal_parts(self, data, aad):
            self.n += 1
            return hashlib.sha256(aad + self.n.to_bytes(4, "big")).digest(), bytes(data)

    class K:
        data = None

    out = []
    for target in (LocalDisk("a"), SingleConnection("b")):
        k = K()
        k.data = Fixed()
        w, refs = _fill(target, k, contents)
        assert w._threaded is (target.capabilities.concurrent is True)
        locs = [w.location(ref[0]) for ref, _ in refs]
        digests = [w.hash_of(ref[0], i) for ref, i in refs]
        assert digests == [hashlib.sha256(c).hexdigest() for c in contents]
        out.append((w.volumes, locs, dict(target.objects)))
    assert len(out[0][0]) > 1                        # rotated
    assert out[0] == out[1]


def test_the_volume_writer_thread_restores_what_it_wrote():
    keys = Keys(os.urandom(64))
    contents = [os.urandom(n) for n in (10, 5000, 900_000, 1, 70_000)]
    t = LocalDisk("a")
    w, refs = _fill(t, keys, contents)
    r = BlockReader(t, "repo", keys.data)
    for data, (ref, _) in zip(contents, refs):
        seq, off, n = ref
        block = r.block("0001-x", *w.location(seq))
        assert block[off:off + n] == data


def test_an_error_on_the_volume_writer_thread_reaches_the_caller():
    class Full(LocalDisk):
        def writer(self, name):
            raise OSError(28, "No space left on device")

    keys = Keys(os.urandom(64))
    w = BlockWriter(Full("a"), "repo", "0001-x", "20261128T000000Z-full", keys.data, 1 << 20)
    w.add(os.urandom(1000))
    with pytest.raises(OSError, match="No space"):
        for _ in range(20):
            w.flush()
            w.add(os.urandom(1000))
        w.drain()
    w.abort()
    assert w._thread is None


# --- reading blocks ahead (restore) ----------------------------------------------------------
def _blocks(n=12):
    keys = Keys(os.urandom(64))
    contents = [os.urandom(300_000) for _ in range(n)]
    t = LocalDisk("a")
    w = BlockWriter(t, "repo", "0001-x", "20261128T000000Z-full", keys.data, 1 << 20)
    exts = []
    for data in contents:
        w.flush()                                     # one block per content
        seq, off, length = w.add(data)
        exts.append((seq, off, length))
    w.finish()
    exts = [[*w.location(seq), off, n] for seq, off, n in exts]
    return t, keys, contents, exts


def test_blocks_read_ahead_are_the_blocks():
    t, keys, contents, exts = _blocks()
    r = BlockReader(t, "repo", keys.data)
    r.prefetch("0001-x", exts)
    assert r._pool is not None and 0 < len(r._pending) <= 4
    assert [r.extent("0001-x", x) for x in exts] == contents
    assert r.bytes_fetched == sum(x[2] for x in exts)
    r.close()
    assert r._pool is None and not r._pending


def test_a_damaged_block_read_ahead_fails_when_asked_for_and_not_before():
    t, keys, contents, exts = _blocks()
    name = "chains/0001-x/" + exts[2][0]
    data = bytearray(t.objects[name])
    data[exts[2][1] + 40] ^= 1                         # inside the third block's ciphertext
    t.objects[name] = bytes(data)
    r = BlockReader(t, "repo", keys.data)
    r.prefetch("0001-x", exts)
    assert [r.extent("0001-x", x) for x in exts[:2]] == contents[:2]
    with pytest.raises(CorruptObject):
        r.extent("0001-x", exts[2])
    assert [r.extent("0001-x", x) for x in exts[3:]] == contents[3:]
    r.close()


def test_blocks_read_ahead_and_skipped_are_dropped_and_a_forged_length_is_read_again():
    t, keys, contents, exts = _blocks()
    r = BlockReader(t, "repo", keys.data)
    r.prefetch("0001-x", exts)
    assert r.extent("0001-x", exts[3]) == contents[3]          # the first three were skipped
    assert all(k[2] > exts[3][1] for k in r._pending if k[1] == exts[3][0])
    forged = [exts[5][0], exts[5][1], exts[5][2] - 1, exts[5][3], exts[5][4]]
    with pytest.raises(CorruptObject):                         # not the block opened ahead
        r.extent("0001-x", forged)
    assert r.extent("0001-x", exts[5]) == contents[5]
    r.close()


def test_no_reading_ahead_on_a_target_of_one_connection():
    t, keys, contents, exts = _blocks(4)
    one = SingleConnection("b")
    one.objects = t.objects
    r = BlockReader(one, "repo", keys.data)
    r.prefetch("0001-x", exts)
    assert r._pool is None and not r._pending
    assert [r.extent("0001-x", x) for x in exts] == contents
