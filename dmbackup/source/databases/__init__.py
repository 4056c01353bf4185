"""Dumps of the user databases a mail server keeps its domains, mailboxes and aliases in.

A config bundle without the database behind Postfix and Dovecot restores an appliance that
knows no users. ``[[source.databases]]`` names each database; ``parse_specs`` turns those
entries into ``DatabaseSpec`` values (``spec``), ``dump`` writes one consistent dump,
``check`` says what stops a dump (for check-config), and ``restore`` applies a dump to the
live database after dumping what it replaces.

One module per engine says which tool it runs, where the credentials come from, and what
"consistent" and "restore" mean there: ``mysql`` (MariaDB/MySQL: mariadb-dump
--single-transaction with a defaults file; restore table by table, the previous content put
back on failure), ``postgres`` (pg_dump -Fc as the peer user; pg_restore
--single-transaction: all or nothing), ``sqlite`` (the online backup API; restore in one
write transaction), ``ldap`` (slapcat; restore as the LDIF difference sent to the running
slapd, put back on failure). ``tools`` runs the tools, ``ldif`` reads and writes LDIF.

Every child gets a scrubbed environment without the variables the tools would take
connection settings or passwords from (``tools``): no credential is ever in an argv or an
environment. A failure raises ``SourceError`` (dump, exit 3) or ``RestoreError`` (restore,
exit 3) with one line naming the database; a bad entry raises ``ConfigError`` (exit 2).
This package does not import typer, the CLI or the engine.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
from typing import BinaryIO

from dmbackup.errors import RestoreError, SourceError
from dmbackup.source.databases import ldap, mysql, postgres, sqlite
from dmbackup.source.databases.ldap import ROOT_PEER_DN, EmptyDirectory, ldif_changes
from dmbackup.source.databases.ldif import _ldif_line, parse_ldif
from dmbackup.source.databases.spec import (DEFAULT_DEFAULTS_FILE, DEFAULT_LDAP_URI, DEFAULT_PG_USER,
                                            DEFAULT_SLAPD_CONFIG, EXTENSIONS, KEYS, TYPES, DatabaseSpec,
                                            DumpInfo, parse_specs)
from dmbackup.source.databases.tools import _child_env, _one_line, _pg_tool, tool_version

__all__ = ["TYPES", "EXTENSIONS", "KEYS", "DEFAULT_DEFAULTS_FILE", "DEFAULT_PG_USER", "DEFAULT_SLAPD_CONFIG",
           "DEFAULT_LDAP_URI", "ROOT_PEER_DN", "DatabaseSpec", "DumpInfo", "EmptyDirectory", "parse_specs",
           "dump", "check", "restore", "exists", "tool_version", "parse_ldif", "ldif_changes",
           "_ldif_line", "_child_env", "_one_line", "_pg_tool"]

_ENGINES = {"mysql": mysql, "postgresql": postgres, "sqlite": sqlite, "ldap": ldap}
_CHUNK = 1 << 20


# --- dump -------------------------------------------------------------------------------
def dump(spec: DatabaseSpec, out: str | os.PathLike | BinaryIO) -> DumpInfo:
    """Write one consistent dump of ``spec`` to ``out`` (a path, written as ``<path>.part`` and
    renamed when complete, mode 0600; or a binary file object) -> ``DumpInfo``. Raises
    ``SourceError`` (exit 3) naming the database when the dump fails."""
    if isinstance(out, (str, os.PathLike)):
        final = os.fspath(out)
        _not_the_live_file(spec, final, SourceError)
        part = final + ".part"
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SourceError(f"{spec.label}: cannot write the dump to {part}: {exc.strerror}") from None
        os.close(fd)
        try:
            tool = _dump_to(spec, part)
            size, digest = _hash_file(part)
            with open(part, "rb") as f:
                os.fsync(f.fileno())
            os.replace(part, final)
        except BaseException:
            _unlink(part)
            raise
        return _info(spec, tool, size, digest)
    with tempfile.TemporaryDirectory(prefix="dmbackup-db-") as tmp:
        path = os.path.join(tmp, spec.filename)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        tool = _dump_to(spec, path)
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
        return _info(spec, tool, size, h.hexdigest())


def _info(spec: DatabaseSpec, tool: str, size: int, digest: str) -> DumpInfo:
    version = f"SQLite {sqlite3.sqlite_version}" if spec.type == "sqlite" else tool_version(tool)
    return DumpInfo(spec.name, spec.type, spec.ext, os.path.basename(tool), version, size, digest)


def _hash_file(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _dump_to(spec: DatabaseSpec, path: str, error: type[Exception] = SourceError) -> str:
    """Dump ``spec`` into the existing (empty, 0600) file ``path``; returns the tool's path."""
    return _ENGINES[spec.type].dump(spec, path, error)


