"""The catalog check of a restore drill: every restored entry read back and compared.

Every entry of the drilled selection is read back from the scratch copy through directory
file descriptors (O_NOFOLLOW) and compared with the catalog: name, type, size, SHA-256, mode,
mtime and, when the restore set owners, owner. What the restore leaves out on purpose is
judged by the same rules, not taken on trust: Dovecot's lock/temporary files need not be
there; a message the catalog holds under two names in one Maildir folder (new/ and cur/, or
two flag suffixes) must be there exactly once, under one of them; a name the catalog holds
twice must match one of its entries. Problems go to the drill's result (``res.damage``).
"""

from __future__ import annotations

import hashlib
import os
import stat

from dmbackup.engine.restore import in_selection
from dmbackup.engine.safetree import DIR_FLAGS, check_name, open_below, split_rel
from dmbackup.errors import DmError
from dmbackup.source.mailstore import base_name, is_transient

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK


def open_dir(root_fd: int, rel: str) -> int:
    return open_below(root_fd, split_rel(rel))


def check_tree(repo, ref, rows, prefix: str, tree_dir: str, restorer, res, app) -> None:
    """Every entry of the selection, read back from the scratch copy, against the catalog."""
    _TreeCheck(repo, ref, prefix, restorer, res, app).run(rows, tree_dir)


class _TreeCheck:
    def __init__(self, repo, ref, prefix: str, restorer, res, app):
        self.repo, self.ref, self.prefix, self.res, self.app = repo, ref, prefix, res, app
        self.chown = restorer.chown
        self.failed = {f["path"] for f in getattr(restorer.result, "failed", [])}
        self.dirs: dict[str, dict[str, list]] = {}      # dir -> name -> catalog entries
        # a message's identity in a Maildir folder is its base name, whatever dir and flags
        self.groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.on_disk: dict[str, set[str] | None] = {}
        self.root_fd = -1

    def run(self, rows, tree_dir: str) -> None:
        self._catalog_dirs(rows)
        self._message_groups()
        self.root_fd = os.open(tree_dir, DIR_FLAGS)
        try:
            self._list_restored()
            done: set[tuple[str, str]] = set()
            for d, names in self.dirs.items():
                if self.on_disk[d] is None:
                    continue
                self.app.check_stop()
                for name, ents in names.items():
                    self._compare(d, name, ents, done)
            self._extras()
        finally:
            os.close(self.root_fd)

    def _ancestor(self, d: str) -> bool:
        return d == "" or self.prefix.startswith(d + "/")

    def _catalog_dirs(self, rows) -> None:
        """The selection's directories and the way down to it, as the catalog holds them."""
        parts = split_rel(self.prefix)
        ref = self.ref
        for row in rows:                                 # a big directory may span several pages
            d = row.dir
            if not (self._ancestor(d) or in_selection(d, self.prefix)) or d in self.failed:
                continue                                 # a page the restore could not read is named already
            self.app.check_stop()
            try:
                entries = self.repo.page(ref.chain, row)
            except DmError as exc:
                self.res.damage(f"{ref.id}: the catalog page of {d or '/'} cannot be read: {exc}", d)
                continue
            names = self.dirs.setdefault(d, {})
            for e in entries:
                if self._ancestor(d) and e.name != parts[len(split_rel(d))]:
                    continue                             # only the way down to the mailbox
                check_name(e.name)
                names.setdefault(e.name, []).append(e)

    def _message_groups(self) -> None:
        for d, names in self.dirs.items():
            folder, _, sub = d.rpartition("/")
            if sub in ("new", "cur") and in_selection(d, self.prefix):
                for name, ents in names.items():
                    if any(e.type == "f" for e in ents):
                        self.groups.setdefault((folder, base_name(name)), []).append((d, name))

    def _list_restored(self) -> None:
        for d in self.dirs:
            try:
                fd = open_dir(self.root_fd, d)
            except OSError as exc:
                self.on_disk[d] = None
                self.res.damage(f"{self.ref.id}: directory {d or '/'} was not restored ({exc.strerror})", d)
                continue
            try:
                self.on_disk[d] = set(os.listdir(fd))
            finally:
                os.close(fd)

    def _compare(self, d: str, name: str, ents: list, done: set) -> None:
        """One name of the catalog against the restored copy (once per message of a folder)."""
        res, ref, on_disk = self.res, self.ref, self.on_disk
        path = f"{d}/{name}" if d else name
        if (d, name) in done:
            return
        if path in self.failed:
            done.add((d, name))
            _count(res, ents[0])
            return                                   # named as not restorable already
        folder, _, sub = d.rpartition("/")
        members = self.groups.get((folder, base_name(name)), []) if sub in ("new", "cur") else []
        if len(members) > 1:
            done.update(members)
            _count(res, ents[0])
            if any((f"{md}/{mn}") in self.failed for md, mn in members):
                return
            present = [(md, mn) for md, mn in members if on_disk.get(md) and mn in on_disk[md]]
            if len(present) != 1:
                shown = ", ".join(f"{md.rpartition('/')[2]}/{mn}" for md, mn in members)
                res.damage(f"{ref.id}: message {base_name(name)} of {folder} is in the catalog as {shown} "
                           f"and was restored {len(present)} times, not once", path)
                return
            md, mn = present[0]
            _check_name(self.root_fd, md, mn, self.dirs[md][mn], self.chown, res, ref)
            return
        done.add((d, name))
        if name not in on_disk[d]:
            if all(e.type == "f" and is_transient(e.name) for e in ents):
                return                               # a Dovecot lock file: never restored
            _count(res, ents[0])
            res.damage(f"{ref.id}: {path}: missing from the restored copy", path)
            return
        _count(res, ents[0])
        _check_name(self.root_fd, d, name, ents, self.chown, res, ref)

    def _extras(self) -> None:
        for d, names in self.dirs.items():
            if self.on_disk[d] is None:
                continue
            for extra in sorted(self.on_disk[d] - set(names)):
                path = f"{d}/{extra}" if d else extra
                self.res.damage(f"{self.ref.id}: {path} is in the restored copy but not in the catalog", path)


