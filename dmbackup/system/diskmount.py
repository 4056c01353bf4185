"""Mounting one device node for the length of a session, and leaving it as it was found.

``DiskMount(device, mount_point, fs_type)`` knows nothing about how the device was found.
``open()`` returns the directory to write under:

- if the device is already mounted (an administrator or a desktop did it), that mount is
  reused and ``close()`` only syncs; dmbackup never unmounts what it did not mount;
- otherwise it creates the mount point (default ``/run/dmbackup/<target>``), mounts the
  device with the helper its file system needs, and checks /proc/self/mountinfo that the
  device is really mounted there before anyone writes. ``close()`` syncs, unmounts, waits
  for a FUSE helper to let go of the device (so the disk can be pulled safely) and removes
  the mount point it created.

A backup disk is untrusted medium: whoever hands over the stick chooses every byte on it,
including the file-system image the kernel has to parse. So only the file systems a backup
disk needs are mounted at all (``ALLOWED_FS``: ext4, exFAT, FAT); anything else (ext2/3,
btrfs, xfs, squashfs, NTFS, minix, ...) is refused before a mount is attempted. Every mount is
``nosuid,nodev,noexec``, and options that would undo that (``suid``, ``dev``, ``exec``,
``defaults``) are refused; a helper that ignores one of the flags (exfat-fuse 1.3 drops
``noexec``) gets a bind-remount that sets them, and if that fails the disk is unmounted
again, before anyone writes (dmbackup.system.mounting, shared with the NFS mount).

Helpers by file system: the kernel driver when the running kernel has it (``vfat``,
``exfat``), else the FUSE implementation: ``mount.exfat-fuse`` for exFAT, ``fusefat -o rw+``
for FAT (experimental upstream, but the only writer when the kernel lacks vfat). FUSE mounts
get ``fsname=<device>`` so mountinfo names the device and a later run can recognise the mount.

Every failure is a TargetUnavailable (exit 7) that says what to do; a failed mount never
leaves anything in the mount-point directory, because nothing is written before the
mountinfo check passes, and the target re-checks it before each write.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import time

from dmbackup.errors import TargetUnavailable
from dmbackup.system.blockdev import holders, mounts_of_device, same_device
from dmbackup.system.mountinfo import Mount, MountPointDirs, mount_at
from dmbackup.system.mounting import SAFE_OPTIONS, enforce_safe_flags, run_helper, unsafe_options, wait_for_mount

log = logging.getLogger(__name__)

_FAT_NAMES = ("vfat", "fat", "msdos", "fat32")
ALLOWED_FS = ("ext4", "exfat", *_FAT_NAMES)
# FAT and exFAT have no owners: keep files private to root.
_PRIVATE_FAT = ("fmask=0077", "dmask=0077")
_HELPER_TIMEOUT = 120        # seconds a mount helper may take (fsck-like replay on a big disk)
_SETTLE_TIMEOUT = 10         # seconds for a mount to show up in mountinfo after the helper returns
_RELEASE_TIMEOUT = 60        # seconds for a FUSE daemon to flush and exit after unmount


class MountFailed(TargetUnavailable):
    """The disk could not be mounted."""


class FileSystemRefused(MountFailed):
    """The disk's file system is not one dmbackup mounts."""


def check_fs_allowed(device: str, fs_type: str | None) -> None:
    """Raise FileSystemRefused (exit 7) unless ``fs_type`` is in ALLOWED_FS."""
    fs = (fs_type or "").lower()
    if fs in ALLOWED_FS:
        return
    what = f"a {fs_type} file system" if fs and fs != "auto" else "no file system dmbackup recognises"
    raise FileSystemRefused(
        f"{device} holds {what}; dmbackup mounts only ext4, exfat or vfat backup disks (an "
        f"untrusted disk is never handed to another file-system driver of the kernel): copy what "
        f"you need off it on another machine, then reformat it (mkfs.ext4 -L LABEL {device}) or "
        "use another disk; nothing was mounted")


def kernel_supports(fs_type: str, *, proc_filesystems: str = "/proc/filesystems",
                    modules_dir: str | None = None) -> bool:
    """True when the running kernel has ``fs_type`` built in, loaded, or as a module on disk."""
    try:
        with open(proc_filesystems, encoding="ascii", errors="replace") as f:
            if any(line.split()[-1:] == [fs_type] for line in f):
                return True
    except OSError:
        pass
    modules_dir = modules_dir or os.path.join("/lib/modules", platform.release())
    pattern = re.compile(rf"/{re.escape(fs_type)}\.ko(\.[a-z]+)?(:|\s|$)", re.M)
    for name in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join(modules_dir, name), encoding="utf-8", errors="replace") as f:
                if pattern.search(f.read()):
                    return True
        except OSError:
            continue
    return False


