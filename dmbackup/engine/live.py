"""Restoring into the live mail store (no --to).

Non-destructive by default: the selected mailbox (or one folder of it) is restored into a
staging directory inside the store, and its messages are moved into NEW folders
``Restored-YYYY-MM-DD/<original folder>`` of the live mailbox, keeping their flags (the
``:2,`` suffix) and the folder's ``dovecot-keywords`` (keyword letters are per folder), owned
by the vmail uid/gid with modes 0700/0600. The original ``dovecot-uidlist`` is not copied:
the new folders get fresh UIDs, so nothing a client has cached is contradicted. Nothing live
is deleted or overwritten. Dovecot is then told to rescan (``doveadm force-resync``) and the
new folders are subscribed, when doveadm is installed.

``--overwrite`` is the disaster restore: the whole snapshot into an EMPTY store. To protect
clients that saw newer mail from UID reuse, every restored ``dovecot-uidlist`` gets its next
UID raised by ``UID_GAP`` (the documented alternative, a new UIDVALIDITY, makes every client
re-download everything). Then ``doveadm force-resync -A '*'``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone

from ..errors import RestoreError, UsageError
from ..maildir_names import dir_folder, folder_dir

UID_GAP = 1000


def _doveadm(app, *args: str) -> bool:
    src = app.config.source
    exe = shutil.which(src.doveadm) if not os.path.isabs(src.doveadm) else src.doveadm
    if not exe or not os.path.exists(exe):
        app.log.warning("doveadm_missing", message="doveadm not found: Dovecot will notice the restore on next access")
        return False
    cmd = [exe] + (["-c", src.dovecot_config] if src.dovecot_config else []) + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        app.log.warning("doveadm_failed", command=" ".join(args), stderr=p.stderr.strip()[-500:])
        return False
    return True


def _vmail_ids(app, path: str) -> tuple[int, int]:
    src = app.config.source
    st = os.stat(path)
    return (src.vmail_uid if src.vmail_uid is not None else st.st_uid,
            src.vmail_gid if src.vmail_gid is not None else st.st_gid)


def restore_live(app, target_name, *, snapshot=None, at=None, mailbox=None, folder=None, overwrite=False):
    from . import restore as restore_to_dir

    store = app.config.source.mail_store
    if overwrite:
        if mailbox or folder:
            raise UsageError("--overwrite without --to restores the whole store into an empty one; "
                             "for one mailbox, leave out --overwrite (it goes into Restored-<date>)")
        if not os.path.isdir(store):
            os.makedirs(store, mode=0o700)
        if [n for n in os.listdir(store) if n != "lost+found"]:
            raise RestoreError(f"mail store {store} is not empty: --overwrite only restores into an empty store "
                               "(stop Dovecot, move the old store aside, create an empty directory)")
        res = restore_to_dir(app, target_name, snapshot, at=at, to=store, overwrite=True)
        bumped = _raise_next_uids(store)
        app.log.info("uid_gap_applied", folders=bumped, gap=UID_GAP)
        _doveadm(app, "force-resync", "-A", "*")
        res.selection = "/ (disaster restore into the live store)"
        return res

    if not mailbox:
        raise UsageError("restoring into the live store needs --mailbox USER@DOMAIN (and optionally --folder); "
                         "to restore a whole snapshot use --to DIR, or --overwrite into an empty store")
    user, domain = mailbox.split("@", 1)
    live_md = os.path.join(store, domain, user, "Maildir")
    if not os.path.isdir(live_md):
        raise RestoreError(f"mailbox {mailbox} has no Maildir at {live_md}: restore it with --to DIR instead")
    uid, gid = _vmail_ids(app, live_md)
    stage = tempfile.mkdtemp(prefix=".dmbackup-restore-", dir=store)
    try:
        res = restore_to_dir(app, target_name, snapshot, at=at, mailbox=mailbox, folder=folder,
                             to=os.path.join(stage, "t"))
        staged_md = os.path.join(stage, "t", domain, user, "Maildir")
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        top = f"Restored-{day}"
        n = 2
        while any(e.startswith(folder_dir(top) + ".") or e == folder_dir(top) for e in os.listdir(live_md)):
            top = f"Restored-{day}-{n}"
            n += 1
        created = []
        for fdir in _folders(staged_md):
            rel = os.path.relpath(fdir, staged_md)
            name = f"{top}/{dir_folder('' if rel == '.' else rel)}"
            dest = os.path.join(live_md, folder_dir(name))
            _move_folder(fdir, dest, uid, gid)
            created.append(name)
        res.destination = ", ".join(created)
        res.selection = f"{mailbox}{'/' + folder if folder else ''} -> {top}"
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for name in created:
        _doveadm(app, "mailbox", "subscribe", "-u", mailbox, name)
    _doveadm(app, "force-resync", "-u", mailbox, f"{top}*")
    app.log.info("restored_into_live", mailbox=mailbox, folders=created)
    return res


def _folders(md: str) -> list[str]:
    """Maildir folders (dirs with cur/ and new/) at and below the staged selection."""
    out = []
    for dp, dns, _ in os.walk(md):
        if "cur" in dns and "new" in dns:
            out.append(dp)
    return sorted(out)


def _move_folder(src: str, dest: str, uid: int, gid: int) -> None:
    os.makedirs(dest, mode=0o700)
    os.chown(dest, uid, gid)
    for sub in ("cur", "new", "tmp"):
        d = os.path.join(dest, sub)
        os.mkdir(d, 0o700)
        os.chown(d, uid, gid)
        sdir = os.path.join(src, sub)
        if sub == "tmp" or not os.path.isdir(sdir):
            continue
        for name in os.listdir(sdir):
            s = os.path.join(sdir, name)
            if not os.path.isfile(s) or os.path.islink(s):
                continue
            t = os.path.join(d, name)
            os.rename(s, t)          # same file system: the stage lives inside the store
            os.chown(t, uid, gid)
            os.chmod(t, 0o600)
    kw = os.path.join(src, "dovecot-keywords")
    if os.path.isfile(kw) and not os.path.islink(kw):
        t = os.path.join(dest, "dovecot-keywords")
        shutil.copyfile(kw, t)
        os.chown(t, uid, gid)
        os.chmod(t, 0o600)


_HEADER = re.compile(rb"^(\d+ .*?)\bN(\d+)\b(.*)$")


def _raise_next_uids(store: str) -> int:
    count = 0
    for dp, _, fns in os.walk(store):
        if "dovecot-uidlist" not in fns:
            continue
        p = os.path.join(dp, "dovecot-uidlist")
        with open(p, "rb") as f:
            data = f.read()
        head, sep, rest = data.partition(b"\n")
        m = _HEADER.match(head)
        if not m:
            continue
        head = m.group(1) + b"N" + str(int(m.group(2)) + UID_GAP).encode() + m.group(3)
        st = os.stat(p)
        dst = os.stat(dp)
        tmp = p + ".dmbackup-tmp"
        with open(tmp, "wb") as f:
            f.write(head + sep + rest)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o7777)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, p)
        os.utime(dp, ns=(dst.st_atime_ns, dst.st_mtime_ns))    # the folder keeps its recorded mtime
        count += 1
    return count
