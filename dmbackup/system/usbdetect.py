"""Finding the backup disk: which block devices carry a file system, and which one is ours.

udev already probed every block device (ID_FS_* properties from blkid), so detection only
reads the udev database through pyudev; it never opens a disk. A disk is identified by its
file-system label or UUID as udev reports them, never by /dev/disk/by-* links: those are
missing under a udev emulator and ambiguous when two disks carry the same label.

Two things keep a wrong disk from being chosen:
- only devices with ``ID_BUS=usb`` count unless the target says ``bus = "any"``, so the
  appliance's own SATA or virtio disk with the same label is never written to;
- several matching disks are an error that names them all, never a guess.

libudev ORs property matches, so the enumeration asks for one property (``ID_BUS=usb``)
and every other condition is checked here in Python.

``probe_node`` is the udev-free path for a target configured with ``device = "/dev/..."``:
it asks ``blkid -p`` directly, which also works for loop devices that udev never saw.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from dmbackup import humanize
from dmbackup.errors import TargetUnavailable
from dmbackup.system.blockdev import device_present
from dmbackup.system.childenv import child_env

BUSES = ("usb", "any")
# File systems whose labels are case-insensitive in practice (Windows upper-cases them).
_CASELESS_LABELS = frozenset({"vfat", "exfat", "ntfs", "ntfs3"})
_HEX_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


class DiskNotPresent(TargetUnavailable):
    """The USB disk is not plugged in."""


class AmbiguousDisk(TargetUnavailable):
    """Several disks match the target."""


@dataclass(frozen=True)
class UsbDisk:
    """One block device (partition or whole disk) holding a file system."""

    device_node: str                  # /dev/sdb1
    fs_type: str | None               # ext4, vfat, exfat, ...
    uuid: str | None
    label: str | None
    size: int | None = None           # bytes
    vendor: str | None = None
    model: str | None = None
    serial: str | None = None
    bus: str | None = None            # ID_BUS: usb, ata, scsi, ... (None: virtio, loop, ...)
    devtype: str = "partition"        # "partition" or "disk" (a file system on the whole disk)
    sys_path: str | None = None

    @property
    def is_usb(self) -> bool:
        return self.bus == "usb"

    def as_dict(self) -> dict:
        """Stable keys for ``dmbackup usb list --json``."""
        return {"device": self.device_node, "label": self.label, "uuid": self.uuid,
                "fstype": self.fs_type, "size": self.size, "vendor": self.vendor, "model": self.model,
                "serial": self.serial, "bus": self.bus, "devtype": self.devtype}

    def describe(self) -> str:
        """One line an administrator recognises the disk by."""
        parts = []
        product = " ".join(p for p in (self.vendor, self.model) if p)
        if product:
            parts.append(product)
        if self.bus and not self.is_usb:
            parts.append(f"{self.bus} bus")
        elif not self.bus:
            parts.append("not USB")
        parts.append(self.fs_type or "unknown file system")
        if self.label:
            parts.append(f"label {self.label!r}")
        if self.uuid:
            parts.append(f"UUID {self.uuid}")
        if self.size:
            parts.append(humanize.size(self.size, si=True))
        return f"{self.device_node} ({', '.join(parts)})"


def _decode_enc(value: str | None) -> str | None:
    """udev's *_ENC properties escape unsafe bytes as \\xNN; the plain ones replace them by '_'."""
    if value is None:
        return None
    raw = _HEX_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), value.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "replace")


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _attr(device, name: str) -> str | None:
    if device is None:
        return None
    try:
        return _clean(device.attributes.asstring(name))
    except (KeyError, UnicodeDecodeError, OSError):
        return None


def disk_from_device(device, bus: str = "usb") -> UsbDisk | None:
    """The UsbDisk for a pyudev block Device, or None when it is not a candidate.

    A candidate is a partition or whole disk with a file system (``ID_FS_USAGE`` absent or
    ``filesystem``: swap, RAID members and LUKS containers are not backup disks) and, unless
    ``bus == "any"``, ``ID_BUS=usb``.
    """
    props = device.properties
    if props.get("SUBSYSTEM", device.subsystem) != "block":
        return None
    fs_type = props.get("ID_FS_TYPE")
    if not fs_type or props.get("ID_FS_USAGE", "filesystem") != "filesystem":
        return None
    dev_bus = props.get("ID_BUS")
    if bus != "any" and dev_bus != "usb":
        return None
    node = device.device_node or props.get("DEVNAME")
    if not node:
        return None
    if not node.startswith("/"):
        node = "/dev/" + node

    size = None
    try:
        size = device.attributes.asint("size") * 512   # sysfs counts 512-byte sectors
    except (KeyError, ValueError, UnicodeDecodeError, OSError):
        pass

    vendor = _clean(_decode_enc(props.get("ID_VENDOR_ENC"))) or _clean(props.get("ID_VENDOR"))
    model = _clean(_decode_enc(props.get("ID_MODEL_ENC"))) or _clean(props.get("ID_MODEL"))
    if not (vendor and model):
        scsi = device.find_parent("scsi", "scsi_device")
        usb = device.find_parent("usb", "usb_device")
        vendor = vendor or _attr(scsi, "vendor") or _attr(usb, "manufacturer")
        model = model or _attr(scsi, "model") or _attr(usb, "product")

    return UsbDisk(
        device_node=node,
        fs_type=fs_type,
        uuid=props.get("ID_FS_UUID") or None,
        label=_clean(_decode_enc(props.get("ID_FS_LABEL_ENC"))) or props.get("ID_FS_LABEL") or None,
        size=size,
        vendor=vendor,
        model=model,
        serial=props.get("ID_SERIAL_SHORT") or None,
        bus=dev_bus or None,
        devtype=props.get("DEVTYPE", "partition"),
        sys_path=device.sys_path,
    )


