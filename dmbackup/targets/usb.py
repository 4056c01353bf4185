"""The ``usb`` target: a disk named by file-system label or UUID, mounted for the session.

``open()`` finds the disk (dmbackup.system.usbdetect, through udev), mounts it or reuses an
existing mount (dmbackup.system.diskmount), and from then on every object operation goes to a
``dir`` target rooted at the mount point, guarded against a disk that was pulled or unmounted
mid-run (targets/mounted.py): the USB target adds finding, mounting and the disk's own
quirks, never its own file handling. ``close()`` syncs and unmounts what ``open()`` mounted,
so the disk can be pulled when a run ends. "Gone" here means: the device node is gone or has
no medium, the disk is no longer mounted there, or its FUSE helper died (ENOTCONN).

Capabilities follow the file system found at ``open()``: FAT (vfat) keeps objects below
4 GiB (4 GiB - 1 MiB, whatever ``max_object_size`` says) and, like exFAT, has no POSIX
owners or modes and no atomic rename-over (the dir target then skips chmod and replaces
objects stepwise). Until the disk has been seen the target assumes the most limited medium,
because the disk plugged in next week may be a FAT stick.

Config keys (``[targets.NAME]`` with ``type = "usb"``):
  label = "DMBACKUP"       file-system label, or
  uuid = "6BBA-F738"       file-system UUID (exactly one of label / uuid)
  bus = "usb"              "usb" (default): only disks on the USB bus; "any": any disk
  mount_point = "/run/dmbackup/NAME"   where dmbackup mounts the disk (created, removed after)
  mount_options = "..."    extra options for the mount helper (string "a,b" or a list); the
                           mount is always nosuid,nodev,noexec: suid, dev, exec and defaults
                           are refused, and so is any file system but ext4, exfat and vfat
  max_object_size = "2G"   cap on one object (volume); FAT is capped below 4 GiB anyway
  device = "/dev/sdb1"     skip detection and use this node (for disks udev does not see,
                           e.g. loop devices, or to pin one port); with label / uuid set,
                           the file system on the node must carry them
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from typing import Iterator

from dmbackup.errors import NoSpace, TargetUnavailable
from dmbackup.system.blockdev import device_present, fat_cluster_bytes, fusefat_free_bytes, oserror_means_gone
from dmbackup.system.diskmount import DiskMount
from dmbackup.system.mounting import DEFAULT_MOUNT_ROOT, SAFE_OPTIONS, unsafe_options
from dmbackup.system.usbdetect import BUSES, DiskNotPresent, UsbDisk, find_disk, matches, probe_node, wanted
from dmbackup.targets.base import Capabilities
from dmbackup.targets.dir import DirTarget
from dmbackup.targets.mounted import MountedDirTarget

GiB = 1 << 30
MiB = 1 << 20
VFAT_MAX_OBJECT = 4 * GiB - MiB     # FAT32 files end at 4 GiB - 1 byte; keep a margin
_FAT_FAMILY = frozenset({"vfat", "fat", "msdos", "exfat"})
_NO_POSIX = _FAT_FAMILY | {"ntfs", "ntfs3", "ntfs-3g"}
_SAFE_DIR = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class UsbConfig:
    name: str
    type: str
    label: str | None = None
    uuid: str | None = None
    device: str | None = None
    mount_point: str = ""
    bus: str = "usb"
    mount_options: tuple[str, ...] = ()
    max_object_size: int | None = None

    def wanted(self) -> str:
        """'disk labelled 'X'' / 'disk with UUID X' / 'device /dev/x', for messages."""
        if self.device and self.label is None and self.uuid is None:
            return f"disk on {self.device}"
        what = "USB disk" if self.bus == "usb" and not self.device else "disk"
        return f"{what} {wanted(self.label, self.uuid)}"

    def matches(self, disk: UsbDisk) -> bool:
        """Is ``disk`` this target's disk? (for the plug-in watcher and --on-plug-device)"""
        if self.device:
            if os.path.realpath(self.device) != os.path.realpath(disk.device_node):
                return False
        elif self.bus == "usb" and not disk.is_usb:
            return False
        if self.label is None and self.uuid is None:
            return True
        return matches(disk, label=self.label, uuid=self.uuid)


