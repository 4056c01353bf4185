"""Writing a config bundle's files back, never outside the chosen root.

``extract_entries`` writes an opened bundle (``dmbackup.archive.bundle.read_bundle``) under a
directory only, walking it with ``O_NOFOLLOW`` one component at a time, so neither a link in
the bundle nor one already in the directory can redirect a write outside it; its database
dumps go beside the files, ``DIR/databases/<name>.<ext>`` (mode 0600, in a 0700 directory).
``diff_against_live`` compares a bundle with the running system and, only when told, puts it
back, keeping each replaced file as ``<file>.dmbackup-<time>``. Which entries may be written
at all (``config_paths``, no set-uid) is the caller's decision
(``dmbackup.engine.configbundle.restrict_entries``).
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import secrets as _secrets
import stat

from dmbackup import utctime
from dmbackup.archive.bundle import _READ, MANIFEST_NAME, Dump, Entry, read_bundle
from dmbackup.errors import RestoreError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Tree:
    """Descends a root directory one component at a time, never following a link."""

    def __init__(self, root: str, create: bool):
        if create:
            os.makedirs(root, mode=0o700, exist_ok=True)
        self.root = root
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.created: list[str] = []        # intermediate directories we made (relative)

    def close(self):
        os.close(self.fd)

    def parent(self, rel: str, create: bool, dir_mode: int = 0o755) -> int | None:
        """A new fd for the parent directory of ``rel``, or None when it does not exist."""
        fd = os.dup(self.fd)
        done = []
        for part in rel.split("/")[:-1]:
            done.append(part)
            if create:
                try:
                    os.mkdir(part, dir_mode, dir_fd=fd)
                    self.created.append("/".join(done))
                except FileExistsError:
                    pass
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.close(fd)
                return None
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise RestoreError(
                        f"{os.path.join(self.root, *done)} is a symbolic link or not a directory; "
                        "dmbackup does not write through it: move it away and run again") from None
                raise
            os.close(fd)
            fd = nfd
        return fd


def _lstat_at(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _kind(st: os.stat_result) -> str:
    return "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) \
        else "file" if stat.S_ISREG(st.st_mode) else "other"


class _Owner:
    """chown that degrades to a single warning when not running as root."""

    def __init__(self, warnings: list[str]):
        self.warnings, self.failed = warnings, False

    def __call__(self, fn, *args, **kw) -> None:
        try:
            fn(*args, **kw)
        except PermissionError:
            if not self.failed:
                self.failed = True
                self.warnings.append("not allowed to set owners (not running as root?): "
                                     "files keep the restoring user's owner")


def _tmp_name(name: str) -> str:
    return f".{name[:100]}.dmbackup-tmp-{_secrets.token_hex(4)}"


def _write_entry(pfd: int, name: str, e: Entry, chown: _Owner, backup: str | None = None) -> None:
    """Create ``name`` in directory ``pfd`` atomically (temporary name, then rename)."""
    if e.type == "dir":
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            pass
        return
    tmp = _tmp_name(name)
    if e.type == "symlink":
        os.symlink(e.target, tmp, dir_fd=pfd)
        try:
            chown(os.chown, tmp, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
            os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
        except BaseException:
            os.unlink(tmp, dir_fd=pfd)
            raise
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=pfd)
        try:
            view = memoryview(e.data or b"")
            while view:
                view = view[os.write(fd, view):]
            chown(os.fchown, fd, e.uid, e.gid)
            os.fchmod(fd, e.mode)
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp, dir_fd=pfd)
            raise
        os.close(fd)
    if backup:
        os.link(name, backup, src_dir_fd=pfd, dst_dir_fd=pfd, follow_symlinks=False)
    os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)


def _dir_meta(tree: _Tree, e: Entry, chown: _Owner, mtime: bool = True) -> None:
    pfd = tree.parent(e.rel, create=False)
    if pfd is None:
        return
    try:
        fd = os.open(os.path.basename(e.rel), _DIR_FLAGS, dir_fd=pfd)
    finally:
        os.close(pfd)
    try:
        chown(os.fchown, fd, e.uid, e.gid)
        os.fchmod(fd, e.mode)
        if mtime:
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
    finally:
        os.close(fd)


def _refuse_clashes(tree: _Tree, rels: list[str], to_dir: str) -> None:
    """RestoreError when any of ``rels`` already exists under the tree."""
    clashes = []
    for rel in rels:
        pfd = tree.parent(rel, create=False)
        if pfd is None:
            continue
        try:
            if _lstat_at(pfd, os.path.basename(rel)) is not None:
                clashes.append(rel)
        finally:
            os.close(pfd)
    if clashes:
        raise RestoreError(
            f"{len(clashes)} file(s) already exist in {to_dir} (first: {clashes[0]}): restore "
            "into an empty directory, or allow overwriting")


def _write_private(tree: _Tree, rel: str, data: bytes) -> None:
    """``rel`` under the tree, mode 0600, owned by whoever restores (a dump is nobody's file),
    in directories made 0700; written under a temporary name and renamed."""
    pfd = tree.parent(rel, create=True, dir_mode=0o700)
    try:
        name = os.path.basename(rel)
        st = _lstat_at(pfd, name)
        if st is not None and _kind(st) != "file":
            raise RestoreError(f"{os.path.join(tree.root, rel)} is a {_kind(st)}; cannot put a dump there")
        tmp = _tmp_name(name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=pfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp, dir_fd=pfd)
            raise
        os.close(fd)
        os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
    finally:
        os.close(pfd)


def extract_entries(manifest: dict, entries: list[Entry], to_dir: str, *, overwrite: bool = False,
                    dumps: list[Dump] = ()) -> dict:
    """Write an opened bundle under ``to_dir`` (``DIR/etc/postfix/main.cf``, ``DIR/MANIFEST.json``,
    ``DIR/databases/<name>.<ext>``).

    Without ``overwrite`` nothing is written when any file already exists there.
    """
    warnings: list[str] = []
    try:
        tree = _Tree(to_dir, create=True)
    except OSError as exc:
        raise RestoreError(f"cannot use {to_dir} as the restore directory: {exc.strerror}") from None
    try:
        if not overwrite:
            _refuse_clashes(tree, [MANIFEST_NAME] + [e.rel for e in entries if e.type != "dir"]
                            + [d.file for d in dumps], to_dir)
        chown = _Owner(warnings)
        for e in entries:
            pfd = tree.parent(e.rel, create=True)
            try:
                name = os.path.basename(e.rel)
                st = _lstat_at(pfd, name)
                if st is not None and _kind(st) == "dir" and e.type != "dir":
                    raise RestoreError(f"{os.path.join(to_dir, e.rel)} is a directory; cannot put the "
                                       f"bundle's {e.type} there")
                if st is not None and e.type == "dir" and _kind(st) != "dir":
                    os.unlink(name, dir_fd=pfd)     # only reachable with overwrite
                _write_entry(pfd, name, e, chown)
            finally:
                os.close(pfd)
        # Directories last, deepest first: writing children would change their mtime, and a
        # read-only mode would stop us writing into them.
        for e in sorted((e for e in entries if e.type == "dir"), key=lambda e: e.path, reverse=True):
            _dir_meta(tree, e, chown)
        for d in dumps:
            _write_private(tree, d.file, d.data)
        tmp = _tmp_name(MANIFEST_NAME)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=tree.fd)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")
        os.rename(tmp, MANIFEST_NAME, src_dir_fd=tree.fd, dst_dir_fd=tree.fd)
    except OSError as exc:
        raise RestoreError(f"restore into {to_dir} failed: {exc.strerror or exc} "
                           f"({getattr(exc, 'filename', '') or ''})") from None
    finally:
        tree.close()
    return {
        "to": to_dir,
        "id": manifest.get("id"),
        "files": sum(1 for e in entries if e.type == "file"),
        "dirs": sum(1 for e in entries if e.type == "dir"),
        "symlinks": sum(1 for e in entries if e.type == "symlink"),
        "bytes": sum(e.size for e in entries),
        "manifest": os.path.join(to_dir, MANIFEST_NAME),
        "databases": [os.path.join(to_dir, d.file) for d in dumps],
        "warnings": warnings,
    }


def extract_bundle(data, to_dir: str, *, passphrase=None, key=None, context: bytes = b"",
                   overwrite: bool = False) -> dict:
    """Open ``data`` and write it under ``to_dir``; see ``extract_entries``."""
    contents = read_bundle(data, passphrase=passphrase, key=key, context=context)
    manifest, entries = contents
    return extract_entries(manifest, entries, to_dir, overwrite=overwrite, dumps=contents.dumps)


def _same_content(pfd: int, name: str, e: Entry) -> bool:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
    except OSError:
        return False
    h = hashlib.sha256()
    try:
        while True:
            piece = os.read(fd, _READ)
            if not piece:
                break
            h.update(piece)
    finally:
        os.close(fd)
    return h.hexdigest() == e.sha256


def _backup_name(pfd: int, name: str, stamp: str) -> str:
    base = f"{name}.dmbackup-{stamp}"
    candidate, i = base, 0
    while _lstat_at(pfd, candidate) is not None:
        i += 1
        candidate = f"{base}-{i}"
    return candidate


def diff_against_live(manifest: dict, entries: list[Entry], *, root: str = "/", overwrite: bool = False,
                      time: _dt.datetime | None = None) -> dict:
    """Compare a bundle with the live files under ``root`` and, with ``overwrite``, restore it.

    Each change is one of ``create`` (absent), ``replace`` (content or link target differs),
    ``metadata`` (same content, other mode or owner), ``conflict`` (a different kind of object
    is there: left alone, to be sorted out by hand) or ``unchanged``. Nothing is deleted.
    With ``overwrite`` every replaced file is first kept as ``<file>.dmbackup-<time>`` (a
    hard link, so the live name is never missing). Without it nothing is written.
    """
    stamp = (time or utctime.utc_now()).astimezone(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    warnings: list[str] = []
    changes: list[dict] = []
    chown = _Owner(warnings)
    try:
        tree = _Tree(root, create=False)
    except OSError as exc:
        raise RestoreError(f"cannot open {root}: {exc.strerror}") from None
    created_dirs: list[Entry] = []
    try:
        for e in entries:
            live = os.path.join(root, e.rel)
            rec: dict = {"path": e.path, "live": live, "type": e.type}
            pfd = tree.parent(e.rel, create=overwrite)
            st = None
            name = os.path.basename(e.rel)
            if pfd is not None:
                st = _lstat_at(pfd, name)
            if st is None:
                action = "create"
            elif _kind(st) != e.type:
                action = "conflict"
                rec["detail"] = f"live {live} is a {_kind(st)}, the bundle has a {e.type}: left alone"
            elif e.type == "symlink":
                action = "unchanged" if os.readlink(name, dir_fd=pfd) == e.target else "replace"
            elif e.type == "file" and not _same_content(pfd, name, e):
                action = "replace"
            elif (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != (e.mode, e.uid, e.gid):
                action = "metadata"
                rec["detail"] = (f"mode {stat.S_IMODE(st.st_mode):04o} -> {e.mode:04o}, owner "
                                 f"{st.st_uid}:{st.st_gid} -> {e.uid}:{e.gid}")
            else:
                action = "unchanged"
            rec["action"] = action
            try:
                if overwrite and action in ("create", "replace"):
                    backup = _backup_name(pfd, name, stamp) if action == "replace" else None
                    _write_entry(pfd, name, e, chown, backup=backup)
                    if backup:
                        rec["backup"] = os.path.join(os.path.dirname(live), backup)
                    if e.type == "dir":
                        created_dirs.append(e)
                        _dir_meta(tree, e, chown, mtime=False)
                elif overwrite and action == "metadata":
                    flags = (_DIR_FLAGS if e.type == "dir"
                             else os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                    fd = os.open(name, flags, dir_fd=pfd)
                    try:
                        chown(os.fchown, fd, e.uid, e.gid)
                        os.fchmod(fd, e.mode)
                    finally:
                        os.close(fd)
            except OSError as exc:
                raise RestoreError(f"restoring {live} failed: {exc.strerror or exc}") from None
            finally:
                if pfd is not None:
                    os.close(pfd)
            if action == "conflict":
                warnings.append(rec["detail"])
            changes.append(rec)
        for e in sorted(created_dirs, key=lambda e: e.path, reverse=True):
            _dir_meta(tree, e, chown)
    finally:
        tree.close()
    counts = {a: sum(1 for c in changes if c["action"] == a)
              for a in ("create", "replace", "metadata", "conflict", "unchanged")}
    return {"root": root, "applied": overwrite, "id": manifest.get("id"), "time": manifest.get("time"),
            "changes": changes, "counts": counts, "warnings": warnings}
