"""Every failure path of the engine: one line, the documented exit code, nothing left visible."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.engine.forge import forge, some_file_entry
from tests.world import PASSPHRASE, diff_trees, tree


def one_line(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if not l.startswith("{")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_wrong_passphrase_exits_6(ready):
    with open(ready.passfile, "w") as f:
        f.write("not the passphrase\n")
    r = ready.run("backup", "--target", "local")
    assert r.code == 6
    assert "wrong passphrase" in one_line(r.err)
    assert not ready.chain_files()


def test_a_backup_derives_its_key_once_ahead_and_leaves_nothing_behind(ready, monkeypatch):
    """The key's scrypt starts in a thread as soon as the target is open (dmbackup.archive.kdf)
    and the unlock takes that result: one derivation per backup, none left pending, with the
    right passphrase and with a wrong one (exit 6, as without it)."""
    from dmbackup.archive import kdf

    calls = []
    real = kdf.scrypt
    monkeypatch.setattr(kdf, "scrypt", lambda *a: (calls.append(a), real(*a))[1])
    monkeypatch.setattr(kdf, "_ahead", {})
    ready.ok("backup", "--target", "local")
    assert len(calls) == 1 and kdf._ahead == {}
    with open(ready.passfile, "w") as f:
        f.write("not the passphrase\n")
    r = ready.run("backup", "--target", "local")
    assert r.code == 6 and "wrong passphrase" in one_line(r.err)
    assert len(calls) == 2 and kdf._ahead == {}


def test_snapshots_and_status_derive_the_key_ahead_once_and_leave_nothing_behind(ready, monkeypatch):
    """``snapshots`` (and ``status``, which lists every target) start scrypt as soon as the target
    is open, before the archive code loads (issue 17): one derivation each, none left pending;
    a wrong passphrase is exit 6 for ``snapshots`` and a target error in ``status``, as before."""
    from dmbackup.archive import kdf

    ready.ok("backup", "--target", "local")
    calls = []
    real = kdf.scrypt
    monkeypatch.setattr(kdf, "scrypt", lambda *a: (calls.append(a), real(*a))[1])
    monkeypatch.setattr(kdf, "_ahead", {})
    r = ready.ok("snapshots", "--target", "local", "--json")
    assert len(json.loads(r.out)) == 1
    assert len(calls) == 1 and kdf._ahead == {}
    r = ready.run("status", "--json")
    assert json.loads(r.out)["targets"][0]["snapshots"] == 1
    assert len(calls) == 2 and kdf._ahead == {}
    with open(ready.passfile, "w") as f:
        f.write("not the passphrase\n")
    r = ready.run("snapshots", "--target", "local")
    assert r.code == 6 and "wrong passphrase" in one_line(r.err)
    r = ready.run("status", "--json")
    assert "wrong passphrase" in json.loads(r.out)["targets"][0]["error"]
    assert len(calls) == 4 and kdf._ahead == {}


def test_a_key_file_over_the_cap_is_not_derived_ahead(ready, monkeypatch):
    from dmbackup.archive import kdf

    calls = []
    monkeypatch.setattr(kdf, "scrypt", lambda *a: calls.append(a))
    monkeypatch.setattr(kdf, "_ahead", {})
    key = os.path.join(ready.repo_root, "keys", "master.json")
    with open(key, "rb") as f:
        doc = json.loads(f.read())
    doc["padding"] = "x" * 70_000
    with open(key, "w") as f:
        json.dump(doc, f)
    r = ready.run("backup", "--target", "local")
    assert r.code == 4 and "larger than" in one_line(r.err)        # damage, as without it
    assert calls == [] and kdf._ahead == {}


def test_missing_passphrase_file_exits_2(ready):
    os.unlink(ready.passfile)
    r = ready.run("backup", "--target", "local")
    assert r.code == 2
    line = one_line(r.err)
    assert ready.passfile in line and "encryption.passphrase_file" in line


def test_world_readable_passphrase_file_exits_2(ready):
    os.chmod(ready.passfile, 0o644)
    r = ready.run("backup", "--target", "local")
    assert r.code == 2 and "chmod 600" in one_line(r.err)


def test_no_passphrase_anywhere_exits_6(world):
    world.write_config(encryption="")
    r = world.run("init", "local")
    assert r.code == 6 and "DMBACKUP_PASSPHRASE" in one_line(r.err)


def test_passphrase_from_environment(world):
    world.write_config(encryption="")
    world.ok("init", "local", env={"DMBACKUP_PASSPHRASE": PASSPHRASE})
    world.ok("backup", "--target", "local", env={"DMBACKUP_PASSPHRASE": PASSPHRASE})


@pytest.mark.parametrize("text,field", [
    ("hostname = \n", None),
    ("[targets.local]\ntype = \"dir\"\n", "targets.local.path"),
    ("[targets.local]\ntype = \"tape\"\npath = \"/x\"\n", "targets.local.type"),
    ("volume_size = \"lots\"\n", "volume_size"),
    ("[jobs.n]\ntarget = \"nowhere\"\n", "jobs.n.target"),
    ("[jobs.n]\ntarget = \"local\"\nschedule = \"whenever\"\n[targets.local]\ntype = \"dir\"\npath = \"/tmp\"\n",
     "jobs.n.schedule"),
    ("[source]\nmail_store = \"relative/path\"\n", "source.mail_store"),
    ("colour = \"blue\"\n", "colour"),
])
def test_malformed_config_exits_2_naming_file_and_field(world, text, field):
    with open(world.config, "w") as f:
        f.write(text)
    r = world.run("check-config")
    assert r.code == 2
    line = one_line(r.err)
    assert world.config in line
    if field:
        assert field in line


def test_missing_config_file_exits_2(world):
    os.unlink(world.config)
    r = world.run("snapshots")
    assert r.code == 2 and "does not exist" in one_line(r.err)


def test_target_path_missing_exits_7(world):
    world.write_config(targets=f'[targets.local]\ntype = "dir"\npath = "{world.tmp}/not-mounted"\n')
    r = world.run("init", "local")
    assert r.code == 7 and "does not exist" in one_line(r.err)
    assert not os.path.exists(f"{world.tmp}/not-mounted")


def test_require_mount_refuses_plain_directory(world):
    world.write_config(targets=f'[targets.local]\ntype = "dir"\npath = "{world.repo_dir}"\nrequire_mount = true\n')
    r = world.run("init", "local")
    assert r.code == 7 and "not a mount point" in one_line(r.err)
    assert os.listdir(world.repo_dir) == []


def test_no_repository_exits_7_and_says_init(world):
    r = world.run("backup", "--target", "local")
    assert r.code == 7
    assert "dmbackup init local" in one_line(r.err)
    assert os.listdir(world.repo_dir) == []


def test_unenrolled_repository_is_refused(ready):
    os.unlink(os.path.join(ready.state, "repos.json"))
    r = ready.run("backup", "--target", "local")
    assert r.code == 7 and "not enrolled" in one_line(r.err)
    ready.ok("init", "local")          # enrols the existing repository after checking the key
    ready.ok("backup", "--target", "local")


def test_second_concurrent_run_exits_5_naming_the_holder(ready):
    holder = subprocess.Popen(["sleep", "60"])
    try:
        from dmbackup.archive.lock import boot_id, proc_start_ticks
        import socket
        lock = {"host": socket.gethostname(), "pid": holder.pid, "boot_id": boot_id(),
                "start_ticks": proc_start_ticks(holder.pid), "time": "2026-11-28T02:00:00Z", "purpose": "backup"}
        os.makedirs(os.path.join(ready.repo_root, "locks"), exist_ok=True)
        with open(os.path.join(ready.repo_root, "locks", "lock"), "w") as f:
            json.dump(lock, f)
        r = ready.run("backup", "--target", "local")
        assert r.code == 5
        line = one_line(r.err)
        assert f"PID {holder.pid}" in line and "locked" in line
        assert not ready.chain_files()
    finally:
        holder.kill()
        holder.wait()
    # the holder is now provably dead: its lock is broken automatically
    ready.ok("backup", "--target", "local")


def test_real_concurrent_backups_one_wins(ready):
    ready.make_store  # store exists; make it bigger so the first run is still writing
    p1 = ready.spawn("backup", "--target", "local")
    lock = os.path.join(ready.repo_root, "locks", "lock")
    deadline = time.time() + 30
    while not os.path.exists(lock) and p1.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    if p1.poll() is not None:
        pytest.skip("first backup finished before the second could start")
    r2 = ready.run("backup", "--target", "local")
    p1.communicate()
    assert p1.returncode == 0
    assert r2.code in (0, 5)
    if r2.code == 5:
        assert "locked" in one_line(r2.err)


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_flipped_byte_in_volume_found_by_read_data(ready):
    ready.ok("backup", "--target", "local")
    vol = ready.chain_files(".v0001")[0]
    flip(vol, os.path.getsize(vol) // 2)
    assert ready.run("verify").code == 0            # sizes still right: quick verify can't see it
    r = ready.run("verify", "--read-data", "--json")
    assert r.code == 4
    rep = json.loads(r.out)
    assert rep["damaged_snapshots"] and rep["damaged_files"]
    files = next(iter(rep["damaged_files"].values()))
    assert all("/" in f for f in files)
    r = ready.run("verify", "--read-data")
    assert r.code == 4
    assert "damage" in r.err and rep["damaged_snapshots"][0] in r.err and "Traceback" not in r.err


def test_flipped_byte_in_catalog_found(ready):
    ready.ok("backup", "--target", "local")
    cat = ready.chain_files(".catalog")[0]
    flip(cat, os.path.getsize(cat) - 10)
    r = ready.run("verify", "--read-data")
    assert r.code == 4 and os.path.basename(cat)[:-8] in r.err


def test_restore_never_writes_outside_destination(ready):
    ready.ok("backup", "--target", "local")
    f = some_file_entry(ready)
    outside = os.path.join(ready.tmp, "outside")
    os.makedirs(outside)
    evil_cases = [
        {"": [["..", "d", 0o755, 0, 0, 0, 0, 0, None, None]]},
        {"": [["x", "d", 0o755, 0, 0, 0, 0, 0, None, None]], "x/../../outside": [["f"] + f[1:]]},
        {"": [["esc", "l", 0o777, 0, 0, 0, 0, 0, None, outside]], "esc": [["pwned"] + f[1:]]},
        {"": [["a/b"] + f[1:]]},
        {"/abs": [["pwned"] + f[1:]]},
    ]
    for i, pages in enumerate(evil_cases):
        snap = forge(ready, pages, snap=f"2099123100000{i}Z-inc")
        out = os.path.join(ready.tmp, f"dest{i}")
        r = ready.run("restore", snap, "--to", out)
        assert r.code in (3, 4), (pages, r.err)
        assert "Traceback" not in r.err
        assert os.listdir(outside) == [], pages
        os.unlink(os.path.join(ready.chain_files(f"{snap}.catalog")[0]))


def test_sigkill_during_backup_leaves_earlier_snapshots_and_next_run_works(ready):
    ready.ok("backup", "--target", "local")
    first = tree(ready.store)
    # more data so the second run is still writing when killed
    with open(os.path.join(ready.store, "example.it", "bulk.bin"), "wb") as f:
        f.write(os.urandom(40 << 20))
    p = ready.spawn("backup", "--target", "local", "--full")
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        if any(".tmp-" in n for n in ready.chain_files()) or len(ready.chain_files(".v0001")) > 1:
            break
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    p.wait()
    rows = json.loads(ready.ok("snapshots", "--json").out)
    assert [r["kind"] for r in rows if r["kind"] != "config"] == ["full"]
    ready.ok("verify", "--read-data")
    r = ready.ok("backup", "--target", "local", "--full", "--json")
    assert not [n for n in ready.chain_files() if ".tmp-" in n]
    out = os.path.join(ready.tmp, "restored-first")
    ready.ok("restore", rows[0]["id"], "--to", out)
    assert diff_trees(first, tree(out)) == []
    ready.ok("verify", "--read-data")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_target_file_system_exits_3_and_commits_nothing(world):
    mnt = os.path.join(world.tmp, "small")
    os.makedirs(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], check=True)
    try:
        world.write_config(targets=f'[targets.local]\ntype = "dir"\npath = "{mnt}"\n')
        world.ok("init", "local")
        # estimate passes (it is optimistic), the write itself hits ENOSPC
        with open(os.path.join(world.store, "example.it", "noise.bin"), "wb") as f:
            f.write(os.urandom(300 << 10))
        r = world.run("backup", "--target", "local")
        assert r.code == 3
        line = one_line(r.err)
        assert "full" in line or "free" in line
        leftovers = []
        for dp, _, fn in os.walk(mnt):
            leftovers += [n for n in fn if ".tmp-" in n or n.endswith(".catalog") or ".v0" in n]
        assert leftovers == []
    finally:
        subprocess.run(["umount", "-l", mnt])


def test_secrets_never_in_logs_or_names(ready, capfd):
    p = ready.sub("backup", "--target", "local")
    assert p.code == 0
    p2 = ready.sub("verify", "--read-data")
    with open(ready.passfile, "w") as f:
        f.write("wrong-secret-value\n")
    p3 = ready.sub("backup", "--target", "local")
    assert p3.code == 6
    for r in (p, p2, p3):
        assert PASSPHRASE not in r.out + r.err
        assert "wrong-secret-value" not in r.out + r.err
    for dp, dns, fns in os.walk(ready.repo_dir):
        for n in dns + fns:
            assert "horse" not in n
    for dp, _, fns in os.walk(ready.state):
        for n in fns:
            with open(os.path.join(dp, n), "rb") as f:
                assert PASSPHRASE.encode() not in f.read()


def test_damaged_lock_file_exits_5_and_says_what_to_do(ready):
    os.makedirs(os.path.join(ready.repo_root, "locks"), exist_ok=True)
    with open(os.path.join(ready.repo_root, "locks", "lock"), "w") as f:
        f.write('{"host": "mx')            # truncated by a dropped connection
    r = ready.run("backup", "--target", "local")
    assert r.code == 5
    line = one_line(r.err)
    assert "unreadable" in line and "delete it" in line
    assert not ready.chain_files()
