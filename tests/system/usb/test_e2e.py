"""End to end on real disks: the real CLI against a usb target on a loop-device image.

Each command mounts the disk, works, syncs and unmounts it, as on the appliance; between
runs the disk is also "unplugged" (loop device detached) and "plugged in again" (attached
anew, maybe under another /dev/loopN). Loop devices are invisible to detection here (no
udev daemon), so the target names the node with ``device`` and the label, which the target
checks with blkid before mounting.

FAT32 disks use the label DMUSB, not DMBACKUP: where the kernel has no vfat driver, fusefat
shows a DMBACKUP label as a file that hides the repository folder ``dmbackup`` (see
test_target.py); the target then says so, and ``test_fusefat_label_quirk_explained`` checks it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from dmbackup.system.mountinfo import mount_at
from dmbackup.system.blockdev import fusefat_free_bytes, holders
from dmbackup.system.diskmount import DiskMount, kernel_supports
from tests.world import World, diff_trees, tree

from . import loopdev

FS = ["ext4", "exfat", "vfat"]
MiB = 1 << 20


class UsbWorld(World):
    """A World whose target ``usb1`` is a loop-device disk."""

    def __init__(self, tmp, disk: loopdev.LoopDisk):
        super().__init__(tmp)
        self.disk = disk
        self.mp = os.path.join(self.tmp, "mnt", "usb1")

    def write_usb_config(self, label: str | None = None):
        self.write_config(targets=f'[targets.usb1]\ntype = "usb"\ndevice = "{self.disk.device}"\n'
                                  f'label = "{label or self.disk.label}"\nmount_point = "{self.mp}"\n')

    def replug(self) -> None:
        """Unplug the disk (detach its loop device) and plug it in again."""
        assert mount_at(self.mp) is None, "the disk is still mounted after the command ended"
        loopdev.destroy(self.disk)
        self.disk.device = loopdev.run("losetup", "-f", "--show", self.disk.image).strip()
        self.write_usb_config()

    def on_disk(self) -> list[str]:
        """Every file on the disk (relative paths), read with the disk mounted read-only."""
        files = []
        with DiskMount(self.disk.device, os.path.join(self.tmp, "peek"), self.disk.fs, ("ro",)) as root:
            for dp, _, fn in os.walk(root):
                files += [os.path.relpath(os.path.join(dp, n), root) for n in fn]
        if self.disk.fs == "vfat" and not kernel_supports("vfat"):
            files = [f for f in files if f != self.disk.label]    # fusefat's phantom label file
        return sorted(files)

    def free_bytes(self) -> int:
        with DiskMount(self.disk.device, os.path.join(self.tmp, "peek"), self.disk.fs) as root:
            st = os.statvfs(root)
            if st.f_blocks == 0:        # fusefat
                return fusefat_free_bytes(root, self.disk.device)
            return st.f_bavail * st.f_frsize


def one_line_error(r) -> str:
    assert "Traceback" not in r.err and "Traceback" not in r.out, r.err
    lines = [ln for ln in r.err.strip().splitlines() if ln.strip() and not ln.startswith("{")]
    assert len(lines) == 1, r.err
    return lines[0]


def assert_released(w: UsbWorld) -> None:
    assert mount_at(w.mp) is None, "the disk was left mounted"
    assert not os.path.exists(w.mp), "the mount point was left behind"
    assert holders(w.disk.device) == [], "a FUSE helper still holds the disk"


def usb_world(tmp_path, loop_disk, fs: str, size_mb: int = 64, label: str = "DMUSB") -> UsbWorld:
    disk = loop_disk(fs, label=label, size_mb=size_mb)
    w = UsbWorld(tmp_path, disk)
    w.make_store()
    w.write_usb_config()
    return w


def day_of_mail(store: str) -> None:
    """A flag change (a Maildir rename), a new message (no UID yet: exact restores say
    --uid-gap 0), a deletion."""
    cur = os.path.join(store, "example.it", "mario", "Maildir", "cur")
    msg = os.path.join(cur, sorted(os.listdir(cur))[0])
    base, _, _ = msg.rpartition(":2,")
    os.rename(msg, f"{base}:2,RS")
    with open(os.path.join(store, "example.it", "anna", "Maildir", "new", "1793999999.M1P1.mx,S=20,W=21"), "wb") as f:
        f.write(b"Subject: new\r\n\r\nhi\r\n")
    gone = os.path.join(store, "example.it", "anna", "Maildir", "cur")
    os.unlink(os.path.join(gone, sorted(os.listdir(gone))[-1]))


@pytest.mark.realdev
@pytest.mark.parametrize("fs", FS)
def test_init_backup_replug_verify_restore(loop_disk, tmp_path, fs):
    w = usb_world(tmp_path, loop_disk, fs)
    w.ok("init", "usb1")
    assert_released(w)
    assert "dmbackup/mx.test/repo.json" in w.on_disk()

    w.ok("backup", "--target", "usb1", "--full")
    assert_released(w)
    first = tree(w.store)
    w.replug()

    day_of_mail(w.store)
    w.ok("backup", "--target", "usb1")
    assert_released(w)
    second = tree(w.store)
    w.replug()

    rows = json.loads(w.ok("snapshots", "--target", "usb1", "--json").out)
    mail = [r for r in rows if r["kind"] != "config"]
    assert [r["kind"] for r in mail] == ["full", "incremental"]
    w.ok("verify", "--target", "usb1", "--read-data")
    assert_released(w)

    out = os.path.join(w.tmp, "restored-latest")
    w.ok("restore", "--target", "usb1", "--uid-gap", "0", "--to", out)
    assert diff_trees(second, tree(out)) == []
    out = os.path.join(w.tmp, "restored-first")
    w.ok("restore", "--target", "usb1", mail[0]["id"], "--uid-gap", "0", "--to", out)
    assert diff_trees(first, tree(out)) == []
    assert_released(w)
    # the disk holds the repository and nothing else: no temporaries, no stray files
    files = w.on_disk()
    assert all(f.startswith("dmbackup/mx.test/") for f in files), files
    assert not [f for f in files if ".tmp-" in f]


@pytest.mark.realdev
@pytest.mark.parametrize("fs", FS)
def test_disk_not_plugged_in_exits_7_and_writes_nowhere(loop_disk, tmp_path, fs):
    w = usb_world(tmp_path, loop_disk, fs)
    w.ok("init", "usb1")
    loopdev.destroy(w.disk)                     # unplugged: /dev/loopN stays, with no medium
    r = w.run("backup", "--target", "usb1")
    assert r.code == 7
    line = one_line_error(r)
    assert line.startswith("dmbackup: usb target 'usb1' (disk labelled 'DMUSB')")
    # (a parallel test run may have attached another disk to that loop device meanwhile)
    assert "is the disk plugged in?" in line or "not the configured disk" in line
    assert not os.path.exists(w.mp)


def test_disk_absent_by_label_exits_7(tmp_path):
    """No device key: detection through udev finds no disk with this label (no root needed)."""
    w = World(tmp_path)
    w.make_store(uid=None, gid=None)
    w.write_config(targets=f'[targets.usb1]\ntype = "usb"\nlabel = "DMNOSUCHDISK"\n'
                           f'mount_point = "{tmp_path}/mnt"\n')
    r = w.run("backup", "--target", "usb1")
    assert r.code == 7
    line = one_line_error(r)
    assert "USB disk labelled 'DMNOSUCHDISK' is not plugged in" in line
    assert not (tmp_path / "mnt").exists()


@pytest.mark.realdev
@pytest.mark.parametrize("fs", FS)
def test_small_disk_filled_up_exits_3_and_commits_nothing(loop_disk, tmp_path, fs):
    w = usb_world(tmp_path, loop_disk, fs, size_mb=64)
    w.ok("init", "usb1")
    w.ok("backup", "--target", "usb1", "--full")
    before = w.on_disk()
    # incompressible mail bigger than the free space, yet small enough to pass the early
    # estimate (40% of the store + 16 MiB): the write itself runs out of space
    free = w.free_bytes()
    noise = free + 8 * MiB
    assert 0.4 * (noise + 4 * MiB) + 16 * MiB < free, "disk too small for this test's premise"
    with open(os.path.join(w.store, "example.it", "noise.bin"), "wb") as f:
        for _ in range(noise // MiB):
            f.write(os.urandom(MiB))
    r = w.run("backup", "--target", "usb1", "--full")
    assert r.code == 3, r.err
    line = one_line_error(r)
    assert "full" in line or "free" in line
    assert_released(w)
    after = w.on_disk()
    assert not [f for f in after if ".tmp-" in f]
    assert [f for f in after if f.endswith(".catalog")] == [f for f in before if f.endswith(".catalog")]
    rows = json.loads(w.ok("snapshots", "--target", "usb1", "--json").out)
    assert [r["kind"] for r in rows if r["kind"] != "config"] == ["full"]
    w.ok("verify", "--target", "usb1", "--read-data")
    # with the disk no longer too small, the next run succeeds and removes what the failed
    # one left (volumes of a snapshot that never got its catalog)
    os.unlink(os.path.join(w.store, "example.it", "noise.bin"))
    w.ok("backup", "--target", "usb1")
    final = w.on_disk()
    left = sorted(set(after) - set(before))
    assert not set(left) & set(final), left
    if left:
        pytest.xfail("engine: a failed backup leaves the committed volumes of its uncommitted snapshot "
                     f"on the disk until the next run ({len(left)} objects, e.g. {left[0]}): a full disk "
                     "stays full; DESIGN says only temporary names may stay")


def _wait_for_volume_write(w: UsbWorld, p: subprocess.Popen, seen_before: list[str]) -> None:
    """Until the running backup has started writing data volumes of its own (or has ended)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        names = set()
        for dp, _, fn in os.walk(w.mp):
            names |= {os.path.relpath(os.path.join(dp, n), w.mp) for n in fn}
        if any(".v0" in n for n in names - set(seen_before)):
            return
        time.sleep(0.01)
    raise AssertionError(f"the backup never started writing volumes (exit {p.poll()})")


