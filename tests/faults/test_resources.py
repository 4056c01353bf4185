"""Resource faults: the target file system fills up at different points of a backup, source
files cannot be read, the target turns read-only, the clock goes backwards.

  * target full (a small tmpfs, filled with ballast so the space estimate passes and the
    write itself hits ENOSPC at a different point each time): exit 3, one line saying the
    target is full, nothing of the run committed or left behind, every earlier snapshot
    intact; once space is freed the next backup succeeds and restores exactly;
  * unreadable source files (root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH via setpriv,
    and files replaced by a directory, a symlink or nothing in the middle of the scan): exit 1
    with a warning naming each, the snapshot committed and restorable;
  * target remounted read-only: backup and prune exit 7 with one line saying so; snapshots,
    verify --read-data and restore still work (a disk mounted read-only for a recovery);
  * clock going backwards between backups (utc_now patched in-process (dmbackup.utctime)): the chain stays in
    the order the snapshots were made, each restores to exactly its moment, prune keeps the
    chain made last.

Mounting needs root: these tests skip otherwise. Every mount is unmounted in a finally.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from dmbackup import utctime

from tests.faults.conftest import (
    FULL_SWEEP,
    FaultWorld,
    add_random_message,
    mail_snaps,
    no_traceback,
    one_line,
    repo_objects,
)
from tests.world import ROOT, Result, diff_trees, tree

MiB = 1 << 20
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def tmpfs(path: str, size: str):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=False)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", path], check=False)


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def leftovers(repo_root: str) -> list[str]:
    return [o for o in repo_objects(repo_root) if ".tmp-" in o]


# --- target full ---------------------------------------------------------------------------------
# How far short of what the backup needs the free space is. A calibration run measures the
# exact need (tmpfs pages), is then removed, and the real run gets need - short bytes: from
# "fails in an early volume" to "fails at the last few KiB" (the pages, index, bundle, catalog).
KiB = 1 << 10
# (the calibration sees the space after the run; during it the lock file holds one more page,
# so 0 short fails at the very last object, the catalog; -16 KiB fits)
SHORT = [16 * MiB, 8 * MiB, 2 * MiB, 256 * KiB, 64 * KiB, 32 * KiB, 16 * KiB, 8 * KiB, 4 * KiB, 0, -16 * KiB]
CI_SHORT = SHORT if FULL_SWEEP else [2 * MiB, 8 * KiB, 0]


@root_only
@pytest.mark.parametrize("short", CI_SHORT)
def test_target_full_at_different_points(tmp_path, short):
    w = FaultWorld(str(tmp_path / "w"), volume_size="4M")
    w.make_store(big_bytes=10_000)
    mnt = str(tmp_path / "small")
    with tmpfs(mnt, "64m"):
        w.write_config(targets=f'[targets.local]\ntype = "dir"\npath = "{mnt}"\n')
        assert w.run("init", "local").code == 0
        assert w.run("backup", "--target", "local").code == 0
        s0 = tree(w.store)
        before = mail_snaps(w)
        for i in range(10):
            add_random_message(w.store, ["example.it/mario", "example.it/anna"][i % 2], 2 * MiB, seed=100 + i, sub="new")
        s1 = tree(w.store)
        repo_root = os.path.join(mnt, "dmbackup", "mx.test")

        # calibration: what this incremental takes on this file system
        objs = set(repo_objects(repo_root))
        free0 = free_bytes(mnt)
        assert w.run("backup", "--target", "local").code == 0
        need = free0 - free_bytes(mnt)
        for o in set(repo_objects(repo_root)) - objs:
            os.unlink(os.path.join(repo_root, o))
        # removing a committed snapshot is a rollback to this machine: accept it on purpose
        assert w.run("init", "local").code == 0
        assert mail_snaps(w) == before and free_bytes(mnt) == free0

        ballast = os.path.join(mnt, "ballast")
        with open(ballast, "wb") as f:
            f.write(b"\0" * (free0 - need + short))
        assert free_bytes(mnt) == need - short
        r = w.run("backup", "--target", "local")
        no_traceback(r)
        print(f"short {short} of {need}: exit {r.code}: {r.err.strip().splitlines()[-1][-160:]}")
        assert r.code == (0 if short < 0 else 3), r.err
        if r.code == 3:
            line = one_line(r)
            assert "full" in line and "local" in line, line
            assert mail_snaps(w) == before
            assert leftovers(repo_root) == []
        assert not os.path.exists(os.path.join(repo_root, "locks", "lock"))
        assert w.run("verify", "--read-data").code == 0
        out = str(tmp_path / "r0")
        assert w.run("restore", before[-1]["id"], "--to", out).code == 0
        assert diff_trees(s0, tree(out)) == []
        shutil.rmtree(out)

        os.unlink(ballast)
        r = w.run("backup", "--target", "local")
        assert r.code == 0, r.err
        assert leftovers(repo_root) == []
        assert w.run("verify", "--read-data").code == 0
        out = str(tmp_path / "r1")
        assert w.run("restore", "--to", out).code == 0
        assert diff_trees(s1, tree(out)) == []


# --- unreadable source files -------------------------------------------------------------------
def _no_dac(argv: list[str], w: FaultWorld) -> Result:
    """dmbackup as root without the capabilities that let root read anyone's files."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m",
                        "dmbackup", "--config", w.config, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=env, timeout=300)
    return Result(p.returncode, p.stdout, p.stderr)


