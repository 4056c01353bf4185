"""Config bundles: back up the appliance's configuration, list, choose, verify and restore it.

These are the operations behind ``dmbackup backup/snapshots/restore/verify --what config``,
written once over a ``BundleStore`` (``dmbackup.engine.bundlestore``): a repository's
``config/`` directory, or a mailbox outside the appliance. ``make_config_bundle`` builds the
bundle (the engine also calls it for the bundle every mail snapshot carries). No CLI here:
each operation returns a ``Result`` or raises a ``DmError`` whose exit code says what went
wrong.

A bundle that leaves the machine by e-mail is always encrypted with the passphrase (scrypt
and AES-256-GCM, see ``dmbackup.archive.bundle``); ``encryption.mode = "none"`` is refused for a
mailbox instead of silently mailing the configuration (TLS keys, DKIM keys, passwords) in
clear. The message headers are only an index: what a restore trusts is the authenticated
bundle, whose id and time must match the message it came in, so an old bundle re-sent with a
fresh date is caught rather than restored as "the newest".

Whatever a bundle says, a restore writes only inside the configured ``config_paths`` (and
the targets of configured paths that are links on this machine), never a set-uid or set-gid
file: a forged or compromised bundle cannot plant a cron job or a set-uid shell elsewhere.
A bundle from an unencrypted repository is not authenticated (anyone holding the medium can
write one), so it is never applied to the live system: ``--to DIR`` and the preflight only.
An unencrypted bundle leaves secret files out (``dmbackup.archive.bundle``). The newest bundle
sent to or seen in a store is remembered (``BundleStore.rolled_back``); when it is gone and
nothing newer is there, "the newest" is not silently an older one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from dataclasses import dataclass, field

from dmbackup import humanize, utctime
from dmbackup.archive import bundle, bundlefiles, layout
from dmbackup.config import DEFAULT_CONFIG_PATHS
from dmbackup.engine import configdb
from dmbackup.engine.bundlestore import (BundleRef, BundleStore, ConfigBundle, OpenBundle, open_repo_bundle,
                                         open_store, repo_bundle_names)
from dmbackup.engine.result import Result
from dmbackup.errors import (EXIT_DAMAGE, EXIT_OK, EXIT_WARNING, CorruptObject, DmError, NotFound, OperationFailed,
                             RestoreError, UsageError)
from dmbackup.source import appliance


def make_config_bundle(config, *, passphrase=None, key=None, context: bytes = b"",
                       time: _dt.datetime | None = None, domains: list[dict] | None = None) -> ConfigBundle:
    """Collect ``config.source.config_paths`` and seal them with a manifest of the appliance.

    ``passphrase`` seals for use outside a repository (a mailbox); ``key`` is a repository's
    ``Keys.bundle`` sealer (or ``PlainSealer`` with encryption.mode = "none"), and ``context``
    (``layout.bundle_aad``) binds the bundle to its place in that repository.
    A configured path that does not exist is listed in ``missing``; it is also a warning
    unless ``config_paths`` is the built-in default list, whose entries are optional.
    The configured databases are dumped into it (``configdb``); a dump that fails raises
    ``configdb.DumpFailed`` (exit 3) and no bundle is made.
    """
    src = config.source
    coll = appliance.collect(src.config_paths)
    if tuple(src.config_paths) != tuple(DEFAULT_CONFIG_PATHS):
        coll.warnings.extend(f"config path {p} does not exist; skipped" for p in coll.missing)
    with configdb.dumped(config) as (db_records, db_files, db_warnings):
        coll.warnings.extend(db_warnings)
        manifest = appliance.build_manifest(
            hostname=config.hostname, mail_store=src.mail_store, config_paths=src.config_paths,
            collection=coll, vmail_uid=src.vmail_uid, vmail_gid=src.vmail_gid,
            dovecot_config=src.dovecot_config, time=time, domains=domains, databases=db_records)
        data, info = bundle.bundle_bytes(coll, manifest, passphrase=passphrase, key=key, context=context,
                                         secret_paths=secret_files(config), dumps=db_files)
    files, nbytes = info.pop("files_count"), info.pop("bytes")
    info.pop("stored_bytes")
    return ConfigBundle(data=data, manifest=info, files=files, bytes=nbytes)


def secret_files(config) -> list[str]:
    """The secret files the configuration names (passphrase, passwords): never in clear."""
    out = [config.encryption.passphrase_file, config.notify.password_file]
    for t in config.targets.values():
        for name in getattr(t, "__dataclass_fields__", {}):
            if name.endswith(("password_file", "passphrase_file", "key_file")):
                out.append(getattr(t, name, None))
    return [os.path.normpath(p) for p in out if isinstance(p, str) and p]


# --- results ------------------------------------------------------------------------------------

@dataclass
class ConfigBackupResult(Result):
    """``backup --what config``: the bundle made and where it went."""

    target: str
    id: str
    time: str
    files: int
    bytes: int
    stored_bytes: int
    missing: list[str] = field(default_factory=list)
    fields: dict = field(default_factory=dict)      # the store's own (bundle; bundle_bytes, to, refused)
    databases: list[dict] = field(default_factory=list)    # the manifest's database records (configdb)

    @property
    def snapshot_id(self) -> str:
        return self.id

    def as_dict(self) -> dict:
        return {"target": self.target, "id": self.id, "chain": None, "kind": "config", "time": self.time,
                "files": self.files, "bytes": self.bytes, "stored_bytes": self.stored_bytes, **self.fields,
                "missing": self.missing, "databases": [_db_brief(r) for r in self.databases],
                "warnings": self.warnings, "exit_code": self.exit_code}

    def summary(self) -> str:
        dbs = configdb.summary(self.databases)
        return (f"config snapshot {self.id} on {self.target}: {self.files} files, {humanize.size(self.bytes)}, "
                f"{humanize.size(self.stored_bytes)} stored" + (f"; {dbs}" if dbs else ""))


def _db_brief(rec: dict) -> dict:
    """A database record of a manifest, for ``--json`` (its users as counts only)."""
    out = {k: rec.get(k) for k in ("name", "type", "file", "tool", "tool_version", "size", "sha256", "stored")}
    users = rec.get("users") or {}
    out["counts"] = users.get("counts")
    cc = rec.get("cross_check") or {}
    out["without_maildir"] = cc.get("without_maildir", [])
    out["without_mailbox"] = cc.get("without_mailbox", [])
    return out


@dataclass
class ConfigRestoreResult(Result):
    """``restore --what config``: written under ``--to DIR``, or compared with (and, with
    ``--overwrite``, applied to) the live system. ``report`` is the documented object."""

    report: dict = field(default_factory=dict)

    @property
    def snapshot_id(self) -> str:
        return self.report["snapshot"]

    def as_dict(self) -> dict:
        return {**self.report, "exit_code": self.exit_code}

    def incomplete(self) -> None:
        """Never: a config restore writes every entry or fails (see ``RestoreResult.incomplete``)."""
        return None

    def summary(self) -> str:
        d = self.report
        if d.get("mode") != "live":
            dumps = d.get("databases") or []
            return (f"restored {d.get('files')} files ({humanize.size(d.get('bytes'))}) from "
                    f"{d.get('snapshot')} into {d.get('destination')}"
                    + (f"; database dump(s): {', '.join(dumps)}" if dumps else ""))
        lines = [f"  {c.get('action', '?'):<9} {c.get('path', '?')}" for c in (d.get("changes") or [])[:200]
                 if isinstance(c, dict) and c.get("action") != "unchanged"]
        counts = ", ".join(f"{v} {k}" for k, v in (d.get("counts") or {}).items() if v)
        head = (f"applied config bundle {d.get('snapshot')}: {counts or 'nothing to change'}" if d.get("applied")
                else f"preflight of config bundle {d.get('snapshot')}: {counts or 'nothing to change'}; "
                     "nothing written (add --overwrite to apply; replaced files are kept as <file>.dmbackup-<time>)")
        return "\n".join([head] + lines + _database_lines(d))


def _database_lines(d: dict) -> list[str]:
    """The preflight, cross-check and outcome of each database of a live config restore."""
    out = []
    for e in d.get("databases") or []:
        out.append(f"database {e.get('label') or e.get('name')} ({e.get('file')}):")
        out += [f"  {line}" for line in (e.get("preflight") or {}).get("lines", [])]
        if e.get("problem"):
            out.append(f"  not applied: {e['problem']}")
        out += [f"  cross-check: {line}" for line in e.get("cross_check_lines") or []]
        if e.get("applied"):
            out.append(f"  applied; what it replaced was dumped to {e['replaced']}" if e.get("replaced")
                       else "  applied (there was no database to replace)")
        elif not e.get("problem") and d.get("applied"):
            out.append("  NOT applied (the files were): to apply the database too, run the same restore "
                       "with --databases")
        elif not e.get("problem"):
            out.append("  not applied (preflight): restore with --overwrite --databases to apply it")
    return out


@dataclass
class BundleVerifyResult(Result):
    """``verify`` of a bundle store: the newest bundle fetched, authenticated and matching its
    manifest, and none newer that this machine saw gone."""

    target: str
    id: str
    time: str
    files: int
    bytes: int
    entries: int
    stored_bytes: int | None
    bundles: int
    oldest: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_DAMAGE if self.problems else EXIT_WARNING if self.warnings else EXIT_OK

    def as_dict(self) -> dict:
        return {"target": self.target, "ok": not self.problems, "id": self.id, "time": self.time,
                "kind": "config", "files": self.files, "bytes": self.bytes, "entries": self.entries,
                "stored_bytes": self.stored_bytes, "bundles": self.bundles, "oldest": self.oldest,
                "problems": self.problems, "warnings": self.warnings, "exit_code": self.exit_code}

    def summary(self) -> str:
        if self.problems:
            return f"verify found damage: {'; '.join(map(str, self.problems))}"
        return "\n".join([f"verify ok: config bundle {self.id or ''} fetched, decrypted and matches its manifest "
                          f"({self.files} files)"] + [f"warning: {w}" for w in self.warnings])


# --- the operations -------------------------------------------------------------------------------

def backup_config(app, target_name: str) -> ConfigBackupResult:
    """Seal a bundle of the configuration and keep it in the target's store (a config-only
    snapshot ``config/<time>-config.bundle`` of the enrolled repository, or a message in the
    mailbox); nothing is stored if any check fails."""
    with open_store(app, target_name, write=True) as store:
        st = store.save(lambda **seal: make_config_bundle(app.config, **seal))
    cb = st.bundle
    return ConfigBackupResult(target_name, st.id, st.time, cb.files, cb.bytes, st.stored_bytes, missing=cb.missing,
                              fields=st.fields, databases=list(cb.manifest.get("databases") or []),
                              warnings=cb.warnings + st.warnings)


def listing(app, target_name: str) -> list[BundleRef]:
    """The config-only bundles of a bundle store (a mailbox), oldest first; a repository's are
    listed with its snapshots (``dmbackup.engine.listing``)."""
    with open_store(app, target_name, keyed=False) as store:
        return store.listing()


def choose(found: list[BundleRef], spec: str | None, at, where: str) -> BundleRef:
    """The bundle named by ``spec`` (id or unique prefix), else the newest at/before ``at``."""
    if spec and spec != "latest":
        matches = [b for b in found if b.id == spec] or [b for b in found if b.id.startswith(spec)]
        if len(matches) > 1:
            raise OperationFailed(f"config bundle {spec!r} is ambiguous in {where}: "
                                  + ", ".join(m.id for m in matches[:5]))
        if not matches:
            raise NotFound(f"no config bundle {spec!r} in {where}: see `dmbackup snapshots`")
        return matches[0]
    if at is None:
        return found[-1]
    when = utctime.parse_time(at)
    before = [b for b in found if utctime.parse_time(b.time) <= when]
    if not before:
        raise NotFound(f"no config bundle at or before {utctime.iso(when)} in {where}; "
                       f"the oldest is from {found[0].time}")
    return before[-1]


def _find_and_open(store: BundleStore, spec: str | None,
                   at) -> tuple[list[BundleRef], BundleRef, OpenBundle, str | None]:
    """(every bundle, the chosen one, it opened, the rollback message if "the newest" was asked
    for and is gone)."""
    found = store.bundles()
    if not found:
        raise NotFound(store.none_found())
    if spec and "/" in spec:
        spec = spec.rsplit("/", 1)[-1]          # chain/snap as `snapshots` prints it
    chosen = choose(found, spec, at, store.where())
    opened = store.open(chosen)
    return found, chosen, opened, store.rolled_back(found, spec, at)


def restore_config(app, target_name: str, snapshot: str | None = None, at=None, to: str | None = None,
                   overwrite: bool = False, *, root: str = "/", databases: bool = False) -> ConfigRestoreResult:
    """``restore --what config``: the newest bundle (or the one named ``snapshot``, or the
    newest at/before ``at``); in a repository ``snapshot`` may name a config snapshot or a
    mail snapshot (whose bundle is used).

    With ``to``: write it under that directory (``TO/etc/...``, ``TO/databases/<dump>`` and
    ``TO/MANIFEST.json``). Without: compare with the live system under ``root`` and report what
    would change (``changes``, ``counts``; for each database dump, ``databases``: what applying
    it would add, remove or change, and its cross-check with the snapshot's mail store); only
    with ``overwrite`` put the files back, keeping each replaced one as
    ``<file>.dmbackup-<time>``, and only with ``databases`` too apply the dumps, keeping a dump
    of what each replaced under ``<state_dir>/replaced/<time>/``. "The newest" whose newer
    sibling this machine saw is gone is exit 4, not an older one restored in silence.
    """
    if databases and (to is not None or not overwrite):
        raise UsageError("--databases applies a config bundle's database dumps to the live databases: it goes "
                         "with --overwrite and without --to (--to DIR writes the dumps under DIR/databases/)")
    with open_store(app, target_name) as store:
        _, chosen, opened, rolled_back = _find_and_open(store, snapshot, at)
        authenticated = store.authenticated
        maildirs = None
        if to is None and opened.manifest.get("databases") and not rolled_back:
            maildirs = _maildirs(store, chosen)
    if rolled_back:
        raise CorruptObject(rolled_back + "; to restore an older bundle anyway, name it (see `dmbackup snapshots`)")
    if databases and not opened.manifest.get("databases"):
        raise UsageError(f"config bundle {chosen.id} holds no database dump: leave out --databases")
    if to is not None:
        report = _restore_entries(opened, to, overwrite, root, app.config, authenticated)
    else:
        report = _restore_live(opened, overwrite, databases, root, app.config, authenticated,
                               maildirs=maildirs, where=chosen.id)
    report.update(target=target_name, id=chosen.id, snapshot=chosen.id, time=chosen.time, kind="config",
                  host=opened.manifest.get("hostname"), **chosen.fields)
    return ConfigRestoreResult(report=report, warnings=report["warnings"])


def _maildirs(store: BundleStore, chosen: BundleRef) -> set[str] | None:
    """The Maildirs of the bundle's snapshot, for the cross-check; None when they cannot be
    read (a damaged catalog is verify's to report; the bundle's recorded cross-check is shown)."""
    try:
        return store.maildirs(chosen)
    except DmError:
        return None


def _restore_live(opened: OpenBundle, overwrite: bool, databases: bool, root: str, config, authenticated: bool,
                  *, maildirs: set[str] | None, where: str) -> dict:
    """Compare with the live system, and with ``overwrite`` restore the files, then (with
    ``databases``) the databases: each dump was first checked to have a configured database
    to go to, so a bundle whose databases cannot all be applied writes nothing."""
    now = utctime.utc_now()
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    with configdb.restore_plan(config, opened.manifest, opened.dumps, maildirs=maildirs,
                               against="the snapshot's mail store") as plan:
        if databases and len(plan.ready) != len(plan.entries):
            raise RestoreError("nothing was restored: " + "; ".join(plan.warnings))
        report = _restore_entries(opened, None, overwrite, root, config, authenticated, time=now)
        if databases:
            plan.apply(config.state_dir, stamp)
    for e in plan.entries:
        e["cross_check_lines"] = configdb.cross_check_lines([e], f"snapshot {where}")
    report["databases"] = plan.entries
    report["databases_applied"] = bool(databases)
    report["warnings"] += plan.warnings
    if overwrite and not databases and plan.entries:
        report["warnings"].append(f"the bundle's {len(plan.entries)} database dump(s) were not applied: run the "
                                  "same restore with --databases to apply them")
    return report


def verify_bundles(app, target_name: str) -> BundleVerifyResult:
    """Prove the newest bundle of a bundle store decrypts and matches its manifest, file by
    file, and that no newer bundle sent or seen before is missing (else exit 4)."""
    with open_store(app, target_name) as store:
        found, chosen, (manifest, entries, size, _), rolled_back = _find_and_open(store, None, None)
    # The user databases' mailboxes against the Maildirs as recorded when the bundle was made:
    # warnings, not damage (see ``engine.verify``).
    mismatches = configdb.cross_check_lines(manifest.get("databases") or [], f"config bundle {chosen.id}")
    return BundleVerifyResult(
        target_name, chosen.id, chosen.time, files=sum(1 for e in entries if e.type == "file"),
        bytes=sum(e.size for e in entries), entries=len(entries), stored_bytes=size, bundles=len(found),
        oldest=found[0].time if found else None, problems=[rolled_back] if rolled_back else [],
        warnings=mismatches)


# --- what a restore may write --------------------------------------------------------------------

def allowed_roots(config, root: str = "/") -> list[str]:
    """Where a config restore may write: the configured paths, and the targets of those that
    are links on this machine (``appliance.collect`` takes both). From the config and the
    live system, never from the bundle."""
    roots = []
    for p in config.source.config_paths:
        p = os.path.normpath(p)
        roots.append(p)
        live = os.path.join(root, p.lstrip("/"))
        if os.path.islink(live):
            real = os.path.realpath(live)
            if root != "/":
                real = "/" + os.path.relpath(real, root) if real.startswith(root.rstrip("/") + "/") else None
            if real and real != "/":
                roots.append(real)
    return roots


def restrict_entries(entries: list, roots: list[str]) -> tuple[list, list[str]]:
    """Entries inside ``roots`` only, with set-uid and set-gid bits removed; what was
    dropped or changed is said in the warnings."""
    kept, outside, stripped = [], [], []
    for e in entries:
        if not any(e.path == r or e.path.startswith(r.rstrip("/") + "/") for r in roots):
            outside.append(e.path)
            continue
        if e.type != "symlink" and e.mode & 0o6000:
            stripped.append(e.path)
            e = dataclasses.replace(e, mode=e.mode & ~0o6000)
        kept.append(e)
    warnings = []
    if outside:
        warnings.append(f"{len(outside)} path(s) of the bundle lie outside config_paths and were not "
                        f"restored (first: {outside[0]}); restore with --to DIR to look at them")
    if stripped:
        warnings.append(f"set-uid/set-gid bits removed from {len(stripped)} file(s) (first: {stripped[0]}); "
                        "dmbackup never restores them: set them by hand if they are really needed")
    return kept, warnings


def _restore_entries(opened: OpenBundle, to: str | None, overwrite: bool, root: str,
                     config, authenticated: bool, *, time=None) -> dict:
    manifest = opened.manifest
    entries, notes = restrict_entries(opened.entries, allowed_roots(config, root))
    if to is None and overwrite and not authenticated:
        raise UsageError(
            "this config bundle comes from an unencrypted repository (encryption.mode = \"none\"), "
            "where nothing is authenticated: anyone holding the medium could have written it, so "
            "dmbackup does not apply it to the live system; restore it with --to DIR, check the "
            "files and copy them into place by hand")
    if to is not None:
        result = bundlefiles.extract_entries(manifest, entries, to, overwrite=overwrite, dumps=opened.dumps)
        result.update(mode="directory", destination=to)
    else:
        result = bundlefiles.diff_against_live(manifest, entries, root=root, overwrite=overwrite, time=time)
        result.update(mode="live", destination=root,
                      files=sum(1 for e in entries if e.type == "file"),
                      bytes=sum(e.size for e in entries))
    result["warnings"] = notes + list(result.get("warnings") or [])
    if manifest.get("secrets_left_out"):
        result["secrets_left_out"] = list(manifest["secrets_left_out"])
    return result


# --- for engine.verify: config bundles in a repository ---------------------------------------

def repo_bundle_ids(repo, *, config_only: bool = False) -> list[str]:
    """Ids of the committed bundles in an open repository's ``config/``, oldest first;
    ``config_only``: only config-only ones (``<time>-config``)."""
    return [bid for bid, _ in repo_bundle_names(repo) if not config_only or layout.is_config_only(bid)]


__all__ = ["ConfigBundle", "make_config_bundle", "secret_files", "backup_config", "listing", "choose",
           "restore_config", "verify_bundles", "allowed_roots", "restrict_entries", "open_repo_bundle",
           "repo_bundle_ids", "ConfigBackupResult", "ConfigRestoreResult", "BundleVerifyResult"]
