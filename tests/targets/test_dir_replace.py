"""Replacing an object on a medium without atomic rename-over (FAT, exFAT): the dir target's
stepwise protocol (targets/dir.py ``_replace_stepwise``), and a crash between its steps.

A crash is simulated by leaving the files exactly as the interrupted step would, or by making
the one rename fail. After it, the old or the new object must be found under its name.
"""

from __future__ import annotations

import os

import pytest

from dmbackup.errors import NotFound, TargetUnavailable
from dmbackup.targets.base import Capabilities
from dmbackup.targets.dir import PENDING, DirTarget

FAT = Capabilities(atomic_rename=False, posix_metadata=False)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def fat(root):
    with DirTarget("fat", str(root), capabilities=FAT) as t:
        yield t


def test_never_renames_over_an_existing_name(fat, monkeypatch):
    real = os.rename
    renames = []

    def checked(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        with pytest.raises(FileNotFoundError):
            os.stat(dst, dir_fd=dst_dir_fd, follow_symlinks=False)
        renames.append((src, dst))
        return real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "rename", checked)
    fat.put("d/repo.json", b"v1")
    fat.put("d/repo.json", b"v2")
    with fat.writer("d/repo.json") as w:
        w.write(b"v3")
    assert fat.get("d/repo.json") == b"v3"
    assert list(fat.list("d")) == ["d/repo.json"]
    assert [dst for _, dst in renames] == ["repo.json", "repo.json" + PENDING, "repo.json",
                                          "repo.json" + PENDING, "repo.json"]


def test_crash_before_the_old_object_went_keeps_the_old(fat, root):
    fat.put("repo.json", b"old")
    (root / ("repo.json" + PENDING)).write_bytes(b"new")      # step 2 done, step 3 not
    assert fat.get("repo.json") == b"old"
    fat.put("repo.json", b"newer")                               # the stale ready one goes
    assert fat.get("repo.json") == b"newer"
    assert list(fat.list()) == ["repo.json"]


def test_crash_after_the_old_object_went_finds_the_new(fat, root):
    (root / "d").mkdir()
    (root / "d" / ("repo.json" + PENDING)).write_bytes(b"new")   # step 3 done, step 4 not
    assert fat.exists("d/repo.json")
    assert fat.stat("d/repo.json").size == 3
    assert fat.get("d/repo.json") == b"new"
    assert list(fat.list("d")) == ["d/repo.json"]


def test_a_failed_last_rename_leaves_the_new_object_findable(fat, monkeypatch):
    fat.put("README", b"old")
    real = os.rename

    def failing(src, dst, **kw):
        if src.endswith(PENDING):
            raise OSError(5, "Input/output error")
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(TargetUnavailable):
        fat.put("README", b"new")
    monkeypatch.setattr(os, "rename", real)
    assert fat.get("README") == b"new"


def test_the_cleaner_completes_an_interrupted_replacement_instead_of_deleting_it(fat, root):
    (root / ("repo.json" + PENDING)).write_bytes(b"only copy")
    fat.delete("repo.json" + PENDING)                  # what cleanup_leftovers does with temporaries
    assert fat.get("repo.json") == b"only copy"
    fat.put("x", b"1")
    (root / ("x" + PENDING)).write_bytes(b"stale")       # the object is there: a plain leftover
    fat.delete("x" + PENDING)
    assert fat.get("x") == b"1" and list(fat.list()) == ["repo.json", "x"]


def test_a_medium_with_atomic_rename_rolls_nothing_forward(root):
    (root / ("repo.json" + PENDING)).write_bytes(b"new")
    with DirTarget("ext4", str(root)) as t:
        with pytest.raises(NotFound):
            t.get("repo.json")
        t.delete("repo.json" + PENDING)
        assert list(t.list()) == []


def test_modes_are_set_only_where_the_medium_has_them(root, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fchmod", lambda fd, mode: calls.append(mode))
    with DirTarget("fat", str(root), capabilities=FAT) as t:
        t.put("d/a", b"1")
        t.create_exclusive("d/b", b"2")
    assert calls == []
    with DirTarget("ext4", str(root)) as t:
        t.put("e/a", b"1")
        t.create_exclusive("e/b", b"2")
    assert calls == [0o700, 0o600, 0o600]
