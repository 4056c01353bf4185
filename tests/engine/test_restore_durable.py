"""A restore that reports success has put the mail on the disk: one syncfs(2) of the
destination's file system once everything is written (never a fsync per file), and for a live
restore before anything is moved into a mailbox; a write-back error fails the restore (exit 3).

The real syncfs runs in every test; it is only watched (what was on the destination when it
ran), or made to fail as a disk does (EIO)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from dmbackup.system import fssync

MD = "example.it/anna/Maildir"


def _watch(monkeypatch, seen: list, look):
    real = fssync.syncfs

    def spy(fd):
        seen.append((os.fstat(fd).st_dev, look()))
        return real(fd)

    monkeypatch.setattr(fssync, "syncfs", spy)


def _files(root: str) -> int:
    return sum(len(fs) for _, _, fs in os.walk(root))


def test_restore_to_a_directory_syncs_its_file_system_once_all_is_written(ready, monkeypatch):
    ready.ok("backup", "--target", "local")
    dest = os.path.join(ready.tmp, "out")
    seen: list = []
    _watch(monkeypatch, seen, lambda: _files(dest))
    res = json.loads(ready.ok("restore", "--target", "local", "--to", dest, "--json").out)
    dev = os.stat(dest).st_dev
    assert [s for s in seen if s[0] == dev] == [(dev, _files(dest))]     # once, with everything there
    assert res["files"] > 0


def test_a_write_back_error_fails_the_restore(ready, monkeypatch):
    ready.ok("backup", "--target", "local")

    def eio(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fssync, "syncfs", eio)
    dest = os.path.join(ready.tmp, "out")
    r = ready.run("restore", "--target", "local", "--to", dest)
    assert r.code == 3, (r.out, r.err)
    lines = [ln for ln in r.err.splitlines() if ln.startswith("dmbackup:")]
    assert len(lines) == 1 and "could not be written to the disk" in lines[0]
    assert "run the same restore again" in lines[0] and "Input/output error" in lines[0]
    assert "Traceback" not in r.out + r.err


@pytest.mark.skipif(os.geteuid() != 0, reason="the live restore gives files to the vmail user")
def test_a_live_folder_restore_syncs_before_it_moves_anything_in(ready, monkeypatch):
    ready.ok("backup", "--target", "local")
    md = os.path.join(ready.store, MD)
    seen: list = []
    _watch(monkeypatch, seen, lambda: sorted(n for n in os.listdir(md) if n.startswith(".Restored-")))
    r = ready.run("restore", "--target", "local", "--mailbox", "anna@example.it", "--json")
    assert r.code in (0, 1), r.err             # 1: no Dovecot here to tell
    dev = os.stat(md).st_dev
    assert [s for s in seen if s[0] == dev] == [(dev, [])]    # synced while nothing was moved in
    assert any(n.startswith(".Restored-") for n in os.listdir(md))


@pytest.mark.skipif(os.geteuid() != 0, reason="the live restore gives files to the vmail user")
def test_a_live_message_restore_syncs_before_it_moves_anything_in(ready, monkeypatch):
    ready.ok("backup", "--target", "local")
    msgs = json.loads(ready.ok("find", "--target", "local", "--mailbox", "anna@example.it", "--json").out)["messages"]
    mid = next(m["message_id"] for m in msgs if m.get("message_id"))
    md = os.path.join(ready.store, MD)
    seen: list = []
    _watch(monkeypatch, seen, lambda: sorted(n for n in os.listdir(md) if n.startswith(".Restored-")))
    r = ready.run("restore", "--target", "local", "--mailbox", "anna@example.it", "--message-id", mid, "--json")
    assert r.code in (0, 1), r.err
    dev = os.stat(md).st_dev
    assert [s for s in seen if s[0] == dev] == [(dev, [])]
    assert any(n.startswith(".Restored-") for n in os.listdir(md))
