"""Hot-plug under umockdev: testbed uevents reach watch()'s udev monitor in this process.

No test waits for "nothing to happen": to show that an event was ignored, a later event
that does call back is sent, and events arrive in order. Waits have a generous deadline
only so that a broken watcher fails instead of hanging; they assert no timing.
"""

from __future__ import annotations

import threading

import pytest

from dmbackup.system.usbdetect import UsbDisk
from dmbackup.system.usbwatch import watch

pytestmark = pytest.mark.umockdev

USB = "/sys/devices/pci0000:00/0000:00:14.0/usb2"
SDB = f"{USB}/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb"
SDB1 = f"{SDB}/sdb1"
SDE1 = f"{USB}/2-5/2-5:1.0/host9/target9:0:0/9:0:0:0/block/sde/sde1"
DEADLINE = 30


class Watcher:
    """watch() in a thread, recording every callback."""

    def __init__(self, match, on_disk=None, **kw):
        self.calls: list[UsbDisk] = []
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.extra = on_disk
        self.thread = threading.Thread(target=watch, args=(self._on_disk, match, self.stop),
                                       kwargs=dict(ready=self.ready, poll_interval=0.1, **kw), daemon=True)

    def _on_disk(self, disk: UsbDisk) -> None:
        with self.cond:
            self.calls.append(disk)
            self.cond.notify_all()
        if self.extra:
            self.extra(disk)

    def start(self) -> "Watcher":
        self.thread.start()
        assert self.ready.wait(DEADLINE), "watch() never started listening"
        return self

    def wait_calls(self, n: int) -> list[str]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.calls) >= n, DEADLINE), \
                f"expected {n} callbacks, got {[d.device_node for d in self.calls]}"
            return [d.device_node for d in self.calls]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "watch() did not return after stop_event was set"


@pytest.fixture
def watcher(bed):
    made = []

    def start(match, **kw) -> Watcher:
        w = Watcher(match, **kw).start()
        made.append(w)
        return w

    yield start
    for w in made:
        w.close()


def backup_label(disk: UsbDisk) -> bool:
    return disk.label in ("DMBACKUP", "MAIL BACKUP")


def test_plug_in_of_a_matching_disk_calls_back_once(bed, watcher):
    w = watcher(backup_label)
    bed.load("usb_disk")                 # adding the devices sends their "add" events
    assert w.wait_calls(1) == ["/dev/sdb1"]
    disk = w.calls[0]
    assert (disk.label, disk.fs_type, disk.is_usb, disk.vendor) == ("DMBACKUP", "ext4", True, "SanDisk")
    # more events for a disk already present (udev re-probe, a second add) are not a new plug
    bed.uevent(SDB1, "change")
    bed.uevent(SDB1, "add")
    bed.load("usb_stick")                # a second matching disk, as a marker that those were handled
    assert w.wait_calls(2) == ["/dev/sdb1", "/dev/sdc"]


def test_remove_and_replug_calls_back_again(bed, watcher):
    w = watcher(backup_label)
    bed.load("usb_disk")
    assert w.wait_calls(1) == ["/dev/sdb1"]
    bed.uevent(SDB1, "remove")
    bed.uevent(SDB, "remove")
    bed.uevent(SDB, "add")
    bed.uevent(SDB1, "add")              # the same disk back in the same port
    assert w.wait_calls(2) == ["/dev/sdb1", "/dev/sdb1"]
    bed.uevent(SDB1, "remove")
    bed.load("usb_twin")                 # re-plugged elsewhere, it gets a new name
    assert w.wait_calls(3) == ["/dev/sdb1", "/dev/sdb1", "/dev/sdd1"]


def test_unknown_disks_do_nothing(bed, watcher):
    w = watcher(backup_label)
    bed.load("usb_other")                # a USB stick labelled PHOTOS
    bed.load("sata_decoy")               # same label, but not USB
    bed.load("virtio_decoy")
    bed.uevent(SDE1, "change")
    bed.load("usb_stick")                # the marker: the first callback must be this one
    assert w.wait_calls(1) == ["/dev/sdc"]


def test_bus_any_sees_non_usb_disks(bed, watcher):
    w = watcher(lambda d: d.label == "DMBACKUP", bus="any")
    bed.load("sata_decoy")
    assert w.wait_calls(1) == ["/dev/sda1"]
    assert w.calls[0].bus == "ata"


def test_a_failing_callback_does_not_stop_the_watch(bed, watcher):
    def explode(disk):
        if disk.device_node == "/dev/sdb1":
            raise RuntimeError("backup failed")

    w = watcher(backup_label, on_disk=explode)
    bed.load("usb_disk")
    bed.load("usb_stick")
    assert w.wait_calls(2) == ["/dev/sdb1", "/dev/sdc"]


def test_initial_calls_back_for_disks_already_present(bed, watcher):
    bed.load("usb_disk", "sata_decoy")
    w = watcher(backup_label, initial=True)
    assert w.wait_calls(1) == ["/dev/sdb1"]
    bed.uevent(SDB1, "add")              # already reported: not again
    bed.load("usb_stick")
    assert w.wait_calls(2) == ["/dev/sdb1", "/dev/sdc"]


def test_stop_event_ends_the_watch(bed):
    w = Watcher(backup_label).start()
    w.close()
