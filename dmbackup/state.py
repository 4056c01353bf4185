"""Local state in ``state_dir`` (default /var/lib/dmbackup): enrolled repositories, run history.

``repos.json``   {target name: [repository ids enrolled by `dmbackup init`]}: a backup refuses a
                 target whose repository id is not listed (wrong disk, empty mount point).
``runs.json``    {job name: {"last_run": {...}, "last_success": {...}}}: what `status` reports.
``drills.json``  {"targets": {target: {"cursor": mailbox drilled last in turn, "last": {...}}},
                 "jobs": {job: {...}}}: restore drills (dmbackup.engine.drill) and their round robin.
``trust.json``   {target name: {repository id: {"mode", "fingerprint", "created", "mac",
                 "newest": {"chain", "seq", "id", "time"}, "config_newest": snapshot name}}}:
                 what this machine knows about each enrolled repository that the medium cannot
                 be trusted to say (dmbackup.archive.trust); for a mailbox target, the newest
                 bundle sent or seen. Nothing in it is secret.
``dirs-<repo id>.json``  the directories of the newest mail snapshot written to that
                 repository from here (dmbackup.engine.dirrecord): the next incremental's fast
                 path. Nothing in it is secret; losing it costs one slower incremental.
``pagekeys/<repo id>/<chain>/<snapshot>``  which contents each stored message page lists
                 (dmbackup.engine.pagekeys): find's shortcut. Losing it costs one slower search.
``tables/<repo id>/<chain>/<snapshot>``  catalog bodies as parsed, for the catalog bytes they
                 were parsed from (dmbackup.archive.tablecache): every reader's shortcut past
                 the JSON. Losing it costs one slower read of each catalog.

The directory is 0700 and every file 0600, whatever the umask of the caller.

Every write is atomic (temporary file, fsync, rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from typing import Any

_lock = threading.Lock()


class State:
    def __init__(self, state_dir: str):
        self.dir = state_dir

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def read_json(self, name: str) -> dict:
        """A JSON object from ``state_dir/name``; {} when missing or unreadable."""
        return self._read(name)

    def write_json(self, name: str, data: dict) -> None:
        """Atomically replace ``state_dir/name`` with ``data``."""
        self._write(name, data)

    def write_cache(self, name: str, data: dict) -> None:
        """Atomically replace ``state_dir/name`` with ``data``, compact and without fsync: for
        what only makes a run faster (an empty file after a crash reads as missing)."""
        self._ensure_dir()
        write_atomic(self._path(name), json.dumps(data, separators=(",", ":")), durable=False)

    def _ensure_dir(self) -> None:
        if not os.path.isdir(self.dir):
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            os.chmod(self.dir, 0o700)          # makedirs' mode is filtered by the umask

    def _read(self, name: str) -> dict:
        try:
            with open(self._path(name), encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def _write(self, name: str, data: dict) -> None:
        self._ensure_dir()
        write_atomic(self._path(name), json.dumps(data, indent=1, sort_keys=True))

    # --- enrolled repositories -----------------------------------------------------------
    def enrolled(self, target: str) -> list[str]:
        ids = self._read("repos.json").get(target, [])
        return [i for i in ids if isinstance(i, str)]

    def enrol(self, target: str, repo_id: str) -> None:
        with _lock:
            data = self._read("repos.json")
            ids = [i for i in data.get(target, []) if i != repo_id]
            ids.append(repo_id)
            data[target] = ids
            self._write("repos.json", data)

    # --- what was enrolled, beyond the id (dmbackup.archive.trust) ------------------------
    def trust(self, target: str, repo_id: str) -> dict | None:
        rec = self._read("trust.json").get(target, {})
        rec = rec.get(repo_id) if isinstance(rec, dict) else None
        return dict(rec) if isinstance(rec, dict) else None

    def set_trust(self, target: str, repo_id: str, record: dict) -> None:
        with _lock:
            data = self._read("trust.json")
            per = data.get(target)
            per = per if isinstance(per, dict) else {}
            per[repo_id] = record
            data[target] = per
            self._write("trust.json", data)

    def update_trust(self, target: str, repo_id: str, **fields) -> dict:
        """Merge ``fields`` into the record (created if missing); returns the new record."""
        with _lock:
            data = self._read("trust.json")
            per = data.get(target)
            per = per if isinstance(per, dict) else {}
            rec = per.get(repo_id)
            rec = dict(rec) if isinstance(rec, dict) else {}
            rec.update(fields)
            per[repo_id] = rec
            data[target] = per
            self._write("trust.json", data)
            return rec

    # --- run history ---------------------------------------------------------------------
    def runs(self) -> dict[str, Any]:
        return self._read("runs.json")

    def record_run(self, job: str, record: dict[str, Any]) -> None:
        """``record`` has at least time (ISO UTC), status ("ok"|"warning"|"failed"), exit_code."""
        with _lock:
            data = self._read("runs.json")
            entry = data.get(job, {})
            entry["last_run"] = record
            if record.get("status") in ("ok", "warning"):
                entry["last_success"] = record
            data[job] = entry
            self._write("runs.json", data)

    # --- restore drills ------------------------------------------------------------------
    def drills(self) -> dict[str, Any]:
        return self._read("drills.json")

    def record_drill(self, target: str, record: dict[str, Any], *, job: str | None = None,
                     cursor: str | None = None) -> None:
        """The last drill of ``target`` (and of ``job``, when a job ran it); ``cursor`` moves the
        round robin on (only drills that picked their mailbox in turn pass it)."""
        with _lock:
            data = self._read("drills.json")
            targets = data.get("targets") if isinstance(data.get("targets"), dict) else {}
            entry = targets.get(target) if isinstance(targets.get(target), dict) else {}
            entry["last"] = record
            if cursor is not None:
                entry["cursor"] = cursor
            targets[target] = entry
            data["targets"] = targets
            if job is not None:
                jobs = data.get("jobs") if isinstance(data.get("jobs"), dict) else {}
                jobs[job] = record
                data["jobs"] = jobs
            self._write("drills.json", data)


def private_dirs(*levels: str) -> None:
    """Create the directory ``os.path.join(*levels)`` level by level, each new one 0700
    whatever the umask (makedirs applies its mode to the last level only, and through the umask)."""
    path = ""
    for part in levels:
        path = os.path.join(path, part)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)


def read_cache_file(path: str, cap: int) -> bytes | None:
    """A cache file's bytes, or None when it is missing, unreadable, a symlink (never
    followed) or longer than ``cap``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(cap + 1)
        finally:
            os.close(fd)
    except OSError:
        return None
    return data if len(data) <= cap else None


def forget_snapshot_files(root: str | None, live: set[tuple[str, str]], ours) -> None:
    """In a per-snapshot cache ``root/<chain>/<snapshot>``, remove the files of snapshots not
    in ``live`` (only names ``ours(name)`` accepts) and the chain directories left without a
    live one. Silent: a cache only ever makes a run faster."""
    if root is None:
        return
    try:
        chains = os.listdir(root)
    except OSError:
        return
    for chain in chains:
        cdir = os.path.join(root, chain)
        try:
            names = os.listdir(cdir)
        except OSError:
            continue
        for name in names:
            if (chain, name) not in live and ours(name):
                try:
                    os.unlink(os.path.join(cdir, name))
                except OSError:
                    pass
        if not any((chain, n) in live for n in names):
            try:
                os.rmdir(cdir)
            except OSError:
                pass


def write_atomic(path: str, text: str | bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``text`` (str: UTF-8): a temporary file in the same directory, fsync,
    rename. Readers see the old file or the new one, never half of one. ``durable=False`` (a
    cache): no fsync, so after a power cut the file may read as empty, which callers take as missing."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8")) as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
