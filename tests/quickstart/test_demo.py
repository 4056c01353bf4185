"""The quick start's first command, ``python3 -m dmbackup.quickstart.demo WORKDIR``: it backs up
the sample store, verifies and restores it, and reports the restore IDENTICAL; run again in
the same directory it goes on from there (no second init: an incremental)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

from dmbackup.quickstart import demo
from tests.world import ROOT


def run_demo(work) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "dmbackup.quickstart.demo", str(work)], cwd=str(work.parent),
                          env=env, capture_output=True, text=True, timeout=300)


def test_demo_reports_identical_and_can_run_again(tmp_path):
    work = tmp_path / "demo"
    r = run_demo(work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sample store: 168 messages of 4 users" in r.stdout
    assert "$ dmbackup init local" in r.stdout
    assert "is IDENTICAL to the source" in r.stdout, r.stdout
    assert stat.S_IMODE(os.stat(work / "passphrase").st_mode) == 0o600
    assert sorted(p for p in os.listdir(work) if not p.startswith("restored-")) == \
        ["backups", "dmbackup.toml", "etc", "passphrase", "state", "vmail"]

    again = run_demo(work)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "$ dmbackup init" not in again.stdout and "sample store:" not in again.stdout
    assert "is IDENTICAL to the source" in again.stdout
    assert "-inc" in again.stdout                        # the second backup is an incremental
    assert len([p for p in os.listdir(work) if p.startswith("restored-")]) == 2


def test_the_comparison_sees_every_difference(tmp_path):
    """What "IDENTICAL" rests on: bytes, names, modes, owners and file mtimes all count."""
    src = tmp_path / "a"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"mail")
    os.symlink("d/f", src / "l")
    base = demo._tree(str(src))

    def changed(edit) -> bool:
        dst = tmp_path / f"b{len(os.listdir(tmp_path))}"
        shutil.copytree(src, dst, symlinks=True)
        for p in (dst / "d" / "f", dst / "d", dst):              # copytree keeps file mtimes only
            st = os.lstat(src / p.relative_to(dst))
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert demo._tree(str(dst)) == base
        edit(dst)
        return demo._tree(str(dst)) != base

    assert changed(lambda d: (d / "d" / "f").write_bytes(b"mial"))
    assert changed(lambda d: os.chmod(d / "d" / "f", 0o600))
    assert changed(lambda d: os.utime(d / "d" / "f", (1, 1)))
    assert changed(lambda d: os.rename(d / "d" / "f", d / "d" / "g"))
    assert changed(lambda d: (os.unlink(d / "l"), os.symlink("d", d / "l")))
    if os.geteuid() == 0:
        assert changed(lambda d: os.chown(d / "d" / "f", 5000, 5000))
