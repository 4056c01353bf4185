"""``dmbackup find``: which messages the backups hold, where, and from when to when.

Two steps, neither reading a volume:

1. The header indexes (``<snap>.hidx``, dmbackup.archive.hidx) of the snapshots give the
   records that match the header filters (``--from --to --subject --message-id --since
   --before``: case-insensitive substrings with accents folded, dmbackup.archive.headerindex
   ``Query``). A record is keyed by its content's SHA-256 (first 128 bits). Without a header
   filter every record matches: the indexes give their keys only, and after step 2 the
   records of the messages found are read (``_records_of_found``).
2. Each snapshot's page table is walked (message directories only, limited by
   ``--mailbox``/``--folder``) for entries with a matching key. A row that is the same in
   many snapshots (same stored page, same delta) is resolved once and credited to all of them
   (dmbackup.engine.msgscan), so 30 nights of an unchanged folder cost one page read. A page
   that the local cache (dmbackup.engine.pagekeys) says lists none of the matching contents
   is not read at all. The rows are resolved page by page, and a page's entries are let go
   after its last row: what a search holds grows with the messages it finds, not with the
   pages it reads (``find``, which reads no volume, also keeps no extents for them).

Two processors are used where there are two (dmbackup.engine.forkpair: a forked child; only
on a target read through the file system, and the answer is the same without it): step 1
runs in the child while this process reads the catalogs and groups their rows, and the rows
of step 2 are split in two by stored page, each half resolved and merged on its own
processor, then the halves merged by the same rule.

A message is reported once per (mailbox, folder, content): with the first and the last
snapshot that hold it there (a message deleted on Tuesday is last seen in Monday night's
snapshot; a message moved to Trash shows up twice, in its old folder up to the move and in
Trash from then on), and its flags and name in the last one.

Snapshots without a header index (made before indexes existed, and not yet ``reindex``-ed)
are listed as ``not_indexed``: the messages they stored cannot be found by header. A damaged
or forged index is reported as a warning (exit 1) and its snapshot treated as not indexed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from dmbackup import gcpause, humanize, utctime
from dmbackup.archive.catalog import Entry
from dmbackup.archive.headerindex import Query, Record
from dmbackup.archive.hidx import hidx_pieces, keys_pieces_hidx, search_pieces_hidx
from dmbackup.engine import forkpair
from dmbackup.engine.pagekeys import forget_pruned
from dmbackup.engine.msgscan import MessageWalker, MsgDir, Scope, flag_names, imap_folder, keyword_letters, \
    maildir_flags, message_dir, row_key
from dmbackup.engine.result import Result
from dmbackup.errors import CorruptObject, DmError, EXIT_DAMAGE, UsageError

_HEX32 = re.compile(r"[0-9a-f]{32}")
MAX_LISTED = 100_000         # messages a find reports (a filter that matches more is too broad)
KEYS_FIRST = True            # without a header filter, records only for the messages found (``_search``)


@dataclass
class Filters:
    """What ``find`` (and restore by message) selects."""

    mailbox: str | None = None
    folder: str | None = None
    from_: str | None = None
    to: str | None = None
    subject: str | None = None
    message_id: str | None = None
    since: str | None = None        # as typed (ISO 8601 date or time, UTC)
    before: str | None = None

    def scope(self) -> Scope:
        return Scope(self.mailbox, self.folder)

    def query(self) -> Query:
        for opt, v in (("--from", self.from_), ("--to", self.to), ("--subject", self.subject),
                       ("--message-id", self.message_id)):
            if v is not None and not "".join(v.split()).strip("<>" if opt == "--message-id" else ""):
                raise UsageError(f"{opt} {v!r}: an empty text would match every message")
        return Query(from_=self.from_ or None, to=self.to or None, subject=self.subject or None,
                     message_id=self.message_id or None, since=_epoch(self.since, "--since"),
                     before=_epoch(self.before, "--before"))

    def has_header_filter(self) -> bool:
        return any(v for v in (self.from_, self.to, self.subject, self.message_id, self.since, self.before))

    def as_dict(self) -> dict:
        return {k.rstrip("_"): v for k, v in self.__dict__.items() if v is not None}


def _epoch(text: str | None, what: str) -> int | None:
    if not text:
        return None
    try:
        return int(utctime.parse_user_time(text).timestamp())
    except UsageError as exc:
        raise UsageError(f"{what}: {exc}") from None


_FIRST_EPOCH, _LAST_EPOCH = -62135596800, 253402300799      # 0001-01-01, 9999-12-31T23:59:59 UTC


def iso_date(epoch: int | None) -> str | None:
    """A Date header's time as ``utctime.iso`` writes it; None outside years 1-9999 (what
    ``datetime`` can hold). (``time.gmtime``: 30,000 dates in 0.03-0.09 s, against 0.14 s.)"""
    if epoch is None or not _FIRST_EPOCH <= epoch <= _LAST_EPOCH:
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return None


@dataclass
class Hit:
    """One message in one folder of one mailbox, across the snapshots searched."""

    md: MsgDir                      # its folder (``sub`` as in the last snapshot)
    key: str                        # first 32 hex digits of its SHA-256
    record: Record | None
    first: int                      # indices into Search.snaps
    last: int
    seen: int = 0                   # bit i: snaps[i] holds it there
    entry: Entry | None = None      # as in the last snapshot (name, flags; extents unless searched without)

    @property
    def flags(self) -> str:
        return maildir_flags(self.entry.name) if self.entry else ""


@dataclass
class Search:
    snaps: list                     # SnapshotRef, in order (chain, seq)
    hits: list[Hit]
    records: dict[str, Record]      # matching records by key
    not_indexed: list[str]
    damaged_indexes: list[str]
    warnings: list[str]
    damaged: bool = False           # a page could not be read
    pages_read: int = 0
    pages_skipped: int = 0          # by the local page-key cache (dmbackup.engine.pagekeys)


def load_records(repo, snaps, query: Query | None, warnings: list[str], *, keys: set[str] | None = None):
    """(records matching ``query`` (or with a key in ``keys``) by key, not indexed ids, damaged ids)."""
    records: dict[str, Record] = {}
    q = query if query is not None else Query()
    bkeys = None if keys is None else {bytes.fromhex(k) for k in keys if _HEX32.fullmatch(k)}

    def read(pieces, what: str) -> None:
        found = {}
        for r in search_pieces_hidx(pieces, q, bkeys, what):
            found.setdefault(r.key.hex(), r)
        for k, r in found.items():
            records.setdefault(k, r)

    return (records,) + _each_index(repo, snaps, warnings, read)


def load_keys(repo, snaps, warnings: list[str]):
    """(the keys of every record in the header indexes of ``snaps``, not indexed ids, damaged
    ids): the keys ``load_records`` without a filter gives, without decoding any record."""
    keys: set[str] = set()

    def read(pieces, what: str) -> None:
        found: set[bytes] = set()
        for ks in keys_pieces_hidx(pieces, what):
            found.update(ks)
        keys.update(k.hex() for k in found)

    return (keys,) + _each_index(repo, snaps, warnings, read)


def _each_index(repo, snaps, warnings: list[str], read) -> tuple[list[str], list[str]]:
    """Call ``read(pieces, what)`` on the header index of each snapshot of ``snaps`` (read frame
    by frame: one in memory at a time), in order; ``read`` keeps what it found only once the
    whole index has read without error. Returns (ids of the snapshots without an index, ids of
    those whose index is damaged: a warning each in ``warnings``)."""
    not_indexed, damaged = [], []
    for ref in snaps:
        try:
            pieces = hidx_pieces(repo, ref)
            if pieces is None:
                not_indexed.append(ref.id)
                continue
            read(pieces, f"header index {ref.chain}/{ref.id}")
        except CorruptObject as exc:
            damaged.append(ref.id)
            warnings.append(f"the header index of {ref.chain}/{ref.id} is damaged and was not used ({exc}); "
                            f"messages stored by that snapshot are not found (run `dmbackup verify`)")
    return not_indexed, damaged


def search(repo, filters: Filters, *, only=None, app=None, extents: bool = True) -> Search:
    """Find the messages ``filters`` select (see the module docstring).

    ``only``: a list of snapshots to look in (restore ``--at``), instead of every snapshot.
    The header indexes read are those of the snapshots looked in and of their chains' earlier
    snapshots (whose stored content later ones keep). ``extents`` false: the hits' entries
    need not say where their content is stored (``find``, which reads no volume), and the
    search holds less."""
    with gcpause.paused(freeze=True):
        return _search(repo, filters, only=only, app=app, extents=extents)


def _search(repo, filters: Filters, *, only=None, app=None, extents: bool = True) -> Search:
    scope, query = filters.scope(), filters.query()
    warnings: list[str] = []
    every = repo.snapshots()
    for chain, snap, why in repo.damaged:
        warnings.append(f"snapshot {chain}/{snap} is damaged and was not searched ({why}): run `dmbackup verify`")
    snaps = list(only) if only is not None else every
    last_seq: dict[str, int] = {}
    for s in snaps:
        last_seq[s.chain] = max(last_seq.get(s.chain, -1), s.header.seq)
    indexed = [s for s in every if s.header.seq <= last_seq.get(s.chain, -1)]
    allowed = repo.t.capabilities.concurrent
    # no header filter (only --mailbox/--folder, or nothing): every indexed message matches, so
    # the indexes give only their keys, and the records are read for the messages found (one
    # mailbox's thousands, not the whole store's 153,054 records and 130 MB on the bench chain)
    keys_first = KEYS_FIRST and not query

    def part(which: str, peer=None):
        if which == "records":
            found_warnings: list[str] = []
            if keys_first:
                return load_keys(repo, indexed, found_warnings) + (found_warnings,)
            return load_records(repo, indexed, query, found_warnings) + (found_warnings,)

        def nothing_found() -> bool:        # the child's indexes matched nothing: no row is needed
            got = peer.finished() if peer is not None else None
            return got is not None and not got[0]

        return _group_rows(repo, snaps, scope, app, nothing_found)

    # the header indexes are searched in a forked child while this process reads the catalogs
    # and groups their rows (dmbackup.engine.forkpair; the same answer without the child);
    # in one process the catalogs are read only when some message matches
    weight = _hidx_weight(repo, indexed) if forkpair.usable(allowed, forkpair.MIN_ITEMS) else 0
    grouped = None
    if forkpair.usable(allowed, weight):
        grouped, found = forkpair.in_two(part, "tables", "records", allowed=allowed, items=weight, peer=True)
    else:
        found = part("records")
    records, not_indexed, damaged_idx, idx_warnings = found
    warnings += idx_warnings
    res = Search(snaps, [], {} if keys_first else records, not_indexed, damaged_idx, warnings)
    if only is None:                    # what this machine keeps of pruned snapshots
        forget_pruned(app, repo, {(s.chain, s.id) for s in every})
    if not records:
        return res
    groups, table_warnings = grouped if grouped is not None and grouped[0] is not None else part("tables")
    if table_warnings:
        warnings += table_warnings
        res.damaged = True
    pagekeys = _pagekeys(app, repo)
    walker = MessageWalker(repo, want=set(records), pagekeys=pagekeys, extents=extents)
    glist = list(groups.values())
    found, errors = _resolve(walker, glist, app, allowed=allowed)
    walker.drop_caches()                # (before the answer is described)
    if keys_first:
        found = _records_of_found(repo, indexed, found, res)
        records = res.records
    for gi in sorted(errors):
        chain, row = glist[gi][0], glist[gi][1]
        warnings.append(f"the page of {row.dir} in {chain} cannot be read ({errors[gi]}): not searched")
        res.damaged = True
    hits = [Hit(h[4], hk[2], records.get(hk[2]), h[0], h[1], h[2], h[3]) for hk, h in found.items()]
    res.hits = sorted(hits, key=_order)
    res.pages_read, res.pages_skipped = walker.pages_read, walker.pages_skipped
    if pagekeys is not None:
        pagekeys.save()
    return res


def _records_of_found(repo, indexed, found: dict, res: Search) -> dict:
    """The second step of a search without a header filter: ``res.records`` becomes the records
    of the messages found (read from the indexes that the keys came from), and what is found
    keeps only messages with a record, as a search that read every record would have found.
    An index that fails only now, on a record the keys did not need (a text that is not UTF-8
    in an index sealed with the repository's key), is reported damaged and its messages are
    not found, as if it had failed before; such a record that no message found needs is not
    read, so not noticed (as by ``ls`` and ``diff``, which also read records by key)."""
    if not found:
        res.records = {}
        return found
    bad = set(res.damaged_indexes)
    records, _, damaged = load_records(repo, [s for s in indexed if s.id not in bad], None, res.warnings,
                                       keys={hk[2] for hk in found})
    if damaged:
        bad.update(damaged)
        res.damaged_indexes = [s.id for s in indexed if s.id in bad]
    res.records = records
    return {hk: h for hk, h in found.items() if hk[2] in records}


def _hidx_weight(repo, refs) -> int:
    """How much header index there is to search, in ``forkpair`` items (16 KiB sealed, about
    300 records, each; any index at all is at least one)."""
    from dmbackup.archive import layout
    from dmbackup.errors import NotFound

    total = 0
    for ref in refs:
        try:
            total += repo.object_size(ref.chain, layout.hidx_name(ref.id))
        except (NotFound, DmError):
            pass
    return max(1, total >> 14) if total else 0


def _group_rows(repo, snaps, scope, app, give_up=None) -> tuple[dict | None, list[str]]:
    """The message rows of ``snaps`` in ``scope``, grouped: ``{row_key: (chain, row, MsgDir,
    [indices of the snapshots that have it])}``, and a warning for each snapshot whose
    catalog cannot be read; ``(None, [])`` as soon as ``give_up()`` says so (asked before
    each catalog).

    A row a snapshot's table inherits unchanged from its parent's is the same object in both
    (dmbackup.archive.reader): it is looked at once, by identity (``by_obj`` holds the row, so
    its id stays its own), and only rows new to a table are classified and keyed."""
    groups: dict[tuple, tuple] = {}
    warnings: list[str] = []
    by_obj: dict[int, tuple] = {}
    for i, ref in enumerate(snaps):
        if app is not None:
            app.check_stop()
        if give_up is not None and give_up():
            return None, []
        try:
            rows = repo.catalog_rows(ref)
        except CorruptObject as exc:
            warnings.append(f"snapshot {ref.chain}/{ref.id} cannot be read ({exc}): not searched")
            continue
        for row in rows:
            seen = by_obj.get(id(row))
            if seen is not None and seen[0] is row:
                if seen[1] is not None and seen[1][3][-1] != i:
                    seen[1][3].append(i)
                continue
            g = None
            md = message_dir(row.dir)
            if md is not None and scope.wants(md):
                k = row_key(ref.chain, row)
                g = groups.get(k)
                if g is None:
                    g = groups[k] = (ref.chain, row, md, [i])
                elif g[3][-1] != i:
                    g[3].append(i)
            by_obj[id(row)] = (row, g)
    return groups, warnings


def _resolve(walker: MessageWalker, glist: list, app, *, allowed: bool) -> tuple[dict, dict]:
    """The messages the groups' rows hold, merged: ``({(mailbox, folder dir, key): [first,
    last, seen, entry, MsgDir, group index, in cur/]}, {group index: message of the error
    that kept its page from being read})``. ``seen`` has bit i set when ``snaps[i]`` holds the
    message there; the entry and MsgDir are those of the last snapshot (``_merge``).

    The rows are split in two by their stored base page (every other page: a page is read by
    one process only), each half resolved and merged on a processor of its own
    (dmbackup.engine.forkpair), then the halves merged; the child's page counts and the page
    keys it learned come back with its result."""
    by_page: dict[tuple, list[int]] = {}
    for gi, (chain, row, _, _) in enumerate(glist):
        by_page.setdefault((chain, row.owner, row.offset), []).append(gi)
    halves: tuple[list[int], list[int]] = ([], [])
    for gis in by_page.values():                # balanced by rows, each page in one half
        halves[len(halves[0]) > len(halves[1])].extend(gis)

    def work(part: list[int]):
        read0, skipped0 = walker.pages_read, walker.pages_skipped
        learned0 = len(walker.pagekeys.added) if walker.pagekeys is not None else 0
        found: dict[tuple, list] = {}
        errors: dict[int, str] = {}
        # the rows of one stored base page (one directory on many nights) share its entries:
        # those no row's delta touches are merged once for all the rows (``_merge_base``).
        # A half holds its rows page by page, so a page's entries are merged, and let go (here
        # and in the walker's cache), as soon as its last row is read: what a search holds
        # grows with the messages it finds, not with the pages it reads. (Rows of a page met
        # apart would be merged right all the same, by ``_merge``'s rule; the page read twice.)
        by_base: dict[tuple, list] = {}
        page = None
        for gi in part:
            if app is not None:
                app.check_stop()
            chain, row, md, idxs = glist[gi]
            if (chain, row.owner, row.offset) != page:
                _flush_bases(found, by_base, walker, page)
                page = (chain, row.owner, row.offset)
            try:
                base, touched, entries = walker.parts(chain, row)
            except (CorruptObject, DmError) as exc:
                errors[gi] = str(exc)
                continue
            if not entries:
                continue
            lo, hi, cur = idxs[0], idxs[-1], md.sub == "cur"
            mask = 0
            for i in idxs:
                mask |= 1 << i
            if base:        # (keyed by the directory's name: its MsgDir hashes slowly)
                key = (chain, row.owner, row.offset, row.dir)
                acc = by_base.get(key)
                if acc is None:
                    acc = by_base[key] = [md, base, []]
                acc[2].append((lo, hi, mask, gi, touched))
            for n in touched:
                e = entries.get(n)
                if e is not None:
                    _merge(found, (md.mailbox, md.folder_dir, e.hash[:32]), [lo, hi, mask, e, md, gi, cur])
        _flush_bases(found, by_base, walker, page)
        learned = walker.pagekeys.added[learned0:] if walker.pagekeys is not None else []
        return found, errors, walker.pages_read - read0, walker.pages_skipped - skipped0, learned

    read0, skipped0 = walker.pages_read, walker.pages_skipped
    mine, theirs = forkpair.in_two(work, halves[0], halves[1], allowed=allowed, items=len(by_page))
    walker.pages_read = read0 + mine[2] + theirs[2]
    walker.pages_skipped = skipped0 + mine[3] + theirs[3]
    if walker.pagekeys is not None:
        for learned in theirs[4]:           # (already there when this process did that half)
            walker.pagekeys.add(*learned)
    found, errors = mine[0], mine[1]
    for hk, h in theirs[0].items():
        _merge(found, hk, h)
    errors.update(theirs[1])
    return found, errors


def _flush_bases(found: dict, by_base: dict, walker: MessageWalker, page: tuple | None) -> None:
    """Merge the base entries of the rows of ``page`` (all in ``by_base``), then forget them."""
    for md, base, rows in by_base.values():
        _merge_base(found, md, base, rows)
    by_base.clear()
    if page is not None:
        walker.forget_base(*page)


def _merge_base(found: dict, md, base: dict, rows: list[tuple]) -> None:
    """Merge the entries of one base page as the rows ``(first, last, mask, group index,
    touched names)`` that use it hold them: an entry no row touches is in every row, the same
    ``Entry``, and is merged once with the rows' union (the answer ``_merge`` gives row by
    row: the first of the firsts, every snapshot, and the last row's index, the lower group
    index on a tie); one that some row touches, with the union of the rows that do not."""
    every = _union(rows)
    touched = set()
    for r in rows:
        touched.update(r[4])
    cur, mb, fd = md.sub == "cur", md.mailbox, md.folder_dir
    for n, e in base.items():
        if n in touched:
            rs = [r for r in rows if n not in r[4]]
            if not rs:
                continue
            lo, hi, mask, gi = _union(rs)
        else:
            lo, hi, mask, gi = every
        _merge(found, (mb, fd, e.hash[:32]), [lo, hi, mask, e, md, gi, cur])


def _union(rows: list[tuple]) -> tuple:
    """What rows ``(first, last, mask, group index, ...)`` hold together, as ``_merge`` would
    leave it: ``(first of the firsts, last, every snapshot, group index of the last row; the
    lower index on a tie)``."""
    lo, mask, best = rows[0][0], 0, rows[0]
    for r in rows:
        mask |= r[2]
        if r[0] < lo:
            lo = r[0]
        if (r[1], -r[3]) > (best[1], -best[3]):
            best = r
    return lo, best[1], mask, best[3]


def _merge(found: dict, hk: tuple, h: list) -> None:
    """Add what one row (or one half) knows of a message to ``found``: the first and last
    snapshot, the snapshots, and the entry of the last snapshot; of two rows that reach the
    same last snapshot (a message in new/ and cur/ during a move), the one in cur/, then the
    one met first (the lower group index: the answer does not depend on the split)."""
    old = found.get(hk)
    if old is None:
        found[hk] = h
        return
    old[2] |= h[2]
    if h[0] < old[0]:
        old[0] = h[0]
    if (h[1], h[6], -h[5]) > (old[1], old[6], -old[5]):
        old[1], old[3], old[4], old[5], old[6] = h[1], h[3], h[4], h[5], h[6]


def _pagekeys(app, repo):
    """The local cache of what each page lists (dmbackup.engine.pagekeys), when there is a state_dir."""
    state = getattr(app, "state", None)
    if state is None:
        return None
    from dmbackup.engine.pagekeys import PageKeys

    return PageKeys(state.dir, repo.id)


def _order(h: Hit):
    r = h.record
    return (r.date if r and r.date is not None else float("inf"), h.md.mailbox, h.md.folder_dir,
            h.entry.name if h.entry else "", h.key)


def describe_hit(h: Hit, snaps, memo: dict | None = None) -> dict:
    """What ``find --json`` says of one message. ``memo``: a dict kept across the hits of one
    answer, for what many of them share (a folder's IMAP name, a set of flag letters)."""
    r = h.record
    letters = h.flags
    fd = h.md.folder_dir
    if memo is None:
        memo = {}
    folder = memo.get(("f", fd))
    if folder is None:
        folder = memo[("f", fd)] = imap_folder(fd)
    flags = memo.get(letters)
    if flags is None:
        flags = memo[letters] = (flag_names(letters), keyword_letters(letters))
    return {
        "mailbox": h.md.mailbox, "folder": folder,
        "date": iso_date(r.date) if r else None,
        "from": r.from_ if r else "", "to": r.to if r else "", "cc": r.cc if r else "",
        "subject": r.subject if r else "", "message_id": r.message_id if r else "",
        "attachments": bool(r.attachments) if r else False,
        "size": h.entry.size if h.entry else (r.size if r else 0),
        "flags": list(flags[0]), "keywords": flags[1], "maildir_flags": letters,
        "new": h.md.sub == "new",
        "first_seen": snaps[h.first].id, "last_seen": snaps[h.last].id, "snapshots": h.seen.bit_count(),
        "in_newest": h.last == len(snaps) - 1,
        "name": h.entry.name if h.entry else None, "sha256": h.key,
    }


@dataclass
class FindResult(Result):
    target: str
    filters: dict
    messages: list[dict]
    snapshots_searched: int = 0
    not_indexed: list[str] = field(default_factory=list)
    damaged_indexes: list[str] = field(default_factory=list)
    truncated: bool = False
    damaged: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_DAMAGE if self.damaged else super().exit_code

    def as_dict(self) -> dict:
        return {"target": self.target, "filters": self.filters, "count": len(self.messages),
                "truncated": self.truncated, "messages": self.messages,
                "snapshots_searched": self.snapshots_searched, "not_indexed": self.not_indexed,
                "damaged_indexes": self.damaged_indexes, "warnings": self.warnings, "exit_code": self.exit_code}

    def notes(self) -> list[str]:
        out = super().notes()
        if self.not_indexed:
            few = ", ".join(self.not_indexed[:5]) + (", ..." if len(self.not_indexed) > 5 else "")
            out.append(f"note: {len(self.not_indexed)} snapshot(s) have no header index ({few}): messages they "
                       f"stored are not found; run `dmbackup reindex --target {self.target}`")
        return out

    def summary(self) -> str:
        if not self.messages:
            return f"no message found ({self.snapshots_searched} snapshot(s) searched)"
        lines = []
        for m in self.messages:
            when = (m["date"] or "no date").replace("T", " ").replace("Z", "")
            flags = m["maildir_flags"] or ("new" if m["new"] else "-")
            lines.append(f"{when:<19}  {m['mailbox']}  {m['folder']}  [{flags}]  {m['from'] or '(no sender)'}  "
                         f"{m['subject'] or '(no subject)'}")
            gone = "" if m["in_newest"] else "  (not in the newest snapshot)"
            lines.append(f"    <{m['message_id']}>  {humanize.size(m['size'])}  first seen {m['first_seen']}, "
                         f"last seen {m['last_seen']}{gone}")
        more = " (more matched: narrow the filters)" if self.truncated else ""
        lines.append(f"{len(self.messages)} message(s){more}; {self.snapshots_searched} snapshot(s) searched")
        return "\n".join(lines)


def check_repository_target(app, target_name: str) -> None:
    """A target that keeps config bundles only (the mailbox) has no messages to look at."""
    from dmbackup.config import holds_repository

    if not holds_repository(app.config.target(target_name)):
        raise UsageError(f"target {target_name!r} holds only config bundles, no mail snapshots")


def find_messages(app, target_name: str, filters: Filters) -> FindResult:
    """``dmbackup find``: reads the header indexes and page tables of ``target_name``, never a volume."""
    from dmbackup.archive.trust import open_trusted

    check_repository_target(app, target_name)
    filters.scope()
    filters.query()                     # usage errors before any I/O
    target = app.target(target_name)
    with target:
        repo = open_trusted(app, target, target_name, require_enrolled=False)
        s = search(repo, filters, app=app, extents=False)
        memo: dict = {}
        msgs = [describe_hit(h, s.snaps, memo) for h in s.hits[:MAX_LISTED]]
        res = FindResult(target_name, filters.as_dict(), msgs, len(s.snaps), s.not_indexed, s.damaged_indexes,
                         truncated=len(s.hits) > MAX_LISTED, damaged=s.damaged, warnings=s.warnings)
        app.log.info("find_done", target=target_name, count=len(msgs), not_indexed=len(s.not_indexed),
                     pages_read=s.pages_read, pages_skipped=s.pages_skipped)
        return res
