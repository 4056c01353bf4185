"""A backup disk or share is untrusted medium (issue 13, item 13).

Whoever hands over a USB stick, or controls the NAS, controls every byte on it: a set-uid-root
program, a device node that opens the appliance's own disk, an executable a careless hook runs,
and the file system image itself, which the kernel parses. So:

- every USB and NFS mount dmbackup makes is ``nosuid,nodev,noexec``, and the target's own
  ``mount_options`` / ``options`` cannot turn that off (``suid``, ``dev``, ``exec`` or
  ``defaults`` there are a config error, exit 2);
- a USB disk is mounted only when its file system is one a backup disk needs (ext4, exFAT,
  FAT); any other (ext2/ext3, btrfs, xfs, squashfs, minix... kernel parsers that have no
  business with a stick from the drawer) is refused with exit 7 and what to do, before any
  mount is attempted.

The tests plant the attack on real file systems on loop devices (and an overlay mount standing
in for the NFS export, since this kernel has no NFS client), mount them through the real
targets, and try to use it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from dmbackup.config import parse
from dmbackup.errors import EXIT_TARGET, ConfigError, TargetUnavailable
from dmbackup.targets import nfs
from dmbackup.system.mountinfo import mount_at
from dmbackup.targets.registry import build
from dmbackup.system.diskmount import mount_command
from tests.world import World

SAFE = {"nosuid", "nodev", "noexec"}


def _realdev_skip() -> str | None:
    if "umockdev" in os.environ.get("LD_PRELOAD", ""):
        return "real loop devices and mounts do not work under the umockdev preload"
    if os.geteuid() != 0:
        return "needs root for loop devices and mounts"
    if not os.path.exists("/dev/loop-control"):
        return "no loop device support (/dev/loop-control missing)"
    return None


needs_realdev = pytest.mark.skipif(_realdev_skip() is not None, reason=str(_realdev_skip()))


@pytest.fixture
def loop_disk(tmp_path):
    """Factory for real file systems on loop devices; all detached at teardown."""
    from tests.system.usb import loopdev

    made = []

    def make(fs: str, label: str = "DMBACKUP", size_mb: int = 64):
        image = str(tmp_path / f"disk{len(made)}-{fs}.img")
        if fs in loopdev.MKFS:
            disk = loopdev.create(image, fs, label, size_mb)
        else:               # file systems the product refuses: formatted here, not in loopdev
            mkfs = shutil.which(f"mkfs.{fs}")
            if mkfs is None:
                pytest.skip(f"mkfs.{fs} is not installed")
            with open(image, "wb") as f:
                f.truncate(size_mb << 20)
            loopdev.run(mkfs, "-q", "-F", "-L", label, image)
            device = loopdev.run("losetup", "-f", "--show", image).strip()
            info = loopdev.blkid(device)
            disk = loopdev.LoopDisk(image=image, device=device, fs=info["TYPE"], label=label,
                                    uuid=info.get("UUID", ""))
        made.append(disk)
        return disk

    try:
        yield make
    finally:
        for disk in reversed(made):
            loopdev.destroy(disk)
        loopdev.unmount_under(str(tmp_path))


def usb_target(tmp_path, disk, options: str | None = None):
    body = f'device = "{disk.device}"\nmount_point = "{tmp_path}/mnt"\n'
    if options is not None:
        body += f'mount_options = "{options}"\n'
    text = f'hostname = "mx.test"\n[encryption]\nmode = "none"\n[targets.usb1]\ntype = "usb"\n{body}'
    return build(parse(text, str(tmp_path / "dmbackup.toml")).target("usb1"), None)


def flags(path: str) -> set[str]:
    m = mount_at(path)
    assert m is not None, f"nothing mounted on {path}"
    return set(m.options.split(","))


def plant_hostile_content(disk, tmp_path) -> None:
    """What a hostile ext4 stick carries: a set-uid-root program, an executable, and a
    device node that opens the appliance's own disk (here: the loop device itself)."""
    from tests.system.usb import loopdev

    mp = str(tmp_path / "prepare")
    os.makedirs(mp)
    loopdev.run("mount", disk.device, mp)
    try:
        shutil.copy2("/bin/sh", os.path.join(mp, "rootshell"))
        os.chmod(os.path.join(mp, "rootshell"), 0o4755)
        with open(os.path.join(mp, "run-me"), "w") as f:
            f.write("#!/bin/sh\necho pwned\n")
        os.chmod(os.path.join(mp, "run-me"), 0o755)
        st = os.stat(disk.device)
        os.mknod(os.path.join(mp, "raw-disk"), 0o666 | stat.S_IFBLK, st.st_rdev)
    finally:
        loopdev.run("umount", mp)
        os.rmdir(mp)


@pytest.mark.realdev
@needs_realdev
@pytest.mark.parametrize("fs", ["ext4", "exfat", "vfat"])
def test_usb_mounts_are_nosuid_nodev_noexec(loop_disk, tmp_path, fs):
    disk = loop_disk(fs)
    if fs == "ext4":
        plant_hostile_content(disk, tmp_path)
    t = usb_target(tmp_path, disk)
    t.open()
    try:
        root = t.root
        assert SAFE <= flags(root), flags(root)
        if fs != "ext4":
            return
        # the attack: run what the stick carries, open the device node it carries
        with pytest.raises(PermissionError):
            subprocess.run([os.path.join(root, "run-me")], check=True)
        with pytest.raises(PermissionError):
            subprocess.run([os.path.join(root, "rootshell"), "-c", "id -u"], check=True)
        with pytest.raises(PermissionError):
            open(os.path.join(root, "raw-disk"), "rb").close()
    finally:
        t.close()


