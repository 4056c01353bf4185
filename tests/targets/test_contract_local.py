"""The target contract suite run against the local targets: dir (a tmp dir), memory, and
PrefixedTarget (the view every repository uses) over memory."""

from __future__ import annotations

import os

import pytest

from dmbackup.targets.base import PrefixedTarget
from dmbackup.targets.dir import DirTarget
from dmbackup.targets.memory import MemoryTarget
from tests.targets.contract import TargetContract


class TestDirContract(TargetContract):
    known_failures = {
        "test_name_below_an_object_is_not_found":
            "DirTarget maps ENOTDIR (a path through a file) to TargetUnavailable, not NotFound",
    }

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
    known_failures = {
        f"test_invalid_names_rejected_before_io[{bad!r}]":
            "PrefixedTarget._n() does not validate: '' and None address the prefix itself, "
            "7 becomes the name 'prefix/7'"
        for bad in ("", None, 7)
    }

    @pytest.fixture
    def target(self):
        inner = MemoryTarget("mem")
        inner.put("other-host/foreign", b"not ours")
        with PrefixedTarget(inner, "dmbackup/host1") as t:
            yield t
        assert inner.get("other-host/foreign") == b"not ours"
