"""The mount layer on real loop devices (root): ext4 (kernel), exFAT (FUSE), FAT32 (fusefat)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from dmbackup.errors import EXIT_TARGET, TargetUnavailable
from dmbackup.system.mountinfo import mount_at
from dmbackup.system.blockdev import holders
from dmbackup.system.diskmount import DiskMount, MountFailed, kernel_supports, mount_command

from . import loopdev

FS = ["ext4", "exfat", "vfat"]


def expected_fstype(fs: str) -> str:
    if fs == "ext4":
        return "ext4"
    if fs == "exfat":
        return "exfat" if kernel_supports("exfat") else "fuseblk"
    return "vfat" if kernel_supports("vfat") else "fuse.fusefat"


# -- pure functions (no root) ----------------------------------------------------------------
def test_mount_command_prefers_the_kernel_driver():
    yes = lambda fs: True          # noqa: E731
    no = lambda fs: False          # noqa: E731
    which = lambda tool: f"/usr/bin/{tool}"   # noqa: E731
    assert mount_command("/dev/sdb1", "/m", "vfat", kernel=yes, which=which)[:3] == ["mount", "-t", "vfat"]
    fuse = mount_command("/dev/sdb1", "/m", "vfat", ("uid=5000",), kernel=no, which=which)
    assert fuse[0] == "fusefat" and fuse[-2:] == ["/dev/sdb1", "/m"]
    assert fuse[2].startswith("rw+,fsname=/dev/sdb1,") and fuse[2].endswith(",uid=5000")
    assert mount_command("/dev/sdb1", "/m", "exfat", kernel=no, which=which)[0] == "/usr/bin/mount.exfat-fuse"
    assert mount_command("/dev/sdb1", "/m", "exfat", kernel=yes, which=which)[:3] == ["mount", "-t", "exfat"]
    ext4 = mount_command("/dev/sdb1", "/m", "ext4", ("noatime",), kernel=no, which=which)
    assert ext4 == ["mount", "-t", "ext4", "-o", "nosuid,nodev,noexec,noatime", "/dev/sdb1", "/m"]


def test_mount_command_without_any_helper_says_what_to_install():
    with pytest.raises(MountFailed, match="apt-get install fusefat") as info:
        mount_command("/dev/sdb1", "/m", "vfat", kernel=lambda fs: False, which=lambda t: None)
    assert info.value.exit_code == EXIT_TARGET


def test_kernel_supports_reads_filesystems_and_modules(tmp_path):
    (tmp_path / "filesystems").write_text("nodev\tsysfs\n\text4\nnodev\tfuse\n")
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "modules.dep").write_text("kernel/fs/exfat/exfat.ko.xz:\nkernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko\n")
    fs = str(tmp_path / "filesystems")
    assert kernel_supports("ext4", proc_filesystems=fs, modules_dir=str(mods))
    assert kernel_supports("exfat", proc_filesystems=fs, modules_dir=str(mods))
    assert kernel_supports("vfat", proc_filesystems=fs, modules_dir=str(mods))
    assert not kernel_supports("msdos", proc_filesystems=fs, modules_dir=str(mods))
    assert not kernel_supports("ntfs3", proc_filesystems=fs, modules_dir=str(tmp_path / "none"))


# -- real mounts ---------------------------------------------------------------------------
@pytest.mark.realdev
@pytest.mark.parametrize("fs", FS)
def test_mount_verify_write_sync_unmount(loop_disk, mount_dir, fs):
    disk = loop_disk(fs)
    m = DiskMount(disk.device, mount_dir, fs)
    path = m.open()
    try:
        assert path == mount_dir and m.mounted_by_us
        info = mount_at(mount_dir)
        assert info is not None and info.fstype == expected_fstype(fs)
        assert os.path.realpath(info.source) == os.path.realpath(disk.device)
        assert m.is_mounted()
        os.makedirs(os.path.join(path, "dmbackup", "host"))
        with open(os.path.join(path, "dmbackup", "host", "probe.bin"), "wb") as f:
            f.write(b"x" * 300_000)
        m.sync()
    finally:
        m.close()
    assert mount_at(mount_dir) is None
    assert not os.path.exists(mount_dir)             # the mount point it created is gone
    assert holders(disk.device) == []                # a FUSE helper has let go: safe to unplug
    assert not m.is_mounted()
    # what was written is on the disk, not in the mount-point directory
    with DiskMount(disk.device, mount_dir, fs) as again:
        with open(os.path.join(again, "dmbackup", "host", "probe.bin"), "rb") as f:
            assert f.read() == b"x" * 300_000
    assert not os.path.exists(mount_dir)


@pytest.mark.realdev
@pytest.mark.parametrize("fs", FS)
def test_existing_mount_is_reused_and_left_mounted(loop_disk, tmp_path, fs):
    disk = loop_disk(fs)
    admin_mp = str(tmp_path / "media" / "backup")
    loopdev.mount(disk, admin_mp)
    m = DiskMount(disk.device, str(tmp_path / "ours"), fs)
    assert m.open() == admin_mp and not m.mounted_by_us
    with open(os.path.join(admin_mp, "f"), "wb") as f:
        f.write(b"1")
    m.close()
    assert mount_at(admin_mp) is not None               # not ours to unmount
    assert not (tmp_path / "ours").exists()


@pytest.mark.realdev
@pytest.mark.parametrize("claimed", ["ext4", "exfat", "vfat"])
def test_mount_failure_is_exit_7_and_leaves_the_mount_point_empty(loop_disk, mount_dir, claimed):
    # a disk whose file system is not what udev said (or a damaged one) cannot be mounted
    disk = loop_disk("exfat" if claimed != "exfat" else "ext4")
    with pytest.raises(TargetUnavailable) as info:
        DiskMount(disk.device, mount_dir, claimed).open()
    assert info.value.exit_code == EXIT_TARGET
    assert "cannot mount" in str(info.value) and "nothing was written" in str(info.value)
    assert mount_at(mount_dir) is None
    assert not os.path.exists(mount_dir)
    assert holders(disk.device) == []


@pytest.mark.realdev
def test_existing_mount_point_directory_is_kept_and_stays_empty(loop_disk, mount_dir):
    os.makedirs(mount_dir)
    disk = loop_disk("ext4")
    with pytest.raises(MountFailed):
        DiskMount(disk.device, mount_dir, "vfat").open()
    assert os.listdir(mount_dir) == []
    with DiskMount(disk.device, mount_dir, "ext4") as path:
        assert path == mount_dir
    assert os.path.isdir(mount_dir) and os.listdir(mount_dir) == []   # not created by us: kept


@pytest.mark.realdev
def test_occupied_mount_point_is_refused(loop_disk, mount_dir):
    other, disk = loop_disk("ext4", label="OTHER"), loop_disk("ext4")
    with DiskMount(other.device, mount_dir, "ext4"):
        with pytest.raises(MountFailed, match="already mounted there"):
            DiskMount(disk.device, mount_dir, "ext4").open()
        assert os.path.realpath(mount_at(mount_dir).source) == os.path.realpath(other.device)


@pytest.mark.realdev
def test_fuse_mount_refused_while_another_process_holds_the_device(loop_disk, mount_dir):
    disk = loop_disk("exfat")
    with open(disk.device, "rb") as dev:
        squatter = subprocess.Popen(["sleep", "600"], stdin=dev)
    try:
        with pytest.raises(MountFailed, match=r"in use by sleep \(PID"):
            DiskMount(disk.device, mount_dir, "exfat").open()
        assert not os.path.exists(mount_dir)
    finally:
        squatter.send_signal(signal.SIGKILL)
        squatter.wait()


@pytest.mark.realdev
def test_missing_device_node(mount_dir):
    with pytest.raises(MountFailed, match="does not exist"):
        DiskMount("/dev/dmbackup-no-such-disk", mount_dir, "ext4").open()
    assert not os.path.exists(mount_dir)


@pytest.mark.realdev
def test_close_after_the_fuse_daemon_died(loop_disk, mount_dir):
    disk = loop_disk("exfat")
    m = DiskMount(disk.device, mount_dir, "exfat")
    m.open()
    os.kill(loopdev.fuse_daemon(disk), signal.SIGKILL)
    with pytest.raises(OSError):
        os.listdir(mount_dir)             # ENOTCONN: transport endpoint is not connected
    assert m.is_mounted()                 # still in mountinfo, but dead
    m.close()
    assert mount_at(mount_dir) is None and not os.path.exists(mount_dir)


@pytest.mark.realdev
def test_close_never_unmounts_a_mount_that_is_not_its_own(loop_disk, mount_dir):
    ours, theirs = loop_disk("ext4"), loop_disk("ext4", label="THEIRS")
    m = DiskMount(ours.device, mount_dir, "ext4")
    m.open()
    loopdev.run("umount", mount_dir)                   # ours goes away behind its back...
    loopdev.run("mount", theirs.device, mount_dir)     # ...and somebody mounts another disk there
    assert not m.is_mounted()
    m.close()
    info = mount_at(mount_dir)
    assert info is not None and os.path.realpath(info.source) == os.path.realpath(theirs.device)
