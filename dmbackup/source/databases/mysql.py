"""MariaDB/MySQL (Postfixadmin, iRedMail, mailcow): dump, check, exists, restore.

Dump: ``mariadb-dump`` (or ``mysqldump``) ``--defaults-file=F --single-transaction --routines
--triggers --hex-blob --skip-dump-date NAME``. User, password and socket come only from the
defaults file (default ``/etc/mysql/debian.cnf``; root's unix-socket login on Debian). One
REPEATABLE READ snapshot: InnoDB tables are consistent while rows are being written; no
CREATE DATABASE/USE in the dump, so it can be applied to a database of any name; no dump
date, so an unchanged database gives a byte-identical dump. A dump without mysqldump's
closing "Dump completed" line counts as failed.

Restore: ``mariadb --defaults-file=F --one-database --binary-mode NAME < dump`` after
``CREATE DATABASE IF NOT EXISTS``. MySQL commits implicitly at every DROP/CREATE TABLE, so
the apply is *not* one transaction: each table is replaced in turn (DROP TABLE IF EXISTS,
CREATE, INSERT). If applying fails, the dump of what was replaced is applied back (best
effort) and the error says whether that worked and where that dump is. Tables of the live
database that the dump does not have are left alone.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from dmbackup.errors import RestoreError, SourceError
from dmbackup.source.databases.tools import _check_readable, _need_tool, _run, _write_from

if TYPE_CHECKING:
    from dmbackup.source.databases.spec import DatabaseSpec


def _mysql_argv(tool: str, spec: DatabaseSpec) -> list[str]:
    # --defaults-file must come first; it is the only option file read (no ~/.my.cnf).
    return [tool, f"--defaults-file={spec.defaults_file}"]


def dump(spec: DatabaseSpec, path: str, error: type[Exception]) -> str:
    tool = _need_tool(spec, "dump", error)
    _check_readable(spec.defaults_file, spec, error)
    argv = _mysql_argv(tool, spec) + ["--single-transaction", "--routines", "--triggers", "--hex-blob",
                                      "--skip-dump-date", "--default-character-set=utf8mb4", "--", spec.name]
    _write_from(argv, path, error=error, what=f"{spec.label}: dump failed")
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 256))
        if b"-- Dump completed" not in f.read():
            raise error(f"{spec.label}: dump failed: {os.path.basename(tool)} ended without "
                        "'Dump completed' (the dump is incomplete)")
    return tool


def check(spec: DatabaseSpec, problems: list[str]) -> None:
    """The tools, the defaults file (readable, mode 0600) and a connection with it: problems
    are appended to ``problems``; ``SourceError`` for the one that stops the rest."""
    _need_tool(spec, "dump", SourceError)
    client = _need_tool(spec, "client", SourceError)
    df = spec.defaults_file
    try:
        st = os.stat(df)
    except OSError as exc:
        raise SourceError(f"{spec.label}: credentials file {df} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{spec.label}: credentials file {df} is not a regular file")
    if st.st_mode & 0o077:
        problems.append(f"{spec.label}: credentials file {df} is readable by others "
                        f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {df}")
    if not os.access(df, os.R_OK):
        raise SourceError(f"{spec.label}: credentials file {df} is not readable by this user")
    _run(_mysql_argv(client, spec) + ["--batch", "--skip-column-names", "--execute", "SELECT 1",
                                      "--", spec.name],
         error=SourceError, what=f"{spec.label}: cannot connect")


def exists(spec: DatabaseSpec, error: type[Exception] = SourceError) -> bool:
    client = _need_tool(spec, "client", error)
    p = _run(_mysql_argv(client, spec) + ["--batch", "--skip-column-names"],
             input=b"SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = "
                   + _mysql_string(spec.name).encode() + b";\n",
             error=error, what=f"{spec.label}: cannot connect")
    return bool(p.stdout.strip())


def _mysql_string(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "''") + "'"


def _mysql_ident(s: str) -> str:
    return "`" + s.replace("`", "``") + "`"


def restore(spec: DatabaseSpec, dump_path: str, replaced: str | os.PathLike | None) -> None:
    client = _need_tool(spec, "client", RestoreError)
    base = _mysql_argv(client, spec)
    _run(base + ["--batch"], input=f"CREATE DATABASE IF NOT EXISTS {_mysql_ident(spec.name)};\n".encode(),
         error=RestoreError, what=f"{spec.label}: cannot create the database")
    apply = base + ["--batch", "--one-database", "--binary-mode", "--", spec.name]
    try:
        with open(dump_path, "rb") as f:
            _run(apply, stdin=f, error=RestoreError, what=f"{spec.label}: restore failed")
    except RestoreError as exc:
        if replaced is None:
            raise
        try:
            with open(replaced, "rb") as f:
                _run(apply, stdin=f, error=RestoreError, what="put back")
            after = f"the previous content was put back (its dump: {os.fspath(replaced)})"
        except RestoreError as exc2:
            after = (f"putting the previous content back failed too ({exc2}); "
                     f"its dump is {os.fspath(replaced)}")
        raise RestoreError(f"{exc}; {after}") from None