@pytest.mark.realdev
@pytest.mark.parametrize("fs", FS)
def test_disk_pulled_mid_backup_exits_7_and_earlier_snapshots_verify(loop_disk, tmp_path, fs):
    w = usb_world(tmp_path, loop_disk, fs, size_mb=96)
    w.ok("init", "usb1")
    w.ok("backup", "--target", "usb1", "--full")
    first = tree(w.store)
    with open(os.path.join(w.store, "example.it", "bulk.bin"), "wb") as f:
        f.write(os.urandom(40 * MiB))            # so the next run is still writing when pulled

    seen = w.on_disk()
    p = w.spawn("backup", "--target", "usb1", "--full")
    try:
        _wait_for_volume_write(w, p, seen)
        # pull the disk: freeze the writer, keep the bytes the disk holds at this moment
        # (as a real disk keeps them), then make every I/O on the device fail and detach it
        p.send_signal(signal.SIGSTOP)
        fuse = holders(w.disk.device) if fs != "ext4" else []
        for pid, _ in fuse:
            os.kill(pid, signal.SIGSTOP)
        if fs == "ext4":
            loopdev.run("fsfreeze", "-f", w.mp)
        saved = w.disk.image + ".at-pull"
        loopdev.yank(w.disk, saved_image=saved)
        subprocess.run(["losetup", "-d", w.disk.device], capture_output=True)   # deferred while in use
        if fs == "ext4":
            loopdev.run("fsfreeze", "-u", w.mp)
        for pid, _ in fuse:
            os.kill(pid, signal.SIGCONT)
        p.send_signal(signal.SIGCONT)
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 7, err
    assert "Traceback" not in err
    assert "the disk was unplugged or unmounted while dmbackup was using it" in err, err
    assert mount_at(w.mp) is None, "the pulled disk was left mounted"

    # plug the disk in again, as it was at the moment it was pulled
    loopdev.destroy(w.disk)
    os.replace(saved, w.disk.image)
    if fs == "ext4":
        loopdev.run("e2fsck", "-p", w.disk.image)    # what the journal replay would do anyway
    w.disk.device = loopdev.run("losetup", "-f", "--show", w.disk.image).strip()
    w.write_usb_config()
    rows = json.loads(w.ok("snapshots", "--target", "usb1", "--json").out)
    assert [r["kind"] for r in rows if r["kind"] != "config"] == ["full"]
    w.ok("verify", "--target", "usb1", "--read-data")
    out = os.path.join(w.tmp, "restored-first")
    w.ok("restore", "--target", "usb1", rows[0]["id"], "--to", out)
    assert diff_trees(first, tree(out)) == []
    # and the next run works, clearing what the pulled run left behind
    w.ok("backup", "--target", "usb1")
    assert not [f for f in w.on_disk() if ".tmp-" in f]
    w.ok("verify", "--target", "usb1", "--read-data")


@pytest.mark.realdev
@pytest.mark.skipif(kernel_supports("vfat"), reason="the kernel has vfat: no fusefat label quirk")
def test_fusefat_label_quirk_explained(loop_disk, tmp_path):
    disk = loop_disk("vfat", label="DMBACKUP")
    w = UsbWorld(tmp_path, disk)
    w.make_store()
    w.write_usb_config()
    r = w.run("init", "usb1")
    assert r.code == 7
    assert "fatlabel" in one_line_error(r)
    assert_released(w)
