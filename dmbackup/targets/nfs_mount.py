"""The NFS target's ``mount`` transport: the export mounted by the kernel, used as a directory.

``open()`` mounts ``server:/path`` with the configured mount command, or reuses a mount of the
same export that is already there, and verifies it (dmbackup.system.nfsmount.ExportMount);
objects then go to a ``dir`` target under ``mount_point/path``, guarded like every mounted
directory (targets/mounted.py): every write re-checks that the export is still mounted on the
mount point, as the same file system. ``close()`` syncs and unmounts only what ``open()``
mounted. Without explicit ``options`` the mount is ``soft`` with a timeout derived from
``timeout`` (NfsConfig.mount_options): a hard mount of a dead NAS would hang the backup, and
then the daemon, in the kernel forever.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dmbackup.errors import TargetUnavailable
from dmbackup.system.nfsmount import ExportMount
from dmbackup.targets.base import Capabilities
from dmbackup.targets.dir import DirTarget
from dmbackup.targets.mounted import MountedDirTarget

if TYPE_CHECKING:
    from dmbackup.targets.nfs import NfsConfig


class NfsMountTarget(MountedDirTarget):
    """NFS through the kernel: mount, verify, delegate to DirTarget, unmount what we mounted."""

    kind = "nfs"

    def __init__(self, cfg: NfsConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.capabilities = Capabilities(network=True, concurrent=True)   # a kernel mount: a file system
        self._mount = ExportMount(cfg.export, cfg.mount_point, cfg.mount_argv(cfg.mount_point),
                                  cfg.umount_command, cfg.timeout, what=cfg.describe())

    def describe(self) -> str:
        return self.cfg.describe()

    @property
    def mount_path(self) -> str | None:
        """Where the export is mounted, while open."""
        return self._mount.path

    @property
    def mounted_by_us(self) -> bool:
        return self._mount.mounted_by_us

    def _attach(self) -> DirTarget:
        path = self._mount.open()
        base = path
        try:
            if self.cfg.path:
                base = os.path.join(path, self.cfg.path)
                # safe to create: the mount was just verified, this is the share, not the root fs
                os.makedirs(base, exist_ok=True)
            inner = DirTarget(self.name, base, capabilities=self.capabilities)
            inner.open()
        except OSError as exc:
            self._mount.release()
            raise TargetUnavailable(f"{self.describe()}: cannot use {base}: {exc.strerror}") from None
        except BaseException:
            self._mount.release()
            raise
        return inner

    def _detach(self, inner: DirTarget | None) -> None:
        """Sync, then unmount what open() mounted. Raises TargetUnavailable if it stays mounted."""
        if inner is not None:
            inner.sync()
        self._mount.close()

    def _gone(self) -> bool:
        return not self._mount.is_mounted()

    def _gone_error(self) -> TargetUnavailable:
        return TargetUnavailable(
            f"{self.describe()}: {self.cfg.export} is no longer mounted on {self.mount_path} "
            "(unmounted while dmbackup was using it); nothing more was written. Run again")
