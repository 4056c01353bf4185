"""The races of a live capture, made deterministic: a directory listing that returns one
message under two names, misses one, or is followed by a rename before the open.

readdir makes no promise while entries are renamed in the same directory (on ext4 with hashed
directories a rename moves the entry to another place in the listing), so the tests replace
``mailstore.fill`` with the real listing plus the anomaly, performed on the real store at the
moment the listing returns. Each case must give exactly one file per base name per folder,
the message under its current name, and a snapshot that restores into an empty directory.
"""

from __future__ import annotations

import json
import os

import pytest

from dmbackup.source import mailstore
from dmbackup.source.mailstore import base_name

INBOX_CUR = "example.it/anna/Maildir/cur"


def _restore_names(world, tmp_path, snap: str | None = None) -> dict[str, list[str]]:
    out = tmp_path / f"out-{len(os.listdir(tmp_path))}"
    world.ok("restore", *( [snap] if snap else []), "--to", str(out))
    folder = out / "example.it/anna/Maildir"
    return {sub: sorted(os.listdir(folder / sub)) for sub in ("new", "cur")}


def _one_per_base(names: dict[str, list[str]]) -> None:
    bases = [base_name(n) for sub in names.values() for n in sub]
    assert len(bases) == len(set(bases)), names


def _patch_fill(monkeypatch, on_listing):
    real = mailstore.fill
    calls = {"n": 0}

    def fill(scan):
        real(scan)
        if scan.rel == INBOX_CUR:
            calls["n"] += 1
            on_listing(scan, calls["n"])

    monkeypatch.setattr(mailstore, "fill", fill)
    return calls


def _flagged(name: str) -> str:
    base, _, flags = name.partition(":2,")
    return f"{base}:2,{''.join(sorted(set(flags + 'F')))}" if flags or ":2," in name else f"{base}:2,F"


def _victim(world) -> tuple[str, str]:
    cur = os.path.join(world.store, INBOX_CUR)
    name = next(n for n in sorted(os.listdir(cur)) if "F" not in n.partition(":2,")[2])
    return cur, name


def test_listing_returns_a_renamed_message_under_both_names(ready, monkeypatch, tmp_path):
    cur, old = _victim(ready)
    new = _flagged(old)

    def rename_and_repeat(scan, n):
        if n == 1:
            st = os.lstat(os.path.join(cur, old))
            os.rename(os.path.join(cur, old), os.path.join(cur, new))
            # the listing has the message under its old name AND its new one
            scan.files.append((new, os.lstat(os.path.join(cur, new))))
            scan.files.sort()
            assert any(f == old for f, _ in scan.files) and st

    _patch_fill(monkeypatch, rename_and_repeat)
    r = ready.run("backup", "--target", "local", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["warnings"] == []
    assert res["duplicate_names_dropped"] == 1
    names = _restore_names(ready, tmp_path)
    _one_per_base(names)
    assert new in names["cur"] and old not in names["cur"]


def test_rename_between_listing_and_open_is_captured_once(ready, monkeypatch, tmp_path):
    cur, old = _victim(ready)
    new = _flagged(old)

    def rename_after_listing(scan, n):
        if n == 1:
            os.rename(os.path.join(cur, old), os.path.join(cur, new))

    _patch_fill(monkeypatch, rename_after_listing)
    r = ready.run("backup", "--target", "local", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["warnings"] == []
    names = _restore_names(ready, tmp_path)
    _one_per_base(names)
    assert new in names["cur"] and old not in names["cur"]


def test_message_moved_new_to_cur_after_both_listings_is_captured_once(ready, monkeypatch, tmp_path):
    """Dovecot moves new/X to cur/X:2, after both listings: new/ has it, cur/ does not."""
    newdir = os.path.join(ready.store, "example.it/anna/Maildir/new")
    cur = os.path.join(ready.store, INBOX_CUR)
    msg = sorted(os.listdir(newdir))[0]

    def move_after_listing(scan, n):
        if n == 1:
            os.rename(os.path.join(newdir, msg), os.path.join(cur, msg + ":2,S"))

    _patch_fill(monkeypatch, move_after_listing)
    r = ready.run("backup", "--target", "local", "--json")
    assert r.code == 0, r.err
    names = _restore_names(ready, tmp_path)
    _one_per_base(names)
    assert msg + ":2,S" in names["cur"] and msg not in names["new"]


def test_listing_that_misses_a_message_is_listed_again(ready, monkeypatch, tmp_path):
    cur, victim = _victim(ready)
    os.utime(cur)          # the folder is busy: its mtime is now

    def drop_one(scan, n):
        if n == 1:
            scan.files = [(f, s) for f, s in scan.files if f != victim]

    calls = _patch_fill(monkeypatch, drop_one)
    r = ready.run("backup", "--target", "local", "--json")
    assert r.code == 0, r.err
    assert calls["n"] >= 2              # cur/ was listed again
    names = _restore_names(ready, tmp_path)
    assert victim in names["cur"]
    _one_per_base(names)


def test_quiet_folder_is_listed_once(ready, monkeypatch):
    cur, _ = _victim(ready)
    old = 1_700_000_000
    os.utime(cur, (old, old))
    calls = _patch_fill(monkeypatch, lambda scan, n: None)
    r = ready.run("backup", "--target", "local", "--json")
    assert r.code == 0, r.err
    assert calls["n"] == 1


@pytest.mark.parametrize("name", ["dovecot-uidlist.lock", "dovecot.index.tmp", "dovecot-keywords.tmp",
                                  "subscriptions.lock"])
def test_dovecot_transient_files_are_not_captured(ready, tmp_path, name):
    folder = os.path.join(ready.store, "example.it/anna/Maildir")
    with open(os.path.join(folder, name), "w") as f:
        f.write("mail.example.it:12345\n")
    r = ready.run("backup", "--target", "local", "--json")
    assert r.code == 0, r.err
    out = tmp_path / "out"
    ready.ok("restore", "--to", str(out))
    assert not os.path.lexists(out / "example.it/anna/Maildir" / name)
    assert os.path.exists(out / "example.it/anna/Maildir/dovecot-uidlist")


def test_a_folder_larger_than_the_block_window_is_captured_whole(world, tmp_path):
    """new/ and cur/ of a folder are held until the folder's uidlist is read; the blocks their
    messages were written to must stay resolvable that long (8,000 messages of ~2.7 KB span
    several volumes of 8 MiB: this crashed with a KeyError before the fix)."""
    world.write_config()
    inbox = os.path.join(world.store, "example.it/big/Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(inbox, sub))
    body = os.urandom(2600)
    for i in range(8000):
        sub = "new" if i % 50 == 0 else "cur"
        name = f"{1790000000 + i}.M{i}P1.mx,S=2700" + (":2,S" if sub == "cur" else "")
        with open(os.path.join(inbox, sub, name), "wb") as f:
            f.write(f"Message-ID: <{i}@x>\r\n\r\n".encode() + body + str(i).encode())
    world.ok("init", "local")
    r = world.run("backup", "--target", "local", "--full", "--json")
    assert r.code == 0, r.err
    out = tmp_path / "out"
    world.ok("restore", "--to", str(out), "--mailbox", "big@example.it")
    restored = sum(len(os.listdir(out / "example.it/big/Maildir" / s)) for s in ("cur", "new"))
    assert restored == 8000