@root_only
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing")
def test_unreadable_files_and_folders_are_warnings(tmp_path):
    w = FaultWorld(str(tmp_path / "w"))
    w.make_store(uid=None, gid=None, big_bytes=10_000)       # owned by root, like the run
    w.write_config()
    assert w.run("init", "local").code == 0
    cur = os.path.join(w.store, "example.it", "anna", "Maildir", "cur")
    locked_file = os.path.join(cur, sorted(os.listdir(cur))[0])
    locked_dir = os.path.join(w.store, "example.it", "mario", "Maildir", ".Sent", "cur")
    want = tree(w.store)
    for p in (locked_file, locked_dir):
        os.chown(p, 5000, 5000)
        os.chmod(p, 0)
    want = {k: v for k, v in tree(w.store).items()
            if k != os.fsencode(os.path.relpath(locked_file, w.store))
            and not k.startswith(os.fsencode(os.path.relpath(locked_dir, w.store)) + b"/")}

    r = _no_dac(["backup", "--target", "local"], w)
    no_traceback(r)
    assert r.code == 1, r.err
    warnings = [ln for ln in r.err.splitlines() if ln.startswith("warning:")]
    assert any("permission denied" in ln and os.path.basename(locked_file) in ln for ln in warnings), r.err
    assert any("permission denied" in ln and ".Sent/cur" in ln for ln in warnings), r.err
    snaps = mail_snaps(w)
    assert len(snaps) == 1 and snaps[0]["warnings"] == 2
    assert w.run("verify", "--read-data").code == 0
    out = str(tmp_path / "out")
    assert w.run("restore", "--to", out).code == 0
    assert diff_trees(want, tree(out)) == []


@pytest.mark.parametrize("change", ["directory", "symlink", "vanished"])
def test_file_replaced_mid_scan_is_a_warning(world, monkeypatch, tmp_path, change):
    """The scan saw a regular file; by the time it is read it is something else."""
    backup_mod = importlib.import_module("dmbackup.engine.capture")     # the walk of a backup

    world.ok("init", "local")
    victim_dir = "example.it/anna/Maildir/.Archivio"
    victim = os.path.join(world.store, victim_dir, "dovecot-uidlist")
    real_walk = backup_mod.mailstore.walk

    def walk(root, warn, quick=None):
        for scan in real_walk(root, warn, quick):
            if scan.rel == victim_dir and any(n == "dovecot-uidlist" for n, _ in scan.files):
                os.unlink(victim)
                if change == "directory":
                    os.mkdir(victim)
                elif change == "symlink":
                    os.symlink("/etc/passwd", victim)
            yield scan

    monkeypatch.setattr(backup_mod.mailstore, "walk", walk)
    r = world.run("backup", "--target", "local", "--json")
    no_traceback(r)
    assert r.code == 1, r.err
    res = json.loads(r.out)
    assert len(res["warnings"]) == 1 and "dovecot-uidlist" in res["warnings"][0], res["warnings"]
    monkeypatch.setattr(backup_mod.mailstore, "walk", real_walk)
    world.ok("verify", "--read-data")
    out = str(tmp_path / "out")
    world.ok("restore", "--to", out)
    assert not os.path.lexists(os.path.join(out, victim_dir, "dovecot-uidlist"))
    # the walk listed the folder before the change: everything else is as it was then
    assert os.path.isdir(os.path.join(out, victim_dir, "cur"))


