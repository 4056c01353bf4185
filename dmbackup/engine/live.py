"""Restoring into the live mail store (no --to), and finishing a store restored by hand.

Non-destructive by default: the selected mailbox (or one folder of it) is restored into a
staging directory inside the live Maildir, and each of its folders is moved into place as a
NEW folder ``Restored-YYYY-MM-DD/<original folder>`` of the live mailbox, keeping the flags (the
``:2,`` suffix) and the folder's ``dovecot-keywords`` (keyword letters are per folder), owned
by the vmail uid/gid with modes 0700/0600. The original ``dovecot-uidlist`` is not copied: the
new folders get fresh UIDs, so nothing a client has cached is contradicted. Nothing live is
deleted or overwritten. Dovecot is then told to rescan (``doveadm force-resync``) and the new
folders are subscribed, when doveadm is installed.

The live Maildir belongs to the vmail uid, which the mail users' programs run as: anything in it
can be renamed, replaced or symlinked while dmbackup works as root. So every operation in it is
relative to a directory fd opened with ``O_NOFOLLOW``: the mailbox's directories are opened
one by one from the store root and the Maildir must be a real directory owned by the vmail uid;
the staging directory is created by dmbackup (mode 0700, root, a random name Dovecot does not
list as a folder) and held by fd; each restored folder is assembled inside it with its final
owner and modes, and renamed into the live Maildir with ``RENAME_NOREPLACE``, never over
anything that appeared there meanwhile.

``--overwrite`` is the disaster restore: the whole snapshot into an EMPTY store, with every
folder's next UID raised (``uid_gap``, dmbackup.engine.dovecot), then ``doveadm force-resync``
and the mod-sequence raise of ``protect_clients``. ``resync`` does the last part for a tree that
was restored with ``--to DIR --uid-gap N`` and moved into place by hand.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
from datetime import datetime, timezone

from dmbackup.errors import RestoreError, UsageError
from dmbackup.source.maildir_names import dir_folder, folder_dir
from dmbackup.engine.dovecot import UID_GAP, Doveadm, protect_clients
from dmbackup.engine.safetree import DIR_FLAGS, open_below

_RENAME_NOREPLACE = 1


def _renameat_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:        # very old libc: link-free fallback, checked just before
        try:
            os.stat(dst, dir_fd=dst_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            return
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    if fn(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), _RENAME_NOREPLACE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), dst)


def _vmail_ids(app, st: os.stat_result) -> tuple[int, int]:
    src = app.config.source
    return (src.vmail_uid if src.vmail_uid is not None else st.st_uid,
            src.vmail_gid if src.vmail_gid is not None else st.st_gid)


def _open_beneath(root_fd: int, parts: list[str], what: str) -> int:
    try:
        return open_below(root_fd, parts)
    except OSError as exc:
        raise RestoreError(f"{what} cannot be opened at {exc.filename or '/'.join(parts)!r} ({exc.strerror}): "
                           "it must be a real directory, not a symlink") from None


def restore_live(app, target_name, *, snapshot=None, at=None, mailbox=None, folder=None, overwrite=False,
                 resume=False, uid_gap=None, fill_stage=None):
    # fill_stage(stage path, stage fd, (uid, gid), (dir mode, file mode)) -> result: writes the
    # staged <domain>/<user>/Maildir tree instead of restore_to_dir (restore by message,
    # dmbackup.engine.msgrestore); everything after it (Restored-<date>/, resync) is the same
    from dmbackup.engine.restoredir import restore_to_dir

    store = app.config.source.mail_store
    if overwrite:
        if mailbox or folder:
            raise UsageError("--overwrite without --to restores the whole store into an empty one; "
                             "for one mailbox, leave out --overwrite (it goes into Restored-<date>)")
        if not os.path.isdir(store):
            os.makedirs(store, mode=0o700)
        if not resume and [n for n in os.listdir(store) if n != "lost+found"]:
            raise RestoreError(f"mail store {store} is not empty: --overwrite only restores into an empty store "
                               "(stop Dovecot, move the old store aside, create an empty directory)")
        gap = UID_GAP if uid_gap is None else uid_gap
        res = restore_to_dir(app, target_name, snapshot, at=at, to=store, overwrite=True, resume=resume,
                             uid_gap=gap)
        app.log.info("uid_gap_applied", gap=gap)
        prot = protect_clients(app)
        res.warnings.extend(prot["problems"])
        res.selection = "/ (disaster restore into the live store)"
        return res

    if not mailbox:
        raise UsageError("restoring into the live store needs --mailbox USER@DOMAIN (and optionally --folder); "
                         "to restore a whole snapshot use --to DIR, or --overwrite into an empty store")
    user, domain = mailbox.split("@", 1)
    try:
        store_fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"mail store {store} cannot be opened ({exc.strerror}): check [source] mail_store") from None
    try:
        try:
            md_fd = _open_beneath(store_fd, [domain, user, "Maildir"], f"mailbox {mailbox}")
        except RestoreError:
            raise RestoreError(f"mailbox {mailbox} has no Maildir at {os.path.join(store, domain, user, 'Maildir')} "
                               "(or it is not a real directory): restore it with --to DIR instead") from None
    finally:
        os.close(store_fd)
    try:
        md_st = os.fstat(md_fd)
        uid, gid = _vmail_ids(app, md_st)
        if md_st.st_uid != uid:
            raise RestoreError(f"the Maildir of {mailbox} is owned by uid {md_st.st_uid}, not the vmail uid {uid}: "
                               "refusing to write into it; check its owner or [source] vmail_uid")
        created = _restore_into_mailbox(app, target_name, md_fd, uid, gid, snapshot=snapshot, at=at,
                                        mailbox=mailbox, folder=folder, store=store, fill_stage=fill_stage)
    finally:
        os.close(md_fd)
    res, created, top = created
    d = Doveadm(app)
    for name in created:
        d.ok("mailbox", "subscribe", "-u", mailbox, name)
    d.ok("force-resync", "-u", mailbox, f"{top}*")
    app.log.info("restored_into_live", mailbox=mailbox, folders=created)
    return res


def _restore_into_mailbox(app, target_name, md_fd, uid, gid, *, snapshot, at, mailbox, folder, store,
                          fill_stage=None):
    from dmbackup.engine.restoredir import restore_to_dir, written_back

    user, domain = mailbox.split("@", 1)
    stage_name = f"dmbackup-stage-{secrets.token_hex(8)}"      # no leading dot: not a Maildir++ folder
    os.mkdir(stage_name, 0o700, dir_fd=md_fd)
    stage_fd = os.open(stage_name, DIR_FLAGS, dir_fd=md_fd)
    try:
        st = os.fstat(stage_fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise RestoreError("the staging directory was replaced while the restore started: try again")
        if fill_stage is not None:
            res = fill_stage(os.path.join(store, domain, user, "Maildir", stage_name), stage_fd, (uid, gid),
                             (0o700, 0o600))
            written_back(os.path.join(store, domain, user, "Maildir", stage_name), stage_fd)
        else:
            res = restore_to_dir(app, target_name, snapshot, at=at, mailbox=mailbox, folder=folder,
                                 to=os.path.join(store, domain, user, "Maildir", stage_name), stage_fd=stage_fd,
                                 owner=(uid, gid), modes=(0o700, 0o600))
        staged_fd = _open_beneath(stage_fd, [domain, user, "Maildir"], "the staged mailbox")
        try:
            day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
            live_names = set(os.listdir(md_fd))
            top, n = f"Restored-{day}", 2
            while any(e == folder_dir(top) or e.startswith(folder_dir(top) + ".") for e in live_names):
                top, n = f"Restored-{day}-{n}", n + 1
            os.mkdir("out", 0o700, dir_fd=stage_fd)
            out_fd = os.open("out", DIR_FLAGS, dir_fd=stage_fd)
            try:
                created = []
                for rel in _folders(staged_fd):
                    name = f"{top}/{dir_folder(rel)}"
                    _assemble(staged_fd, rel, out_fd, folder_dir(name), uid, gid)
                    created.append(name)
                for name in created:
                    try:
                        _renameat_noreplace(out_fd, folder_dir(name), md_fd, folder_dir(name))
                    except OSError as exc:
                        raise RestoreError(f"cannot move the restored folder {name} into the mailbox "
                                           f"({exc.strerror}): something appeared under its name; try again") from None
            finally:
                os.close(out_fd)
        finally:
            os.close(staged_fd)
        res.destination = ", ".join(created)
        res.selection = f"{mailbox}{'/' + folder if folder else ''} -> {top}"
        return res, created, top
    finally:
        _remove_tree(stage_fd)
        os.close(stage_fd)
        try:
            os.rmdir(stage_name, dir_fd=md_fd)
        except OSError:
            app.log.warning("stage_left", message=f"staging directory {stage_name} could not be removed")


def _folders(md_fd: int) -> list[str]:
    """Maildir folders (dirs with cur/ and new/) in the staged Maildir: "" for INBOX, ".X" ..."""
    out = []
    names = set(os.listdir(md_fd))
    if {"cur", "new"} <= names:
        out.append("")
    for n in sorted(names):
        if n.startswith(".") and n not in (".", ".."):
            try:
                fd = os.open(n, DIR_FLAGS, dir_fd=md_fd)
            except OSError:
                continue
            try:
                if {"cur", "new"} <= set(os.listdir(fd)):
                    out.append(n)
            finally:
                os.close(fd)
    return out


def _assemble(staged_fd: int, rel: str, out_fd: int, dest: str, uid: int, gid: int) -> None:
    """Build folder ``dest`` in the stage: cur/ new/ tmp/ with the staged messages, and the keywords."""
    os.mkdir(dest, 0o700, dir_fd=out_fd)
    dfd = os.open(dest, DIR_FLAGS, dir_fd=out_fd)
    sfd = _open_beneath(staged_fd, [rel] if rel else [], "the staged folder")
    try:
        for sub in ("cur", "new", "tmp"):
            os.mkdir(sub, 0o700, dir_fd=dfd)
            t = os.open(sub, DIR_FLAGS, dir_fd=dfd)
            try:
                if sub != "tmp":
                    try:
                        s = os.open(sub, DIR_FLAGS, dir_fd=sfd)
                    except FileNotFoundError:
                        s = None
                    if s is not None:
                        try:
                            for name in os.listdir(s):
                                st = os.stat(name, dir_fd=s, follow_symlinks=False)
                                if stat.S_ISREG(st.st_mode):     # restored by us, owner and mode already set
                                    os.rename(name, name, src_dir_fd=s, dst_dir_fd=t)
                        finally:
                            os.close(s)
                os.fchown(t, uid, gid)
            finally:
                os.close(t)
        try:
            st = os.stat("dovecot-keywords", dir_fd=sfd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                os.rename("dovecot-keywords", "dovecot-keywords", src_dir_fd=sfd, dst_dir_fd=dfd)
        except FileNotFoundError:
            pass
        os.fchown(dfd, uid, gid)
        os.fchmod(dfd, 0o700)
    finally:
        os.close(sfd)
        os.close(dfd)


def _remove_tree(dir_fd: int) -> None:
    """Remove everything below ``dir_fd`` (our staging directory), never following a symlink."""
    for name in os.listdir(dir_fd):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
                try:
                    _remove_tree(fd)
                finally:
                    os.close(fd)
                os.rmdir(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue


def resync(app) -> dict:
    """After a store restored with ``--to DIR --uid-gap N`` was moved into place and Dovecot
    started: force-resync every mailbox and raise mod-sequences (dmbackup.engine.dovecot)."""
    out = protect_clients(app)
    out["exit_code"] = 1 if out["problems"] else 0
    out["warnings"] = out["problems"]
    return out
