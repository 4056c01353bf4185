"""Detection under umockdev: the real pyudev/libudev code reading hand-written devices."""

from __future__ import annotations

import pytest

from dmbackup.errors import EXIT_TARGET, TargetUnavailable
from dmbackup.system.usbdetect import AmbiguousDisk, DiskNotPresent, find_disk, list_disks

pytestmark = pytest.mark.umockdev

SDB1 = "3316ca0d-967d-41cd-8cd6-8dac3a4c37e4"


def nodes(disks):
    return [d.device_node for d in disks]


def test_lists_only_usb_file_systems(bed):
    bed.load("usb_disk", "usb_stick", "sata_decoy", "virtio_decoy")
    disks = list_disks(context=bed.context())
    # not sdb (a partition table), not sdb2 (swap), not the SATA or virtio disks
    assert nodes(disks) == ["/dev/sdb1", "/dev/sdc"]


def test_disk_properties(bed):
    bed.load("usb_disk", "usb_stick")
    sdb1, sdc = list_disks(context=bed.context())
    assert (sdb1.label, sdb1.uuid, sdb1.fs_type) == ("DMBACKUP", SDB1, "ext4")
    assert (sdb1.vendor, sdb1.model, sdb1.serial) == ("SanDisk", "Ultra", "4C530001230928117313")
    assert sdb1.size == 58017792 * 512
    assert sdb1.devtype == "partition" and sdb1.is_usb
    # a file system on the whole stick, and a label with a space (only in ID_FS_LABEL_ENC)
    assert (sdc.devtype, sdc.fs_type, sdc.label, sdc.uuid) == ("disk", "vfat", "MAIL BACKUP", "6BBA-F738")
    assert (sdc.vendor, sdc.model) == ("Kingston", "DataTraveler 3.0")
    assert "SanDisk Ultra" in sdb1.describe() and "label 'DMBACKUP'" in sdb1.describe()


def test_find_by_label_ignores_non_usb_disks_with_the_same_label(bed):
    bed.load("sata_decoy", "usb_disk", "virtio_decoy")
    assert find_disk(label="DMBACKUP", context=bed.context()).device_node == "/dev/sdb1"


def test_find_by_uuid_any_case(bed):
    bed.load("usb_disk", "usb_stick", "sata_decoy")
    ctx = bed.context()
    assert find_disk(uuid=SDB1.upper(), context=ctx).device_node == "/dev/sdb1"
    assert find_disk(uuid="6bba-f738", context=ctx).device_node == "/dev/sdc"


def test_fat_labels_match_case_insensitively(bed):
    bed.load("usb_stick", "usb_disk")
    ctx = bed.context()
    assert find_disk(label="mail backup", context=ctx).device_node == "/dev/sdc"
    with pytest.raises(DiskNotPresent):           # ext4 labels are case-sensitive
        find_disk(label="dmbackup", context=ctx)


def test_absent_usb_disk_is_unavailable_and_names_the_decoys(bed):
    bed.load("sata_decoy", "virtio_decoy", "usb_stick")
    with pytest.raises(DiskNotPresent) as info:
        find_disk(label="DMBACKUP", context=bed.context())
    err = info.value
    assert isinstance(err, TargetUnavailable) and err.exit_code == EXIT_TARGET
    assert str(err).startswith("USB disk labelled 'DMBACKUP' is not plugged in")
    assert "/dev/sda1" in str(err) and "/dev/vda1" in str(err) and 'bus = "any"' in str(err)


def test_absent_with_nothing_plugged(bed):
    with pytest.raises(DiskNotPresent, match="USB disk with UUID 6BBA-F738 is not plugged in$"):
        find_disk(uuid="6BBA-F738", context=bed.context())


def test_bus_any_finds_the_other_disks(bed):
    bed.load("usb_disk", "sata_decoy", "virtio_decoy")
    ctx = bed.context()
    assert nodes(list_disks("any", ctx)) == ["/dev/sda1", "/dev/sdb1", "/dev/vda1"]
    assert find_disk(uuid="11111111-2222-3333-4444-555555555555", bus="any", context=ctx).bus == "ata"
    vda1 = find_disk(uuid="99999999-8888-7777-6666-555555555555", bus="any", context=ctx)
    assert (vda1.device_node, vda1.bus, vda1.fs_type) == ("/dev/vda1", None, "xfs")
    # by label all three match: an error naming them, never a guess
    with pytest.raises(AmbiguousDisk) as info:
        find_disk(label="DMBACKUP", bus="any", context=ctx)
    assert all(n in str(info.value) for n in ("/dev/sda1", "/dev/sdb1", "/dev/vda1"))


def test_bus_any_without_usb_disk(bed):
    bed.load("sata_decoy")
    assert find_disk(label="DMBACKUP", bus="any", context=bed.context()).device_node == "/dev/sda1"


def test_two_usb_disks_with_one_label_is_a_clear_error(bed):
    bed.load("usb_disk", "usb_twin")
    ctx = bed.context()
    with pytest.raises(AmbiguousDisk) as info:
        find_disk(label="DMBACKUP", context=ctx)
    msg = str(info.value)
    assert info.value.exit_code == EXIT_TARGET
    assert msg.startswith("2 USB disks labelled 'DMBACKUP' are plugged in")
    assert "/dev/sdb1" in msg and "/dev/sdd1" in msg and "uuid" in msg
    # naming it by UUID resolves it
    assert find_disk(uuid=SDB1, context=ctx).device_node == "/dev/sdb1"