def _context(context=None):
    if context is not None:
        return context
    import pyudev

    return pyudev.Context()


def list_disks(bus: str = "usb", context=None) -> list[UsbDisk]:
    """Every candidate disk on ``bus`` ("usb" or "any"), sorted by device node."""
    if bus not in BUSES:
        raise ValueError(f"bus must be one of {BUSES}, got {bus!r}")
    ctx = _context(context)
    if bus == "usb":
        devices = ctx.list_devices(subsystem="block", ID_BUS="usb")
    else:
        devices = ctx.list_devices(subsystem="block")
    disks = [d for d in (disk_from_device(dev, bus) for dev in devices) if d is not None]
    return sorted(disks, key=lambda d: d.device_node)


def matches(disk: UsbDisk, *, label: str | None = None, uuid: str | None = None) -> bool:
    """Does ``disk`` carry this label or UUID? Exactly one of them must be given.

    UUIDs compare case-insensitively (FAT serials are printed either way); labels compare
    exactly, except on FAT-family file systems, whose labels are case-insensitive.
    """
    if (label is None) == (uuid is None):
        raise ValueError("give exactly one of label or uuid")
    if uuid is not None:
        return disk.uuid is not None and disk.uuid.lower() == uuid.lower()
    if disk.label is None:
        return False
    if disk.label == label:
        return True
    return (disk.fs_type or "") in _CASELESS_LABELS and disk.label.casefold() == label.casefold()


def wanted(label: str | None, uuid: str | None) -> str:
    return f"labelled {label!r}" if label is not None else f"with UUID {uuid}"


def find_disk(*, label: str | None = None, uuid: str | None = None, bus: str = "usb",
              context=None) -> UsbDisk:
    """The one disk with this label or UUID on ``bus``.

    Raises DiskNotPresent when none is plugged in (naming non-USB disks that would have
    matched, so the administrator sees why) and AmbiguousDisk when several match.
    """
    ctx = _context(context)
    found = [d for d in list_disks(bus, ctx) if matches(d, label=label, uuid=uuid)]
    what = "USB disk" if bus == "usb" else "disk"
    if not found:
        hint = ""
        if bus == "usb":
            others = [d for d in list_disks("any", ctx) if not d.is_usb and matches(d, label=label, uuid=uuid)]
            if others:
                hint = (" (not USB, so not used: " + "; ".join(d.describe() for d in others)
                        + "; set bus = \"any\" in the target to allow it)")
        raise DiskNotPresent(f"{what} {wanted(label, uuid)} is not plugged in{hint}")
    if len(found) > 1:
        how = ("name the disk by its uuid in the target instead of its label" if label is not None
               else "two disks share one UUID (a cloned disk?): give one a new UUID")
        raise AmbiguousDisk(
            f"{len(found)} {what}s {wanted(label, uuid)} are plugged in: "
            + "; ".join(d.describe() for d in found)
            + f". Unplug all but one, or {how}")
    return found[0]


def probe_node(device: str) -> UsbDisk:
    """Describe a device node without udev, from ``blkid -p`` (used with ``device = ...``)."""
    if not os.path.exists(device):
        raise DiskNotPresent(f"device {device} does not exist: is the disk plugged in?")
    if not device_present(device):
        raise DiskNotPresent(f"device {device} has no medium (size 0): is the disk plugged in?")
    try:
        out = subprocess.run(["blkid", "-p", "-o", "export", device], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60, env=child_env())
    except FileNotFoundError:
        raise TargetUnavailable("blkid is not installed (package util-linux): cannot probe "
                                f"{device}") from None
    except subprocess.TimeoutExpired:
        raise TargetUnavailable(f"blkid did not answer for {device} within 60 s: is the disk failing?") from None
    props = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key] = value
    if out.returncode != 0 or not props.get("TYPE"):
        raise TargetUnavailable(f"no file system found on {device} (blkid: "
                                f"{(out.stderr.strip() or 'nothing recognised')}): format the disk first")
    size = None
    try:
        fd = os.open(device, os.O_RDONLY)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    except OSError:
        pass
    return UsbDisk(device_node=device, fs_type=props.get("TYPE"), uuid=props.get("UUID") or None,
                   label=props.get("LABEL") or None, size=size, bus=None,
                   devtype="partition" if props.get("PART_ENTRY_NUMBER") else "disk")
