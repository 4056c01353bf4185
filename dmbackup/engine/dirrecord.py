"""The local record of the last snapshot's directories, so an unchanged one costs a listing.

``state_dir/dirs-<repository id>.json``, rewritten after every mail backup that commits:

    {"chain": ..., "snapshot": ..., "dirs": {rel: [page sha256, ...]}}

with, for each ``cur/`` and ``new/`` of that snapshot, ``[sha256, entries, bytes, mtime]``
(``bytes``: the sum of its messages' sizes; ``mtime``: the directory's, as the page of its
folder has it), and for each other directory holding only files and
directories, ``[sha256, listing]`` (``listing``: a digest of name, type, mode, owner, group,
mtime, size and inode of every entry of the page, ``listing_of_entries``).

The next incremental, whose parent is that snapshot, uses it two ways:

- a message directory whose mtime says it has not changed (``unchanged_msgdir``, the rule of
  dmbackup.engine.folder ``unchanged_row`` without reading the folder's page) is listed by
  name only, without a stat per message (dmbackup.source.mailstore ``fill_names``): its page
  is the parent's, its bytes are here;
- any other directory whose listing (stat of every entry, as always) has the digest recorded
  for the parent's page is taken over without reading that page and matching its files one
  by one: capture would have rebuilt exactly that page (an unchanged file is recognised by
  size, mtime and inode, dmbackup.engine.filecapture, and keeps the parent's content).

An entry counts only when the record names the parent and the entry's page hash (and count)
are the parent's row's, so a record left by another snapshot, chain or repository never fits;
otherwise the directory is handled as before. The record lives in root's state_dir, never on
the medium, and holds nothing secret (directory names and sizes, as the catalog and `status`
show). Losing it costs one slower incremental.
"""

from __future__ import annotations

import hashlib
import stat

from dmbackup.archive.catalog import Entry, PageRow


def _name(repo_id: str) -> str:
    return f"dirs-{repo_id}.json"


def load(state, repo_id: str, parent) -> dict | None:
    """The record of ``parent`` (a SnapshotRef), or None when there is none that fits."""
    try:
        data = state.read_json(_name(repo_id))
    except OSError:             # unreadable: as if missing (it only makes a run faster)
        return None
    if data.get("chain") != parent.chain or data.get("snapshot") != parent.id:
        return None
    dirs = data.get("dirs")
    return dirs if isinstance(dirs, dict) else None


def unchanged_msgdir(record: dict | None, pv, rel: str, st) -> tuple[PageRow, int] | None:
    """(the parent's row, its bytes) for the message directory ``rel`` (fstat ``st``) when the
    record says it has not changed since the parent: the record is of the parent's very page
    and its mtime, as the parent's page of the folder has it, is the directory's now and
    settled before the parent started (``ParentView.settled``, as
    dmbackup.engine.folder.unchanged_row)."""
    if record is None or pv is None:
        return None
    prow = pv.rows.get(rel)
    rec = record.get(rel)
    if (prow is None or not isinstance(rec, list) or len(rec) != 4 or rec[0] != prow.sha256
            or rec[1] != prow.entries or type(rec[2]) is not int or rec[2] < 0 or rec[3] != st.st_mtime_ns
            or not pv.settled(st.st_mtime_ns)):
        return None
    return prow, rec[2]


def same_listing(record: dict | None, row: PageRow | None, listing: str | None) -> bool:
    """Whether ``listing`` is the one recorded for the page of ``row`` (the parent's)."""
    if record is None or row is None or listing is None:
        return False
    rec = record.get(row.dir)
    return isinstance(rec, list) and len(rec) == 2 and rec[0] == row.sha256 and rec[1] == listing


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def listing_of_entries(entries: list[Entry]) -> str | None:
    """The listing digest of a page's entries (files and directories only; None otherwise)."""
    parts = []
    for e in sorted(entries, key=lambda e: e.name):
        if e.type == "f":
            parts.append(f"f/{e.name}/{e.mode}/{e.uid}/{e.gid}/{e.mtime_ns}/{e.size}/{e.ino}")
        elif e.type == "d":
            parts.append(f"d/{e.name}/{e.mode}/{e.uid}/{e.gid}/{e.mtime_ns}")
        else:
            return None
    return _digest(parts)


def listing_of_scan(files: list, dirs: list) -> str:
    """The listing digest of a directory as listed now (``DirScan.files`` and ``.dirs``): equal to
    ``listing_of_entries`` of the page capture would write when nothing changed."""
    parts = [(n, f"f/{n}/{stat.S_IMODE(st.st_mode)}/{st.st_uid}/{st.st_gid}/{st.st_mtime_ns}/{st.st_size}/{st.st_ino}")
             for n, st in files]
    parts += [(n, f"d/{n}/{stat.S_IMODE(st.st_mode)}/{st.st_uid}/{st.st_gid}/{st.st_mtime_ns}") for n, st in dirs]
    parts.sort()
    return _digest([p for _, p in parts])


def save(state, repo_id: str, chain: str, snap: str, rows: list[PageRow], msgdir_bytes: dict[str, int],
         subdir_mtimes: dict[str, int], listings: dict[str, str | None]) -> None:
    """Record the directories of the snapshot just committed: ``msgdir_bytes`` of its message
    directories, their mtimes as their folder's page has them, the ``listings`` of the others."""
    dirs: dict[str, list] = {}
    for r in rows:
        if r.dir in msgdir_bytes:
            if r.dir in subdir_mtimes:
                dirs[r.dir] = [r.sha256, r.entries, msgdir_bytes[r.dir], subdir_mtimes[r.dir]]
        elif listings.get(r.dir) is not None:
            dirs[r.dir] = [r.sha256, listings[r.dir]]
    state.write_cache(_name(repo_id), {"chain": chain, "snapshot": snap, "dirs": dirs})
