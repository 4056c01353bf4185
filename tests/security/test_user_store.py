"""Hostile mail users: what the vmail uid can do to its own Maildir while dmbackup runs as root.

The mail users' programs run as the vmail uid (5000 here), which owns every file and directory
of the store: it can rename, replace and symlink anything in it at any moment. Each test
performs the attack as uid 5000 through ``setpriv`` against a real dmbackup run (findings 2, 3,
4, 8 and 9 of the security review, issue 13) and checks that nothing outside the store was read
into a backup or written by root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest

from dmbackup.source import mailstore
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as the vmail uid")

VMAIL = ["setpriv", "--reuid=5000", "--regid=5000", "--clear-groups", "--"]
MD = "example.it/anna/Maildir"


@pytest.fixture(autouse=True)
def _vmail_can_reach_the_store(tmp_path):
    """pytest's temporary directories are 0700 root: let uid 5000 walk down to its store, as it
    can on a real server (/var/vmail)."""
    changed = []
    p = tmp_path
    while str(p) not in ("/", "/tmp"):
        st = os.stat(p)
        if st.st_mode & 0o005 != 0o005:
            changed.append((p, st.st_mode & 0o7777))
            os.chmod(p, (st.st_mode & 0o7777) | 0o005)
        p = p.parent
    yield
    for q, mode in changed:
        os.chmod(q, mode)


def as_vmail(*cmd: str) -> None:
    subprocess.run(VMAIL + list(cmd), check=True)


def _secret_dir(tmp_path) -> str:
    d = tmp_path / "root-only"
    d.mkdir(mode=0o700)
    (d / "cur").mkdir()
    (d / "new").mkdir()
    (d / "cur" / "shadow:2,S").write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    os.chmod(d, 0o755)          # the vmail uid may link to it; root's walk must not follow
    return str(d)


def _restored_contents(world, tmp_path) -> bytes:
    out = tmp_path / "out"
    world.ok("restore", "--to", str(out))
    data = b""
    for dp, _, fns in os.walk(out):
        for n in fns:
            p = os.path.join(dp, n)
            if not os.path.islink(p):
                with open(p, "rb") as f:
                    data += f.read()
    return data


def test_directory_swapped_for_a_symlink_mid_backup_is_not_followed(ready, tmp_path, monkeypatch):
    """Finding 4: cur/ of a folder replaced by a symlink to a root-only directory after the
    folder was listed; the backup must not capture what the link points to."""
    secret = _secret_dir(tmp_path)
    folder = os.path.join(ready.store, MD, ".Archivio")
    real = mailstore.fill

    def fill(scan):
        real(scan)
        if scan.rel == f"{MD}/.Archivio":
            as_vmail("mv", os.path.join(folder, "cur"), os.path.join(folder, "cur.old"))
            as_vmail("ln", "-s", os.path.join(secret, "cur"), os.path.join(folder, "cur"))

    monkeypatch.setattr(mailstore, "fill", fill)
    r = ready.run("backup", "--target", "local", "--json")
    monkeypatch.setattr(mailstore, "fill", real)
    assert r.code == 1, r.err
    assert any(".Archivio/cur" in w and "no longer a directory" in w for w in json.loads(r.out)["warnings"])
    assert b"secret-hash" not in _restored_contents(ready, tmp_path)


def test_a_fifo_under_a_message_name_does_not_hang_the_backup(ready, monkeypatch):
    """Finding 8: a FIFO swapped in under a listed message's name (open would block forever)."""
    cur = os.path.join(ready.store, MD, "cur")
    victim = sorted(os.listdir(cur))[0]
    real = mailstore.fill

    def fill(scan):
        real(scan)
        if scan.rel == f"{MD}/cur" and os.path.isfile(os.path.join(cur, victim)):
            as_vmail("rm", os.path.join(cur, victim))
            as_vmail("mkfifo", os.path.join(cur, victim))

    monkeypatch.setattr(mailstore, "fill", fill)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", ready.run("backup", "--target", "local", "--json")),
                         daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the backup hangs on a FIFO"
    r = box["r"]
    assert r.code == 1, r.err
    assert any(victim in w for w in json.loads(r.out)["warnings"])


def test_a_huge_sparse_file_is_reported_not_fatal(ready, tmp_path):
    """Finding 9: an 8 TiB sparse file made every full backup fail its space estimate."""
    as_vmail("truncate", "-s", "8T", os.path.join(ready.store, MD, "cur", "1.M1P1.mx,S=1:2,S"))
    r = ready.run("backup", "--target", "local", "--json")
    assert r.code == 1, r.err
    res = json.loads(r.out)
    assert any("max_file_size" in w for w in res["warnings"])
    assert res["stored_bytes"] < 64 << 20


