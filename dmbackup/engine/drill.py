"""Restore drills: prove, on a schedule, that one mailbox of the newest snapshot really restores.

``restore_drill(app, target)`` restores one mailbox (by default the next one in a round robin
over the snapshot's ``<domain>/<user>/Maildir`` trees, remembered in ``state_dir/drills.json``)
with the real restore code (``TreeRestorer``) into a scratch directory
``state_dir/drill-<pid>-*/`` (0700); reads every restored file, directory and symlink back
through directory file descriptors (O_NOFOLLOW) and compares it with the catalog: name, type,
size, SHA-256, mode, mtime and, when running as root, owner; then, where ``doveadm`` is
installed, asks Dovecot to open every folder of the copy; and removes the scratch copy,
whatever happened (and copies a killed drill left behind). A copy that would not fit in
``state_dir`` with 64 MiB to spare is refused before anything is written (exit 3): that file
system is often the mail store's own. A file that cannot be restored or differs, or a folder
Dovecot cannot open (or in which it sees fewer or more messages than the folder holds), is
damage (exit 4); the result and its first problems are recorded for ``dmbackup status``.
What the restore leaves out on purpose (Dovecot lock files, the second name of a message an
older release stored twice) is checked by the same rules, not taken on trust.

How Dovecot is asked (tried with Dovecot 2.3.19 here). ``doveadm -u USER`` needs a running
Dovecot's auth socket for the userdb lookup, so it cannot look at a private copy. Without
``-u``, doveadm takes the user from ``$USER``/``$HOME`` and needs no auth process at all,
so the drill writes a private config (``base_dir``, ``state_dir`` in the scratch dir;
``mail_location = maildir:~/Maildir:INDEX=MEMORY``; Maildir++ with ``/`` as separator) and
runs ``doveadm -c PRIVATE -f json mailbox status messages uidvalidity uidnext '*'``. Nothing of
the live Dovecot is involved: it need not run, and its ``mail_location`` can never lead the
drill into the live store, which is why ``[source] dovecot_config`` is not used here.
Dovecot refuses uid 0 for mail access, and as the vmail uid it cannot traverse a 0700
``state_dir``; as root the drill therefore uses ``mail_chroot`` = the scratch tree (the chroot
is entered while still root) and ``mail_uid``/``mail_gid`` = the mailbox's recorded owner (or
``[source] vmail_uid``/``vmail_gid``). Not as root, doveadm runs as the current user on the
absolute path. ``INDEX=MEMORY`` keeps Dovecot away from the restored ``dovecot.index*``
(rebuildable caches), so what it judges is the Maildir itself and its ``dovecot-uidlist``.
Dovecot cannot open a Maildir truly read-only (with cur/ not writable it cannot take the
uidlist lock nor give UIDs to mail in new/, and undercounts): it opens the disposable copy,
only after the catalog check, and the copy is removed afterwards. A folder whose restored
``dovecot-uidlist`` Dovecot rejects (it logs "Broken file" and gives the folder a new
UIDVALIDITY, so clients would download it again) is a warning (exit 1): the backup holds
exactly what the store had, but the administrator should know.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dmbackup.errors import (DamageFound, DmError, OperationFailed, UsageError, EXIT_DAMAGE, EXIT_OK,
                      EXIT_WARNING)
from dmbackup.source.maildir_names import dir_folder
from dmbackup.source.mailstore import base_name, is_transient
from dmbackup.engine.restore import TreeRestorer, in_selection
from dmbackup.engine.safetree import check_name, open_below, split_rel

SCRATCH_PREFIX = "drill-"
DOVEADM_TIMEOUT = 600
SPACE_RESERVE = 64 << 20
MAX_NAMED_FILES = 1000
RECORD_PROBLEMS = 5
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_UIDLIST_V3 = re.compile(rb"^3 .*?\bV(\d+)\b")
_UIDLIST_V1 = re.compile(rb"^1 (\d+) \d+")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z") if t else None


@dataclass
class DrillResult:
    target: str
    job: str | None = None
    snapshot: str | None = None
    mailbox: str | None = None
    picked: str | None = None               # "round-robin" | "asked"
    files: int = 0                          # files compared with the catalog
    dirs: int = 0
    links: int = 0
    bytes: int = 0                          # logical bytes of those files
    folders: int | None = None              # folders Dovecot opened; None: Dovecot not asked
    dovecot: str = "not asked"
    problems: list[str] = field(default_factory=list)
    damaged_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    error_code: int | None = None
    scratch: str | None = None
    scratch_removed: bool | None = None
    started: datetime | None = None
    finished: datetime | None = None
    cursor: str | None = None               # the round robin moves on to here (not reported)

    @property
    def result(self) -> str:
        if self.error is not None:
            return "error"
        return "damage" if self.problems else "ok"

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error_code or 3
        if self.problems:
            return EXIT_DAMAGE
        return EXIT_WARNING if self.warnings else EXIT_OK

    def damage(self, msg: str, path: str | None = None) -> None:
        self.problems.append(printable(msg))
        if path is not None and path not in self.damaged_files and len(self.damaged_files) < MAX_NAMED_FILES:
            self.damaged_files.append(path)

    def warn(self, msg: str) -> None:
        self.warnings.append(printable(msg))

    def as_dict(self) -> dict:
        return {"target": self.target, "job": self.job, "snapshot": self.snapshot, "mailbox": self.mailbox,
                "picked": self.picked, "result": self.result, "files": self.files, "dirs": self.dirs,
                "links": self.links, "bytes": self.bytes, "folders": self.folders, "dovecot": self.dovecot,
                "problems": self.problems, "damaged_files": self.damaged_files, "warnings": self.warnings,
                "error": self.error, "scratch": self.scratch, "scratch_removed": self.scratch_removed,
                "time": _iso(self.started), "finished": _iso(self.finished), "exit_code": self.exit_code}

    def record(self) -> dict:
        """What ``state_dir/drills.json`` keeps and ``status --json`` shows as ``last_drill``."""
        return {"time": _iso(self.started), "finished": _iso(self.finished), "snapshot": self.snapshot,
                "mailbox": self.mailbox, "result": self.result, "exit_code": self.exit_code,
                "files": self.files, "bytes": self.bytes, "folders": self.folders,
                "problems": (self.problems or ([self.error] if self.error else []))[:RECORD_PROBLEMS],
                "warnings": len(self.warnings), "job": self.job}

    def summary(self) -> str:
        return printable(self._summary())

    def _summary(self) -> str:
        what = (f"restore drill of {self.mailbox or '?'} from snapshot {self.snapshot or '?'} "
                f"on target {self.target!r}")
        if self.error is not None:
            return f"{what} could not run: {self.error}"
        dove = (f"Dovecot opened {self.folders} folder(s)" if self.folders is not None
                else f"Dovecot check: {self.dovecot}")
        if self.problems:
            files = f" ({len(self.damaged_files)} file(s) or folder(s) named)" if self.damaged_files else ""
            return (f"{what} found damage: {len(self.problems)} problem(s){files}, first: {self.problems[0]}: "
                    f"run `dmbackup verify --read-data --target {self.target}` and keep this medium; "
                    "restore that mailbox from an older snapshot if it is needed")
        text = f"{what} ok: {self.files} file(s), {self.bytes} bytes match the catalog; {dove}"
        if self.warnings:
            text += f"; {len(self.warnings)} warning(s)"
        return text


def printable(text: str) -> str:
    """Messages name files, and file names may hold any bytes (surrogate-escaped): the text that
    goes into logs, mails and state is valid UTF-8, with such bytes shown as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def mailboxes(rows) -> list[str]:
    """The ``<domain>/<user>`` prefixes that hold a Maildir, in a stable order."""
    out = set()
    for r in rows:
        parts = r.dir.split("/")
        if len(parts) == 3 and parts[2] == "Maildir" and all(parts[:2]):
            out.add(f"{parts[0]}/{parts[1]}")
    return sorted(out)