# --- check ------------------------------------------------------------------------------
def check(spec: DatabaseSpec) -> list[str]:
    """Problems that would make ``dump(spec)`` fail or unsafe, one line each; [] when none.
    Checks the tool, the credentials file (readable, not readable by group/others), and that
    the database is reachable with those credentials."""
    problems: list[str] = []
    try:
        _ENGINES[spec.type].check(spec, problems)
    except SourceError as exc:
        problems.append(str(exc))
    return problems


def exists(spec: DatabaseSpec, error: type[Exception] = SourceError) -> bool:
    """Whether the live database exists (an LDAP database always does, even when empty);
    ``error`` when the server cannot be asked."""
    return _ENGINES[spec.type].exists(spec, error)


# --- restore ----------------------------------------------------------------------------
def restore(spec: DatabaseSpec, dump_path: str | os.PathLike,
            replaced_dump_to: str | os.PathLike | None) -> DumpInfo | None:
    """Apply the dump at ``dump_path`` to the live database of ``spec`` (existing or empty;
    created when missing). First the current content is dumped to ``replaced_dump_to`` (when
    given and the database exists) and that ``DumpInfo`` is returned (None otherwise); a
    failure there stops the restore before anything changed. Raises ``RestoreError`` (exit 3)
    naming the database. Atomicity per engine: see its module (mysql, postgres, sqlite, ldap)."""
    dump_path = os.fspath(dump_path)
    for path in (dump_path, replaced_dump_to):
        _not_the_live_file(spec, path, RestoreError)
    _check_dump_file(spec, dump_path)
    replaced = None
    if replaced_dump_to is not None and exists(spec, RestoreError):
        try:
            replaced = dump(spec, replaced_dump_to)
        except EmptyDirectory:
            pass                         # an empty directory: nothing to keep
        except SourceError as exc:
            raise RestoreError(f"{spec.label}: not restored, the current content could not be saved "
                               f"first: {exc}") from None
    _ENGINES[spec.type].restore(spec, dump_path, replaced_dump_to if replaced else None)
    return replaced


_MAGIC = {"postgresql": b"PGDMP", "sqlite": b"SQLite format 3\0"}


def _not_the_live_file(spec: DatabaseSpec, path: str | os.PathLike | None, error: type[Exception]) -> None:
    if spec.type == "sqlite" and path is not None and \
            os.path.realpath(os.fspath(path)) == os.path.realpath(spec.path):
        raise error(f"{spec.label}: {os.fspath(path)} is the database file itself")


def _check_dump_file(spec: DatabaseSpec, path: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise RestoreError(f"{spec.label}: cannot read the dump {path}: {exc.strerror}") from None
    magic = _MAGIC.get(spec.type)
    if magic and not head.startswith(magic):
        raise RestoreError(f"{spec.label}: {path} is not a {spec.type} dump")
    if spec.type == "ldap":
        ldap.check_dump(spec, path)
    if spec.type == "mysql" and b"\0" in head:
        raise RestoreError(f"{spec.label}: {path} is not an SQL dump")

