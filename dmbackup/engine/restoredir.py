"""Restore a snapshot, or one mailbox or folder of it, into a directory (``restore --to DIR``).

The destination must be empty or new (``--resume`` finishes an interrupted restore into it);
``dmbackup.engine.restore.TreeRestorer`` writes the tree, never outside it. The live restore
(``dmbackup.engine.live``) uses this too, with a private staging directory (``stage_fd``) and
the vmail owner and modes.
"""

from __future__ import annotations

import os

from dmbackup.engine.restore import RestoreResult, TreeRestorer
from dmbackup.engine.select import pick_snapshot, selection_prefix
from dmbackup.errors import RestoreError


def restore_to_dir(app, target_name: str, snapshot: str | None = None, *, at: str | None = None,
                   mailbox: str | None = None, folder: str | None = None, to: str, overwrite: bool = False,
                   resume: bool = False, uid_gap: int | None = None, stage_fd: int | None = None, owner=None,
                   modes=None) -> RestoreResult:
    """Restore into the directory ``to``.

    ``uid_gap``: raise every restored folder's next UID by this much (dmbackup.engine.dovecot);
    default: only folders holding messages without a UID (an exact copy otherwise), except
    when ``to`` is the configured mail store itself, which is then meant to replace a store
    (every folder). ``resume``: finish an interrupted restore into the same destination.
    ``stage_fd``/``owner``/``modes``: used by the live restore."""
    from dmbackup.archive.trust import open_trusted

    prefix, inbox_only = selection_prefix(mailbox, folder)
    dest = os.path.abspath(to)
    if stage_fd is None:
        if os.path.lexists(dest):
            if not os.path.isdir(dest) or os.path.islink(dest):
                raise RestoreError(f"restore destination {dest} is not a directory")
            if os.listdir(dest) and not (overwrite or resume):
                raise RestoreError(f"restore destination {dest} is not empty: choose an empty or new directory "
                                   "(or add --resume to finish an interrupted restore into it)")
        else:
            os.makedirs(dest, mode=0o700)
    if uid_gap is None:
        from dmbackup.engine.dovecot import UID_GAP

        store = app.config.source.mail_store
        uid_gap = UID_GAP if store and os.path.realpath(dest) == os.path.realpath(store) else None
    target = app.target(target_name)
    with target:
        repo = open_trusted(app, target, target_name, require_enrolled=False)
        ref = pick_snapshot(repo, snapshot, at)
        rows, _ = repo.catalog_body(ref)
        app.log.info("restore_start", target=target_name, snapshot=ref.id, selection=prefix or "/", to=dest)
        res = TreeRestorer(repo, ref, dest, prefix=prefix, only_dir_files=inbox_only, app=app, resume=resume,
                           uid_gap=uid_gap, owner=owner, modes=modes, root_fd=stage_fd).run(rows)
        written_back(dest, stage_fd)
        app.log.info("restore_done", **res.as_dict())
        return res


def written_back(dest: str, fd: int | None = None) -> None:
    """One syncfs(2) of the destination's file system once everything is written: a restore
    that reports success has put the mail on the disk, not only in the page cache (files are
    never fsynced one by one; dmbackup.engine.restore). A write-back error is a failed restore."""
    from dmbackup.system.fssync import syncfs

    own = fd is None
    try:
        if own:
            fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            syncfs(fd)
        finally:
            if own:
                os.close(fd)
    except OSError as exc:
        raise RestoreError(f"the restored files could not be written to the disk of {dest} "
                           f"({exc.strerror or exc}): they may not survive a power cut; check that disk "
                           "(dmesg) and run the same restore again") from None
