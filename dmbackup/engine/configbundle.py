"""Config-only backups: build a bundle of the appliance's configuration, mail it, get it back.

These are the operations behind ``dmbackup backup/snapshots/restore/verify --what config``
for the ``mailbox`` target, and ``build_config_bundle`` which the engine calls to store the
same bundle in a repository (``config/`` and inside every mail snapshot). No CLI here:
each function takes the parsed ``Config`` and returns a JSON-ready dict, or raises a
``DmError`` whose exit code says what went wrong.

A bundle that leaves the machine by e-mail is always encrypted with the passphrase (scrypt
and AES-256-GCM, see ``dmbackup.archive.bundle``); ``encryption.mode = "none"`` is refused for a
mailbox target instead of silently mailing the configuration (TLS keys, DKIM keys,
passwords) in clear. The message headers are only an index: what a restore trusts is
the authenticated bundle, whose id and time must match the message it came in, so an old
bundle re-sent with a fresh date is caught rather than restored as "the newest".

Whatever a bundle says, a restore writes only inside the configured ``config_paths`` (and
the targets of configured paths that are links on this machine), never a set-uid or set-gid
file: a forged or compromised bundle cannot plant a cron job or a set-uid shell elsewhere.
A bundle from an unencrypted repository is not authenticated (anyone holding the medium can
write one), so it is never applied to the live system: ``--to DIR`` and the preflight only.
An unencrypted bundle leaves secret files out (``dmbackup.archive.bundle``). The newest bundle sent
to or seen in a mailbox, or seen in a repository, is recorded in ``state_dir``; when it is
gone and nothing newer is there, "the newest" is not silently an older one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from dataclasses import dataclass

from dmbackup import utctime
from dmbackup.archive import layout
from dmbackup.archive import bundle

from dmbackup.source import appliance

from dmbackup import credentials
from dmbackup.config import DEFAULT_CONFIG_PATHS
from dmbackup.errors import (DmError, EXIT_DAMAGE, EXIT_OK, EXIT_WARNING, ConfigError, CorruptObject, NotFound,
                     OperationFailed, UsageError, WrongRepository)
from dmbackup.mailout.mailbox import MailboxConfig, MailboxTarget


@dataclass(frozen=True)
class ConfigBundle:
    """A sealed bundle and the manifest stored in it (``files`` is the per-file list)."""

    data: bytes
    manifest: dict
    files: int
    bytes: int

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def time(self) -> str:
        return self.manifest["time"]

    @property
    def warnings(self) -> list[str]:
        return list(self.manifest.get("warnings", []))

    @property
    def missing(self) -> list[str]:
        return list(self.manifest.get("missing", []))


def make_config_bundle(config, *, passphrase=None, key=None, context: bytes = b"",
                       time: _dt.datetime | None = None, aad: bytes | None = None,
                       domains: list[dict] | None = None) -> ConfigBundle:
    """Collect ``config.source.config_paths`` and seal them with a manifest of the appliance.

    ``passphrase`` seals for use outside a repository (the mailbox target); ``key`` is a
    repository's ``Keys.bundle`` sealer (or ``PlainSealer`` with encryption.mode = "none"),
    and ``context`` (alias ``aad``) binds the bundle to its place in that repository.
    A configured path that does not exist is listed in ``missing``; it is also a warning
    unless ``config_paths`` is the built-in default list, whose entries are optional.
    """
    if aad is not None:
        context = aad
    src = config.source
    coll = appliance.collect(src.config_paths)
    if tuple(src.config_paths) != tuple(DEFAULT_CONFIG_PATHS):
        coll.warnings.extend(f"config path {p} does not exist; skipped" for p in coll.missing)
    manifest = appliance.build_manifest(
        hostname=config.hostname, mail_store=src.mail_store, config_paths=src.config_paths,
        collection=coll, vmail_uid=src.vmail_uid, vmail_gid=src.vmail_gid,
        dovecot_config=src.dovecot_config, time=time, domains=domains)
    data, info = bundle.bundle_bytes(coll, manifest, passphrase=passphrase, key=key, context=context,
                                     secret_paths=secret_files(config))
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


def build_config_bundle(config, *, passphrase=None, key=None, context: bytes = b"",
                        aad: bytes | None = None) -> bytes:
    """The sealed bundle bytes (see ``make_config_bundle``; the engine's entry point)."""
    return make_config_bundle(config, passphrase=passphrase, key=key, context=context, aad=aad).data


# --- the mailbox target ----------------------------------------------------------------------
def _target(config, target_cfg) -> MailboxTarget:
    tcfg = config.target(target_cfg) if isinstance(target_cfg, str) else target_cfg
    if not isinstance(tcfg, MailboxConfig):
        raise ConfigError(f"target {getattr(tcfg, 'name', tcfg)!r} is a {getattr(tcfg, 'type', '?')} "
                          "target, not a mailbox target", file=config.file, field="targets")
    return MailboxTarget(tcfg, hostname=config.hostname)


def _passphrase(config, target: MailboxTarget, passphrase) -> bytes:
    """The passphrase (bytes, or a callable giving it, called only once the mode is checked)."""
    if not config.encryption.enabled:
        raise ConfigError(
            f"target {target.name!r} mails config bundles off the machine, and they are always "
            "encrypted, but encryption.mode = \"none\": set encryption.mode = \"repokey\" and "
            "encryption.passphrase_file, or use another target for config backups",
            file=config.file, field="encryption.mode")
    if callable(passphrase):
        return passphrase()
    return passphrase if passphrase is not None else credentials.passphrase(config)


def _summary_entry(target: MailboxTarget, b: dict) -> dict:
    """One bundle in the shape of ``snapshots --json``."""
    return {"id": b["id"], "chain": None, "kind": "config", "time": b["time"], "files": b["files"],
            "bytes": b["bytes"], "stored_bytes": b["size"], "target": target.name, "host": b["host"],
            "uid": b["uid"]}


def _with_exit(d: dict) -> dict:
    d["exit_code"] = EXIT_WARNING if d.get("warnings") else EXIT_OK
    return d


def backup_config_to_mailbox(config, target_cfg, *, passphrase=None, state=None) -> dict:
    """Build an encrypted bundle and mail it; nothing is sent if any check fails. With
    ``state`` (the App's State) the bundle is remembered as the newest sent."""
    target = _target(config, target_cfg)
    pw = _passphrase(config, target, passphrase)
    cb = make_config_bundle(config, passphrase=pw)
    info = dict(cb.manifest, files=cb.files, bytes=cb.bytes)
    sent = target.send(cb.data, info)
    if state is not None:
        _mailbox_seen(state, target.name, cb.id, cb.time)
    return _with_exit({
        "target": target.name, "id": cb.id, "chain": None, "kind": "config", "time": cb.time,
        "files": cb.files, "bytes": cb.bytes, "stored_bytes": sent["message_bytes"],
        "bundle_bytes": len(cb.data), "to": sent["recipients"], "refused": sent["refused"],
        "missing": cb.missing, "warnings": cb.warnings
        + [f"recipient {r} was refused by the smtp server" for r in sent["refused"]],
    })


def list_mailbox_bundles(config, target_cfg) -> list[dict]:
    """This host's bundles in the target's IMAP folder, oldest first (``snapshots --json`` shape)."""
    target = _target(config, target_cfg)
    return [_summary_entry(target, b) for b in target.list_bundles()]


def _choose(found: list[dict], spec: str | None, at, where: str) -> dict:
    """The bundle named by ``spec`` (id or unique prefix), else the newest at/before ``at``."""
    if spec and spec != "latest":
        matches = [b for b in found if b["id"] == spec] or [b for b in found if b["id"].startswith(spec)]
        if len(matches) > 1:
            raise OperationFailed(f"config bundle {spec!r} is ambiguous in {where}: "
                                  + ", ".join(m["id"] for m in matches[:5]))
        if not matches:
            raise NotFound(f"no config bundle {spec!r} in {where}: see `dmbackup snapshots`")
        return matches[0]
    if at is None:
        return found[-1]
    when = utctime.parse_time(at)
    before = [b for b in found if utctime.parse_time(b["time"]) <= when]
    if not before:
        raise NotFound(f"no config bundle at or before {utctime.iso(when)} in {where}; "
                       f"the oldest is from {found[0]['time']}")
    return before[-1]


def _fetch_open(target: MailboxTarget, pw: bytes, at, spec: str | None = None
                ) -> tuple[dict, dict, list, list[dict]]:
    found, others = target.scan()
    where = f"{target.where()} for host {target.hostname}"
    if not found:
        also = f" (there are bundles of other hosts: {', '.join(others)})" if others else ""
        raise NotFound(f"no config bundle found in {where}{also}")
    chosen = _choose(found, spec, at, where)
    data = target.fetch(chosen["uid"], chosen["id"])
    manifest, entries = bundle.read_bundle(data, passphrase=pw)
    if manifest.get("time") != chosen["time"] or manifest.get("hostname") != chosen["host"]:
        raise CorruptObject(
            f"message UID {chosen['uid']} in {target.where()} claims host {chosen['host']} at "
            f"{chosen['time']}, but its bundle was made by {manifest.get('hostname')} at "
            f"{manifest.get('time')}: the message headers were altered")
    return chosen, manifest, entries, found


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


def _restore_entries(manifest: dict, entries: list, to: str | None, overwrite: bool, root: str,
                     config=None, authenticated: bool = True) -> dict:
    roots = allowed_roots(config, root) if config is not None else ["/"]
    entries, notes = restrict_entries(entries, roots)
    if to is None and overwrite and not authenticated:
        raise UsageError(
            "this config bundle comes from an unencrypted repository (encryption.mode = \"none\"), "
            "where nothing is authenticated: anyone holding the medium could have written it, so "
            "dmbackup does not apply it to the live system; restore it with --to DIR, check the "
            "files and copy them into place by hand")
    if to is not None:
        result = bundle.extract_entries(manifest, entries, to, overwrite=overwrite)
        result.update(mode="directory", destination=to)
    else:
        result = bundle.diff_against_live(manifest, entries, root=root, overwrite=overwrite)
        result.update(mode="live", destination=root,
                      files=sum(1 for e in entries if e.type == "file"),
                      bytes=sum(e.size for e in entries))
    result["warnings"] = notes + list(result.get("warnings") or [])
    if manifest.get("secrets_left_out"):
        result["secrets_left_out"] = list(manifest["secrets_left_out"])
    return result


def restore_config_from_mailbox(config, target_cfg, at=None, to: str | None = None,
                                overwrite: bool = False, *, snapshot: str | None = None,
                                passphrase=None, root: str = "/", state=None) -> dict:
    """Fetch the newest bundle (or the one named ``snapshot``, or the newest at/before ``at``)
    and restore it.

    With ``to``: write it under that directory (``TO/etc/...`` and ``TO/MANIFEST.json``).
    Without: compare with the live system under ``root`` and report what would change
    (``changes``, ``counts``); only with ``overwrite`` put the files back, keeping each
    replaced one as ``<file>.dmbackup-<time>``. With ``state``, "the newest" is checked
    against the newest bundle sent or seen before (a deleted one is exit 4, not an older one
    restored in silence).
    """
    target = _target(config, target_cfg)
    pw = _passphrase(config, target, passphrase)
    chosen, manifest, entries, found = _fetch_open(target, pw, at, snapshot)
    if snapshot is None and at is None and state is not None:
        msg = _mailbox_rolled_back(state, target, found)
        if msg:
            raise CorruptObject(msg + "; to restore an older bundle anyway, name it (see `dmbackup snapshots`)")
    result = _restore_entries(manifest, entries, to, overwrite, root, config)
    result.update(target=target.name, id=chosen["id"], snapshot=chosen["id"], time=chosen["time"],
                  kind="config", host=manifest.get("hostname"), uid=chosen["uid"])
    return _with_exit(result)


def verify_mailbox(config, target_cfg, *, passphrase=None, state=None) -> dict:
    """Prove the newest bundle in the mailbox decrypts and matches its manifest, file by file;
    with ``state``, that no newer bundle sent or seen before is missing (else exit 4)."""
    target = _target(config, target_cfg)
    pw = _passphrase(config, target, passphrase)
    chosen, manifest, entries, bundles = _fetch_open(target, pw, None)
    rolled_back = _mailbox_rolled_back(state, target, bundles) if state is not None else None
    return {
        "target": target.name, "ok": not rolled_back, "id": chosen["id"], "time": chosen["time"],
        "kind": "config", "files": sum(1 for e in entries if e.type == "file"),
        "bytes": sum(e.size for e in entries), "entries": len(entries),
        "stored_bytes": chosen["size"], "bundles": len(bundles),
        "oldest": bundles[0]["time"] if bundles else None,
        "problems": [rolled_back] if rolled_back else [],
        "exit_code": EXIT_DAMAGE if rolled_back else EXIT_OK,
    }


# The newest bundle sent to (or seen in) a mailbox, so one deleted from the folder is
# noticed: state_dir/trust.json, under the target's name and the pseudo id "mailbox".
_MAILBOX = "mailbox"


def _mailbox_seen(st, target_name: str, bid: str, time: str) -> None:
    rec = (st.trust(target_name, _MAILBOX) or {}).get("config_newest")
    try:
        older = isinstance(rec, dict) and utctime.parse_time(rec["time"]) > utctime.parse_time(time)
    except (KeyError, TypeError, ValueError):
        older = False
    if not older and rec != {"id": bid, "time": time}:
        try:
            st.update_trust(target_name, _MAILBOX, config_newest={"id": bid, "time": time})
        except OSError:
            pass            # a reader without write access to state_dir: it only cannot remember


def _mailbox_rolled_back(state, target, found: list[dict]) -> str | None:
    rec = (state.trust(target.name, _MAILBOX) or {}).get("config_newest")
    if found:
        newest = found[-1]
        if not (isinstance(rec, dict) and rec.get("id") not in {b["id"] for b in found}):
            _mailbox_seen(state, target.name, newest["id"], newest["time"])
            return None
        try:
            if utctime.parse_time(newest["time"]) > utctime.parse_time(rec["time"]):
                _mailbox_seen(state, target.name, newest["id"], newest["time"])
                return None
        except (KeyError, TypeError, ValueError):
            return None
    if not isinstance(rec, dict):
        return None
    return (f"{target.where()} is older than what this machine saw last: the config bundle "
            f"{rec.get('id')} of {rec.get('time')} is missing (deleted from the mailbox, or the "
            "mailbox restored from an older copy)")


# --- repositories ------------------------------------------------------------------------------
# A config-only snapshot in a repository is ``config/<UTC time>-config.bundle``; a mail
# snapshot's bundle is ``config/<mail snapshot id>.bundle``. Both are sealed with the
# repository's bundle key and bound to their name by ``aad = "<repo id>|bundle|<snap>"``
# (the engine's convention), so a bundle renamed or copied from another repository fails.
BUNDLE_DIR = "config"
_SNAP_TIME = "%Y%m%dT%H%M%SZ"
MAX_BUNDLE = 1 << 30            # read whole into memory: a bundle on the medium may not be larger


def repo_bundle_aad(repo, snap: str) -> bytes:
    return layout.bundle_aad(repo.id, snap)


def _repo_bundle_names(repo) -> list[tuple[str, _dt.datetime]]:
    """(snap, time) of every committed bundle in the repository, oldest first."""
    from dmbackup.targets.base import is_temporary

    out = []
    for name in repo.t.list(BUNDLE_DIR):
        base = name.rsplit("/", 1)[-1]
        if is_temporary(base) or not base.endswith(".bundle"):
            continue
        snap = base[: -len(".bundle")]
        try:
            t = _dt.datetime.strptime(snap.split("-", 1)[0], _SNAP_TIME).replace(tzinfo=_dt.timezone.utc)
        except ValueError:
            continue
        out.append((snap, t))
    out.sort(key=lambda x: (x[1], x[0]))
    return out


def _committed(repo, snaps) -> set:
    """Ids of mail snapshots whose catalog exists (listed, or there but damaged)."""
    return {s.id for s in snaps} | {b for c, b, _ in repo.damaged if c != "config"}


def _open_repo_bundle(repo, snap: str) -> tuple[dict, list, int]:
    name = f"{BUNDLE_DIR}/{snap}.bundle"
    if repo.t.stat(name).size > MAX_BUNDLE:
        raise CorruptObject(f"{name} is larger than any config bundle ({MAX_BUNDLE >> 20} MiB): damaged")
    data = repo.t.get(name)
    if repo.keys.encrypted and bundle.parse_header(data).protection != bundle.PROT_KEY:
        # anyone can write an unencrypted bundle: in an encrypted repository it is planted
        raise CorruptObject(f"{name} is not encrypted, but this repository is: it was not written "
                            "by dmbackup for this repository (planted on the medium?); refused")
    manifest, entries = bundle.read_bundle(data, key=repo.keys.bundle, context=repo_bundle_aad(repo, snap))
    return manifest, entries, len(data)


def list_repo_bundles(repo) -> list[dict]:
    """Config-only snapshots in an open, unlocked repository (``SnapshotInfo`` fields).

    Bundles that belong to a mail snapshot are part of that snapshot and not listed again.
    """
    out = []
    for snap, t in _repo_bundle_names(repo):
        if not snap.endswith("-config"):
            continue
        try:
            manifest, entries, size = _open_repo_bundle(repo, snap)
        except DmError as exc:        # listed by verify; the other snapshots stay visible
            if hasattr(repo, "damaged"):
                repo.damaged.append(("config", snap, str(exc)))
            continue
        out.append({"id": snap, "chain": None, "kind": "config", "time": utctime.iso(t),
                    "files": sum(1 for e in entries if e.type == "file"),
                    "bytes": sum(e.size for e in entries), "stored_bytes": size,
                    "warnings": len(manifest.get("warnings") or [])})
    return out


def backup_config_to_repo(app, target_name: str) -> dict:
    """Store a config-only snapshot ``config/<time>-config.bundle`` in the enrolled repository."""
    from dmbackup.engine.backup import open_repository
    from dmbackup.errors import NoSpace

    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name)
        repo.lock("config backup")
        try:
            snaps = repo.snapshots()    # an older repository than last seen stops here (exit 7)
            names = [snap for snap, _ in _repo_bundle_names(repo)]
            rolled_back = repo.check_config_bundles(names, _committed(repo, snaps))
            if rolled_back:
                raise WrongRepository(rolled_back)
            now = utctime.utc_now()
            existing = set(names)
            while f"{now.strftime(_SNAP_TIME)}-config" in existing:
                now += _dt.timedelta(seconds=1)     # snapshot names are unique in a repository
            snap = f"{now.strftime(_SNAP_TIME)}-config"
            cb = make_config_bundle(app.config, key=repo.keys.bundle, context=repo_bundle_aad(repo, snap),
                                    time=now)
            free = repo.t.free_space()
            if free is not None and free < len(cb.data) + (1 << 20):
                raise NoSpace(f"{target.describe()} has {free} bytes free, the config bundle needs "
                              f"{len(cb.data)}: free space on it and run again")
            repo.t.put(f"{BUNDLE_DIR}/{snap}.bundle", cb.data)
            repo.t.sync()
            repo.saw_config(snap)
        finally:
            repo.unlock_repo()
    return _with_exit({
        "target": target_name, "id": snap, "chain": None, "kind": "config",
        "time": utctime.iso(now), "files": cb.files, "bytes": cb.bytes,
        "stored_bytes": len(cb.data), "bundle": f"{BUNDLE_DIR}/{snap}.bundle",
        "missing": cb.missing, "warnings": cb.warnings,
    })


