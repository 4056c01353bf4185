"""Symbolic links on the medium (issue 13, item 6): whoever holds the disk can replace a
directory of the repository by a link (``config -> /etc/cron.d``); root's writes and reads
through the ``dir`` target (and the USB and NFS-mount targets built on it) must stay beneath
the target's root. Target I/O resolves names with openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV) (or a descriptor walk with O_NOFOLLOW), so the run
stops with one line and nothing is written off the medium."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.security.conftest import one_line


@pytest.fixture
def backed_up(world):
    world.ok("init", "local")
    world.ok("backup", "--target", "local")
    return world


def _redirect(w, name: str) -> str:
    """Move ``name`` (a directory of the repository) elsewhere and leave a link to it."""
    elsewhere = os.path.join(w.tmp, "elsewhere", name.replace("/", "_"))
    os.makedirs(os.path.dirname(elsewhere), exist_ok=True)
    src = os.path.join(w.repo_root, name)
    if os.path.isdir(src):
        shutil.move(src, elsewhere)
    else:
        os.makedirs(elsewhere)
    os.symlink(elsewhere, src)
    return elsewhere


@pytest.mark.parametrize("name", ["config", "locks", "chains"])
def test_a_linked_directory_is_never_written_through(backed_up, name):
    w = backed_up
    elsewhere = _redirect(w, name)
    before = sorted(os.listdir(elsewhere))
    r = w.run("backup", "--target", "local")
    line = one_line(r)
    assert r.code == 4 and "link" in line, (r.code, line)
    assert sorted(os.listdir(elsewhere)) == before
    r = w.run("backup", "--target", "local", "--what", "config")
    assert r.code in (4, 7) and sorted(os.listdir(elsewhere)) == before, r.err


def test_a_linked_key_directory_is_never_read_through(backed_up):
    w = backed_up
    _redirect(w, "keys")
    r = w.run("verify", "--target", "local")
    line = one_line(r)
    assert r.code == 4 and "link" in line, (r.code, line)


def test_a_linked_repository_directory_is_refused(backed_up):
    w = backed_up
    outside = os.path.join(w.tmp, "elsewhere-host")
    shutil.move(w.repo_root, outside)
    os.symlink(outside, w.repo_root)
    before = sorted(os.listdir(outside))
    r = w.run("backup", "--target", "local")
    line = one_line(r)
    assert r.code == 4 and "link" in line, (r.code, line)
    assert sorted(os.listdir(outside)) == before
