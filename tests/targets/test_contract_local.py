"""The target contract suite run against the local targets: dir (a tmp dir), memory, and
PrefixedTarget (the view every repository uses) over memory."""

from __future__ import annotations

import os

import pytest

from dmbackup.targets.base import Capabilities, PrefixedTarget
from dmbackup.targets.dir import DirTarget
from dmbackup.targets.memory import MemoryTarget
from tests.targets.contract import TargetContract


class TestDirContract(TargetContract):

    @pytest.fixture
    def target(self, tmp_path):
        root = tmp_path / "root"
        root.mkdir()
        with DirTarget("local", str(root)) as t:
            yield t
        # nothing may ever be written outside the root (names are validated first)
        assert sorted(os.listdir(tmp_path)) == ["root"]


class TestMemoryContract(TargetContract):
    @pytest.fixture
    def target(self):
        with MemoryTarget("mem") as t:
            yield t


class TestPrefixedMemoryContract(TargetContract):

    @pytest.fixture
    def target(self):
        inner = MemoryTarget("mem")
        inner.put("other-host/foreign", b"not ours")
        with PrefixedTarget(inner, "dmbackup/host1") as t:
            yield t
        assert inner.get("other-host/foreign") == b"not ours"


class TestDirWithoutAtomicRenameContract(TargetContract):
    """The dir target as it runs on FAT and exFAT (``atomic_rename`` and ``posix_metadata``
    False): the same contract, with objects replaced stepwise."""

    @pytest.fixture
    def target(self, tmp_path):
        root = tmp_path / "root"
        root.mkdir()
        caps = Capabilities(atomic_rename=False, posix_metadata=False)
        with DirTarget("fat", str(root), capabilities=caps) as t:
            yield t
        assert sorted(os.listdir(tmp_path)) == ["root"]
