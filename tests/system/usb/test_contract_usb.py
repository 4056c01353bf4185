"""The generic Target contract suite (tests/targets/contract.py) against UsbTarget on real
loop-device disks: ext4 (kernel), exFAT (FUSE) and FAT32 (kernel vfat, else fusefat)."""

from __future__ import annotations

import os

import pytest

from dmbackup.system.mountinfo import mount_at
from dmbackup.targets.usb import UsbConfig, UsbTarget
from dmbackup.system.diskmount import kernel_supports
from tests.targets.contract import TargetContract

from .loopdev import run


def _usb_target(loop_disk, tmp_path, fs):
    disk = loop_disk(fs, size_mb=96)
    if fs == "ext4":
        # "empty": mkfs leaves lost+found, which list_dirs() would rightly report
        mp = str(tmp_path / "prep")
        os.makedirs(mp)
        run("mount", disk.device, mp)
        os.rmdir(os.path.join(mp, "lost+found"))
        run("umount", mp)
        os.rmdir(mp)
    mp = str(tmp_path / "mnt")
    cfg = UsbConfig(name="usb1", type="usb", device=disk.device, label=disk.label, mount_point=mp)
    return UsbTarget(cfg), mp


@pytest.mark.realdev
class TestUsbExt4Contract(TargetContract):
    @pytest.fixture
    def target(self, loop_disk, tmp_path):
        t, mp = _usb_target(loop_disk, tmp_path, "ext4")
        with t:
            yield t
        assert mount_at(mp) is None and not os.path.exists(mp)


@pytest.mark.realdev
class TestUsbExfatContract(TargetContract):
    @pytest.fixture
    def target(self, loop_disk, tmp_path):
        t, mp = _usb_target(loop_disk, tmp_path, "exfat")
        with t:
            yield t
        assert mount_at(mp) is None and not os.path.exists(mp)


@pytest.mark.realdev
class TestUsbVfatContract(TargetContract):
    if not kernel_supports("vfat"):
        # fusefat slows down with the cube of a directory's size (1000 entries: ~9 min,
        # 150: ~2 s); the kernel's vfat does not, and gets the full count
        many_objects = 150

    @pytest.fixture
    def target(self, loop_disk, tmp_path):
        t, mp = _usb_target(loop_disk, tmp_path, "vfat")
        with t:
            yield t
        assert mount_at(mp) is None and not os.path.exists(mp)
