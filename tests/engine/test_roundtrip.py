"""Full backup -> restore reproduces the store exactly: bytes, names, modes, owners, mtimes."""

import json
import os

import pytest

from tests.world import diff_trees, tree


def test_full_backup_restore_is_identical(ready):
    before = tree(ready.store)
    r = ready.ok("backup", "--target", "local", "--full", "--json")
    summary = json.loads(r.out)
    assert summary["kind"] == "full" and summary["files"] > 200
    ready.ok("verify", "--read-data")
    out = os.path.join(ready.tmp, "restored")
    ready.ok("restore", "--target", "local", "--to", out)
    assert diff_trees(before, tree(out)) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership needs root")
def test_owners_and_modes_are_kept(ready):
    ready.ok("backup", "--target", "local")
    out = os.path.join(ready.tmp, "restored")
    ready.ok("restore", "--target", "local", "--to", out)
    msg_dir = os.path.join(out, "example.it", "mario", "Maildir", "cur")
    st = os.stat(msg_dir)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (5000, 5000, 0o700)
    f = os.path.join(msg_dir, sorted(os.listdir(msg_dir))[0])
    st = os.stat(f)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (5000, 5000, 0o600)


def test_odd_names_symlinks_empty_files_and_folders(ready):
    ready.ok("backup", "--target", "local")
    out = os.path.join(ready.tmp, "restored")
    ready.ok("restore", "--to", out)
    md = os.path.join(out, "example.it", "mario", "Maildir")
    assert os.readlink(os.path.join(md, "subscriptions.link")) == "subscriptions"
    assert os.path.getsize(os.path.join(md, "dovecot.list.index.log")) == 0
    assert os.path.isdir(os.path.join(md, ".Empty folder", "cur"))
    assert os.path.isdir(os.path.join(md, ".Posta invi&AOA-ta", "cur"))
    assert os.path.exists(os.path.join(os.fsencode(md), b"raw-\xff-name"))
    assert os.path.exists(os.path.join(md, "note with spaces & àccents.txt"))


def test_restore_refuses_non_empty_destination(ready):
    ready.ok("backup", "--target", "local")
    out = os.path.join(ready.tmp, "restored")
    os.makedirs(out)
    with open(os.path.join(out, "keep.txt"), "w") as f:
        f.write("mine")
    r = ready.run("restore", "--to", out)
    assert r.code == 3
    assert "not empty" in r.err and len(r.err.strip().splitlines()) >= 1
    assert os.listdir(out) == ["keep.txt"]


def test_volumes_respect_the_size_cap(ready):
    ready.ok("backup", "--target", "local")
    vols = ready.chain_files(".v0001") + ready.chain_files(".v0002")
    assert vols
    for v in ready.chain_files():
        assert os.path.getsize(v) <= 8 << 20


def test_snapshots_json_fields(ready):
    ready.ok("backup", "--target", "local")
    ready.ok("backup", "--target", "local")
    rows = json.loads(ready.ok("snapshots", "--json").out)
    mail = [r for r in rows if r["kind"] != "config"]
    assert [r["kind"] for r in mail] == ["full", "incremental"]
    for r in rows:
        for k in ("id", "chain", "kind", "time", "files", "bytes", "stored_bytes"):
            assert k in r
        assert r["time"].endswith("Z")
    assert mail[1]["stored_bytes"] < mail[0]["stored_bytes"] / 10


@pytest.mark.slow
def test_multi_gigabyte_file_round_trips(world):
    """A 4.5 GiB file (past every 32-bit boundary) with data at scattered offsets."""
    big = os.path.join(world.store, "example.it", "big.bin")
    size = (4 << 30) + (512 << 20)
    marks = [0, (1 << 32) - 3, size - 100]
    with open(big, "wb") as f:
        f.truncate(size)
        for off in marks:
            f.seek(off)
            f.write(b"MARK-%d" % off)
    world.write_config(extra="")
    # volumes of at most 1 GiB: the file spans several
    with open(world.config) as f:
        text = f.read().replace('volume_size = "8M"', 'volume_size = "1G"')
    with open(world.config, "w") as f:
        f.write(text)
    world.ok("init", "local")
    world.ok("backup", "--target", "local")
    out = os.path.join(world.tmp, "restored")
    world.ok("restore", "--to", out, "--mailbox", "mario@example.it")  # selective: skips big.bin
    assert not os.path.exists(os.path.join(out, "example.it", "big.bin"))
    out2 = os.path.join(world.tmp, "restored2")
    world.ok("restore", "--to", out2)
    rb = os.path.join(out2, "example.it", "big.bin")
    assert os.path.getsize(rb) == size
    with open(rb, "rb") as f:
        for off in marks:
            f.seek(off)
            assert f.read(len(b"MARK-%d" % off)) == b"MARK-%d" % off
    for v in world.chain_files():
        assert os.path.getsize(v) < 1 << 30