def parse_config(name: str, s, kind: str) -> UsbConfig:
    label = s.str("label", None)
    uuid = s.str("uuid", None)
    device = s.abs_path("device", None)
    for key, value in (("label", label), ("uuid", uuid)):
        if value is not None and not value.strip():
            raise s.error(key, "must not be empty")
    if label is not None and uuid is not None:
        raise s.error("uuid", "give either label or uuid, not both")
    if label is None and uuid is None and device is None:
        raise s.error("label", "missing; name the disk by label = \"...\" or uuid = \"...\" "
                               "(see `dmbackup usb list`)")
    default_mp = os.path.join(DEFAULT_MOUNT_ROOT, _SAFE_DIR.sub("_", name) or "usb")
    mount_point = s.abs_path("mount_point", default_mp)
    if os.path.normpath(mount_point) == "/":
        raise s.error("mount_point", "must not be /")
    bus = s.str("bus", "usb", choices=BUSES)
    raw_opts = s.str_list("mount_options", ())
    options: list[str] = []
    for i, item in enumerate(raw_opts):
        for opt in item.split(","):
            opt = opt.strip()
            if not opt:
                continue
            field = f"mount_options[{i}]" if len(raw_opts) > 1 else "mount_options"
            if any(c.isspace() for c in opt):
                raise s.error(field, f"a mount option contains a space: {opt!r}")
            if unsafe_options([opt]):
                raise s.error(field, f"{opt!r} is not allowed: a backup disk is untrusted medium and is "
                                     f"always mounted {','.join(SAFE_OPTIONS)}")
            options.append(opt)
    max_object_size = s.size("max_object_size", None)
    return UsbConfig(name=name, type=kind, label=label, uuid=uuid, device=device,
                     mount_point=mount_point, bus=bus, mount_options=tuple(options),
                     max_object_size=max_object_size)


def build(cfg: UsbConfig, app) -> "UsbTarget":
    return UsbTarget(cfg)


def capabilities_for(fs_type: str | None, max_object_size: int | None = None) -> Capabilities:
    """What a file system can hold; ``None`` (not seen yet) means the most limited medium."""
    fs = (fs_type or "").lower()
    limit = max_object_size or Capabilities.max_object_size
    if fs_type is None or fs in ("vfat", "fat", "msdos"):
        return Capabilities(max_object_size=min(limit, VFAT_MAX_OBJECT), atomic_rename=False,
                            posix_metadata=False, concurrent=True)
    if fs in _FAT_FAMILY:
        return Capabilities(max_object_size=limit, atomic_rename=False, posix_metadata=False, concurrent=True)
    return Capabilities(max_object_size=limit, posix_metadata=fs not in _NO_POSIX, concurrent=True)