def _count(res, e) -> None:
    if e.type == "f":
        res.files += 1
        res.bytes += e.size
    elif e.type == "d":
        res.dirs += 1
    else:
        res.links += 1


def _check_name(root_fd: int, d: str, name: str, ents: list, chown: bool, res, ref) -> None:
    """One restored name against its catalog entry (or entries: it must match one of them)."""
    path = f"{d}/{name}" if d else name
    fd = open_dir(root_fd, d)
    try:
        whys = []
        for e in ents:
            why = _check_entry(fd, e, chown)
            if not why:
                return
            whys.append(why)
        res.damage(f"{ref.id}: {path}: {whys[0]}", path)
    finally:
        os.close(fd)


def stat_at(root_fd: int, rel: str) -> os.stat_result:
    parent, _, name = rel.rpartition("/")
    fd = open_dir(root_fd, parent)
    try:
        return os.stat(check_name(name), dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def _check_entry(dfd: int, e, chown: bool) -> str | None:
    try:
        st = os.stat(e.name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return "missing from the restored copy"
    kind = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else \
        "f" if stat.S_ISREG(st.st_mode) else "?"
    if kind != e.type:
        return f"restored as type {kind!r}, the catalog says {e.type!r}"
    diffs = []
    if e.type == "f":
        fd = os.open(e.name, READ_FLAGS, dir_fd=dfd)
        try:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                return "changed while it was being checked"
            h = hashlib.sha256()
            n = 0
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
        finally:
            os.close(fd)
        if n != e.size:
            diffs.append(f"size {n}, the catalog says {e.size}")
        elif h.hexdigest() != e.hash:
            diffs.append("SHA-256 differs from the catalog")
    elif e.type == "l":
        link = os.readlink(e.name, dir_fd=dfd)
        if link != e.link:
            diffs.append(f"points to {link!r}, the catalog says {e.link!r}")
    if e.type != "l" and stat.S_IMODE(st.st_mode) != (e.mode & 0o7777):
        diffs.append(f"mode {stat.S_IMODE(st.st_mode):04o}, the catalog says {e.mode & 0o7777:04o}")
    if chown and (st.st_uid, st.st_gid) != (e.uid, e.gid):
        diffs.append(f"owner {st.st_uid}:{st.st_gid}, the catalog says {e.uid}:{e.gid}")
    if st.st_mtime_ns != e.mtime_ns:
        diffs.append(f"mtime {st.st_mtime_ns} ns, the catalog says {e.mtime_ns}")
    return "; ".join(diffs) or None
