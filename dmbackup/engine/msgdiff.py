"""``dmbackup diff SNAP_A SNAP_B``: what happened to the mail between two snapshots.

Per mailbox and IMAP folder: messages added, removed (expunged), moved in and out, and
re-flagged. Within a mailbox a message is matched by its folder and Maildir base name (the
name before ``:2,``: Dovecot never changes it, flags and ``new/`` -> ``cur/`` are metadata),
so a flag change is a re-flag and not a removal plus an addition. Messages left unmatched on
both sides are then matched by content (SHA-256) across folders: an IMAP MOVE gives the
message a new base name in its new folder and removes it from the old one, with the same
bytes; that is one message moved, counted ``moved_out`` in the folder it left and
``moved_in`` in the one it reached (and ``reflagged`` there too when its flags changed as
well). A COPY leaves the original, so the copy is an addition.
Whatever is still unmatched was added (only in B) or removed (only in A).

``--long`` lists the messages of each change, with Date/From/Subject from the header indexes
when present. Only catalogs and pages are read, never a volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dmbackup.engine.find import check_repository_target, iso_date, load_records
from dmbackup.engine.msgscan import MessageWalker, Scope, base_of, imap_folder, maildir_flags, message_rows
from dmbackup.engine.result import Result
from dmbackup.engine.select import pick_snapshot
from dmbackup.errors import CorruptObject, DmError, EXIT_DAMAGE

KINDS = ("added", "removed", "moved_in", "moved_out", "reflagged")


@dataclass
class DiffResult(Result):
    target: str
    a: str
    b: str
    mailbox: str | None
    folders: list[dict] = field(default_factory=list)
    long: bool = False
    damaged: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_DAMAGE if self.damaged else super().exit_code

    @property
    def totals(self) -> dict:
        return {k: sum(f[k] for f in self.folders) for k in KINDS}

    def as_dict(self) -> dict:
        return {"target": self.target, "a": self.a, "b": self.b, "mailbox": self.mailbox, "folders": self.folders,
                "totals": self.totals, "warnings": self.warnings, "exit_code": self.exit_code}

    def summary(self) -> str:
        lines = [f"{self.a} -> {self.b}"]
        changed = [f for f in self.folders if any(f[k] for k in KINDS)]
        if not changed:
            lines.append("no message added, removed, moved or re-flagged")
            return "\n".join(lines)
        mbox = None
        for f in changed:
            if f["mailbox"] != mbox:
                mbox = f["mailbox"]
                lines.append(mbox)
            lines.append(f"  {f['folder']:<30} +{f['added']} added  -{f['removed']} removed  "
                         f"{f['moved_in']} moved in  {f['moved_out']} moved out  {f['reflagged']} re-flagged")
            if self.long:
                for kind in KINDS:
                    for m in f.get("messages", {}).get(kind, []):
                        lines.append("      " + _line(kind, m))
        t = self.totals
        lines.append(f"total: +{t['added']} added, -{t['removed']} removed, {t['moved_in']} moved, "
                     f"{t['reflagged']} re-flagged")
        return "\n".join(lines)


def _line(kind: str, m: dict) -> str:
    mark = {"added": "+", "removed": "-", "moved_in": ">", "moved_out": "<", "reflagged": "~"}[kind]
    when = (m.get("date") or "no date").replace("T", " ").replace("Z", "")
    extra = ""
    if kind == "moved_in":
        extra = f" (from {m['other_folder']})"
    elif kind == "moved_out":
        extra = f" (to {m['other_folder']})"
    elif kind == "reflagged":
        extra = f" [{m['flags_before'] or '-'} -> {m['flags_after'] or '-'}]"
    return f"{mark} {when:<19} {m.get('from') or ''}  {m.get('subject') or m['name']}{extra}"


def _collect(repo, ref, scope, walker, res) -> dict[str, dict[tuple[str, str], tuple]]:
    """mailbox -> {(folder dir, base name): (name, key, entry)} of one snapshot."""
    try:
        rows, _ = repo.catalog_body(ref)
    except CorruptObject as exc:
        raise CorruptObject(f"snapshot {ref.chain}/{ref.id} cannot be read: {exc}") from None
    out: dict[str, dict] = {}
    for row, md in message_rows(rows, scope):
        try:
            entries = walker.entries(ref.chain, row)
        except (CorruptObject, DmError) as exc:
            res.warnings.append(f"the page of {row.dir} in {ref.id} cannot be read ({exc}): left out of the diff")
            res.damaged = True
            continue
        box = out.setdefault(md.mailbox, {})
        for e in entries.values():
            k = (md.folder_dir, base_of(e.name))
            if k not in box or md.sub == "cur":
                box[k] = (e.name, e.hash[:32], e)
    return out


def _flags(name: str) -> str:
    return "".join(sorted(set(maildir_flags(name))))


def diff_snapshots(app, target_name: str, snap_a: str, snap_b: str, *, mailbox: str | None = None,
                   long: bool = False) -> DiffResult:
    from dmbackup.archive.trust import open_trusted

    check_repository_target(app, target_name)
    scope = Scope(mailbox)
    target = app.target(target_name)
    with target:
        repo = open_trusted(app, target, target_name, require_enrolled=False)
        ra, rb = pick_snapshot(repo, snap_a, None), pick_snapshot(repo, snap_b, None)
        res = DiffResult(target_name, ra.id, rb.id, mailbox, long=long)
        walker = MessageWalker(repo)
        sa, sb = _collect(repo, ra, scope, walker, res), _collect(repo, rb, scope, walker, res)
        stats: dict[tuple[str, str], dict] = {}

        def folder(mbox: str, fd: str) -> dict:
            f = stats.get((mbox, fd))
            if f is None:
                f = stats[(mbox, fd)] = {"mailbox": mbox, "folder": imap_folder(fd), **{k: 0 for k in KINDS}}
                if long:
                    f["messages"] = {k: [] for k in KINDS}
            return f

        changes: list[tuple[dict, str, tuple, dict]] = []     # (folder stats, kind, entry info, extra)

        def note(f: dict, kind: str, info: tuple, **extra) -> None:
            f[kind] += 1
            if long:
                changes.append((f, kind, info, extra))

        for mbox in sorted(set(sa) | set(sb)):
            a, b = sa.get(mbox, {}), sb.get(mbox, {})
            for fd, _ in set(a) | set(b):
                folder(mbox, fd)
            for k in a.keys() & b.keys():
                fa, fb = _flags(a[k][0]), _flags(b[k][0])
                if fa != fb:
                    note(folder(mbox, k[0]), "reflagged", b[k], flags_before=fa, flags_after=fb)
            only_a = sorted(k for k in a if k not in b)
            only_b = {}
            for k in sorted(k for k in b if k not in a):
                only_b.setdefault(b[k][1], []).append(k)
            unmatched_a = []
            for k in only_a:
                cands = only_b.get(a[k][1])
                if not cands:
                    unmatched_a.append(k)
                    continue
                other = next((c for c in cands if c[0] != k[0]), cands[0])
                cands.remove(other)
                if other[0] == k[0]:          # the same bytes under a new name in the same folder
                    fa, fb = _flags(a[k][0]), _flags(b[other][0])
                    if fa != fb:
                        note(folder(mbox, k[0]), "reflagged", b[other], flags_before=fa, flags_after=fb)
                    continue
                note(folder(mbox, k[0]), "moved_out", a[k], other_folder=imap_folder(other[0]))
                note(folder(mbox, other[0]), "moved_in", b[other], other_folder=imap_folder(k[0]))
                fa, fb = _flags(a[k][0]), _flags(b[other][0])
                if fa != fb:                  # moved and re-flagged: both, in the folder it reached
                    note(folder(mbox, other[0]), "reflagged", b[other], flags_before=fa, flags_after=fb)
            for k in unmatched_a:
                note(folder(mbox, k[0]), "removed", a[k])
            for ks in only_b.values():
                for k in ks:
                    note(folder(mbox, k[0]), "added", b[k])
        if long and changes:
            snaps = repo.snapshots()
            chains = {ra.chain: ra.header.seq, rb.chain: rb.header.seq}
            chains[ra.chain] = max(chains[ra.chain], ra.header.seq)
            idx = [s for s in snaps if s.chain in chains and s.header.seq <= chains[s.chain]]
            records, _, _ = load_records(repo, idx, None, res.warnings, keys={c[2][1] for c in changes})
            for f, kind, (name, key, e), extra in changes:
                r = records.get(key)
                f["messages"][kind].append({
                    "name": name, "size": e.size, "date": iso_date(r.date) if r else None,
                    "from": r.from_ if r else None, "subject": r.subject if r else None,
                    "message_id": r.message_id if r else None, **extra})
        res.folders = sorted(stats.values(), key=lambda f: (f["mailbox"], f["folder"] != "INBOX", f["folder"].lower()))
        return res
