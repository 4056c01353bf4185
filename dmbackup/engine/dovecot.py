"""What a restore that replaces a store must do so that users' own IMAP clients see it right.

Clients keep state: the UIDs they have seen under a UIDVALIDITY (mbsync, Thunderbird, Outlook),
and for CONDSTORE/QRESYNC clients the HIGHESTMODSEQ they cached (RFC 7162: mod-sequences never
decrease). A snapshot is older than what the live server had handed out when it died, so:

- **Next UIDs.** Every restored ``dovecot-uidlist`` gets its next UID raised to
  ``max(N, highest UID in its records + 1) + gap``. Dovecot rewrites the header's ``N`` only
  when it recreates the file; LDA, COPY and MOVE append records above it, so ``N`` alone can be
  far below the UIDs in use. Messages the snapshot holds without a UID (left in ``new/`` while
  the uidlist was locked, or delivered by Postfix straight into ``new/``) get UIDs above the
  gap on the restored server, beyond anything the live server may have handed out, so no
  client sees one message's UID on another. So even a restore meant as an exact copy
  (``--to DIR`` without ``--uid-gap``) raises the next UID of a folder that holds such
  messages; every other folder's uidlist is restored byte for byte. ``--uid-gap 0`` turns
  that off.
- **Mod-sequences.** With Dovecot running on the restored store, every folder's HIGHESTMODSEQ is
  raised to ``max(HIGHESTMODSEQ over all folders) + MODSEQ_GAP`` (``doveadm mailbox update
  --min-highest-modseq``), then every message gets a new mod-sequence above it by adding and
  removing the keyword ``$DmbackupRestored`` (``doveadm flags``): a CONDSTORE client that asks
  ``CHANGEDSINCE <its cached value>`` gets every message's flags again (flags, not bodies), and
  every later change is reported to it. The keyword stays in the folders' keyword list (Dovecot
  never forgets a keyword); it marks a folder that went through a disaster restore.

``doveadm`` runs with ``-c [source] dovecot_config`` when set, and with the scrubbed child
environment (no passphrase).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from dmbackup.system.childenv import child_env

UID_GAP = 1000
MODSEQ_GAP = 1_000_000_000
RESTORED_KEYWORD = "$DmbackupRestored"
MAX_UIDLIST = 256 << 20

_HEADER = re.compile(rb"^3 (?:.* )?N(\d+)(?: |$)")


def raise_uidlist(data: bytes, gap: int) -> bytes | None:
    """The uidlist with its next UID raised past every UID in it by ``gap``; None if it is not a
    version 3 uidlist (left as it is: Dovecot rebuilds what it cannot read)."""
    head, sep, rest = data.partition(b"\n")
    m = _HEADER.match(head)
    if not m:
        return None
    top = 0
    for line in rest.split(b"\n"):
        uid, _, _ = line.partition(b" ")
        if uid.isdigit():
            top = max(top, int(uid))
    nxt = max(int(m.group(1)), top + 1) + gap
    head = head[: m.start(1)] + str(nxt).encode() + head[m.end(1):]
    return head + sep + rest


def uidlist_bases(data: bytes) -> set[str]:
    """The base names a uidlist gives a UID (records ``<uid> [fields] :<base name>``)."""
    out = set()
    for line in data.split(b"\n")[1:]:
        head, sep, name = line.partition(b" :")
        if sep and head[:1].isdigit():
            out.add(os.fsdecode(name.strip()).split(":", 1)[0])
    return out


class Doveadm:
    def __init__(self, app):
        self.app = app
        src = app.config.source
        exe = src.doveadm if os.path.isabs(src.doveadm) else shutil.which(src.doveadm)
        self.exe = exe if exe and os.path.exists(exe) else None
        self.base = [self.exe] + (["-c", src.dovecot_config] if src.dovecot_config else []) if self.exe else []

    @property
    def available(self) -> bool:
        return self.exe is not None

    def run(self, *args: str, timeout: int = 3600) -> subprocess.CompletedProcess | None:
        if not self.exe:
            self.app.log.warning("doveadm_missing",
                                 message="doveadm not found: Dovecot will notice the restore on next access")
            return None
        p = subprocess.run(self.base + list(args), capture_output=True, text=True, timeout=timeout,
                           env=child_env(), stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            self.app.log.warning("doveadm_failed", command=" ".join(args[:2]), stderr=p.stderr.strip()[-500:])
        return p

    def ok(self, *args: str) -> bool:
        p = self.run(*args)
        return p is not None and p.returncode == 0


def protect_clients(app, user: str | None = None) -> dict:
    """Force-resync, then raise HIGHESTMODSEQ and every message's mod-sequence (see module doc).

    Needs the restored store to be served by a running Dovecot. Returns what was done."""
    d = Doveadm(app)
    who = ["-u", user] if user else ["-A"]
    out = {"resynced": False, "folders": 0, "highest_modseq": None, "messages_touched": False, "problems": []}
    if not d.available:
        out["problems"].append("doveadm is not installed: run `doveadm force-resync -A '*'` once Dovecot serves "
                               "the restored store")
        return out
    out["resynced"] = d.ok("force-resync", *who, "*")
    if not out["resynced"]:
        out["problems"].append("Dovecot did not answer doveadm (is it running, with [source] dovecot_config?): start "
                               "it and run `dmbackup restore --resync` so that IMAP clients see the restore right")
        return out
    p = d.run("-f", "tab", "mailbox", "status", *who, "highestmodseq", "*")
    rows = []
    if p is not None and p.returncode == 0:
        lines = p.stdout.splitlines()
        for ln in lines[1:]:
            parts = ln.split("\t")
            if len(parts) == 3 and parts[2].strip().isdigit():
                rows.append((parts[0], parts[1], int(parts[2])))
            elif len(parts) == 2 and user and parts[1].strip().isdigit():
                rows.append((user, parts[0], int(parts[1])))
    if not rows:
        out["problems"].append("doveadm listed no folders: mod-sequences were not raised")
        return out
    target = max(r[2] for r in rows) + MODSEQ_GAP
    failed = 0
    for u, folder, _ in rows:
        if not d.ok("mailbox", "update", "-u", u, "--min-highest-modseq", str(target), folder):
            failed += 1
    out["folders"] = len(rows) - failed
    out["highest_modseq"] = target
    touched = (d.ok("flags", "add", *who, RESTORED_KEYWORD, "mailbox", "*", "ALL")
               and d.ok("flags", "remove", *who, RESTORED_KEYWORD, "mailbox", "*", "ALL"))
    out["messages_touched"] = touched
    if failed:
        out["problems"].append(f"HIGHESTMODSEQ not raised in {failed} folder(s): see the log")
    if not touched:
        out["problems"].append("message mod-sequences not raised: see the log")
    app.log.info("clients_protected", **{k: v for k, v in out.items() if k != "problems"})
    return out