def address(prefix: str) -> str:
    domain, user = prefix.split("/", 1)
    return f"{user}@{domain}"


def next_in_turn(boxes: list[str], cursor) -> str:
    """The first mailbox after the one drilled last (by the same order); wraps around."""
    if isinstance(cursor, str) and cursor.count("@") >= 1:
        user, _, domain = cursor.rpartition("@")
        last = f"{domain}/{user}"
        for b in boxes:
            if b > last:
                return b
    return boxes[0]


def restore_drill(app, target_name: str, *, snapshot: str | None = None, mailbox: str | None = None,
                  job: str | None = None) -> DrillResult:
    """Drill one mailbox of ``snapshot`` (default: the newest); see the module docstring.

    Returns the result (``exit_code`` 0, 1 or 4). Usage errors raise ``UsageError`` and are
    not recorded; any other ``DmError`` (target unavailable, wrong key, interrupted...) is
    recorded as result "error" and raised again.
    """
    from dmbackup.engine import selection_prefix

    tcfg = app.config.target(target_name)
    if not getattr(tcfg, "repository", True):
        raise UsageError(f"target {target_name!r} holds only config bundles: a restore drill needs a mail "
                         "repository")
    if mailbox is not None:
        selection_prefix(mailbox, None)          # a malformed address is a usage error, before any I/O
    res = DrillResult(target_name, job=job, started=_now())
    try:
        _drill(app, target_name, res, snapshot, mailbox)
    except UsageError:
        raise
    except DamageFound as exc:                   # e.g. the snapshot's own catalog is damaged
        res.damage(f"{res.snapshot or 'the newest snapshot'}: {exc}")
    except DmError as exc:
        res.error, res.error_code = printable(str(exc)), exc.exit_code
        res.finished = _now()
        _record(app, res)
        raise
    res.finished = _now()
    _record(app, res)
    log = app.log.info if res.exit_code == EXIT_OK else (
        app.log.warning if res.exit_code == EXIT_WARNING else app.log.error)
    log("drill_done", **{k: v for k, v in res.as_dict().items() if k not in ("damaged_files",)})
    return res