def mount_command(device: str, mount_point: str, fs_type: str, options: tuple[str, ...] = (), *,
                  kernel=kernel_supports, which=shutil.which) -> list[str]:
    """The argv that mounts ``device`` (file system ``fs_type``) on ``mount_point``.

    ``options`` from the target config come last, so they override the defaults.
    """
    def opts(*parts) -> str:
        return ",".join(p for p in (*parts, *options) if p)

    check_fs_allowed(device, fs_type)
    bad = unsafe_options(options)
    if bad:
        raise MountFailed(f"cannot mount {device} with {','.join(bad)}: backup disks are always mounted "
                          "nosuid,nodev,noexec; remove it from the target's mount_options")
    fs = fs_type.lower()
    if fs in _FAT_NAMES:
        if kernel("vfat"):
            return ["mount", "-t", "vfat", "-o", opts(*SAFE_OPTIONS, *_PRIVATE_FAT, "utf8"), device, mount_point]
        if which("fusefat"):
            # rw+ is fusefat's "read-write, I accept the experimental writer" switch
            return ["fusefat", "-o", opts("rw+", f"fsname={device}", "subtype=fusefat", *SAFE_OPTIONS),
                    device, mount_point]
        raise MountFailed(f"cannot mount the FAT file system on {device}: this kernel has no vfat "
                          "driver and fusefat is not installed (apt-get install fusefat)")
    if fs == "exfat":
        if kernel("exfat"):
            return ["mount", "-t", "exfat", "-o", opts(*SAFE_OPTIONS, *_PRIVATE_FAT), device, mount_point]
        helper = which("mount.exfat-fuse") or which("mount.exfat")
        if helper:
            # a fuseblk mount: mountinfo names the device without an fsname option
            return [helper, "-o", opts(*SAFE_OPTIONS), device, mount_point]
        raise MountFailed(f"cannot mount the exFAT file system on {device}: this kernel has no exfat "
                          "driver and exfat-fuse is not installed (apt-get install exfat-fuse)")
    return ["mount", "-t", fs, "-o", opts(*SAFE_OPTIONS), device, mount_point]


