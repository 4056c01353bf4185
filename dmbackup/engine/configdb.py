"""The user databases in config bundles: dumped with every bundle, listed in its manifest,
cross-checked with the mail store, compared with the live database and applied.

``dumped(config)`` dumps every ``[[source.databases]]`` entry (``dmbackup.source.databases``)
into a private temporary directory and describes each dump for the manifest::

    {"name": "postfixadmin", "type": "mysql", "label": "mysql database 'postfixadmin'",
     "file": "databases/postfixadmin.sql", "tool": "mariadb-dump",
     "tool_version": "mariadb-dump from 11.x ...", "size": 48213, "sha256": "<hex>",
     "users": {"schema": "postfixadmin", "domains": [...], "mailboxes": [...],
               "aliases": {"alias@dom": ["target", ...]}, "counts": {"domains": 3, ...}} | null}

(``users`` is null for a schema ``dmbackup.source.userdb`` does not know; the dump is kept
all the same). ``appliance.build_manifest`` adds ``cross_check`` and ``bundle.write_bundle``
``stored``. A dump that fails raises ``DumpFailed`` (exit 3): the caller stores nothing, a
config-only backup and a mail snapshot alike, because a bundle without the user database
would restore an appliance that knows no users.

On restore, ``restore_plan`` matches each dump in a bundle with the configured database of
the same type and file name, makes the preflight (``userdb.diff`` of the live database and
the dump: domains, mailboxes and aliases added, removed or changed) and the cross-check with
the mail store of the bundle's snapshot; ``Plan.apply`` applies the dumps, keeping a dump of
what each replaced under ``<state_dir>/replaced/<time>/`` (mode 0600). ``check_all`` is
``check-config``'s part.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

from dmbackup import humanize
from dmbackup.archive.bundle import DUMP_DIR
from dmbackup.errors import ConfigError, RestoreError, SourceError
from dmbackup.source import appliance, databases, userdb


class DumpFailed(SourceError):
    """A database dump failed: the backup fails (exit 3) and nothing is committed."""


# --- backing up ---------------------------------------------------------------------------------

def member(spec: databases.DatabaseSpec) -> str:
    """The dump's name in a bundle and under ``restore --to DIR``: ``databases/<name>.<ext>``."""
    return f"{DUMP_DIR}/{spec.filename}"


def _users(spec, path: str, warnings: list[str]) -> dict | None:
    try:
        users = userdb.from_dump(spec.type, path)
    except SourceError as exc:       # the dump is good; only the list of users is missing
        warnings.append(f"{spec.label}: its users are not listed in the manifest: {exc}")
        return None
    if users is None:
        return None
    out = users.as_manifest()
    out["counts"] = {"domains": len(users.domains), "mailboxes": len(users.mailboxes),
                     "aliases": len(users.aliases)}
    return out


@contextlib.contextmanager
def dumped(config) -> Iterator[tuple[list[dict], dict[str, str], list[str]]]:
    """Dump every configured database: yields (manifest records, {member: dump file}, warnings);
    the dumps live in a private temporary directory until the ``with`` block ends."""
    specs = config.source.databases
    if not specs:
        yield [], {}, []
        return
    with tempfile.TemporaryDirectory(prefix="dmbackup-dumps-") as tmp:
        records, files, warnings = [], {}, []
        for spec in specs:
            path = os.path.join(tmp, spec.filename)
            try:
                info = databases.dump(spec, path)
            except SourceError as exc:
                raise DumpFailed(f"{exc}; nothing was committed") from None
            rec = {"name": spec.name, "type": spec.type, "label": spec.label, "file": member(spec),
                   "tool": info.tool, "tool_version": info.tool_version, "size": info.size,
                   "sha256": info.sha256, "users": _users(spec, path, warnings)}
            records.append(rec)
            files[rec["file"]] = path
        yield records, files, warnings


def summary(records: list[dict]) -> str:
    """``2 database dump(s): postfixadmin.sql 48.2 kB, ...`` ("" when none)."""
    if not records:
        return ""
    return f"{len(records)} database dump(s): " + ", ".join(
        f"{r.get('file', '?').rsplit('/', 1)[-1]} {humanize.size(r.get('size') or 0)}" for r in records)


def check_all(config) -> list[str]:
    """``check-config``: what would stop or endanger each configured dump (the tool, the
    credentials file readable and 0600, the database reachable), one line each naming the
    config file and the entry, as other configuration errors are (``ConfigError``)."""
    out = []
    for i, spec in enumerate(config.source.databases):
        out += [str(ConfigError(p, file=config.file, field=f"source.databases[{i}]"))
                for p in databases.check(spec)]
    return out


# --- the cross-check ----------------------------------------------------------------------------

def _names(items: list[str], limit: int = 50) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def cross_check_lines(records: list[dict], where: str) -> list[str]:
    """One line per database and kind of mismatch, naming the mailboxes: ``where`` names the
    snapshot or bundle (``snapshot 20261128T023000Z-inc``)."""
    out = []
    for rec in records:
        cc = rec.get("cross_check") or {}
        label = rec.get("label") or rec.get("name")
        against = cc.get("against", "the mail store")
        if cc.get("without_maildir"):
            out.append(f"{where}: {len(cc['without_maildir'])} mailbox(es) of {label} have no Maildir in "
                       f"{against}: {_names(cc['without_maildir'])}")
        if cc.get("without_mailbox"):
            out.append(f"{where}: {len(cc['without_mailbox'])} Maildir(s) in {against} have no mailbox in "
                       f"{label}: {_names(cc['without_mailbox'])}")
    return out


