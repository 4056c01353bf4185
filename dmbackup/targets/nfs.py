"""The ``nfs`` target: an NFS export, mounted by the system or spoken to from user space.

Two transports, one target type, one config:

- ``transport = "mount"`` (default, targets/nfs_mount.py): the system's ``mount -t nfs``
  mounts the export (verified in /proc/self/mountinfo, nosuid,nodev,noexec, ``soft`` by
  default), and objects are files under ``mount_point/path``, as for a USB disk;
- ``transport = "userspace"`` (targets/nfs_userspace.py): NFSv3 through libnfs, no mount, no
  kernel NFS client, no privilege; every RPC bounded by ``timeout``.

Both are network targets (``Capabilities.network``): App.target() retries their transient
errors.

Config keys (``[targets.NAME]`` with ``type = "nfs"``):
  export = "nas.example.it:/srv/backup"   the export, server:/path ([v6addr]:/path for IPv6)
  path = "appliances"        optional sub-directory inside the export (created if missing)
  transport = "mount"        "mount" (default) or "userspace"
  timeout = 30               seconds: per RPC (userspace), per mount/umount command (mount)
  mount_point = "/run/dmbackup/NAME"     mount transport only; created, removed after
  options = "vers=4.2,soft"  mount transport only: the -o string; default
                             "soft,timeo=<timeout*10>,retrans=2"; "" passes none of these.
                             nosuid,nodev,noexec are always appended (the NAS is untrusted:
                             no set-uid program, device node or executable on it may work), and
                             suid, dev, exec or defaults here are a config error
  mount_command = ["mount", "-t", "nfs"]   mount transport only; argv to which
                             [-o OPTIONS] EXPORT MOUNT_POINT are appended
  umount_command = ["umount"]   mount transport only; MOUNT_POINT is appended

After the mount, its flags are checked in mountinfo too: a mount command that dropped
nosuid/nodev/noexec gets a bind-remount that sets them, or the share is unmounted again.

The mount point is checked by source: mountinfo must show exactly the configured export
(trailing slashes aside) mounted on it. A stand-in command in tests therefore mounts
something whose source reads like the export, e.g. ``mount -t tmpfs SERVER:/PATH MP``.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from dmbackup.system.mounting import DEFAULT_MOUNT_ROOT, SAFE_OPTIONS, unsafe_options
from dmbackup.system.nfsmount import split_export
from dmbackup.targets.base import Target, validate_name
from dmbackup.targets.nfs_mount import NfsMountTarget
from dmbackup.targets.nfs_userspace import NfsUserspaceTarget

__all__ = ["NfsConfig", "NfsMountTarget", "NfsUserspaceTarget", "build", "parse_config", "split_export"]

DEFAULT_MOUNT_COMMAND = ("mount", "-t", "nfs")
DEFAULT_UMOUNT_COMMAND = ("umount",)
TRANSPORTS = ("mount", "userspace")
_MOUNT_ONLY_KEYS = ("mount_point", "options", "mount_command", "umount_command")
_SAFE_DIR = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class NfsConfig:
    name: str
    type: str
    export: str                          # as configured: "server:/path"
    server: str                          # host name or address, IPv6 without brackets
    export_path: str                     # "/path", normalised
    transport: str = "mount"
    path: str | None = None              # sub-directory inside the export
    timeout: int = 30
    mount_point: str = ""
    options: str | None = None           # None: the soft default; "": no -o
    mount_command: tuple[str, ...] = DEFAULT_MOUNT_COMMAND
    umount_command: tuple[str, ...] = DEFAULT_UMOUNT_COMMAND

    def mount_options(self) -> str:
        if self.options is not None:
            return self.options
        return f"soft,timeo={min(600, self.timeout * 10)},retrans=2"

    def mount_argv(self, mount_point: str) -> list[str]:
        """mount_command + -o OPTIONS + EXPORT + MOUNT_POINT; the safe flags come last, so no
        earlier option can switch them off (mount(8): the last of two contradicting options wins)."""
        opts = [o for o in self.mount_options().split(",") if o] + list(SAFE_OPTIONS)
        return [*self.mount_command, "-o", ",".join(opts), self.export, mount_point]

    def describe(self) -> str:
        sub = f", path {self.path}" if self.path else ""
        return f"nfs target {self.name!r} ({self.export}{sub})"


def parse_config(name: str, s, kind: str) -> NfsConfig:
    export = s.str("export")
    try:
        server, export_path = split_export(export)
    except ValueError:
        raise s.error("export", f"expected \"server:/path\" (e.g. \"nas.example.it:/srv/backup\"), got {export!r}") from None
    transport = s.str("transport", "mount", choices=TRANSPORTS)
    raw_path = s.str("path", None)
    path = None
    if raw_path is not None:
        path = raw_path.strip("/") or None
        if path is not None:
            try:
                validate_name(path)
            except ValueError:
                raise s.error("path", "expected a relative sub-directory of safe names "
                                      f"(letters, digits, ._-+), got {raw_path!r}") from None
    timeout = s.int("timeout", 30, min=1, max=3600)
    if transport == "userspace":
        given = [k for k in _MOUNT_ONLY_KEYS if k in s.data]
        if given:
            raise s.error(given[0], "applies only to transport = \"mount\"; the userspace transport "
                                    "speaks NFS itself and mounts nothing")
        return NfsConfig(name=name, type=kind, export=export, server=server, export_path=export_path,
                         transport=transport, path=path, timeout=timeout)
    default_mp = posixpath.join(DEFAULT_MOUNT_ROOT, _SAFE_DIR.sub("_", name) or "nfs")
    mount_point = posixpath.normpath(s.abs_path("mount_point", default_mp))
    if mount_point == "/":
        raise s.error("mount_point", "must not be /")
    options = s.str("options", None)
    if options is not None and any(c.isspace() for c in options):
        raise s.error("options", f"mount options are one comma-separated string without spaces, got {options!r}")
    for opt in (options or "").split(","):
        if unsafe_options([opt]):
            raise s.error("options", f"{opt!r} is not allowed: the share is untrusted medium and is always "
                                     f"mounted {','.join(SAFE_OPTIONS)}")
    mount_command = s.str_list("mount_command", DEFAULT_MOUNT_COMMAND)
    if not mount_command:
        raise s.error("mount_command", "must name a command")
    umount_command = s.str_list("umount_command", DEFAULT_UMOUNT_COMMAND)
    if not umount_command:
        raise s.error("umount_command", "must name a command")
    return NfsConfig(name=name, type=kind, export=export, server=server, export_path=export_path,
                     transport=transport, path=path, timeout=timeout, mount_point=mount_point,
                     options=options, mount_command=tuple(mount_command),
                     umount_command=tuple(umount_command))


def build(cfg: NfsConfig, app=None) -> Target:
    if cfg.transport == "userspace":
        return NfsUserspaceTarget(cfg)
    return NfsMountTarget(cfg)
