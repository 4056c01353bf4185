"""Which snapshot (``SNAPSHOT``/``latest``/``--at``) and which part of it (``--mailbox``/``--folder``)."""

from __future__ import annotations

from dmbackup import utctime
from dmbackup.archive import layout
from dmbackup.errors import CorruptObject, OperationFailed, UsageError


def pick_snapshot(repo, spec: str | None, at: str | None):
    snaps = repo.snapshots()
    if at is not None:
        when = utctime.parse_user_time(at)
        cands = [s for s in snaps if utctime.parse_user_time(s.header.time) <= when]
        if not cands and not repo.damaged:
            raise OperationFailed(f"no snapshot at or before {at} on {repo.describe()}: see `dmbackup snapshots`")
        chosen = max(cands, key=lambda s: (utctime.parse_user_time(s.header.time), s.chain_no, s.header.seq)) if cands else None
    elif spec is None or spec == "latest":
        chosen = snaps[-1] if snaps else None
        when = None
    else:
        return repo.resolve(spec, snaps)
    # never hand back an older snapshot in silence when the one asked for is damaged
    limit = layout.snap_time(when) if when is not None else "99999999T999999Z"
    newer_bad = [(c, b, why) for c, b, why in repo.damaged
                 if layout.id_time(b) <= limit and (chosen is None or layout.id_time(b) > layout.id_time(chosen.id))]
    if newer_bad:
        c, b, why = max(newer_bad, key=lambda d: d[1])
        raise CorruptObject(f"snapshot {c}/{b}, the one asked for, is damaged ({why}); restore an older one "
                            "by naming it (see `dmbackup snapshots`) and run `dmbackup verify`")
    if chosen is None:
        raise OperationFailed(f"no snapshots on {repo.describe()}")
    return chosen


def selection_prefix(mailbox: str | None, folder: str | None) -> tuple[str, bool]:
    """(relative dir, only the folder's own files) for --mailbox/--folder."""
    if folder and not mailbox:
        raise UsageError("--folder needs --mailbox USER@DOMAIN")
    if not mailbox:
        return "", False
    if mailbox.count("@") != 1:
        raise UsageError(f"--mailbox {mailbox!r}: expected USER@DOMAIN")
    user, domain = mailbox.split("@")
    if not user or not domain or "/" in mailbox or user in (".", "..") or domain in (".", ".."):
        raise UsageError(f"--mailbox {mailbox!r}: expected USER@DOMAIN")
    base = f"{domain}/{user}/Maildir"
    if not folder:
        return f"{domain}/{user}", False
    from dmbackup.source.maildir_names import folder_dir

    if folder.upper() == "INBOX":
        return base, True
    return f"{base}/{folder_dir(folder)}", False