class UsbTarget(MountedDirTarget):
    kind = "usb"

    def __init__(self, cfg: UsbConfig, *, context=None):
        self.cfg = cfg
        self.name = cfg.name
        self._context = context               # a pyudev.Context, for tests; default: a new one
        self.capabilities = capabilities_for(None, cfg.max_object_size)
        self.disk: UsbDisk | None = None
        self._mount: DiskMount | None = None
        self._shadowed: str | None = None     # see _check_name

    def describe(self) -> str:
        return f"usb target {self.name!r} ({self.cfg.wanted()})"

    # -- session -------------------------------------------------------------------------
    def _locate(self) -> UsbDisk:
        cfg = self.cfg
        if cfg.device:
            try:
                disk = probe_node(cfg.device)
            except DiskNotPresent as exc:
                raise DiskNotPresent(f"{self.describe()}: {exc}; nothing was written") from None
            except TargetUnavailable as exc:
                raise TargetUnavailable(f"{self.describe()}: {exc}") from None
            if (cfg.label is not None or cfg.uuid is not None) and not matches(
                    disk, label=cfg.label, uuid=cfg.uuid):
                raise TargetUnavailable(
                    f"{self.describe()}: {cfg.device} holds {disk.describe()}, not the configured "
                    f"disk {wanted(cfg.label, cfg.uuid)}: wrong disk plugged in? Nothing was written")
            return disk
        try:
            return find_disk(label=cfg.label, uuid=cfg.uuid, bus=cfg.bus, context=self._context)
        except DiskNotPresent as exc:
            raise DiskNotPresent(f"{exc} (target {self.name!r}): plug it in and run again; "
                                 "nothing was written") from None

    def _attach(self) -> DirTarget:
        disk = self._locate()
        mount = DiskMount(disk.device_node, self.cfg.mount_point, disk.fs_type or "auto",
                          self.cfg.mount_options, what=f"{self.cfg.wanted()} ({disk.device_node})")
        path = mount.open()
        caps = capabilities_for(disk.fs_type, self.cfg.max_object_size)
        inner = DirTarget(self.name, path, require_mount=True, capabilities=caps)
        try:
            inner.open()
        except BaseException:
            mount.close()
            raise
        self.disk, self._mount = disk, mount
        self.capabilities = caps
        self._shadowed = None
        if mount.fstype == "fuse.fusefat" and disk.label:
            self._shadowed = disk.label.strip().casefold()
        return inner

    def _detach(self, inner: DirTarget | None) -> None:
        if self._mount is None:
            return
        self._mount.close()     # syncs; raises if the disk stays busy, and close() may be retried
        self._mount = None

    # -- guard and error mapping ---------------------------------------------------------
    def _gone(self) -> bool:
        """Has the disk left: node removed, unmounted, or its FUSE helper dead (ENOTCONN)?"""
        mount = self._mount
        if mount is None or mount.path is None:
            return True
        if not device_present(mount.device) or not mount.is_mounted():
            return True
        try:
            os.statvfs(mount.path)
        except OSError as exc:
            return oserror_means_gone(exc)
        return False

    def _gone_error(self) -> TargetUnavailable:
        mount = self._mount
        where = f" ({mount.device} on {mount.path})" if mount is not None else ""
        return TargetUnavailable(
            f"{self.describe()}: the disk was unplugged or unmounted while dmbackup was using it"
            f"{where}; nothing more was written. Plug it back in and run again")

    def _check_name(self, name: str) -> None:
        """fusefat lists the FAT volume label as an empty file in the top folder, and its
        case-insensitive lookup finds that file first: with a disk labelled DMBACKUP the
        folder "dmbackup" can be neither created nor read. Say so instead of ENOTDIR."""
        super()._check_name(name)
        if self._shadowed is not None and name.split("/", 1)[0].casefold() == self._shadowed:
            disk = self.disk
            node = disk.device_node if disk else "the disk"
            raise TargetUnavailable(
                f"{self.describe()}: this kernel has no vfat driver, and fusefat (used instead) shows "
                f"the volume label {disk.label if disk else ''!r} as a file that hides the folder "
                f"{name.split('/', 1)[0]!r}: give the disk another label (fatlabel {node} DMBACKUP1, "
                "and set label in the target), or run on a kernel with vfat")

    def _failure(self, exc: TargetUnavailable, released: int) -> NoSpace | None:
        """fusefat answers a write to a full disk with EPERM ("permission denied"). Full means
        no more free space than the failed write itself released (plus a cluster or two)."""
        mount, cause = self._mount, exc.__context__
        if (mount is None or mount.fstype != "fuse.fusefat" or mount.path is None
                or not isinstance(cause, OSError) or cause.errno not in (errno.EPERM, errno.EACCES)):
            return None
        free = fusefat_free_bytes(mount.path, mount.device)
        cluster = fat_cluster_bytes(mount.device) or 0
        if free is None or free > released + 2 * cluster:
            return None
        return NoSpace(f"{self.describe()} is full: free space on the disk (dmbackup prune) or use a "
                       "larger disk; nothing was committed")

    # -- what differs from a plain mounted directory -------------------------------------
    def list(self, directory: str = "") -> Iterator[str]:
        names = list(super().list(directory))
        if not directory and self._shadowed is not None:
            # fusefat's phantom file for the volume label is no object of ours
            names = [n for n in names if n.casefold() != self._shadowed]
        yield from names

    def free_space(self) -> int | None:
        if self._dir is None or self._gone():
            return None
        try:
            st = os.statvfs(self._dir.root)
        except OSError:
            return None
        if st.f_blocks == 0:
            # fusefat reports no block counts, only clusters; anything else: "cannot tell"
            if self._mount is not None and self._mount.fstype == "fuse.fusefat":
                return fusefat_free_bytes(self._dir.root, self._mount.device)
            return None
        return st.f_bavail * st.f_frsize

    def sync(self) -> None:
        super().sync()
        if self._mount is not None:
            self._mount.sync()


def disk_for_node(device_node: str, context=None) -> UsbDisk:
    """Describe the disk behind a device node: from udev when it knows it, else blkid."""
    try:
        import pyudev

        from dmbackup.system.usbdetect import disk_from_device

        ctx = context if context is not None else pyudev.Context()
        nodes = {device_node, os.path.realpath(device_node)}
        for dev in ctx.list_devices(subsystem="block"):
            if dev.device_node in nodes:
                disk = disk_from_device(dev, "any")
                if disk is not None:
                    return disk
    except (ImportError, OSError):
        pass
    return probe_node(device_node)