_PLANTER = r"""
import os, sys, time
root, canary, names, until = sys.argv[1], sys.argv[2], sys.argv[3].split(","), time.time() + float(sys.argv[4])
planted = 0
while time.time() < until:
    for dp, dns, fns in os.walk(root):
        for n in names:
            p = os.path.join(dp, n)
            try:
                if os.path.islink(p):
                    continue
                if os.path.exists(p):
                    os.rename(p, p + ".moved")
                os.symlink(canary, p)
                planted += 1
            except OSError:
                pass
print(planted)
"""


def _start_planter(tmp_path, root: str, canary: str, names: list[str], seconds: float) -> subprocess.Popen:
    script = tmp_path / "planter.py"
    script.write_text(_PLANTER)
    os.chmod(tmp_path, 0o755)
    os.chmod(script, 0o644)
    return subprocess.Popen(VMAIL + [sys.executable, str(script), root, canary, ",".join(names), str(seconds)],
                            stdout=subprocess.PIPE, text=True)


def _canary(tmp_path) -> str:
    c = tmp_path / "passwd"
    c.write_text("root:x:0:0:root:/root:/bin/bash\n")
    os.chmod(c, 0o644)
    return str(c)


def test_disaster_restore_never_writes_through_a_users_symlink(ready, tmp_path):
    """Finding 2: --overwrite raised next UIDs through a path a vmail symlink could redirect."""
    ready.ok("backup", "--target", "local")
    canary = _canary(tmp_path)
    before = open(canary).read()
    os.rename(ready.store, ready.store + ".old")
    os.makedirs(ready.store)
    os.chown(ready.store, 5000, 5000)          # /var/vmail belongs to vmail on a real server
    p = _start_planter(tmp_path, ready.store, canary,
                       ["dovecot-uidlist.dmbackup-tmp", "dovecot-uidlist", "dovecot-keywords"], 6)
    time.sleep(0.3)
    r = ready.run("restore", "--target", "local", "--overwrite")
    p.wait(30)
    assert r.code in (0, 1, 3, 4), r.err
    assert open(canary).read() == before
    assert os.stat(canary).st_uid == 0


def test_live_restore_refuses_a_maildir_that_is_a_symlink(ready, tmp_path):
    """Finding 3: a Maildir (or cur) symlink was followed by the live restore."""
    ready.ok("backup", "--target", "local")
    target = tmp_path / "root-owned"
    target.mkdir(mode=0o755)
    md = os.path.join(ready.store, MD)
    as_vmail("mv", md, md + ".real")
    as_vmail("ln", "-s", str(target), md)
    r = ready.run("restore", "--target", "local", "--mailbox", "anna@example.it")
    assert r.code == 3, r.err
    assert "not a real directory" in r.err or "no Maildir" in r.err
    assert os.listdir(target) == []


def test_live_restore_never_moves_into_a_planted_folder_name(ready, tmp_path):
    """The restored folder's name is taken by a vmail symlink to a root-owned directory: the
    restore chooses another name and writes nothing there."""
    ready.ok("backup", "--target", "local")
    target = tmp_path / "root-owned"
    target.mkdir(mode=0o755)
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    md = os.path.join(ready.store, MD)
    as_vmail("ln", "-s", str(target), os.path.join(md, f".Restored-{day}"))
    r = ready.run("restore", "--target", "local", "--mailbox", "anna@example.it", "--json")
    assert r.code in (0, 1), r.err
    assert os.listdir(target) == []
    dest = json.loads(r.out)["destination"]
    assert f"Restored-{day}-2/" in dest
    for dp, dns, fns in os.walk(md):
        for n in dns + fns:
            st = os.lstat(os.path.join(dp, n))
            assert (st.st_uid, st.st_gid) == (5000, 5000), os.path.join(dp, n)


def test_live_restore_under_a_symlink_planting_user(ready, tmp_path):
    """Finding 3: a racing vmail process swapped dovecot-keywords for a symlink and got a
    root-owned file rewritten. Nothing root writes may follow a user's link."""
    ready.ok("backup", "--target", "local")
    canary = _canary(tmp_path)
    before = open(canary).read()
    md = os.path.join(ready.store, MD)
    p = _start_planter(tmp_path, md, canary, ["dovecot-keywords", "dovecot-uidlist", "cur"], 4)
    time.sleep(0.3)
    for _ in range(3):
        r = ready.run("restore", "--target", "local", "--mailbox", "anna@example.it")
        assert r.code in (0, 1, 3), r.err
    p.wait(30)
    assert open(canary).read() == before
    assert os.stat(canary).st_uid == 0
    # no stage left behind, and nothing in the Maildir belongs to root
    assert not [n for n in os.listdir(md) if n.startswith("dmbackup-stage-")]
    for dp, dns, fns in os.walk(md):
        for n in dns + fns:
            assert os.lstat(os.path.join(dp, n)).st_uid == 5000, os.path.join(dp, n)
