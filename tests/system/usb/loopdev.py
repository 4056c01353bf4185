"""Real disks for tests: file-system images on loop devices, and how to take them away.

``create`` makes a sparse image, formats it (ext4, exFAT or FAT32), attaches it with
``losetup -f --show`` and reads back its UUID with ``blkid -p`` (no udev here). ``destroy``
unmounts every mount of the device (waiting for a FUSE daemon to let go), then detaches it.
``yank`` makes the device fail every I/O, as a pulled disk does, without losing the image:
the image is copied aside first, then the loop device's capacity is cut to zero.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from dmbackup.system.mountinfo import mounts
from dmbackup.system.blockdev import holders, mounts_of_device

MKFS = {
    "ext4": lambda label: ["mkfs.ext4", "-q", "-F", "-L", label, "-E", "lazy_itable_init=0,lazy_journal_init=0"],
    "exfat": lambda label: ["mkfs.exfat", "-L", label],
    "vfat": lambda label: ["mkfs.vfat", "-F", "32", "-n", label],
}


@dataclass
class LoopDisk:
    image: str
    device: str
    fs: str
    label: str
    uuid: str


def run(*argv: str) -> str:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def blkid(device: str) -> dict[str, str]:
    out = run("blkid", "-p", "-o", "export", device)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def create(image: str, fs: str, label: str, size_mb: int = 64) -> LoopDisk:
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    run(*MKFS[fs](label), image)
    device = run("losetup", "-f", "--show", image).strip()
    info = blkid(device)
    return LoopDisk(image=image, device=device, fs=fs, label=info.get("LABEL", ""), uuid=info["UUID"])


def wait_released(device: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while holders(device) and time.monotonic() < deadline:
        time.sleep(0.05)


def unmount_all(device: str) -> None:
    for _ in range(5):
        found = mounts_of_device(device)
        if not found:
            break
        for m in found:
            if subprocess.run(["umount", m.mount_point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", m.mount_point], capture_output=True)
    wait_released(device)


def unmount_under(path: str) -> None:
    """Unmount anything a test left mounted below ``path`` (a FUSE mount by fusefat, say)."""
    path = os.path.realpath(path)
    for m in sorted(mounts(), key=lambda m: len(m.mount_point), reverse=True):
        if m.mount_point == path or m.mount_point.startswith(path + "/"):
            if subprocess.run(["umount", m.mount_point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", m.mount_point], capture_output=True)


def destroy(disk: LoopDisk) -> None:
    unmount_all(disk.device)
    subprocess.run(["losetup", "-d", disk.device], capture_output=True)


def mount(disk: LoopDisk, mount_point: str) -> None:
    """Mount by hand, as an administrator would (for the 'reuse an existing mount' tests)."""
    os.makedirs(mount_point, exist_ok=True)
    if disk.fs == "ext4":
        run("mount", disk.device, mount_point)
    elif disk.fs == "exfat":
        run("mount.exfat-fuse", disk.device, mount_point)
    else:
        run("fusefat", "-o", f"rw+,fsname={disk.device}", disk.device, mount_point)


def yank(disk: LoopDisk, saved_image: str | None = None) -> None:
    """Make every further I/O on the device fail, like a disk pulled out of its port.

    With ``saved_image`` the bytes the disk held at that moment are kept there first (the
    caller should have paused writers), so "the disk" can be plugged back in afterwards.
    """
    if saved_image:
        shutil.copyfile(disk.image, saved_image)
    with open(disk.image, "r+b") as f:
        f.truncate(0)
    run("losetup", "-c", disk.device)


def fuse_daemon(disk: LoopDisk) -> int:
    """PID of the FUSE helper serving ``disk``."""
    found = holders(disk.device)
    assert found, f"no process holds {disk.device}"
    return found[0][0]
