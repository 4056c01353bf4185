"""``dmbackup ls SNAPSHOT [PATH]``: what a snapshot holds, by mailbox and IMAP folder.

PATH picks the level, as ``restic ls``/``borg list`` walk a tree:

- none (or ``/``): the mailboxes (``user@domain``), each with its folders, messages and bytes;
- ``user@domain``: its IMAP folders (INBOX, ``Archivio/2024``, ``Posta inviàta`` ... decoded
  from modified UTF-7) with their message counts and bytes;
- ``user@domain/FOLDER``: the folder's messages: Maildir name, size, time (the file's mtime,
  which IMAP shows as the arrival date), flags, and Date/From/Subject when the header
  indexes of the snapshot's chain have them;
- anything else is a directory of the stored tree (``example.it/mario/Maildir/.Sent``):
  its entries, type, mode, owner, size and time.

Only the catalog and pages are read, never a volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from dmbackup import humanize, utctime
from dmbackup.engine.find import check_repository_target, iso_date, load_records
from dmbackup.engine.msgscan import MessageWalker, Scope, flag_names, imap_folder, keyword_letters, maildir_flags, \
    message_rows
from dmbackup.engine.result import Result
from dmbackup.engine.select import pick_snapshot
from dmbackup.errors import CorruptObject, DmError, EXIT_DAMAGE, UsageError


def _mtime(ns: int) -> str | None:
    try:
        return utctime.iso(datetime.fromtimestamp(ns / 1e9, tz=timezone.utc))
    except (OverflowError, OSError, ValueError):
        return None


@dataclass
class LsResult(Result):
    target: str
    snapshot: str
    path: str
    level: str                        # "mailboxes" | "folders" | "messages" | "directory"
    items: list[dict] = field(default_factory=list)
    damaged: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_DAMAGE if self.damaged else super().exit_code

    def as_dict(self) -> dict:
        return {"target": self.target, "snapshot": self.snapshot, "path": self.path, "level": self.level,
                "items": self.items, "warnings": self.warnings, "exit_code": self.exit_code}

    def summary(self) -> str:
        head = f"snapshot {self.snapshot}{': ' + self.path if self.path else ''}"
        if not self.items:
            return f"{head}: empty"
        lines = [head]
        if self.level == "mailboxes":
            for i in self.items:
                lines.append(f"  {i['mailbox']:<40} {i['folders']:>4} folders {i['messages']:>8} messages "
                             f"{humanize.size(i['bytes']):>10}")
        elif self.level == "folders":
            for i in self.items:
                lines.append(f"  {i['folder']:<40} {i['messages']:>8} messages {humanize.size(i['bytes']):>10}")
        elif self.level == "messages":
            for i in self.items:
                when = (i["date"] or i["time"] or "").replace("T", " ").replace("Z", "")
                lines.append(f"  {when:<19} [{i['maildir_flags'] or ('new' if i['new'] else '-')}] "
                             f"{humanize.size(i['size']):>9}  {i['from'] or ''}  {i['subject'] or i['name']}")
        else:
            for i in self.items:
                lines.append(f"  {i['type']} {i['mode']:>4} {i['uid']:>5}:{i['gid']:<5} {humanize.size(i['size']):>9} "
                             f"{(i['time'] or '').replace('T', ' ').replace('Z', ''):<19} {i['name']}")
        return "\n".join(lines)


def list_snapshot(app, target_name: str, snapshot: str | None, path: str | None = None) -> LsResult:
    from dmbackup.archive.trust import open_trusted

    check_repository_target(app, target_name)
    path = (path or "").strip("/")
    target = app.target(target_name)
    with target:
        repo = open_trusted(app, target, target_name, require_enrolled=False)
        ref = pick_snapshot(repo, snapshot, None)
        rows, _ = repo.catalog_body(ref)
        first = path.split("/", 1)[0]
        if not path:
            res = LsResult(target_name, ref.id, "", "mailboxes")
            _mailboxes(repo, ref, rows, res, None)
        elif "@" in first:
            mailbox, _, folder = path.partition("/")
            if not folder:
                res = LsResult(target_name, ref.id, path, "folders")
                _mailboxes(repo, ref, rows, res, Scope(mailbox))
                if not res.items:
                    raise UsageError(f"mailbox {mailbox} is not in snapshot {ref.id}: see `dmbackup ls {ref.id}`")
            else:
                res = LsResult(target_name, ref.id, path, "messages")
                _messages(repo, ref, rows, res, Scope(mailbox, folder))
        else:
            res = LsResult(target_name, ref.id, path, "directory")
            _directory(repo, ref, rows, res, path)
        return res


def _pages(repo, ref, rows, res, scope):
    walker = MessageWalker(repo)
    for row, md in message_rows(rows, scope):
        try:
            yield md, walker.entries(ref.chain, row)
        except (CorruptObject, DmError) as exc:
            res.warnings.append(f"the page of {row.dir} cannot be read ({exc})")
            res.damaged = True


def _mailboxes(repo, ref, rows, res: LsResult, scope: Scope | None) -> None:
    """Per mailbox (no scope) or per folder of one mailbox: messages and bytes."""
    folders: dict[tuple[str, str], list[int]] = {}
    for _, md in message_rows(rows, scope):       # a folder whose page cannot be read is still listed
        folders.setdefault((md.mailbox, md.folder_dir), [0, 0])
    for md, entries in _pages(repo, ref, rows, res, scope):
        acc = folders.setdefault((md.mailbox, md.folder_dir), [0, 0])
        acc[0] += len(entries)
        acc[1] += sum(e.size for e in entries.values())
    if scope is None:
        boxes: dict[str, list[int]] = {}
        for (mbox, _), (n, b) in folders.items():
            acc = boxes.setdefault(mbox, [0, 0, 0])
            acc[0] += 1
            acc[1] += n
            acc[2] += b
        res.items = [{"mailbox": m, "folders": f, "messages": n, "bytes": b}
                     for m, (f, n, b) in sorted(boxes.items())]
    else:
        items = [{"mailbox": m, "folder": imap_folder(fd), "messages": n, "bytes": b}
                 for (m, fd), (n, b) in folders.items()]
        res.items = sorted(items, key=lambda i: (i["folder"] != "INBOX", i["folder"].lower()))


def _messages(repo, ref, rows, res: LsResult, scope: Scope) -> None:
    found = []
    for md, entries in _pages(repo, ref, rows, res, scope):
        found += [(md, e) for e in entries.values()]
    if not found and not message_rows(rows, scope):
        raise UsageError(f"{scope.describe()} is not in snapshot {ref.id}: see `dmbackup ls {ref.id} {scope.mailbox}`")
    chain_snaps = [s for s in repo.snapshots() if s.chain == ref.chain and s.header.seq <= ref.header.seq]
    records, _, _ = load_records(repo, chain_snaps, None, res.warnings, keys={e.hash[:32] for _, e in found})
    items = []
    for md, e in found:
        r = records.get(e.hash[:32])
        letters = maildir_flags(e.name)
        items.append({"name": e.name, "new": md.sub == "new", "size": e.size, "time": _mtime(e.mtime_ns),
                      "flags": flag_names(letters), "keywords": keyword_letters(letters), "maildir_flags": letters,
                      "date": iso_date(r.date) if r else None, "from": r.from_ if r else None,
                      "subject": r.subject if r else None, "message_id": r.message_id if r else None,
                      "sha256": e.hash[:32]})
    res.items = sorted(items, key=lambda i: (i["time"] or "", i["name"]))


def _directory(repo, ref, rows, res: LsResult, path: str) -> None:
    row = next((r for r in rows if r.dir == path), None)
    if row is None:
        raise UsageError(f"{path!r} is not a directory in snapshot {ref.id}: see `dmbackup ls {ref.id}`")
    try:
        entries = repo.page(ref.chain, row)
    except (CorruptObject, DmError) as exc:
        res.warnings.append(f"the page of {path} cannot be read ({exc})")
        res.damaged = True
        return
    res.items = [{"name": e.name, "type": e.type, "mode": f"{e.mode:o}", "uid": e.uid, "gid": e.gid,
                  "size": e.size, "time": _mtime(e.mtime_ns), **({"link": e.link} if e.type == "l" else {})}
                 for e in entries]
