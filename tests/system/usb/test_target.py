"""The usb target: config parsing (no root), and real loop-device disks (root).

Loop devices are invisible to detection here (no udev daemon), so these targets name their
disk with ``device = "/dev/loopN"`` plus the label, which the target checks with blkid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid as uuidlib

import pytest

from dmbackup.config import holds_repository, parse
from dmbackup.errors import EXIT_TARGET, ConfigError, NoSpace, NotFound, TargetUnavailable
from dmbackup.targets.base import AlreadyExists
from dmbackup.system.mountinfo import mount_at
from dmbackup.targets.registry import build
from dmbackup.targets.usb import VFAT_MAX_OBJECT, UsbConfig, UsbTarget, capabilities_for
from dmbackup.system.usbdetect import UsbDisk
from dmbackup.system.blockdev import holders
from dmbackup.system.diskmount import kernel_supports

from . import loopdev

GiB = 1 << 30
FUSEFAT = not kernel_supports("vfat")


def cfg_from(tmp_path, body: str, name: str = "usb1"):
    text = f'hostname = "mail.example.it"\n[encryption]\nmode = "none"\n[targets.{name}]\ntype = "usb"\n{body}'
    return parse(text, str(tmp_path / "dmbackup.toml")).target(name)


def usb_target(tmp_path, disk, **extra) -> UsbTarget:
    lines = [f'device = "{disk.device}"', f'label = "{disk.label}"', f'mount_point = "{tmp_path}/mnt"']
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    return build(cfg_from(tmp_path, "\n".join(lines) + "\n"), None)


# -- config (no root) --------------------------------------------------------------------
def test_config_defaults(tmp_path):
    cfg = cfg_from(tmp_path, 'label = "DMBACKUP"\n')
    assert isinstance(cfg, UsbConfig)
    assert (cfg.label, cfg.uuid, cfg.device, cfg.bus) == ("DMBACKUP", None, None, "usb")
    assert cfg.mount_point == "/run/dmbackup/usb1"
    assert cfg.mount_options == () and cfg.max_object_size is None and holds_repository(cfg)


def test_config_all_keys(tmp_path):
    cfg = cfg_from(tmp_path, 'uuid = "6BBA-F738"\nbus = "any"\nmount_point = "/mnt/backup"\n'
                             'mount_options = "noatime, uid=5000"\nmax_object_size = "2G"\n'
                             'device = "/dev/sdb1"\n')
    assert (cfg.uuid, cfg.bus, cfg.mount_point, cfg.device) == ("6BBA-F738", "any", "/mnt/backup", "/dev/sdb1")
    assert cfg.mount_options == ("noatime", "uid=5000") and cfg.max_object_size == 2 * GiB
    assert cfg_from(tmp_path, 'label = "X"\nmount_options = ["noatime", "sync"]\n').mount_options == ("noatime", "sync")


@pytest.mark.parametrize("body, field, words", [
    ('label = "A"\nuuid = "B"\n', "targets.usb1.uuid", "not both"),
    ('bus = "usb"\n', "targets.usb1.label", "missing"),
    ('label = ""\n', "targets.usb1.label", "empty"),
    ('label = "A"\nbus = "sata"\n', "targets.usb1.bus", "'usb'"),
    ('label = "A"\nmount_point = "run/x"\n', "targets.usb1.mount_point", "absolute"),
    ('label = "A"\nmount_point = "/"\n', "targets.usb1.mount_point", "must not be /"),
    ('label = "A"\nmount_options = "a b"\n', "targets.usb1.mount_options", "space"),
    ('label = "A"\nmax_object_size = "lots"\n', "targets.usb1.max_object_size", "size"),
    ('label = "A"\npath = "/srv"\n', "targets.usb1.path", "unknown key"),
])
def test_config_errors_name_the_field(tmp_path, body, field, words):
    with pytest.raises(ConfigError) as info:
        cfg_from(tmp_path, body)
    assert f": {field}: " in str(info.value) and words in str(info.value)
    assert info.value.exit_code == 2


def test_capabilities_by_file_system():
    fat = capabilities_for("vfat")
    assert fat.max_object_size == VFAT_MAX_OBJECT < 4 * GiB and not fat.posix_metadata
    assert capabilities_for("vfat", 8 * GiB).max_object_size == VFAT_MAX_OBJECT
    assert capabilities_for("vfat", 1 * GiB).max_object_size == 1 * GiB
    exfat = capabilities_for("exfat")
    assert exfat.max_object_size > 4 * GiB and not exfat.posix_metadata and not exfat.atomic_rename
    ext4 = capabilities_for("ext4", 2 * GiB)
    assert ext4.max_object_size == 2 * GiB and ext4.posix_metadata and ext4.atomic_rename
    # before the disk is seen, assume the most limited medium
    assert capabilities_for(None).max_object_size == VFAT_MAX_OBJECT


def test_config_matches_disks():
    usb = UsbDisk("/dev/sdb1", "ext4", "u-1", "DMBACKUP", bus="usb")
    sata = UsbDisk("/dev/sda1", "ext4", "u-2", "DMBACKUP", bus="ata")
    by_label = UsbConfig("t", "usb", label="DMBACKUP")
    assert by_label.matches(usb) and not by_label.matches(sata)
    assert UsbConfig("t", "usb", label="DMBACKUP", bus="any").matches(sata)
    assert UsbConfig("t", "usb", uuid="U-2", bus="any").matches(sata)
    assert UsbConfig("t", "usb", device="/dev/sda1").matches(sata)
    assert not UsbConfig("t", "usb", device="/dev/sda1", label="OTHER").matches(sata)
    assert not UsbConfig("t", "usb", device="/dev/sdb1").matches(sata)


def test_before_open_the_target_is_conservative(tmp_path):
    t = build(cfg_from(tmp_path, 'label = "DMBACKUP"\n'), None)
    assert t.capabilities.max_object_size < 4 * GiB
    assert t.describe() == "usb target 'usb1' (USB disk labelled 'DMBACKUP')"
    t.close()                                     # closing an unopened target is harmless


# -- real disks ----------------------------------------------------------------------------
@pytest.mark.realdev
@pytest.mark.parametrize("fs", ["ext4", "exfat", "vfat"])
def test_objects_on_a_real_disk(loop_disk, tmp_path, fs):
    disk = loop_disk(fs)
    mp = str(tmp_path / "mnt")
    with usb_target(tmp_path, disk) as t:
        assert mount_at(mp) is not None and t.root == mp
        assert t.disk.fs_type == fs and t.disk.uuid == disk.uuid
        t.put("dmbackup/host/repo.json", b"{}")
        with t.writer("dmbackup/host/chains/c1/s1.v0001") as w:
            for _ in range(8):
                w.write(os.urandom(64 << 10))
        t.create_exclusive("dmbackup/host/locks/run", b"pid")
        with pytest.raises(AlreadyExists):
            t.create_exclusive("dmbackup/host/locks/run", b"pid")
        assert t.get("dmbackup/host/repo.json") == b"{}"
        assert t.stat("dmbackup/host/chains/c1/s1.v0001").size == 8 * (64 << 10)
        assert list(t.list("dmbackup/host")) == ["dmbackup/host/repo.json"]
        assert list(t.list_dirs("dmbackup/host")) == ["dmbackup/host/chains", "dmbackup/host/locks"]
        assert list(t.list("")) == []             # nothing else, not even a FAT label entry
        with pytest.raises(NotFound):
            t.get("dmbackup/host/missing")
        t.delete("dmbackup/host/locks/run")
        assert 0 < t.free_space() < 64 << 20      # fusefat: from its cluster counts
        t.sync()
    assert mount_at(mp) is None and not os.path.exists(mp)
    assert holders(disk.device) == []
    with usb_target(tmp_path, disk) as t:         # plugged in again: it is all there
        assert t.get("dmbackup/host/repo.json") == b"{}"
        assert t.stat("dmbackup/host/chains/c1/s1.v0001").size == 8 * (64 << 10)
        assert not t.exists("dmbackup/host/locks/run")


@pytest.mark.realdev
@pytest.mark.parametrize("fs, posix", [("ext4", True), ("exfat", False), ("vfat", False)])
def test_capabilities_follow_the_disk(loop_disk, tmp_path, fs, posix):
    disk = loop_disk(fs)
    with usb_target(tmp_path, disk, max_object_size="8G") as t:
        caps = t.capabilities
        assert caps.posix_metadata is posix
        if fs == "vfat":
            assert caps.max_object_size < 4 * GiB
        else:
            assert caps.max_object_size == 8 * GiB


@pytest.mark.realdev
def test_wrong_disk_on_the_configured_device_is_refused(loop_disk, tmp_path):
    disk = loop_disk("ext4", label="HOLIDAYS")
    cfg = cfg_from(tmp_path, f'device = "{disk.device}"\nlabel = "DMUSB"\nmount_point = "{tmp_path}/mnt"\n')
    with pytest.raises(TargetUnavailable, match="not the configured disk labelled 'DMUSB'") as info:
        build(cfg, None).open()
    assert info.value.exit_code == EXIT_TARGET
    assert not (tmp_path / "mnt").exists() and mount_at(str(tmp_path / "mnt")) is None


@pytest.mark.realdev
def test_default_mount_point_under_run(loop_disk, tmp_path):
    disk = loop_disk("ext4")
    name = f"t{uuidlib.uuid4().hex[:8]}"
    cfg = cfg_from(tmp_path, f'device = "{disk.device}"\n', name=name)
    run_existed = os.path.isdir("/run/dmbackup")
    with build(cfg, None) as t:
        assert t.root == f"/run/dmbackup/{name}" and mount_at(t.root) is not None
        t.put("x", b"1")
    assert not os.path.exists(f"/run/dmbackup/{name}")
    assert os.path.isdir("/run/dmbackup") == run_existed


@pytest.mark.realdev
@pytest.mark.parametrize("fs", ["ext4", "exfat", "vfat"])
def test_unmounted_under_the_target_is_exit_7_and_nothing_lands_in_the_mount_point(loop_disk, tmp_path, fs):
    disk = loop_disk(fs)
    mp = str(tmp_path / "mnt")
    t = usb_target(tmp_path, disk)
    t.open()
    try:
        t.put("dmbackup/host/a", b"before")
        w = t.writer("dmbackup/host/b")
        w.write(b"half")
        subprocess.run(["umount", "-l", mp], check=True)      # someone unmounts it, or the disk goes
        assert mount_at(mp) is None
        for op in (lambda: t.put("dmbackup/host/c", b"after"),
                   lambda: t.create_exclusive("dmbackup/host/lock", b"x"),
                   lambda: list(t.list("dmbackup/host")),       # must not look like an empty repository
                   lambda: t.get("dmbackup/host/a"),             # must not look like a missing object
                   w.commit):
            with pytest.raises(TargetUnavailable) as info:
                op()
            assert not isinstance(info.value, NotFound)
            assert info.value.exit_code == EXIT_TARGET
            assert "unplugged or unmounted" in str(info.value)
        assert os.listdir(mp) == []
    finally:
        t.close()
    assert not os.path.exists(mp)


@pytest.mark.realdev
def test_dead_fuse_helper_mid_write_is_exit_7(loop_disk, tmp_path):
    disk = loop_disk("exfat")
    t = usb_target(tmp_path, disk)
    with t:
        w = t.writer("dmbackup/host/v1")
        w.write(b"x" * 100_000)
        os.kill(loopdev.fuse_daemon(disk), signal.SIGKILL)     # the disk is gone, FUSE says ENOTCONN
        with pytest.raises(TargetUnavailable) as info:
            w.write(b"y" * 100_000)
            w.commit()
        assert "unplugged or unmounted" in str(info.value)
        with pytest.raises(TargetUnavailable):
            t.put("dmbackup/host/v2", b"z")
    assert mount_at(str(tmp_path / "mnt")) is None           # close() still cleaned up


@pytest.mark.realdev
def test_pulled_ext4_disk_mid_write_is_exit_7(loop_disk, tmp_path):
    disk = loop_disk("ext4")
    t = usb_target(tmp_path, disk)
    with t:
        t.put("dmbackup/host/v0", b"committed earlier")
        w = t.writer("dmbackup/host/v1")
        w.write(os.urandom(1 << 20))
        loopdev.yank(disk)                                    # every I/O on the device fails now
        with pytest.raises(TargetUnavailable) as info:
            w.write(os.urandom(1 << 20))
            w.commit()                                        # fsync reports EIO
        assert info.value.exit_code == EXIT_TARGET
        assert "unplugged or unmounted" in str(info.value)    # the loop device has no medium now
    assert mount_at(str(tmp_path / "mnt")) is None


@pytest.mark.realdev
@pytest.mark.parametrize("fs", ["ext4", "exfat", "vfat"])
def test_full_disk_is_no_space_exit_3(loop_disk, tmp_path, fs):
    disk = loop_disk(fs, size_mb=40)
    with usb_target(tmp_path, disk) as t:
        written = []
        with pytest.raises(NoSpace) as info:
            for i in range(20):
                t.put(f"dmbackup/host/v{i:04d}", os.urandom(4 << 20))
                written.append(f"dmbackup/host/v{i:04d}")
        assert info.value.exit_code == 3 and "full" in str(info.value)
        assert 5 <= len(written) < 10
        assert list(t.list("dmbackup/host")) == written      # no temporary left behind


@pytest.mark.realdev
def test_pulled_disk_during_exclusive_create_is_exit_7_not_a_traceback(loop_disk, tmp_path):
    # the file is created in the page cache, fsync fails with EIO, ext4 turns read-only and
    # the dir target's cleanup unlink then fails with EROFS, unmapped
    disk = loop_disk("ext4")
    with usb_target(tmp_path, disk) as t:
        t.put("dmbackup/host/repo.json", b"{}")
        loopdev.yank(disk)
        with pytest.raises(TargetUnavailable) as info:
            t.create_exclusive("dmbackup/host/locks/lock", b"me")
        assert "unplugged or unmounted" in str(info.value)
    assert mount_at(str(tmp_path / "mnt")) is None


@pytest.mark.realdev
@pytest.mark.skipif(not FUSEFAT, reason="the kernel has vfat: no fusefat label quirk")
def test_fusefat_label_hiding_the_repository_folder_is_explained(loop_disk, tmp_path):
    disk = loop_disk("vfat", label="DMBACKUP")
    with usb_target(tmp_path, disk) as t:
        with pytest.raises(TargetUnavailable, match="fatlabel") as info:
            t.put("dmbackup/host/repo.json", b"{}")
        assert info.value.exit_code == EXIT_TARGET
        assert list(t.list("")) == []             # the phantom label file is not an object
        t.put("other/x", b"1")                    # other names work
        assert t.get("other/x") == b"1"
