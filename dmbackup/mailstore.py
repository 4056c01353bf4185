"""The source: walking a live Maildir store the way Dovecot needs it captured.

A message's identity is (folder, base name): the file name up to ``:``. Its bytes never
change; the ``:2,FLAGS`` suffix and whether it sits in ``new/`` or ``cur/`` are metadata.
Capture rules (DESIGN.md, "The Maildir, as Dovecot sees it"):

- per folder, ``new/`` is listed before ``cur/`` (Dovecot moves new -> cur, so a message
  moving between the two listings is seen in cur), and a base name listed in both is kept
  only under its ``cur/`` name: a restore writes exactly one file per base name;
- when a listed message vanishes before it is read, its folder is rescanned for the base name
  and the renamed file is taken (``relocate``); only a message gone for good is a warning;
- ``dovecot-uidlist`` and ``dovecot-keywords`` of a folder are read LAST, after its messages,
  so every captured message that the uidlist names carries the UID it had;
- ``tmp/`` contents (deliveries in progress) are not captured; the directory itself is.

The walk yields directories in an order that satisfies these rules; ``DirScan.files`` is in
the order the files must be read. Only per-directory lists are held in memory.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Iterator

LAST_FILES = ("dovecot-keywords", "dovecot-uidlist")


def base_name(name: str) -> str:
    return name.split(":", 1)[0]


@dataclass
class DirScan:
    rel: str                                  # relative to the store root, "" for the root
    st: os.stat_result
    files: list[tuple[str, os.stat_result]] = field(default_factory=list)
    dirs: list[tuple[str, os.stat_result]] = field(default_factory=list)
    links: list[tuple[str, os.stat_result]] = field(default_factory=list)
    others: list[str] = field(default_factory=list)          # sockets, fifos, devices
    maildir_sub: str | None = None            # "new" / "cur" when this is a message directory
    skip_files: bool = False                  # tmp/: contents not captured


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _list(abs_path: str, rel: str, warn) -> DirScan | None:
    try:
        st = os.lstat(abs_path)
        it = os.scandir(abs_path)
    except FileNotFoundError:
        warn(f"directory vanished during the scan: {rel or '/'}")
        return None
    except PermissionError:
        warn(f"permission denied listing {rel or '/'}: skipped")
        return None
    scan = DirScan(rel, st)
    with it:
        for e in it:
            try:
                est = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            m = est.st_mode
            if stat.S_ISREG(m):
                scan.files.append((e.name, est))
            elif stat.S_ISDIR(m):
                scan.dirs.append((e.name, est))
            elif stat.S_ISLNK(m):
                scan.links.append((e.name, est))
            else:
                scan.others.append(e.name)
    scan.files.sort()
    scan.dirs.sort()
    scan.links.sort()
    return scan


def is_maildir_folder(scan: DirScan) -> bool:
    names = {n for n, _ in scan.dirs}
    return "cur" in names and "new" in names


def walk(root: str, warn) -> Iterator[DirScan]:
    """Pre-order walk of the store, folder by folder, in capture order."""
    top = _list(root, "", warn)
    if top is None:
        return
    yield from _walk(root, top, warn)


def _walk(root: str, scan: DirScan, warn) -> Iterator[DirScan]:
    abs_dir = os.path.join(root, scan.rel) if scan.rel else root
    if not is_maildir_folder(scan):
        yield scan
        for name, _ in scan.dirs:
            sub = _list(os.path.join(abs_dir, name), _join(scan.rel, name), warn)
            if sub is not None:
                yield from _walk(root, sub, warn)
        return

    # A Maildir folder: new/ listed before cur/, messages before the folder's own files.
    new = _list(os.path.join(abs_dir, "new"), _join(scan.rel, "new"), warn)
    cur = _list(os.path.join(abs_dir, "cur"), _join(scan.rel, "cur"), warn)
    if new is not None and cur is not None:
        in_cur = {base_name(n) for n, _ in cur.files}
        new.files = [(n, s) for n, s in new.files if base_name(n) not in in_cur]
    for sub, label in ((new, "new"), (cur, "cur")):
        if sub is not None:
            sub.maildir_sub = label
            yield sub
            for name, _ in sub.dirs:      # unusual, but never lose anything
                deeper = _list(os.path.join(abs_dir, label, name), _join(sub.rel, name), warn)
                if deeper is not None:
                    yield from _walk(root, deeper, warn)
    tmp_st = next((s for n, s in scan.dirs if n == "tmp"), None)
    if tmp_st is not None:
        yield DirScan(_join(scan.rel, "tmp"), tmp_st, skip_files=True)

    # The folder's own files, listed afresh now: dovecot-uidlist/keywords last.
    fresh = _list(abs_dir, scan.rel, warn) or scan
    fresh.files.sort(key=lambda f: (f[0] in LAST_FILES, LAST_FILES.index(f[0]) if f[0] in LAST_FILES else 0, f[0]))
    subdirs = [(n, s) for n, s in fresh.dirs if n not in ("cur", "new", "tmp")]
    yield fresh
    for name, _ in subdirs:
        sub = _list(os.path.join(abs_dir, name), _join(scan.rel, name), warn)
        if sub is not None:
            yield from _walk(root, sub, warn)


def relocate(root: str, message_dir_rel: str, name: str) -> tuple[str, str] | None:
    """A message vanished from ``message_dir_rel`` (a new/ or cur/ dir): find its new name.

    Returns (relative dir, file name) of the file with the same base name in the folder's
    cur/ or new/, or None when the message is gone (expunged or moved to another folder).
    """
    folder_rel = message_dir_rel.rsplit("/", 1)[0] if "/" in message_dir_rel else ""
    base = base_name(name)
    for sub in ("cur", "new"):
        d = os.path.join(root, folder_rel, sub) if folder_rel else os.path.join(root, sub)
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.name == base or e.name.startswith(base + ":"):
                        return _join(folder_rel, sub), e.name
        except OSError:
            continue
    return None


def mailbox_key(rel: str) -> str:
    """The mailbox a path belongs to (``domain/user``): blocks are never shared across it."""
    parts = rel.split("/", 2)
    return "/".join(parts[:2])