def _record(app, res: DrillResult) -> None:
    try:
        app.state.record_drill(res.target, res.record(), job=res.job, cursor=res.cursor)
    except OSError as exc:
        app.log.error("state_write_failed", what="drills.json", error=str(exc))


def _drill(app, target_name: str, res: DrillResult, snapshot: str | None, mailbox: str | None) -> None:
    from dmbackup.engine import pick_snapshot, selection_prefix
    from dmbackup.engine.backup import open_repository

    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name, require_enrolled=False)
        ref = pick_snapshot(repo, snapshot, None)
        res.snapshot = ref.id
        rows, _ = repo.catalog_body(ref)
        boxes = mailboxes(rows)
        if mailbox is not None:
            prefix = selection_prefix(mailbox, None)[0]
            if prefix not in boxes:
                shown = ", ".join(address(b) for b in boxes[:10]) + (", ..." if len(boxes) > 10 else "")
                raise UsageError(f"mailbox {mailbox} is not in snapshot {ref.id} (it holds {len(boxes)}: "
                                 f"{shown or 'none'}): choose one of those")
            res.picked = "asked"
        else:
            if not boxes:
                raise OperationFailed(f"snapshot {ref.id} holds no mailbox (<domain>/<user>/Maildir): nothing to "
                                      "drill; check [source] mail_store")
            entry = app.state.drills().get("targets", {})
            entry = entry.get(target_name) if isinstance(entry, dict) else None
            prefix = next_in_turn(boxes, entry.get("cursor") if isinstance(entry, dict) else None)
            res.picked = "round-robin"
            # moves on even if this drill fails: one mailbox that cannot be drilled (too big for
            # state_dir, say) must not stop the others from ever being drilled
            res.cursor = address(prefix)
        res.mailbox = address(prefix)
        app.log.info("drill_start", target=target_name, snapshot=ref.id, mailbox=res.mailbox, picked=res.picked)
        _check_space(app, repo, ref, rows, prefix, res.mailbox)
        scratch = _make_scratch(app)
        res.scratch = scratch
        try:
            tree_dir = os.path.join(scratch, "tree")
            os.mkdir(tree_dir, 0o700)
            restorer = TreeRestorer(repo, ref, tree_dir, prefix=prefix, app=app)
            complete = True
            try:
                restored = restorer.run(rows)
            except DamageFound as exc:
                complete, restored = False, restorer.result
                res.damage(f"{ref.id}: restoring {res.mailbox} stopped: {exc}")
            listed = getattr(restored, "failed", [])
            for f in listed:
                res.damage(f"{ref.id}: {f['path']} cannot be restored: {f['error']}", f["path"])
            if getattr(restored, "failed_count", 0) > len(listed):
                res.damage(f"{ref.id}: {restored.failed_count - len(listed)} more entries of "
                           f"{res.mailbox} cannot be restored")
            for w in restored.warnings:
                res.warn(f"restore: {w}")
            if complete:
                _check_tree(repo, ref, rows, prefix, tree_dir, restorer, res, app)
                _dovecot_check(app, ref, prefix, scratch, tree_dir, res)
            else:                               # the problem is named; a half tree proves nothing more
                res.dovecot = "skipped: the mailbox could not be restored"
        except OSError as exc:                  # the scratch side (full disk, ...), not the backup
            raise OperationFailed(f"restore drill of {res.mailbox}: the scratch copy in {app.config.state_dir} "
                                  f"failed: {exc.strerror or exc}: check that file system") from None
        finally:
            try:
                remove_tree(scratch)
            except OSError as exc:              # must not hide what went wrong before
                app.log.error("drill_scratch_not_removed", path=scratch, error=str(exc))
            res.scratch_removed = not os.path.lexists(scratch)


