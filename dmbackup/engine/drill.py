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

The catalog check is dmbackup.engine.drillcheck, Dovecot's view (and how Dovecot is asked)
dmbackup.engine.drilldovecot; the runner, its result and the scratch directory are here.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dmbackup.engine.drillcheck import check_tree
from dmbackup.engine.drilldovecot import dovecot_check
from dmbackup.engine.restore import TreeRestorer, in_selection
from dmbackup.engine.safetree import DIR_FLAGS
from dmbackup.config import holds_repository
from dmbackup.errors import (DamageFound, DmError, OperationFailed, UsageError, EXIT_DAMAGE, EXIT_OK,
                             EXIT_WARNING)
from dmbackup.engine.result import Result

SCRATCH_PREFIX = "drill-"
SPACE_RESERVE = 64 << 20
MAX_NAMED_FILES = 1000
RECORD_PROBLEMS = 5


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z") if t else None


@dataclass
class DrillResult(Result):
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
    from dmbackup.engine.select import selection_prefix

    tcfg = app.config.target(target_name)
    if not holds_repository(tcfg):
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
    from dmbackup.engine.backup import open_repository
    from dmbackup.engine.select import pick_snapshot

    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name, require_enrolled=False)
        ref = pick_snapshot(repo, snapshot, None)
        res.snapshot = ref.id
        rows, _ = repo.catalog_body(ref)
        prefix = _pick_mailbox(app, target_name, res, ref, rows, mailbox)
        res.mailbox = address(prefix)
        app.log.info("drill_start", target=target_name, snapshot=ref.id, mailbox=res.mailbox, picked=res.picked)
        _check_space(app, repo, ref, rows, prefix, res.mailbox)
        scratch = _make_scratch(app)
        res.scratch = scratch
        try:
            _restore_and_check(app, repo, ref, rows, prefix, scratch, res)
        except OSError as exc:                  # the scratch side (full disk, ...), not the backup
            raise OperationFailed(f"restore drill of {res.mailbox}: the scratch copy in {app.config.state_dir} "
                                  f"failed: {exc.strerror or exc}: check that file system") from None
        finally:
            try:
                remove_tree(scratch)
            except OSError as exc:              # must not hide what went wrong before
                app.log.error("drill_scratch_not_removed", path=scratch, error=str(exc))
            res.scratch_removed = not os.path.lexists(scratch)


def _pick_mailbox(app, target_name: str, res: DrillResult, ref, rows, mailbox: str | None) -> str:
    """The ``<domain>/<user>`` to drill: the one asked for, or the next in turn."""
    from dmbackup.engine.select import selection_prefix

    boxes = mailboxes(rows)
    if mailbox is not None:
        prefix = selection_prefix(mailbox, None)[0]
        if prefix not in boxes:
            shown = ", ".join(address(b) for b in boxes[:10]) + (", ..." if len(boxes) > 10 else "")
            raise UsageError(f"mailbox {mailbox} is not in snapshot {ref.id} (it holds {len(boxes)}: "
                             f"{shown or 'none'}): choose one of those")
        res.picked = "asked"
        return prefix
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
    return prefix


def _restore_and_check(app, repo, ref, rows, prefix: str, scratch: str, res: DrillResult) -> None:
    """Restore the mailbox into the scratch dir with the real restore code, then check the copy."""
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
        check_tree(repo, ref, rows, prefix, tree_dir, restorer, res, app)
        dovecot_check(app, ref, prefix, scratch, tree_dir, res)
    else:                               # the problem is named; a half tree proves nothing more
        res.dovecot = "skipped: the mailbox could not be restored"


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
        pfd = os.open(parent, DIR_FLAGS)
    except FileNotFoundError:
        return
    try:
        _remove_at(pfd, name)
    finally:
        os.close(pfd)


def _remove_at(pfd: int, name: str) -> None:
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
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
