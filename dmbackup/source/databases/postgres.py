"""PostgreSQL: dump, check, exists, restore.

Dump: ``pg_dump -Fc`` run as the OS user ``user`` (default ``postgres``) so that peer
authentication on the unix socket applies and no password exists at all; dmbackup must be
root to switch (or already be that user). The newest ``/usr/lib/postgresql/*/bin`` tools are
used (a newer pg_dump reads every older server), else the ones on PATH. Optional ``host``
(socket directory) and ``port`` address a cluster that is not on the default socket. One
snapshot (pg_dump's serializable transaction). The dump is written to a regular file, so it
carries data offsets (pg_restore can seek).

Restore: ``pg_restore --single-transaction --clean --if-exists --exit-on-error`` into the
database (created with CREATE DATABASE first if missing): all or nothing. Objects the dump
does not have are left alone; ownership is kept (the roles must exist, as they do on the
server the dump came from).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dmbackup.errors import RestoreError, SourceError
from dmbackup.source.databases.tools import _need_tool, _run, _write_from

if TYPE_CHECKING:
    from dmbackup.source.databases.spec import DatabaseSpec


def _pg_conn(spec: DatabaseSpec) -> list[str]:
    argv = ["--no-password"]
    if spec.host:
        argv += ["--host", spec.host]
    if spec.port:
        argv += ["--port", str(spec.port)]
    return argv


def dump(spec: DatabaseSpec, path: str, error: type[Exception]) -> str:
    tool = _need_tool(spec, "dump", error)
    argv = [tool, "--format=custom", *_pg_conn(spec), "--dbname", spec.name]
    _write_from(argv, path, error=error, what=f"{spec.label}: dump failed", as_user=spec.user)
    with open(path, "rb") as f:
        if f.read(5) != b"PGDMP":
            raise error(f"{spec.label}: dump failed: {os.path.basename(tool)} wrote no custom-format archive")
    return tool


def check(spec: DatabaseSpec, problems: list[str]) -> None:
    """The tools and a connection as the peer user (``SourceError`` when it fails)."""
    _need_tool(spec, "dump", SourceError)
    psql = _need_tool(spec, "client", SourceError)
    _run([psql, "-X", "-A", "-t", *_pg_conn(spec), "--dbname", spec.name, "--command", "SELECT 1"],
         error=SourceError, what=f"{spec.label}: cannot connect", as_user=spec.user)


def exists(spec: DatabaseSpec, error: type[Exception] = SourceError) -> bool:
    psql = _need_tool(spec, "client", error)
    p = _run([psql, "-X", "-A", "-t", *_pg_conn(spec), "--dbname", "postgres", "-v", f"db={spec.name}",
              "-v", "ON_ERROR_STOP=1"],
             input=b"SELECT 1 FROM pg_database WHERE datname = :'db';\n", as_user=spec.user,
             error=error, what=f"{spec.label}: cannot connect")
    return bool(p.stdout.strip())


def restore(spec: DatabaseSpec, dump_path: str, replaced: str | os.PathLike | None) -> None:
    pg_restore = _need_tool(spec, "restore", RestoreError)
    if not exists(spec, RestoreError):
        psql = _need_tool(spec, "client", RestoreError)
        _run([psql, "-X", "-A", "-t", *_pg_conn(spec), "--dbname", "postgres", "-v", f"db={spec.name}",
              "-v", "ON_ERROR_STOP=1"], input=b'CREATE DATABASE :"db";\n', as_user=spec.user,
             error=RestoreError, what=f"{spec.label}: cannot create the database")
    argv = [pg_restore, "--single-transaction", "--clean", "--if-exists", "--exit-on-error",
            *_pg_conn(spec), "--dbname", spec.name]
    # The dump is handed over on stdin (a regular file: seekable), so the postgres user
    # needs no access to dmbackup's directories.
    with open(dump_path, "rb") as f:
        _run(argv, stdin=f, as_user=spec.user, error=RestoreError,
             what=f"{spec.label}: restore failed, nothing was changed")