def _check_space(app, repo, ref, rows, prefix: str, mailbox: str) -> None:
    """Refuse before writing when the copy would not fit: state_dir is often on the same file
    system as the mail store, and a full /var stops the mail server from taking mail."""
    need = 0
    for row in rows:
        if in_selection(row.dir, prefix):
            app.check_stop()
            need += sum(e.size for e in repo.page(ref.chain, row) if e.type == "f")
    need += need // 20 + SPACE_RESERVE             # directories, Dovecot's files, and room to spare
    os.makedirs(app.config.state_dir, mode=0o700, exist_ok=True)
    st = os.statvfs(app.config.state_dir)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise OperationFailed(f"restore drill of {mailbox}: the scratch copy needs about {need >> 20} MiB in "
                              f"{app.config.state_dir}, which has {free >> 20} MiB free: free space there or move "
                              "state_dir to a larger file system; nothing was written")


# --- the scratch directory ---------------------------------------------------------------
def _make_scratch(app) -> str:
    state_dir = app.config.state_dir
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    _remove_stale(state_dir, app)
    # mkdtemp creates it 0700: the restored mail is readable by no one else while it exists
    return tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=state_dir)


def _remove_stale(state_dir: str, app) -> None:
    """Scratch copies left by a drill that was killed: their process is gone."""
    for name in os.listdir(state_dir):
        m = re.match(rf"^{SCRATCH_PREFIX}(\d+)-", name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue                            # its drill may still be running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            remove_tree(os.path.join(state_dir, name))
            app.log.info("drill_leftover_removed", path=os.path.join(state_dir, name))
        except OSError as exc:                  # the new drill can still run beside it
            app.log.warning("drill_leftover_not_removed", path=os.path.join(state_dir, name), error=str(exc))


def remove_tree(path: str) -> None:
    """Remove ``path`` and everything below it through directory fds, never following a link."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        pfd = os.open(parent, _DIR)
    except FileNotFoundError:
        return
    try:
        _remove_at(pfd, name)
    finally:
        os.close(pfd)


def _remove_at(pfd: int, name: str) -> None:
    try:
        fd = os.open(name, _DIR, dir_fd=pfd)
    except FileNotFoundError:
        return
    except OSError:                             # not a directory (or a symlink): just the name
        os.unlink(name, dir_fd=pfd)
        return
    try:
        try:
            os.fchmod(fd, 0o700)               # a restored 0500 directory must not stop the cleanup
        except OSError:
            pass
        for child in os.listdir(fd):
            st = os.stat(child, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _remove_at(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=pfd)


# --- the catalog check -------------------------------------------------------------------
def _open_dir(root_fd: int, rel: str) -> int:
    return open_below(root_fd, split_rel(rel))


def _check_tree(repo, ref, rows, prefix: str, tree_dir: str, restorer, res: DrillResult, app) -> None:
    """Every entry of the selection, read back from the scratch copy, against the catalog.

    What the restore leaves out on purpose is judged by the same rules, not taken on trust:
    Dovecot's lock/temporary files need not be there; a message the catalog holds under two
    names in one Maildir folder (new/ and cur/, or two flag suffixes) must be there exactly
    once, under one of them; a name the catalog holds twice must match one of its entries.
    """
    parts = split_rel(prefix)

    def ancestor(d: str) -> bool:
        return d == "" or prefix.startswith(d + "/")

    failed = {f["path"] for f in getattr(restorer.result, "failed", [])}
    dirs: dict[str, dict[str, list]] = {}           # dir -> name -> catalog entries
    for row in rows:                                 # a big directory may span several pages
        d = row.dir
        if not (ancestor(d) or in_selection(d, prefix)) or d in failed:
            continue                                 # a page the restore could not read is named already
        app.check_stop()
        try:
            entries = repo.page(ref.chain, row)
        except DmError as exc:
            res.damage(f"{ref.id}: the catalog page of {d or '/'} cannot be read: {exc}", d)
            continue
        names = dirs.setdefault(d, {})
        for e in entries:
            if ancestor(d) and e.name != parts[len(split_rel(d))]:
                continue                             # only the way down to the mailbox
            check_name(e.name)
            names.setdefault(e.name, []).append(e)
    # a message's identity in a Maildir folder is its base name, whatever dir and flags
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for d, names in dirs.items():
        folder, _, sub = d.rpartition("/")
        if sub in ("new", "cur") and in_selection(d, prefix):
            for name, ents in names.items():
                if any(e.type == "f" for e in ents):
                    groups.setdefault((folder, base_name(name)), []).append((d, name))
    root_fd = os.open(tree_dir, _DIR)
    try:
        on_disk: dict[str, set[str] | None] = {}
        for d in dirs:
            try:
                fd = _open_dir(root_fd, d)
            except OSError as exc:
                on_disk[d] = None
                res.damage(f"{ref.id}: directory {d or '/'} was not restored ({exc.strerror})", d)
                continue
            try:
                on_disk[d] = set(os.listdir(fd))
            finally:
                os.close(fd)
        done: set[tuple[str, str]] = set()
        for d, names in dirs.items():
            if on_disk[d] is None:
                continue
            app.check_stop()
            for name, ents in names.items():
                path = f"{d}/{name}" if d else name
                if (d, name) in done:
                    continue
                if path in failed:
                    done.add((d, name))
                    _count(res, ents[0])
                    continue                         # named as not restorable already
                folder, _, sub = d.rpartition("/")
                members = groups.get((folder, base_name(name)), []) if sub in ("new", "cur") else []
                if len(members) > 1:
                    done.update(members)
                    _count(res, ents[0])
                    if any((f"{md}/{mn}") in failed for md, mn in members):
                        continue
                    present = [(md, mn) for md, mn in members if on_disk.get(md) and mn in on_disk[md]]
                    if len(present) != 1:
                        shown = ", ".join(f"{md.rpartition('/')[2]}/{mn}" for md, mn in members)
                        res.damage(f"{ref.id}: message {base_name(name)} of {folder} is in the catalog as {shown} "
                                   f"and was restored {len(present)} times, not once", path)
                        continue
                    md, mn = present[0]
                    _check_name(root_fd, md, mn, dirs[md][mn], restorer.chown, res, ref)
                    continue
                done.add((d, name))
                if name not in on_disk[d]:
                    if all(e.type == "f" and is_transient(e.name) for e in ents):
                        continue                     # a Dovecot lock file: never restored
                    _count(res, ents[0])
                    res.damage(f"{ref.id}: {path}: missing from the restored copy", path)
                    continue
                _count(res, ents[0])
                _check_name(root_fd, d, name, ents, restorer.chown, res, ref)
        for d, names in dirs.items():
            if on_disk[d] is None:
                continue
            for extra in sorted(on_disk[d] - set(names)):
                path = f"{d}/{extra}" if d else extra
                res.damage(f"{ref.id}: {path} is in the restored copy but not in the catalog", path)
    finally:
        os.close(root_fd)


def _count(res: DrillResult, e) -> None:
    if e.type == "f":
        res.files += 1
        res.bytes += e.size
    elif e.type == "d":
        res.dirs += 1
    else:
        res.links += 1


def _check_name(root_fd: int, d: str, name: str, ents: list, chown: bool, res: DrillResult, ref) -> None:
    """One restored name against its catalog entry (or entries: it must match one of them)."""
    path = f"{d}/{name}" if d else name
    fd = _open_dir(root_fd, d)
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


def _stat_at(root_fd: int, rel: str) -> os.stat_result:
    parent, _, name = rel.rpartition("/")
    fd = _open_dir(root_fd, parent)
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
        fd = os.open(e.name, _READ, dir_fd=dfd)
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


# --- Dovecot's view ----------------------------------------------------------------------
def _doveadm_path(app) -> str | None:
    exe = app.config.source.doveadm
    found = exe if os.path.isabs(exe) else shutil.which(exe)
    return found if found and os.access(found, os.X_OK) else None


def _quote(value: str) -> str:
    """A Dovecot config value: quoted, with % doubled so it is never expanded."""
    if "\n" in value or "\0" in value:
        raise ValueError(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _expected_folders(tree_fd: int, md_rel: str) -> dict[str, tuple[int, int | None]]:
    """Folder name -> (messages in cur/ and new/, UIDVALIDITY of its dovecot-uidlist or None).

    INBOX is the Maildir itself; ``.Name`` directories with a ``cur/`` are Maildir++ folders.
    """
    out = {}
    md = _open_dir(tree_fd, md_rel)
    try:
        candidates = [""] + sorted(n for n in os.listdir(md) if n.startswith(".") and n not in (".", ".."))
        for d in candidates:
            try:
                fd = _open_dir(md, d) if d else os.dup(md)
            except OSError:
                continue                        # a file named like a folder, or a link: not a folder
            try:
                try:
                    os.stat("cur", dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if d:
                        continue
                count = 0
                for sub in ("cur", "new"):
                    try:
                        sfd = os.open(sub, _DIR, dir_fd=fd)
                    except OSError:
                        continue
                    try:
                        for n in os.listdir(sfd):
                            if not n.startswith(".") and stat.S_ISREG(
                                    os.stat(n, dir_fd=sfd, follow_symlinks=False).st_mode):
                                count += 1
                    finally:
                        os.close(sfd)
                uidvalidity = None
                try:
                    ufd = os.open("dovecot-uidlist", _READ, dir_fd=fd)
                    try:
                        head = os.read(ufd, 512).split(b"\n", 1)[0]
                    finally:
                        os.close(ufd)
                    m = _UIDLIST_V3.match(head) or _UIDLIST_V1.match(head)
                    uidvalidity = int(m.group(1)) if m else None
                except OSError:
                    pass
                try:
                    name = dir_folder(d)
                except (ValueError, UnicodeDecodeError):
                    continue                    # not a name Dovecot would show either
                out[name] = (count, uidvalidity)
            finally:
                os.close(fd)
    finally:
        os.close(md)
    return out


def _dovecot_check(app, ref, prefix: str, scratch: str, tree_dir: str, res: DrillResult) -> None:
    exe = _doveadm_path(app)
    if exe is None:
        res.dovecot = "doveadm not installed"
        return
    md_rel = f"{prefix}/Maildir"
    tree_fd = os.open(tree_dir, _DIR)
    try:
        try:
            expected = _expected_folders(tree_fd, md_rel)
            st = _stat_at(tree_fd, md_rel)
        except OSError as exc:
            res.damage(f"{ref.id}: {md_rel} cannot be read back ({exc.strerror})", md_rel)
            return
    finally:
        os.close(tree_fd)
    src = app.config.source
    as_root = os.geteuid() == 0
    if as_root:
        uid = src.vmail_uid if src.vmail_uid is not None else st.st_uid
        gid = src.vmail_gid if src.vmail_gid is not None else st.st_gid
        if uid == 0 or gid == 0:
            res.damage(f"{ref.id}: {md_rel} is owned by uid/gid {st.st_uid}:{st.st_gid}; Dovecot refuses uid or "
                       "gid 0 for mail access, so it could not serve this mailbox: set [source] vmail_uid/vmail_gid "
                       "or fix the owner in the mail store", md_rel)
            return
        # Dovecot (as the mail uid) must reach / of the chroot, i.e. the scratch tree itself
        os.chown(tree_dir, uid, gid)
        home = "/" + prefix
    else:
        uid, gid = os.geteuid(), os.getegid()
        home = os.path.join(tree_dir, prefix)
    work = os.path.join(scratch, "dovecot")
    os.mkdir(work, 0o700)
    conf = os.path.join(work, "dovecot.conf")
    try:
        lines = [
            "# written by dmbackup's restore drill: a private config for one scratch copy",
            f"base_dir = {_quote(work)}",
            f"state_dir = {_quote(work)}",
            "log_path = /dev/stderr",
            "ssl = no",
            "protocols = none",
            "stats_writer_socket_path =",
            "mail_location = maildir:~/Maildir:INDEX=MEMORY",
            "mail_fsync = never",
            f"mail_uid = {uid}", f"mail_gid = {gid}",
            f"first_valid_uid = {uid}", f"last_valid_uid = {uid}",
            f"first_valid_gid = {gid}", f"last_valid_gid = {gid}",
            "namespace inbox {", "  inbox = yes", "  separator = /", "}",
        ]
        if as_root:
            lines += [f"mail_chroot = {_quote(tree_dir)}", f"valid_chroot_dirs = {_quote(tree_dir)}"]
    except ValueError:
        res.dovecot = "skipped: the state_dir path cannot be written into a Dovecot config"
        res.warn(f"Dovecot was not asked: {res.dovecot}")
        return
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "USER": res.mailbox,
           "HOME": home, "LANG": "C.UTF-8"}
    try:
        p = subprocess.run([exe, "-c", conf, "-f", "json", "mailbox", "status", "messages uidvalidity uidnext", "*"],
                           capture_output=True, env=env, timeout=DOVEADM_TIMEOUT, cwd=work, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        res.damage(f"{ref.id}: Dovecot did not finish opening the folders of {res.mailbox} in {DOVEADM_TIMEOUT} s")
        res.dovecot = "timed out"
        return
    except OSError as exc:
        res.dovecot = f"doveadm could not be started: {exc.strerror}"
        res.warn(res.dovecot)
        return
    errors = [ln for ln in p.stderr.decode("utf-8", "replace").splitlines() if "Error:" in ln or "Fatal:" in ln]
    try:
        seen = {str(r["mailbox"]): r for r in json.loads(p.stdout.decode("utf-8", "replace") or "[]")
                if isinstance(r, dict) and "mailbox" in r}
    except ValueError:
        seen = {}
    if not seen and p.returncode != 0:
        res.damage(f"{ref.id}: Dovecot could not open {res.mailbox} (doveadm exit {p.returncode}): "
                   f"{_short(errors[-1] if errors else p.stderr.decode('utf-8', 'replace'))}", md_rel)
        res.dovecot = "failed"
        return
    res.dovecot = "checked"
    res.folders = 0
    for name, (count, uidvalidity) in sorted(expected.items()):
        own = [ln for ln in errors if f"Mailbox {name}: " in ln]
        row = seen.get(name)
        where = f"{md_rel}/{'' if name == 'INBOX' else _folder_dir_name(name)}".rstrip("/")
        if row is None:
            res.damage(f"{ref.id}: Dovecot cannot open folder {name!r} of {res.mailbox}: "
                       f"{_short(own[-1]) if own else 'it does not list it'}", where)
            continue
        res.folders += 1
        try:
            messages, got_validity = int(row.get("messages")), int(row.get("uidvalidity"))
        except (TypeError, ValueError):
            res.damage(f"{ref.id}: Dovecot gave no status for folder {name!r} of {res.mailbox}", where)
            continue
        if messages != count:
            res.damage(f"{ref.id}: Dovecot sees {messages} message(s) in folder {name!r} of {res.mailbox}, "
                       f"the restored folder holds {count} file(s)", where)
        if uidvalidity is not None and got_validity != uidvalidity:
            res.warn(
                f"Dovecot could not use the restored dovecot-uidlist of folder {name!r} of {res.mailbox} (it gave "
                f"the folder a new UIDVALIDITY, {got_validity} instead of {uidvalidity}, so clients would download "
                f"it again){': ' + _short(own[0]) if own else ''}")
        elif own:
            res.warn(f"Dovecot, opening folder {name!r} of {res.mailbox}: {_short(own[0])}")


def _folder_dir_name(name: str) -> str:
    from dmbackup.source.maildir_names import folder_dir

    try:
        return folder_dir(name)
    except ValueError:
        return name


def _short(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    # doveadm's prefix "doveadm(user)<pid><session>: " says nothing the message does not
    text = re.sub(r"^doveadm\([^)]*\)(<[^>]*>)*: ", "", text)
    return text if len(text) <= n else text[: n - 3] + "..."
