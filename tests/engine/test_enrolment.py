"""Enrolment: only repositories `init` enrolled are written to; rotated disks each keep their
own chains; a stranger's disk (or an empty mount point) is refused."""

import json
import os
import shutil

from tests.world import World


def _snaps(w):
    return [r for r in json.loads(w.ok("snapshots", "--target", "local", "--json").out) if r["kind"] != "config"]


def test_two_rotated_disks_and_a_stranger(tmp_path, world):
    w = world
    disk_a, disk_b = os.path.join(w.tmp, "disk-a"), os.path.join(w.tmp, "disk-b")
    # Monday: disk A is "plugged in" (mounted at the target path) and enrolled
    w.ok("init", "local")
    w.ok("backup", "--target", "local")
    shutil.move(w.repo_dir, disk_a)
    # Tuesday: disk B, new and empty, enrolled as well
    os.makedirs(w.repo_dir)
    r = w.run("backup", "--target", "local")
    assert r.code == 7 and "init" in r.err             # an empty mount point is never written to
    w.ok("init", "local")
    w.ok("backup", "--target", "local")
    shutil.move(w.repo_dir, disk_b)
    # Wednesday: disk A again: its own chain continues
    shutil.move(disk_a, w.repo_dir)
    w.ok("backup", "--target", "local")
    assert [s["kind"] for s in _snaps(w)] == ["full", "incremental"]
    shutil.move(w.repo_dir, disk_a)
    shutil.move(disk_b, w.repo_dir)
    assert [s["kind"] for s in _snaps(w)] == ["full"]
    shutil.move(w.repo_dir, disk_b)
    # a disk enrolled by another machine (another state dir) with the same label
    other = World(tmp_path / "other")
    other.make_store()
    other.write_config()
    other.ok("init", "local")
    shutil.move(other.repo_dir, w.repo_dir)
    before = sorted(os.listdir(os.path.join(w.repo_root)))
    r = w.run("backup", "--target", "local")
    assert r.code == 7 and "not the one enrolled" in r.err and "wrong disk" in r.err
    assert sorted(os.listdir(os.path.join(w.repo_root))) == before
    with open(os.path.join(w.state, "repos.json")) as f:
        assert len(json.load(f)["local"]) == 2
