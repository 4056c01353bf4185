"""SQLite (Mail-in-a-Box's users.sqlite, Postfixadmin on SQLite): dump, check, restore.

Dump: SQLite's online backup API (Python's ``sqlite3``) from a read-only connection: one read
transaction, so the copy is consistent even while the application writes, and never a file
copy of a live database. The copy is switched to journal_mode=DELETE and passes ``PRAGMA
quick_check``.

Restore: the backup API from the dump into the live file (created if missing): SQLite
replaces the whole content in one write transaction, and the file keeps its inode, owner and
mode.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from typing import TYPE_CHECKING

from dmbackup.errors import RestoreError, SourceError
from dmbackup.source.databases.tools import _one_line

if TYPE_CHECKING:
    from dmbackup.source.databases.spec import DatabaseSpec


def _sqlite_uri(path: str, mode: str) -> str:
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + f"?mode={mode}"


def dump(spec: DatabaseSpec, path: str, error: type[Exception]) -> str:
    what = f"{spec.label}: dump failed"
    if not os.path.isfile(spec.path):
        raise error(f"{what}: {spec.path} does not exist or is not a file")
    src = dst = None
    try:
        # Read-only: never creates a journal, -wal or -shm file owned by root next to the
        # application's database.
        src = sqlite3.connect(_sqlite_uri(spec.path, "ro"), uri=True, timeout=60, isolation_level=None)
        # Take the read lock first, through the busy handler (which waits for a writer's
        # commit); the backup then copies within that read transaction. Left to itself,
        # backup_step only retries every 250 ms and starves behind a busy writer.
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()   # "file is not a database"
        dst = sqlite3.connect(path)
        src.backup(dst)                   # pages=-1: everything in one step
        dst.execute("PRAGMA journal_mode=DELETE").fetchone()
        result = dst.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise error(f"{what}: the copy fails quick_check: {result}")
    except sqlite3.Error as exc:
        raise error(f"{what}: {_one_line(str(exc))}") from None
    finally:
        for conn in (src, dst):
            if conn is not None:
                conn.close()
    return "sqlite3"



def check(spec: DatabaseSpec, problems: list[str]) -> None:
    """The file exists and opens as a database."""
    if not os.path.isfile(spec.path):
        raise SourceError(f"{spec.label}: {spec.path} does not exist or is not a file")
    try:
        conn = sqlite3.connect(_sqlite_uri(spec.path, "ro"), uri=True, timeout=10)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        problems.append(f"{spec.label}: cannot be read: {exc}")


def exists(spec: DatabaseSpec, error: type[Exception] = SourceError) -> bool:
    return os.path.exists(spec.path)


def restore(spec: DatabaseSpec, dump_path: str, replaced: str | os.PathLike | None) -> None:
    src = dst = None
    try:
        src = sqlite3.connect(_sqlite_uri(dump_path, "ro"), uri=True)
        result = src.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise RestoreError(f"{spec.label}: the dump {dump_path} fails quick_check: {result}")
        dst = sqlite3.connect(spec.path, timeout=60)
        src.backup(dst)        # one write transaction on the live file
    except sqlite3.Error as exc:
        raise RestoreError(f"{spec.label}: restore failed, nothing was changed: {_one_line(str(exc))}") from None
    finally:
        for conn in (src, dst):
            if conn is not None:
                conn.close()