def recheck(records: list[dict], maildirs: set[str] | None, against: str) -> list[dict]:
    """``records`` cross-checked again with ``maildirs`` (a snapshot's, from its catalog), or as
    recorded when the bundle was made (``maildirs`` None: a config-only bundle)."""
    if maildirs is None:
        return records
    return appliance.cross_check(records, maildirs, against)


# --- restoring ----------------------------------------------------------------------------------

def _spec_for(config, rec: dict):
    for spec in config.source.databases:
        if member(spec) == rec.get("file") and spec.type == rec.get("type"):
            return spec
    return None


def _preflight(spec, dump_path: str) -> dict:
    """What applying the dump changes in the live database (``userdb.diff``)."""
    wanted = userdb.from_dump(spec.type, dump_path)
    if wanted is None:
        return {"known_schema": False, "lines": ["an unknown schema: the users cannot be compared"]}
    live = userdb.from_database(spec)
    change = userdb.diff(live or userdb.UserDb(), wanted)
    kinds = {k: {"added": c.added, "removed": c.removed, "changed": c.changed}
             for k, c in (("domains", change.domains), ("mailboxes", change.mailboxes),
                          ("aliases", change.aliases))}
    return {"known_schema": True, **kinds,
            "lines": change.lines() or ["no domain, mailbox or alias would be added, removed or changed"]}


def _write_dump(tmp: str, dump) -> str:
    path = os.path.join(tmp, dump.filename)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(dump.data)
    return path


def replaced_dir(state_dir: str, stamp: str) -> str:
    """A new directory ``<state_dir>/replaced/<stamp>`` (``-1``, ``-2``... when taken), mode
    0700: where a restore keeps the dumps of what it replaced."""
    base = os.path.join(state_dir, "replaced")
    os.makedirs(base, mode=0o700, exist_ok=True)
    os.chmod(base, 0o700)
    for i in range(1000):
        path = os.path.join(base, stamp if i == 0 else f"{stamp}-{i}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise RestoreError(f"cannot make a new directory under {base}: clean it up")


class Plan:
    """The databases of one bundle, matched with this machine's ``[[source.databases]]``:
    ``entries`` (the report: preflight, cross-check, what was applied), ``warnings``, and the
    dumps ready to apply (written to a private temporary directory by ``restore_plan``)."""

    def __init__(self, entries: list[dict], warnings: list[str], ready: list):
        self.entries, self.warnings, self.ready = entries, warnings, ready

    def apply(self, state_dir: str, stamp: str) -> None:
        """Apply every dump in turn, each after a dump of what it replaces; ``RestoreError``
        (exit 3) naming the database, and the ones applied before it, when one fails."""
        if len(self.ready) != len(self.entries):
            raise RestoreError("no database was applied: " + "; ".join(self.warnings))
        keep_dir, done = None, []
        for e, spec, path in self.ready:
            keep_dir = keep_dir or replaced_dir(state_dir, stamp)
            keep = os.path.join(keep_dir, spec.filename)
            try:
                info = databases.restore(spec, path, keep)
            except RestoreError as exc:
                before = f" (applied before it: {', '.join(done)})" if done else ""
                raise RestoreError(f"{exc}{before}") from None
            e["applied"] = True
            e["replaced"] = keep if info is not None else None
            done.append(spec.label)


def _entry(config, rec: dict, dump, tmp: str) -> tuple[dict, tuple | None]:
    """The report entry of one database record and, when it can be applied, (entry, spec,
    dump file)."""
    e = {k: rec.get(k) for k in ("name", "type", "label", "file", "size", "tool_version")}
    e.update(cross_check=rec.get("cross_check"), applied=False, replaced=None)
    spec = _spec_for(config, rec)
    if dump is None:
        e["problem"] = "the dump is not in the bundle (an unencrypted bundle never holds one)"
        return e, None
    if spec is None:
        e["problem"] = (f"no [[source.databases]] entry of type {rec.get('type')} whose dump is "
                        f"{rec.get('file')} on this machine: restore with --to DIR and apply it by hand")
        return e, None
    path = _write_dump(tmp, dump)
    try:
        e["preflight"] = _preflight(spec, path)
    except SourceError as exc:          # applying may still work; it says so if not
        e["problem"] = f"cannot compare with the live database: {exc}"
    return e, (e, spec, path)


@contextlib.contextmanager
def restore_plan(config, manifest: dict, dumps: list, *, maildirs: set[str] | None,
                 against: str) -> Iterator[Plan]:
    """The ``Plan`` of a bundle's databases: each compared with the live database (preflight)
    and cross-checked with ``maildirs`` (its snapshot's; None: as recorded in the bundle)."""
    by_file = {d.file: d for d in dumps}
    records = recheck(manifest.get("databases") or [], maildirs, against)
    with tempfile.TemporaryDirectory(prefix="dmbackup-restore-db-") as tmp:
        entries, warnings, ready = [], [], []
        for rec in records:
            e, r = _entry(config, rec, by_file.get(rec.get("file")), tmp)
            entries.append(e)
            if r is not None:
                ready.append(r)
            if "problem" in e:
                warnings.append(f"{e['label'] or e['file']}: {e['problem']}")
        yield Plan(entries, warnings, ready)