@root_only
def test_unreadable_store_root_fails_with_exit_3(tmp_path):
    w = FaultWorld(str(tmp_path / "w"))
    w.make_store(uid=None, gid=None, big_bytes=10_000)
    w.write_config()
    assert w.run("init", "local").code == 0
    os.chown(w.store, 5000, 5000)
    os.chmod(w.store, 0)
    r = _no_dac(["backup", "--target", "local"], w)
    line = one_line(r)
    assert r.code == 3 and w.store in line, line
    assert mail_snaps(w) == []


# --- target read-only ----------------------------------------------------------------------------
@root_only
def test_read_only_target(tmp_path):
    w = FaultWorld(str(tmp_path / "w"))
    w.make_store(big_bytes=10_000)
    mnt = str(tmp_path / "disk")
    with tmpfs(mnt, "64m"):
        w.write_config(targets=f'[targets.local]\ntype = "dir"\npath = "{mnt}"\n')
        assert w.run("init", "local").code == 0
        assert w.run("backup", "--target", "local").code == 0
        s0 = tree(w.store)
        add_random_message(w.store, "example.it/anna", 100_000, seed=5, sub="new")
        subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
        try:
            for argv in (["backup", "--target", "local"], ["prune", "--keep-chains", "1"],
                         ["backup", "--target", "local", "--what", "config"]):
                r = w.run(*argv)
                line = one_line(r)
                assert r.code in (3, 7), (argv, line)
                assert "read-only" in line, line
            # a disk mounted read-only for a recovery still lists, verifies and restores
            assert len(mail_snaps(w)) == 1
            assert w.run("verify", "--read-data").code == 0
            out = str(tmp_path / "out")
            r = w.run("restore", "--to", out)
            assert r.code == 0, r.err
            assert diff_trees(s0, tree(out)) == []
        finally:
            subprocess.run(["mount", "-o", "remount,rw", mnt], check=True)
        assert w.run("backup", "--target", "local").code == 0
        assert w.run("verify", "--read-data").code == 0


# --- the clock goes backwards ---------------------------------------------------------------------
def test_clock_going_backwards_keeps_the_chain_ordered(ready, monkeypatch, tmp_path):
    w = ready
    t0 = datetime(2026, 11, 28, 2, 30, tzinfo=timezone.utc)
    # (clock at the run, --full?) in the order the runs happen
    runs = [(t0, False), (t0 - timedelta(hours=1), False), (t0 - timedelta(days=2), False),
            (t0 - timedelta(days=3), True), (t0 - timedelta(days=3), False), (t0 + timedelta(days=1), False)]
    moments = []
    for i, (clock, full) in enumerate(runs):
        if i:
            add_random_message(w.store, "example.it/anna", 5_000, seed=200 + i, sub="new")
            cur = os.path.join(w.store, "example.it", "mario", "Maildir", "cur")
            os.unlink(os.path.join(cur, sorted(os.listdir(cur))[0]))
        monkeypatch.setattr(utctime, "utc_now", lambda c=clock: c)
        moments.append(tree(w.store))
        w.ok("backup", "--target", "local", *(["--full"] if full else []))
    monkeypatch.undo()
    rows = mail_snaps(w)
    assert [r["kind"] for r in rows] == ["full", "incremental", "incremental", "full", "incremental", "incremental"]
    assert len({r["chain"] for r in rows[:3]}) == 1 and rows[3]["chain"] > rows[0]["chain"]
    # snapshot names are unique: a second run in the same second is named one second later
    for r, (clock, _) in zip(rows, runs):
        t = datetime.strptime(r["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        assert timedelta(0) <= t - clock <= timedelta(seconds=1), (r, clock)
    for r, want in zip(rows, moments):
        out = str(tmp_path / r["id"])
        w.ok("restore", r["id"], "--to", out)
        assert diff_trees(want, tree(out)) == [], r["id"]
    out = str(tmp_path / "latest")
    w.ok("restore", "--to", out)
    assert diff_trees(moments[-1], tree(out)) == []
    w.ok("verify", "--read-data")
    res = json.loads(w.ok("prune", "--keep-chains", "1", "--json").out)
    assert res["kept"] == [rows[-1]["chain"]]
    assert [r["id"] for r in mail_snaps(w)] == [r["id"] for r in rows[3:]]