class DiskMount:
    """Mount ``device`` for one session; see the module docstring."""

    def __init__(self, device: str, mount_point: str, fs_type: str, options: tuple[str, ...] = (), *,
                 what: str | None = None):
        self.device = device
        self.requested_mount_point = os.path.abspath(mount_point)
        self.fs_type = fs_type
        self.options = tuple(options)
        self.what = what or f"disk {device}"
        self.path: str | None = None          # where the file system is, while open
        self.mounted_by_us = False
        self.fstype: str | None = None        # as mountinfo names it: ext4, fuseblk, fuse.fusefat
        self._mp_dirs = MountPointDirs()
        self._fuse = False

    # -- queries -------------------------------------------------------------------------
    def is_mounted(self) -> bool:
        """Is the device still mounted where this session writes?"""
        if self.path is None:
            return False
        m = mount_at(self.path)
        return m is not None and self._is_ours(m)

    def _is_ours(self, m: Mount) -> bool:
        return same_device(m.source, self.device)

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> str:
        if self.path is not None:
            return self.path
        existing = mounts_of_device(self.device)
        if existing:
            self.path = existing[0].mount_point
            self.fstype = existing[0].fstype
            self.mounted_by_us = False
            log.info("%s is already mounted on %s: using that mount", self.what, self.path)
            return self.path
        self._mount()
        return self.path  # type: ignore[return-value]

    def _mount(self) -> None:
        mp = self.requested_mount_point
        if not os.path.exists(self.device):
            raise MountFailed(f"cannot mount {self.what}: {self.device} does not exist (disk unplugged?)")
        taken = mount_at(mp)
        if taken is not None:
            raise MountFailed(f"cannot mount {self.what} on {mp}: {taken.source} ({taken.fstype}) is "
                              f"already mounted there: unmount it or choose another mount_point")
        argv = mount_command(self.device, mp, self.fs_type, self.options)
        self._fuse = argv[0] != "mount"
        if self._fuse:
            busy = holders(self.device)
            if busy:
                who = ", ".join(f"{comm} (PID {pid})" for pid, comm in busy)
                raise MountFailed(f"cannot mount {self.what}: {self.device} is in use by {who} although "
                                  "it is not mounted anywhere dmbackup can see; stop that program first")
        self._make_mount_point(mp)
        code, output = run_helper(argv, _HELPER_TIMEOUT)
        mounted = wait_for_mount(mp, _SETTLE_TIMEOUT, self._is_ours) if code == 0 else None
        if mounted is None:
            stray = mount_at(mp)
            if stray is not None and code == 0:
                # the helper mounted something else there (wrong device?): take it away again
                run_helper(["umount", mp], _HELPER_TIMEOUT)
            self._remove_mount_point()
            detail = output or f"exit status {code}"
            if code == 0:
                detail = f"{argv[0]} reported success but /proc/self/mountinfo does not show {self.device} on {mp}"
            raise MountFailed(f"cannot mount {self.what} ({self.fs_type}) on {mp}: {detail}. "
                              "Check the disk (fsck) or the target's mount_options; nothing was written")
        unsafe = enforce_safe_flags(mp, _HELPER_TIMEOUT)
        if unsafe is not None:
            run_helper(["umount", mp], _HELPER_TIMEOUT)
            if self._fuse:
                self._wait_released()
            self._remove_mount_point()
            raise MountFailed(f"cannot mount {self.what} safely on {mp}: {unsafe}. An untrusted disk is "
                              "never used without nosuid,nodev,noexec; nothing was written")
        self.path = mp
        self.fstype = mounted.fstype
        self.mounted_by_us = True
        log.info("mounted %s on %s with %s", self.what, mp, argv[0])

    def _make_mount_point(self, mp: str) -> None:
        try:
            self._mp_dirs.make(mp)
        except OSError as exc:
            raise MountFailed(f"mount point {mp}: {exc.strerror}") from None

    def _remove_mount_point(self) -> None:
        self._mp_dirs.remove()

    def sync(self) -> None:
        if self.path is None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            os.sync()
            return
        try:
            os.fsync(fd)
            if not (self.fstype or "").startswith("fuse"):
                # this disk's file system only (issue 17), not every one on the machine
                from dmbackup.system.fssync import syncfs

                syncfs(fd)
                return
        except OSError:
            pass
        finally:
            os.close(fd)
        # a FUSE driver (fusefat, ntfs-3g) writes the disk through its device node: those
        # writes are in the block device's page cache, which only sync(2) flushes; and the
        # fallback when syncfs failed
        os.sync()

    def close(self) -> None:
        """Sync, and unmount what open() mounted. Raises MountFailed if the disk stays busy."""
        if self.path is None:
            return
        path = self.path
        try:
            self.sync()
            if not self.mounted_by_us:
                return
            if self._ours_at(path):       # never unmount what someone mounted there since
                self._unmount(path)
            if self._fuse:
                self._wait_released()
            self._remove_mount_point()
        finally:
            if not self.mounted_by_us or not self._ours_at(path):
                self.path = None
                self.mounted_by_us = False

    def _ours_at(self, path: str) -> bool:
        m = mount_at(path)
        return m is not None and self._is_ours(m)

    def _unmount(self, path: str) -> None:
        last = ""
        for attempt in range(10):
            code, last = run_helper(["umount", path], _HELPER_TIMEOUT)
            if code == 0 or not self._ours_at(path):
                return
            if self._fuse and shutil.which("fusermount"):
                code, last = run_helper(["fusermount", "-u", path], _HELPER_TIMEOUT)
                if code == 0 or not self._ours_at(path):
                    return
            if "busy" not in last.lower() and attempt:
                break
            time.sleep(0.2 * (attempt + 1))     # a just-closed file may still be referenced
        raise MountFailed(f"cannot unmount {self.what} from {path}: {last or 'busy'}. "
                          f"Close programs using it (fuser -vm {path}), then run umount {path}; "
                          "do not unplug the disk before that")

    def _wait_released(self) -> None:
        """A FUSE daemon flushes and exits after umount returns; wait so the disk can be pulled."""
        deadline = time.monotonic() + _RELEASE_TIMEOUT
        while holders(self.device):
            if time.monotonic() > deadline:
                log.warning("%s: a FUSE helper still holds %s %d s after unmount", self.what,
                            self.device, _RELEASE_TIMEOUT)
                return
            time.sleep(0.05)

    def __enter__(self) -> str:
        return self.open()

    def __exit__(self, exc_type, exc, tb):
        try:
            self.close()
        except TargetUnavailable:
            if exc_type is None:
                raise
        return False

