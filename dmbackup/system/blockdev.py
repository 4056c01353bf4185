"""A disk's block device node: is it still there, who holds it open, where is it mounted.

Asked by the USB target's guard (a pulled disk loses its node, a card reader without its
card reports size 0, a dead FUSE helper answers ENOTCONN), by the mount layer
(dmbackup.system.diskmount: is the device mounted already, does a FUSE daemon still hold it
after the unmount) and by detection. Also the two FAT facts fusefat hides: the cluster size
(from the boot sector) and the free space (from its cluster counts).
"""

from __future__ import annotations

import errno
import os

from dmbackup.system.mountinfo import Mount, mounts, mounts_of


def same_device(source: str, device: str) -> bool:
    """Is ``source`` (a mountinfo source) the device node ``device``, by path or device number?"""
    if not source.startswith("/"):
        return False
    if os.path.realpath(source) == os.path.realpath(device):
        return True
    try:
        a, b = os.stat(source), os.stat(device)
    except OSError:
        return False
    return bool(a.st_rdev) and a.st_rdev == b.st_rdev


def mounts_of_device(device: str) -> list[Mount]:
    """Where ``device`` is mounted now, by path or by device number."""
    found = mounts_of(device)
    if found:
        return found
    return [m for m in mounts() if same_device(m.source, device)]


def holders(device: str) -> list[tuple[int, str]]:
    """(pid, command) of processes holding ``device`` open: FUSE daemons show up here."""
    try:
        rdev = os.stat(device).st_rdev
    except OSError:
        return []
    real = os.path.realpath(device)
    found = []
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link != real:
                # a node with another name (udev symlink, mknod copy): compare device numbers
                if not link.startswith("/dev/"):
                    continue
                try:
                    if os.stat(f"{fd_dir}/{fd}").st_rdev != rdev:
                        continue
                except OSError:
                    continue
            try:
                with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                    comm = f.read().strip()
            except OSError:
                comm = "?"
            found.append((int(pid), comm))
            break
    return found


def fat_cluster_bytes(device: str) -> int | None:
    """Cluster size of the FAT file system on ``device``, from its boot sector."""
    try:
        with open(device, "rb") as f:
            boot = f.read(16)
    except OSError:
        return None
    if len(boot) < 14:
        return None
    per_sector = int.from_bytes(boot[11:13], "little")
    sectors = boot[13]
    if per_sector not in (512, 1024, 2048, 4096) or sectors == 0 or sectors & (sectors - 1):
        return None
    return per_sector * sectors


def fusefat_free_bytes(path: str, device: str) -> int | None:
    """Free bytes on a fusefat mount. Its statfs reports no blocks at all, but counts data
    clusters in f_files and free clusters in f_ffree (seen with fusefat 0.1a)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    cluster = fat_cluster_bytes(device)
    if cluster is None or st.f_blocks != 0 or st.f_files == 0:
        return None
    return st.f_ffree * cluster


def device_present(device: str) -> bool:
    """Is the disk behind ``device`` still there? A pulled USB disk loses its node; a card
    reader without its card, or a loop device whose backing is gone, reports size 0."""
    if not os.path.exists(device):
        return False
    name = os.path.basename(os.path.realpath(device))
    try:
        with open(f"/sys/class/block/{name}/size", encoding="ascii") as f:
            return int(f.read().strip() or "0") > 0
    except (OSError, ValueError):
        return True          # no sysfs entry to ask (not a block device node): assume present


def oserror_means_gone(exc: BaseException) -> bool:
    """Errors seen when a disk disappears under a mount (kernel or FUSE)."""
    return isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.ENODEV, errno.ENOTCONN,
                                                      errno.ENXIO, errno.ESHUTDOWN)
