"""The source: walking a live Maildir store the way Dovecot needs it captured.

A message's identity is (folder, base name): the file name up to ``:``. Its bytes never
change; the ``:2,FLAGS`` suffix and whether it sits in ``new/`` or ``cur/`` are metadata.
Capture rules (how Dovecot keeps a Maildir; the format side is in dmbackup/archive/__init__.py):

- per folder, ``new/`` is listed before ``cur/`` (Dovecot moves new -> cur, so a message
  moving between the two listings is seen in cur), and a base name listed in both is kept
  only under its ``cur/`` name: a restore writes exactly one file per base name;
- when a listed message vanishes before it is read, its folder is rescanned for the base name
  and the renamed file is taken (``relocate``); only a message gone for good is a warning;
- ``dovecot-uidlist`` and ``dovecot-keywords`` of a folder are read LAST, after its messages,
  so every captured message that the uidlist names carries the UID it had;
- ``tmp/`` contents (deliveries in progress) are not captured; the directory itself is;
- Dovecot's transient files (``dovecot-uidlist.lock``, ``dovecot.index.tmp``, ...) are never
  captured: a restored lock that names another host stalls the folder's first SELECT.

The mail users are not trusted: they own the files and can rename, replace or symlink them
at any moment. So the walk holds a directory file descriptor for every directory it lists,
opens each subdirectory relative to its parent with ``O_DIRECTORY | O_NOFOLLOW`` and checks
that what it opened is the (device, inode) the listing showed, and never crosses into another
file system. ``DirScan.fd`` is valid while the consumer handles the scan, and for message
directories until the folder's own files have been handed out (the engine re-checks and
re-lists ``new/`` and ``cur/`` by fd). Only per-directory lists are held in memory.

A ``cur/`` or ``new/`` that the engine knows to be unchanged since the last snapshot (its
mtime, dmbackup.engine.dirrecord) is listed by name only (``fill_names``: d_type, no stat per
message); anything unexpected in it (another count, a symlink, a directory) and it is
listed with stats as any other.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from typing import Iterator

LAST_FILES = ("dovecot-keywords", "dovecot-uidlist")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_TRANSIENT_PREFIXES = ("dovecot", "subscriptions")
_TRANSIENT_SUFFIXES = (".lock", ".tmp", ".newlock")


def base_name(name: str) -> str:
    return name.split(":", 1)[0]


def is_transient(name: str) -> bool:
    """Dovecot's lock and temporary files: never captured, never restored."""
    return name.startswith(_TRANSIENT_PREFIXES) and name.endswith(_TRANSIENT_SUFFIXES)


@dataclass
class DirScan:
    rel: str                                  # relative to the store root, "" for the root
    st: os.stat_result                        # fstat of the directory, taken before listing it
    files: list[tuple[str, os.stat_result]] = field(default_factory=list)
    dirs: list[tuple[str, os.stat_result]] = field(default_factory=list)
    links: list[tuple[str, os.stat_result]] = field(default_factory=list)
    others: list[str] = field(default_factory=list)          # sockets, fifos, devices
    maildir_sub: str | None = None            # "new" / "cur" when this is a message directory
    skip_files: bool = False                  # tmp/: contents not captured
    fd: int = -1                              # the directory, opened O_NOFOLLOW (owned by walk)
    listed_ns: int = 0                        # wall clock when the listing started
    siblings: dict = field(default_factory=dict)   # message dirs: {"new": fd, "cur": fd} of the folder
    names_only: bool = False                  # files listed by name, stats None (see ``fill_names``)


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


class _Walker:
    def __init__(self, root: str, warn, quick=None):
        self.root, self.warn, self.quick = root, warn, quick
        self.dev: int | None = None

    def open_dir(self, parent_fd: int | None, name: str, rel: str, expect: os.stat_result | None) -> int | None:
        """Open a directory below the store (never through a symlink) or None with a warning."""
        try:
            if parent_fd is None:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
            else:
                fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            self.warn(f"directory vanished during the scan: {rel or '/'}")
            return None
        except PermissionError:
            self.warn(f"permission denied listing {rel or '/'}: skipped")
            return None
        except OSError as exc:
            # ELOOP / ENOTDIR: a symlink or file was swapped in for a directory
            self.warn(f"{rel or '/'} is no longer a directory ({exc.strerror}): skipped")
            return None
        st = os.fstat(fd)
        if self.dev is None:
            self.dev = st.st_dev
        if expect is not None and (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino):
            os.close(fd)
            self.warn(f"directory {rel} was replaced during the scan: skipped")
            return None
        if st.st_dev != self.dev:
            os.close(fd)
            self.warn(f"{rel} is on another file system (a mount point inside the mail store): skipped")
            return None
        return fd

    def list(self, parent_fd: int | None, name: str, rel: str, expect: os.stat_result | None,
             message_dir: bool = False) -> DirScan | None:
        fd = self.open_dir(parent_fd, name, rel, expect)
        if fd is None:
            return None
        try:
            scan = DirScan(rel, os.fstat(fd), fd=fd, listed_ns=time.time_ns())
            want = self.quick(rel, scan.st) if message_dir and self.quick is not None else None
            if want is None or not fill_names(scan, want):
                fill(scan)
        except PermissionError:
            os.close(fd)
            self.warn(f"permission denied listing {rel or '/'}: skipped")
            return None
        return scan