def restore_config(app, target_name: str, snapshot: str | None = None, at=None, to: str | None = None,
                   overwrite: bool = False, *, root: str = "/") -> dict:
    """``restore --what config`` for any target: the mailbox, or a repository's bundles.

    In a repository ``snapshot`` names a config snapshot or a mail snapshot (whose bundle is
    used); without it the newest bundle (at or before ``at``) of either kind is restored.
    """
    tcfg = app.config.target(target_name)
    if isinstance(tcfg, MailboxConfig):
        return restore_config_from_mailbox(app.config, tcfg, at=at, to=to, overwrite=overwrite,
                                           snapshot=snapshot, passphrase=app.passphrase, root=root,
                                           state=app.state)
    from dmbackup.engine.backup import open_repository

    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name, require_enrolled=False)
        names = _repo_bundle_names(repo)
        where = target.describe()
        if not names:
            raise NotFound(f"no config bundle found on {where}: run `dmbackup backup --target "
                           f"{target_name} --what config` first")
        found = [{"id": snap, "time": utctime.iso(t)} for snap, t in names]
        if snapshot and "/" in snapshot:
            snapshot = snapshot.rsplit("/", 1)[-1]          # chain/snap as `snapshots` prints it
        rolled_back = repo.check_config_bundles([n for n, _ in names], _committed(repo, repo.snapshots()))
        if rolled_back and not snapshot:
            raise CorruptObject(rolled_back + "; to restore an older bundle anyway, name it "
                                "(see `dmbackup snapshots`)")
        chosen = _choose(found, snapshot, at, where)
        manifest, entries, _ = _open_repo_bundle(repo, chosen["id"])
        authenticated = repo.keys.encrypted
    result = _restore_entries(manifest, entries, to, overwrite, root, app.config, authenticated)
    result.update(target=target_name, id=chosen["id"], snapshot=chosen["id"], time=chosen["time"],
                  kind="config", host=manifest.get("hostname"))
    return _with_exit(result)
