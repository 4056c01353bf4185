"""The block writer's read-back of committed volumes (network shares can lose acknowledged data)."""

import os

import pytest

from dmbackup.archive.blocks import BlockReader, BlockWriter
from dmbackup.archive.crypto import Keys
from dmbackup.errors import OperationFailed
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
