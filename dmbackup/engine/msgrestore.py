"""Restore by message: ``restore --message-id ID`` (or ``--from/--rcpt/--subject/--since/
--before``), the messages ``find`` would list, each from the newest snapshot that holds it
(or from the one ``SNAPSHOT``/``--at`` names).

Where they go:

- into the live store (no ``--to``; ``--mailbox`` required): the mailbox gets new folders
  ``Restored-YYYY-MM-DD/<folder>`` holding the messages with their flags (the ``:2,``
  suffix) and their folder's ``dovecot-keywords``, owned by the vmail user, then Dovecot is
  told to resync and the folders are subscribed. This is the folder restore's machinery
  (dmbackup.engine.live, ``fill_stage``): staged in a private directory, moved in with
  ``RENAME_NOREPLACE``; nothing live is overwritten or deleted.
- ``--to DIR``: a Maildir tree, each message at its original relative path
  (``<domain>/<user>/Maildir/.<folder>/cur/<name>``, with ``cur/ new/ tmp/`` and the
  folder's ``dovecot-keywords``), owners, modes and mtimes as recorded;
- ``--to DIR --format eml``: one ``<DIR>/<date>-<subject>-<sha>.eml`` per message, its raw
  bytes (a message held in several folders is written once).

A message moved between folders is found in each (``find`` shows both): it is restored from
the folder it was in last. Copies held in two folders at once are restored both.

``DIR`` must be empty or new. Every file is created through directory file descriptors with
``O_EXCL | O_NOFOLLOW`` (dmbackup.engine.safetree, restorewrite), checked against its
recorded SHA-256 before it is finished. ``--dry-run`` lists what would be restored and
writes nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dmbackup import humanize
from dmbackup.archive.catalog import Entry
from dmbackup.archive.headerindex import fold
from dmbackup.engine.find import Filters, Hit, check_repository_target, describe_hit, search
from dmbackup.engine.restorewrite import EntryWriter
from dmbackup.engine.result import Result
from dmbackup.engine.safetree import SafeTree, check_name
from dmbackup.engine.select import pick_snapshot
from dmbackup.errors import (EXIT_DAMAGE, EXIT_FAILED, CorruptObject, DmError, OperationFailed, RestoreError,
                             UsageError)

FORMATS = ("maildir", "eml")
MAX_FAILED_LISTED = 1000


@dataclass
class MsgRestoreResult(Result):
    target: str
    destination: str
    format: str
    dry_run: bool
    filters: dict
    messages: list[dict] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    bytes_fetched: int = 0
    selection: str = ""
    not_indexed: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    failed_count: int = 0
    damaged: bool = False

    @property
    def snapshot_id(self) -> str | None:
        """The newest snapshot a message came from (hooks and logs name one)."""
        return max((m["snapshot"] for m in self.messages), default=None)

    @property
    def exit_code(self) -> int:
        if self.damaged:
            return EXIT_DAMAGE
        if self.failed_count:
            return EXIT_FAILED
        return super().exit_code

    def as_dict(self) -> dict:
        return {"target": self.target, "destination": self.destination, "format": self.format,
                "dry_run": self.dry_run, "filters": self.filters, "count": len(self.messages),
                "messages": self.messages, "files": self.files, "bytes": self.bytes,
                "bytes_fetched": self.bytes_fetched, "selection": self.selection, "not_indexed": self.not_indexed,
                "failed": self.failed, "failed_count": self.failed_count, "warnings": self.warnings,
                "exit_code": self.exit_code}

    def notes(self) -> list[str]:
        out = super().notes()
        if self.not_indexed:
            out.append(f"note: {len(self.not_indexed)} snapshot(s) have no header index: messages they stored "
                       f"are not found; run `dmbackup reindex --target {self.target}`")
        return out

    def summary(self) -> str:
        lines = []
        for m in self.messages:
            when = (m["date"] or "no date").replace("T", " ").replace("Z", "")
            lines.append(f"{when:<19}  {m['mailbox']}  {m['folder']}  [{m['maildir_flags'] or '-'}]  "
                         f"{m['from'] or '(no sender)'}  {m['subject'] or '(no subject)'}  (from {m['snapshot']})")
        if self.dry_run:
            lines.append(f"would restore {len(self.messages)} message(s) into {self.destination}; nothing written "
                         "(--dry-run)")
        else:
            lines.append(f"restored {self.files} file(s) ({humanize.size(self.bytes)}), {len(self.messages)} "
                         f"message(s), into {self.destination}")
        if self.failed:
            lines.append(f"NOT restored ({self.failed_count}):" + "".join(
                f"\n  {f['path']}: {f['error']}" for f in self.failed[:200]))
        return "\n".join(lines)

    def incomplete(self) -> str | None:
        if not self.failed:
            return None
        f = self.failed[0]
        return (f"restore incomplete: {self.failed_count} message(s) not restored (first: {f['path']}: "
                f"{f['error']}), everything else was restored")


class _Writer(EntryWriter):
    """Writes message entries (and keyword files) for restore by message."""

    def __init__(self, repo, result: MsgRestoreResult, *, chown: bool, owner=None, modes=None):
        super().__init__(repo.block_reader(), "", result, chown=chown, resume=False, uid_gap=0,
                         owner=owner, modes=modes)
        self.res = result

    def fail(self, path: str, error: str, *, damage: bool) -> None:
        r = self.res
        r.failed_count += 1
        r.damaged = r.damaged or damage
        if len(r.failed) < MAX_FAILED_LISTED:
            r.failed.append({"path": path, "error": error, "damage": damage})

    def put(self, fd: int, chain: str, path_rel: str, e: Entry) -> bool:
        self.chain = chain
        try:
            check_name(e.name)
            self.write_entry(fd, path_rel, e)
            return True
        except CorruptObject as exc:
            self.fail(path_rel, str(exc), damage=True)
        except RestoreError as exc:
            self.fail(path_rel, str(exc), damage=False)
        except DmError as exc:
            self.fail(path_rel, str(exc), damage=False)
        except OSError as exc:
            self.fail(path_rel, exc.strerror or str(exc), damage=False)
        return False


def _slug(subject: str, limit: int = 60) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", fold(subject)).strip("-")
    return (s[:limit].rstrip("-") or "no-subject")


def eml_name(h: Hit) -> str:
    r = h.record
    when = None
    if r is not None and r.date is not None:
        try:
            when = datetime.fromtimestamp(r.date, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            when = None
    if when is None and h.entry is not None:
        try:
            when = datetime.fromtimestamp(h.entry.mtime_ns / 1e9, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            when = None
    day = when.strftime("%Y-%m-%d") if when else "undated"
    return f"{day}-{_slug(r.subject if r else '')}-{h.key[:12]}.eml"


def _check_dest(to: str) -> str:
    dest = os.path.abspath(to)
    if os.path.lexists(dest):
        if not os.path.isdir(dest) or os.path.islink(dest):
            raise RestoreError(f"restore destination {dest} is not a directory")
        if os.listdir(dest):
            raise RestoreError(f"restore destination {dest} is not empty: choose an empty or new directory")
    return dest


def restore_messages(app, target_name: str, filters: Filters, *, snapshot: str | None = None,
                     at: str | None = None, to: str | None = None, fmt: str = "maildir",
                     dry_run: bool = False) -> MsgRestoreResult:
    """Restore the messages ``filters`` select (see the module docstring)."""
    from dmbackup.archive.trust import open_trusted

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if not filters.has_header_filter():
        raise UsageError("restore by message needs at least one of --message-id, --from, --rcpt, --subject, "
                         "--since, --before (a whole mailbox or folder is restored without them)")
    if snapshot and at:
        raise UsageError("give either SNAPSHOT or --at, not both")
    if to is None:
        if fmt != "maildir":
            raise UsageError("--format eml writes files: it needs --to DIR")
        if not filters.mailbox:
            raise UsageError("restoring messages into the live store needs --mailbox USER@DOMAIN (they go into "
                             "its Restored-<date>/ folders); or write them elsewhere with --to DIR")
    check_repository_target(app, target_name)
    filters.scope()
    filters.query()
    dest = _check_dest(to) if to is not None else None
    target = app.target(target_name)
    with target:
        repo = open_trusted(app, target, target_name, require_enrolled=False)
        only = [pick_snapshot(repo, snapshot, at)] if (snapshot or at) else None
        s = search(repo, filters, only=only, app=app)
        where = dest or f"the live mailbox {filters.mailbox} (Restored-<date>/...)"
        res = MsgRestoreResult(target_name, where, "eml" if fmt == "eml" else "maildir", dry_run, filters.as_dict(),
                               not_indexed=s.not_indexed, warnings=list(s.warnings), damaged=s.damaged)
        # a message moved between folders is found in each: restore it where it was last
        # (copies held in two folders at once are two messages and both are restored)
        newest: dict[tuple, int] = {}
        for h in s.hits:
            k = (h.md.mailbox, h.key)
            newest[k] = max(newest.get(k, -1), h.last)
        hits = [h for h in s.hits if h.last == newest[(h.md.mailbox, h.key)]]
        if fmt == "eml":                       # one file per content
            seen, uniq = set(), []
            for h in hits:
                if h.key not in seen:
                    seen.add(h.key)
                    uniq.append(h)
            hits = uniq
        for h in hits:
            d = describe_hit(h, s.snaps)
            d["snapshot"] = s.snaps[h.last].id
            if fmt == "eml":
                d["path"] = eml_name(h)
            else:
                d["path"] = f"{h.md.folder_rel}/{h.md.sub}/{h.entry.name}"
            res.messages.append(d)
        if not hits:
            res.warnings.append(f"no message matched in {len(s.snaps)} snapshot(s): nothing restored")
            return res
        if dry_run:
            return res
        app.log.info("restore_messages_start", target=target_name, count=len(hits), to=where)
        if dest is None:
            from dmbackup.engine.live import restore_live

            def fill(stage_path, stage_fd, owner, modes):
                _write_maildir(app, repo, s, hits, res, SafeTree(stage_path, stage_fd), chown=True, owner=owner,
                               modes=modes, mailbox=filters.mailbox)
                return res

            restore_live(app, target_name, mailbox=filters.mailbox, fill_stage=fill)   # sets res.destination
        else:
            os.makedirs(dest, mode=0o700, exist_ok=True)
            if fmt == "eml":
                _write_eml(app, repo, s, hits, res, SafeTree(dest))
            else:
                _write_maildir(app, repo, s, hits, res, SafeTree(dest), chown=os.geteuid() == 0, dir_meta=True)
        res.bytes_fetched = repo.bytes_read
        app.log.info("restore_messages_done", **{k: v for k, v in res.as_dict().items() if k != "messages"})
        return res


def _write_eml(app, repo, s, hits, res, tree: SafeTree) -> None:
    w = _Writer(repo, res, chown=False, modes=(0o700, 0o600))
    try:
        fd = tree.dir_fd("")
        for h, d in zip(hits, res.messages):
            app.check_stop()
            e = h.entry
            out = Entry(d["path"], "f", 0o600, 0, 0, e.mtime_ns, e.size, 0, e.hash, e.extents)
            w.put(fd, s.snaps[h.last].chain, d["path"], out)
            fd = tree.dir_fd("")
    finally:
        tree.close()


def _write_maildir(app, repo, s, hits, res, tree: SafeTree, *, chown: bool, owner=None, modes=None,
                   mailbox: str | None = None, dir_meta: bool = False) -> None:
    """The messages at their relative paths below ``tree``, each folder with cur/ new/ tmp/
    and its dovecot-keywords (from the newest snapshot a message of it came from);
    ``dir_meta``: the directories get their recorded owner, mode and mtime."""
    w = _Writer(repo, res, chown=chown, owner=owner, modes=modes)
    staged = None
    if mailbox is not None:     # the live restore takes <domain>/<user>/Maildir of the stage, as typed
        user, domain = mailbox.split("@", 1)
        staged = f"{domain}/{user}/Maildir"

    def out_rel(h: Hit) -> str:
        if staged is None:
            return h.md.folder_rel
        return f"{staged}/{h.md.folder_dir}" if h.md.folder_dir else staged

    try:
        if staged is not None:
            tree.dir_fd(staged)
        newest: dict[str, tuple[int, str]] = {}     # folder as stored -> (newest snapshot used, where written)
        for h in hits:
            rel = h.md.folder_rel
            newest[rel] = (max(newest.get(rel, (-1, ""))[0], h.last), out_rel(h))
            for sub in ("cur", "new", "tmp"):
                tree.dir_fd(f"{out_rel(h)}/{sub}")
        for h, d in zip(hits, res.messages):
            app.check_stop()
            fd = tree.dir_fd(f"{out_rel(h)}/{h.md.sub}")
            w.put(fd, s.snaps[h.last].chain, d["path"], h.entry)
        for rel, (i, out) in sorted(newest.items()):
            _keywords(repo, s.snaps[i], rel, out, tree, w, res)
        if dir_meta:
            for rel, (i, _) in sorted(newest.items()):
                _dir_entries(repo, s.snaps[i], rel, w, res)
            w.apply_dir_meta(tree)
    finally:
        tree.close()


def _keywords(repo, ref, rel: str, out: str, tree: SafeTree, w: _Writer, res) -> None:
    """The folder's dovecot-keywords as ``ref`` holds it at ``rel`` (keyword letters are per
    folder), written into ``out``."""
    try:
        rows, _ = repo.catalog_body(ref)
        row = next((r for r in rows if r.dir == rel), None)
        if row is None:
            return
        e = next((x for x in repo.page(ref.chain, row) if x.name == "dovecot-keywords" and x.type == "f"), None)
    except (CorruptObject, OperationFailed) as exc:
        res.warnings.append(f"{rel}/dovecot-keywords cannot be read ({exc}): keyword flags may show as missing")
        return
    if e is not None:
        w.put(tree.dir_fd(out), ref.chain, f"{out}/dovecot-keywords", e)


def _dir_entries(repo, ref, rel: str, w: _Writer, res) -> None:
    """Queue the recorded metadata of a folder's directories and of their ancestors."""
    want = []
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        want.append("/".join(parts[:i]))
    want += [f"{rel}/{sub}" for sub in ("cur", "new", "tmp")]
    have = {r for r, _ in w.dir_meta}
    try:
        rows, _ = repo.catalog_body(ref)
        by_dir = {r.dir: r for r in rows}
        for d in want:
            if d in have:
                continue
            parent, _, name = d.rpartition("/")
            row = by_dir.get(parent)
            if row is None:
                continue
            e = next((x for x in repo.page(ref.chain, row) if x.name == name and x.type == "d"), None)
            if e is not None:
                w.dir_meta.append((d, e))
    except (CorruptObject, OperationFailed) as exc:
        res.warnings.append(f"the directories of {rel} keep default owner and mode ({exc})")


def run_restore_messages(app, target_name: str, filters: Filters, **kw) -> MsgRestoreResult:
    """``restore --message-id ...``: ``restore_messages`` between the pre- and post-restore hooks
    (as ``dmbackup.engine.run_restore``); a ``--dry-run`` runs no hook."""
    from dmbackup.engine import hooks

    if kw.get("dry_run"):
        return restore_messages(app, target_name, filters, **kw)
    ctx = hooks.HookContext(action="restore", target=target_name, what="mail")
    with hooks.around(app, ctx):
        res = restore_messages(app, target_name, filters, **kw)
        ctx.snapshot = res.snapshot_id
        ctx.warnings.extend(res.warnings)
    return res