def fill(scan: DirScan) -> None:
    """List ``scan.fd`` into files / dirs / links / others, one entry per name."""
    seen: set[str] = set()
    scan.files, scan.dirs, scan.links, scan.others = [], [], [], []
    with os.scandir(scan.fd) as it:
        for e in it:
            if e.name in seen:          # readdir under concurrent renames may repeat a name
                continue
            seen.add(e.name)
            try:
                est = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            m = est.st_mode
            if stat.S_ISREG(m):
                if not is_transient(e.name):
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


def fill_names(scan: DirScan, expect: int) -> bool:
    """List a message directory by name only: no stat of its files (d_type says what each
    entry is). True when it holds exactly ``expect`` regular files and nothing else; then
    ``scan.files`` has them with None for their stats and ``scan.names_only`` is set. False
    (the caller lists it again with ``fill``) as soon as anything else turns up.

    The engine asks for this only for a cur/ or new/ whose mtime says it has not changed
    since the parent snapshot (dmbackup.engine.folder.unchanged_row): the parent's page
    then holds these very files, with their sizes and metadata."""
    names: set[str] = set()         # readdir under concurrent renames may repeat a name
    with os.scandir(scan.fd) as it:
        for e in it:
            try:
                if not e.is_file(follow_symlinks=False):
                    return False
            except OSError:
                return False
            names.add(e.name)
    if any(n.startswith(_TRANSIENT_PREFIXES) for n in names):
        names = {n for n in names if not is_transient(n)}
    if len(names) != expect:
        return False
    scan.files = [(n, None) for n in names]         # unsorted: only counted, unless listed again
    scan.dirs, scan.links, scan.others = [], [], []
    scan.names_only = True
    return True


def refill(scan: DirScan) -> None:
    """List a directory listed by name only again, with stats (a fresh listing)."""
    scan.st = os.fstat(scan.fd)
    scan.listed_ns = time.time_ns()
    fill(scan)
    scan.names_only = False


def is_maildir_folder(scan: DirScan) -> bool:
    names = {n for n, _ in scan.dirs}
    return "cur" in names and "new" in names


def walk(root: str, warn, quick=None) -> Iterator[DirScan]:
    """Pre-order walk of the store, folder by folder, in capture order.

    ``quick(rel, st)``: for a folder's cur/ or new/ (fstat ``st``), the number of files it
    holds when it may be listed by name only (``fill_names``), or None."""
    w = _Walker(root, warn, quick)
    top = w.list(None, root, "", None)
    if top is None:
        return
    yield from _walk(w, top)


def _close(*scans: DirScan | None) -> None:
    for s in scans:
        if s is not None and s.fd >= 0:
            os.close(s.fd)
            s.fd = -1


def _walk(w: _Walker, scan: DirScan) -> Iterator[DirScan]:
    try:
        if not is_maildir_folder(scan):
            yield scan
            for name, st in scan.dirs:
                sub = w.list(scan.fd, name, _join(scan.rel, name), st)
                if sub is not None:
                    yield from _walk(w, sub)
            return

        # A Maildir folder: new/ listed before cur/, messages before the folder's own files.
        subst = dict(scan.dirs)
        new = w.list(scan.fd, "new", _join(scan.rel, "new"), subst["new"], message_dir=True)
        cur = w.list(scan.fd, "cur", _join(scan.rel, "cur"), subst["cur"], message_dir=True)
        sib = {"new": new.fd if new else -1, "cur": cur.fd if cur else -1}
        try:
            if new is not None and cur is not None and new.files:
                in_cur = {base_name(n) for n, _ in cur.files}
                new.files = [(n, s) for n, s in new.files if base_name(n) not in in_cur]
            for sub, label in ((new, "new"), (cur, "cur")):
                if sub is not None:
                    sub.maildir_sub = label
                    sub.siblings = sib
                    yield sub
                    for name, st in sub.dirs:      # unusual, but never lose anything
                        deeper = w.list(sub.fd, name, _join(sub.rel, name), st)
                        if deeper is not None:
                            yield from _walk(w, deeper)
            if "tmp" in subst:
                yield DirScan(_join(scan.rel, "tmp"), subst["tmp"], skip_files=True)

            # The folder's own files, listed afresh now: dovecot-uidlist/keywords last.
            try:
                fill(scan)
            except OSError as exc:          # unreadable since: keep what the first listing saw
                w.warn(f"{scan.rel or '/'} could not be listed again ({exc.strerror}): its first listing is used")
            scan.files.sort(key=lambda f: (f[0] in LAST_FILES,
                                           LAST_FILES.index(f[0]) if f[0] in LAST_FILES else 0, f[0]))
            yield scan
        finally:
            _close(new, cur)
        for name, st in scan.dirs:
            if name in ("cur", "new", "tmp"):
                continue
            sub = w.list(scan.fd, name, _join(scan.rel, name), st)
            if sub is not None:
                yield from _walk(w, sub)
    finally:
        _close(scan)


def find_base(dir_fd: int, base: str) -> str | None:
    """The current name of the message with this base name in one message directory."""
    try:
        with os.scandir(dir_fd) as it:
            for e in it:
                if e.name == base or e.name.startswith(base + ":"):
                    return e.name
    except OSError:
        pass
    return None


def mailbox_key(rel: str) -> str:
    """The mailbox a path belongs to (``domain/user``): blocks are never shared across it."""
    parts = rel.split("/", 2)
    return "/".join(parts[:2])
