"""Dovecot's view of a restore drill: can Dovecot open every folder of the restored copy?

How Dovecot is asked (tried with Dovecot 2.3.19 here). ``doveadm -u USER`` needs a running
Dovecot's auth socket for the userdb lookup, so it cannot look at a private copy. Without
``-u``, doveadm takes the user from ``$USER``/``$HOME`` and needs no auth process at all,
so the drill writes a private config (``base_dir``, ``state_dir`` in the scratch dir;
``mail_location = maildir:~/Maildir:INDEX=MEMORY``; Maildir++ with ``/`` as separator) and
runs ``doveadm -c PRIVATE -f json mailbox status messages uidvalidity uidnext '*'``. Nothing of
the live Dovecot is involved: it need not run, and its ``mail_location`` can never lead the
drill into the live store, which is why ``[source] dovecot_config`` is not used here.
Dovecot refuses uid 0 for mail access, and as the vmail uid it cannot traverse a 0700
``state_dir``; as root the drill therefore uses ``mail_chroot`` = the scratch tree (the chroot
is entered while still root) and ``mail_uid``/``mail_gid`` = the mailbox's recorded owner (or
``[source] vmail_uid``/``vmail_gid``). Not as root, doveadm runs as the current user on the
absolute path. ``INDEX=MEMORY`` keeps Dovecot away from the restored ``dovecot.index*``
(rebuildable caches), so what it judges is the Maildir itself and its ``dovecot-uidlist``.
Dovecot cannot open a Maildir truly read-only (with cur/ not writable it cannot take the
uidlist lock nor give UIDs to mail in new/, and undercounts): it opens the disposable copy,
only after the catalog check, and the copy is removed afterwards. A folder whose restored
``dovecot-uidlist`` Dovecot rejects (it logs "Broken file" and gives the folder a new
UIDVALIDITY, so clients would download it again) is a warning (exit 1): the backup holds
exactly what the store had, but the administrator should know.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess

from dmbackup.engine.drillcheck import DIR_FLAGS, READ_FLAGS, open_dir, stat_at
from dmbackup.source.maildir_names import dir_folder

DOVEADM_TIMEOUT = 600
_UIDLIST_V3 = re.compile(rb"^3 .*?\bV(\d+)\b")
_UIDLIST_V1 = re.compile(rb"^1 (\d+) \d+")


def _doveadm_path(app) -> str | None:
    exe = app.config.source.doveadm
    found = exe if os.path.isabs(exe) else shutil.which(exe)
    return found if found and os.access(found, os.X_OK) else None


def _quote(value: str) -> str:
    """A Dovecot config value: quoted, with % doubled so it is never expanded."""
    if "\n" in value or "\0" in value:
        raise ValueError(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _expected_folders(tree_fd: int, md_rel: str) -> dict[str, tuple[int, int | None]]:
    """Folder name -> (messages in cur/ and new/, UIDVALIDITY of its dovecot-uidlist or None).

    INBOX is the Maildir itself; ``.Name`` directories with a ``cur/`` are Maildir++ folders.
    """
    out = {}
    md = open_dir(tree_fd, md_rel)
    try:
        candidates = [""] + sorted(n for n in os.listdir(md) if n.startswith(".") and n not in (".", ".."))
        for d in candidates:
            try:
                fd = open_dir(md, d) if d else os.dup(md)
            except OSError:
                continue                        # a file named like a folder, or a link: not a folder
            try:
                try:
                    os.stat("cur", dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if d:
                        continue
                count = 0
                for sub in ("cur", "new"):
                    try:
                        sfd = os.open(sub, DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        continue
                    try:
                        for n in os.listdir(sfd):
                            if not n.startswith(".") and stat.S_ISREG(
                                    os.stat(n, dir_fd=sfd, follow_symlinks=False).st_mode):
                                count += 1
                    finally:
                        os.close(sfd)
                uidvalidity = None
                try:
                    ufd = os.open("dovecot-uidlist", READ_FLAGS, dir_fd=fd)
                    try:
                        head = os.read(ufd, 512).split(b"\n", 1)[0]
                    finally:
                        os.close(ufd)
                    m = _UIDLIST_V3.match(head) or _UIDLIST_V1.match(head)
                    uidvalidity = int(m.group(1)) if m else None
                except OSError:
                    pass
                try:
                    name = dir_folder(d)
                except (ValueError, UnicodeDecodeError):
                    continue                    # not a name Dovecot would show either
                out[name] = (count, uidvalidity)
            finally:
                os.close(fd)
    finally:
        os.close(md)
    return out


def dovecot_check(app, ref, prefix: str, scratch: str, tree_dir: str, res) -> None:
    """Ask a private doveadm for the status of every folder of the restored Maildir."""
    exe = _doveadm_path(app)
    if exe is None:
        res.dovecot = "doveadm not installed"
        return
    md_rel = f"{prefix}/Maildir"
    tree_fd = os.open(tree_dir, DIR_FLAGS)
    try:
        try:
            expected = _expected_folders(tree_fd, md_rel)
            st = stat_at(tree_fd, md_rel)
        except OSError as exc:
            res.damage(f"{ref.id}: {md_rel} cannot be read back ({exc.strerror})", md_rel)
            return
    finally:
        os.close(tree_fd)
    ids = _mail_ids(app, st, md_rel, tree_dir, prefix, res, ref)
    if ids is None:
        return
    uid, gid, home = ids
    work = os.path.join(scratch, "dovecot")
    os.mkdir(work, 0o700)
    conf = _write_config(work, uid, gid, tree_dir if os.geteuid() == 0 else None, res)
    if conf is None:
        return
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "USER": res.mailbox,
           "HOME": home, "LANG": "C.UTF-8"}
    try:
        p = subprocess.run([exe, "-c", conf, "-f", "json", "mailbox", "status", "messages uidvalidity uidnext", "*"],
                           capture_output=True, env=env, timeout=DOVEADM_TIMEOUT, cwd=work, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        res.damage(f"{ref.id}: Dovecot did not finish opening the folders of {res.mailbox} in {DOVEADM_TIMEOUT} s")
        res.dovecot = "timed out"
        return
    except OSError as exc:
        res.dovecot = f"doveadm could not be started: {exc.strerror}"
        res.warn(res.dovecot)
        return
    _judge(p, expected, md_rel, res, ref)


def _mail_ids(app, st, md_rel: str, tree_dir: str, prefix: str, res, ref):
    """(mail uid, mail gid, home) doveadm runs with; None when Dovecot could not serve the mailbox."""
    src = app.config.source
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid(), os.path.join(tree_dir, prefix)
    uid = src.vmail_uid if src.vmail_uid is not None else st.st_uid
    gid = src.vmail_gid if src.vmail_gid is not None else st.st_gid
    if uid == 0 or gid == 0:
        res.damage(f"{ref.id}: {md_rel} is owned by uid/gid {st.st_uid}:{st.st_gid}; Dovecot refuses uid or "
                   "gid 0 for mail access, so it could not serve this mailbox: set [source] vmail_uid/vmail_gid "
                   "or fix the owner in the mail store", md_rel)
        return None
    # Dovecot (as the mail uid) must reach / of the chroot, i.e. the scratch tree itself
    os.chown(tree_dir, uid, gid)
    return uid, gid, "/" + prefix


def _write_config(work: str, uid: int, gid: int, chroot: str | None, res) -> str | None:
    """The private dovecot.conf (chrooted into the scratch tree when running as root)."""
    conf = os.path.join(work, "dovecot.conf")
    try:
        lines = [
            "# written by dmbackup's restore drill: a private config for one scratch copy",
            f"base_dir = {_quote(work)}",
            f"state_dir = {_quote(work)}",
            "log_path = /dev/stderr",
            "ssl = no",
            "protocols = none",
            "stats_writer_socket_path =",
            "mail_location = maildir:~/Maildir:INDEX=MEMORY",
            "mail_fsync = never",
            f"mail_uid = {uid}", f"mail_gid = {gid}",
            f"first_valid_uid = {uid}", f"last_valid_uid = {uid}",
            f"first_valid_gid = {gid}", f"last_valid_gid = {gid}",
            "namespace inbox {", "  inbox = yes", "  separator = /", "}",
        ]
        if chroot is not None:
            lines += [f"mail_chroot = {_quote(chroot)}", f"valid_chroot_dirs = {_quote(chroot)}"]
    except ValueError:
        res.dovecot = "skipped: the state_dir path cannot be written into a Dovecot config"
        res.warn(f"Dovecot was not asked: {res.dovecot}")
        return None
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return conf


def _judge(p, expected: dict, md_rel: str, res, ref) -> None:
    """What doveadm said against the folders of the restored copy."""
    errors = [ln for ln in p.stderr.decode("utf-8", "replace").splitlines() if "Error:" in ln or "Fatal:" in ln]
    try:
        seen = {str(r["mailbox"]): r for r in json.loads(p.stdout.decode("utf-8", "replace") or "[]")
                if isinstance(r, dict) and "mailbox" in r}
    except ValueError:
        seen = {}
    if not seen and p.returncode != 0:
        res.damage(f"{ref.id}: Dovecot could not open {res.mailbox} (doveadm exit {p.returncode}): "
                   f"{_short(errors[-1] if errors else p.stderr.decode('utf-8', 'replace'))}", md_rel)
        res.dovecot = "failed"
        return
    res.dovecot = "checked"
    res.folders = 0
    for name, (count, uidvalidity) in sorted(expected.items()):
        own = [ln for ln in errors if f"Mailbox {name}: " in ln]
        row = seen.get(name)
        where = f"{md_rel}/{'' if name == 'INBOX' else _folder_dir_name(name)}".rstrip("/")
        if row is None:
            res.damage(f"{ref.id}: Dovecot cannot open folder {name!r} of {res.mailbox}: "
                       f"{_short(own[-1]) if own else 'it does not list it'}", where)
            continue
        res.folders += 1
        try:
            messages, got_validity = int(row.get("messages")), int(row.get("uidvalidity"))
        except (TypeError, ValueError):
            res.damage(f"{ref.id}: Dovecot gave no status for folder {name!r} of {res.mailbox}", where)
            continue
        if messages != count:
            res.damage(f"{ref.id}: Dovecot sees {messages} message(s) in folder {name!r} of {res.mailbox}, "
                       f"the restored folder holds {count} file(s)", where)
        if uidvalidity is not None and got_validity != uidvalidity:
            res.warn(
                f"Dovecot could not use the restored dovecot-uidlist of folder {name!r} of {res.mailbox} (it gave "
                f"the folder a new UIDVALIDITY, {got_validity} instead of {uidvalidity}, so clients would download "
                f"it again){': ' + _short(own[0]) if own else ''}")
        elif own:
            res.warn(f"Dovecot, opening folder {name!r} of {res.mailbox}: {_short(own[0])}")


def _folder_dir_name(name: str) -> str:
    from dmbackup.source.maildir_names import folder_dir

    try:
        return folder_dir(name)
    except ValueError:
        return name


def _short(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    # doveadm's prefix "doveadm(user)<pid><session>: " says nothing the message does not
    text = re.sub(r"^doveadm\([^)]*\)(<[^>]*>)*: ", "", text)
    return text if len(text) <= n else text[: n - 3] + "..."