@pytest.mark.realdev
@needs_realdev
@pytest.mark.parametrize("fs", ["ext2", "ext3"])      # drivers this kernel has: they WOULD mount
def test_usb_disk_with_a_file_system_outside_the_allow_list_is_refused(loop_disk, tmp_path, fs):
    disk = loop_disk(fs)
    w = World(tmp_path)
    os.makedirs(w.store)
    w.write_config(targets=f'[targets.usb1]\ntype = "usb"\ndevice = "{disk.device}"\n'
                           f'mount_point = "{tmp_path}/usbmnt"\n', encryption='mode = "none"')
    for args in (("init", "usb1"), ("backup", "--target", "usb1")):
        r = w.run(*args)
        assert r.code == EXIT_TARGET, (args, r.code, r.err)
        line = [ln for ln in r.err.splitlines() if ln.startswith("dmbackup:")][-1]
        assert disk.fs in line and "ext4, exfat or vfat" in line and "mkfs" in line, line
        assert not os.path.exists(tmp_path / "usbmnt"), "the disk was mounted (or tried)"
        assert not any(m.source == disk.device or m.source.endswith(os.path.basename(disk.device))
                       for m in _all_mounts()), "the disk is mounted"


def _all_mounts():
    from dmbackup.system.mountinfo import mounts

    return mounts()


@pytest.mark.parametrize("opt", ["exec", "suid", "dev", "defaults"])
def test_options_that_undo_the_safe_flags_are_a_config_error(tmp_path, opt):
    text = (f'hostname = "mx.test"\n[encryption]\nmode = "none"\n'
            f'[targets.usb1]\ntype = "usb"\nlabel = "DMBACKUP"\nmount_options = "noatime,{opt}"\n'
            f'[targets.nas]\ntype = "nfs"\nexport = "nas.test:/x"\n')
    with pytest.raises(ConfigError) as ei:
        parse(text, "/etc/dmbackup/dmbackup.toml")
    assert ei.value.exit_code == 2 and "targets.usb1.mount_options" in str(ei.value)
    text = (f'hostname = "mx.test"\n[encryption]\nmode = "none"\n'
            f'[targets.nas]\ntype = "nfs"\nexport = "nas.test:/x"\noptions = "soft,{opt}"\n')
    with pytest.raises(ConfigError) as ei:
        parse(text, "/etc/dmbackup/dmbackup.toml")
    assert "targets.nas.options" in str(ei.value) and opt in str(ei.value)


def test_mount_command_never_lets_options_undo_the_safe_flags():
    """The mount layer itself refuses too, whoever calls it (exit 7)."""
    with pytest.raises(TargetUnavailable) as ei:
        mount_command("/dev/sdb1", "/m", "ext4", ("exec",), kernel=lambda fs: True, which=shutil.which)
    assert ei.value.exit_code == EXIT_TARGET


@pytest.mark.parametrize("options, given", [(None, "soft,timeo=300,retrans=2"), ("", None),
                                            ("vers=4.2,hard", "vers=4.2,hard")])
def test_nfs_mount_argv_always_carries_the_safe_flags(options, given):
    data = 'export = "nas.test:/srv/backup"\n' + ("" if options is None else f'options = "{options}"\n')
    text = f'hostname = "mx.test"\n[encryption]\nmode = "none"\n[targets.nas]\ntype = "nfs"\n{data}'
    cfg = parse(text, "/etc/dmbackup/dmbackup.toml").target("nas")
    argv = cfg.mount_argv("/run/dmbackup/nas")
    assert argv[:3] == ["mount", "-t", "nfs"] and argv[-2:] == ["nas.test:/srv/backup", "/run/dmbackup/nas"]
    opts = argv[argv.index("-o") + 1].split(",")
    assert opts[-3:] == ["nosuid", "nodev", "noexec"]          # last: nothing after them undoes them
    assert ",".join(opts[:-3]) == (given or "")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_nfs_mounts_are_nosuid_nodev_noexec(tmp_path):
    """An overlay mount whose source reads like the export stands in for the NFS mount (this
    kernel has no NFS client): the options dmbackup passes reach mount(8) as they would for
    ``mount -t nfs``."""
    share, lower, work = (tmp_path / d for d in ("share", "lower", "work"))
    for d in (share, lower, work):
        d.mkdir()
    # a hostile NAS serves an executable
    (share / "run-me").write_text("#!/bin/sh\necho pwned\n")
    os.chmod(share / "run-me", 0o755)
    mp = str(tmp_path / "mnt")
    text = ('hostname = "mx.test"\n[encryption]\nmode = "none"\n[targets.nas]\ntype = "nfs"\n'
            f'export = "nas.test:/srv/backup"\nmount_point = "{mp}"\nmount_command = ["mount", "-t", "overlay"]\n'
            f'options = "lowerdir={lower},upperdir={share},workdir={work}"\ntimeout = 10\n')
    t = nfs.build(parse(text, str(tmp_path / "dmbackup.toml")).target("nas"), None)
    t.open()
    try:
        assert SAFE <= flags(mp), flags(mp)
        with pytest.raises(PermissionError):
            subprocess.run([os.path.join(mp, "run-me")], check=True)
    finally:
        t.close()
    assert mount_at(mp) is None
