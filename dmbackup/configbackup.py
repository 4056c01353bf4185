"""Config-only backups: build a bundle of the appliance's configuration, mail it, get it back.

These are the operations behind ``dmbackup backup/snapshots/restore/verify --what config``
for the ``mailbox`` target, and ``build_config_bundle`` which the engine calls to store the
same bundle in a repository (``config/`` and inside every mail snapshot). No CLI here:
each function takes the parsed ``Config`` and returns a JSON-ready dict, or raises a
``DmError`` whose exit code says what went wrong.

A bundle that leaves the machine by e-mail is always encrypted with the passphrase (scrypt
and AES-256-GCM, see ``dmbackup.bundle``); ``encryption.mode = "none"`` is refused for a
mailbox target instead of silently mailing the configuration (TLS keys, DKIM keys,
passwords) in clear. The message headers are only an index: what a restore trusts is
the authenticated bundle, whose id and time must match the message it came in, so an old
bundle re-sent with a fresh date is caught rather than restored as "the newest".
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from . import bundle, configset, secrets
from .config import DEFAULT_CONFIG_PATHS
from .errors import DmError, EXIT_OK, EXIT_WARNING, ConfigError, CorruptObject, NotFound, OperationFailed
from .targets.mailbox import MailboxConfig, MailboxTarget


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
    coll = configset.collect(src.config_paths)
    if tuple(src.config_paths) != tuple(DEFAULT_CONFIG_PATHS):
        coll.warnings.extend(f"config path {p} does not exist; skipped" for p in coll.missing)
    manifest = configset.build_manifest(
        hostname=config.hostname, mail_store=src.mail_store, config_paths=src.config_paths,
        collection=coll, vmail_uid=src.vmail_uid, vmail_gid=src.vmail_gid,
        dovecot_config=src.dovecot_config, time=time, domains=domains)
    data, info = bundle.bundle_bytes(coll, manifest, passphrase=passphrase, key=key, context=context)
    files, nbytes = info.pop("files_count"), info.pop("bytes")
    info.pop("stored_bytes")
    return ConfigBundle(data=data, manifest=info, files=files, bytes=nbytes)


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
    return passphrase if passphrase is not None else secrets.passphrase(config)


def _summary_entry(target: MailboxTarget, b: dict) -> dict:
    """One bundle in the shape of ``snapshots --json``."""
    return {"id": b["id"], "chain": None, "kind": "config", "time": b["time"], "files": b["files"],
            "bytes": b["bytes"], "stored_bytes": b["size"], "target": target.name, "host": b["host"],
            "uid": b["uid"]}


def _with_exit(d: dict) -> dict:
    d["exit_code"] = EXIT_WARNING if d.get("warnings") else EXIT_OK
    return d


def backup_config_to_mailbox(config, target_cfg, *, passphrase=None) -> dict:
    """Build an encrypted bundle and mail it; nothing is sent if any check fails."""
    target = _target(config, target_cfg)
    pw = _passphrase(config, target, passphrase)
    cb = make_config_bundle(config, passphrase=pw)
    info = dict(cb.manifest, files=cb.files, bytes=cb.bytes)
    sent = target.send(cb.data, info)
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
    when = configset.parse_time(at)
    before = [b for b in found if configset.parse_time(b["time"]) <= when]
    if not before:
        raise NotFound(f"no config bundle at or before {configset.iso_utc(when)} in {where}; "
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


def _restore_entries(manifest: dict, entries: list, to: str | None, overwrite: bool, root: str) -> dict:
    if to is not None:
        result = bundle.extract_entries(manifest, entries, to, overwrite=overwrite)
        result.update(mode="directory", destination=to)
    else:
        result = bundle.diff_against_live(manifest, entries, root=root, overwrite=overwrite)
        result.update(mode="live", destination=root,
                      files=sum(1 for e in entries if e.type == "file"),
                      bytes=sum(e.size for e in entries))
    return result


def restore_config_from_mailbox(config, target_cfg, at=None, to: str | None = None,
                                overwrite: bool = False, *, snapshot: str | None = None,
                                passphrase=None, root: str = "/") -> dict:
    """Fetch the newest bundle (or the one named ``snapshot``, or the newest at/before ``at``)
    and restore it.

    With ``to``: write it under that directory (``TO/etc/...`` and ``TO/MANIFEST.json``).
    Without: compare with the live system under ``root`` and report what would change
    (``changes``, ``counts``); only with ``overwrite`` put the files back, keeping each
    replaced one as ``<file>.dmbackup-<time>``.
    """
    target = _target(config, target_cfg)
    pw = _passphrase(config, target, passphrase)
    chosen, manifest, entries, _ = _fetch_open(target, pw, at, snapshot)
    result = _restore_entries(manifest, entries, to, overwrite, root)
    result.update(target=target.name, id=chosen["id"], snapshot=chosen["id"], time=chosen["time"],
                  kind="config", host=manifest.get("hostname"), uid=chosen["uid"])
    return _with_exit(result)


def verify_mailbox(config, target_cfg, *, passphrase=None) -> dict:
    """Prove the newest bundle in the mailbox decrypts and matches its manifest, file by file."""
    target = _target(config, target_cfg)
    pw = _passphrase(config, target, passphrase)
    chosen, manifest, entries, bundles = _fetch_open(target, pw, None)
    return {
        "target": target.name, "ok": True, "id": chosen["id"], "time": chosen["time"],
        "kind": "config", "files": sum(1 for e in entries if e.type == "file"),
        "bytes": sum(e.size for e in entries), "entries": len(entries),
        "stored_bytes": chosen["size"], "bundles": len(bundles),
        "oldest": bundles[0]["time"] if bundles else None, "exit_code": EXIT_OK,
    }


# --- repositories ------------------------------------------------------------------------------
# A config-only snapshot in a repository is ``config/<UTC time>-config.bundle``; a mail
# snapshot's bundle is ``config/<mail snapshot id>.bundle``. Both are sealed with the
# repository's bundle key and bound to their name by ``aad = "<repo id>|bundle|<snap>"``
# (the engine's convention), so a bundle renamed or copied from another repository fails.
BUNDLE_DIR = "config"
_SNAP_TIME = "%Y%m%dT%H%M%SZ"


def repo_bundle_aad(repo, snap: str) -> bytes:
    return f"{repo.id}|bundle|{snap}".encode()


def _repo_bundle_names(repo) -> list[tuple[str, _dt.datetime]]:
    """(snap, time) of every committed bundle in the repository, oldest first."""
    from .targets.base import is_temporary

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


def _open_repo_bundle(repo, snap: str) -> tuple[dict, list, int]:
    data = repo.t.get(f"{BUNDLE_DIR}/{snap}.bundle")
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
        out.append({"id": snap, "chain": None, "kind": "config", "time": configset.iso_utc(t),
                    "files": sum(1 for e in entries if e.type == "file"),
                    "bytes": sum(e.size for e in entries), "stored_bytes": size,
                    "warnings": len(manifest.get("warnings") or [])})
    return out


def backup_config_to_repo(app, target_name: str) -> dict:
    """Store a config-only snapshot ``config/<time>-config.bundle`` in the enrolled repository."""
    from .engine.backup import open_repository
    from .errors import NoSpace

    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name)
        repo.lock("config backup")
        try:
            now = configset.utc_now()
            existing = {snap for snap, _ in _repo_bundle_names(repo)}
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
        finally:
            repo.unlock_repo()
    return _with_exit({
        "target": target_name, "id": snap, "chain": None, "kind": "config",
        "time": configset.iso_utc(now), "files": cb.files, "bytes": cb.bytes,
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
                                           snapshot=snapshot, passphrase=app.passphrase, root=root)
    from .engine.backup import open_repository

    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name, require_enrolled=False)
        names = _repo_bundle_names(repo)
        where = target.describe()
        if not names:
            raise NotFound(f"no config bundle found on {where}: run `dmbackup backup --target "
                           f"{target_name} --what config` first")
        found = [{"id": snap, "time": configset.iso_utc(t)} for snap, t in names]
        if snapshot and "/" in snapshot:
            snapshot = snapshot.rsplit("/", 1)[-1]          # chain/snap as `snapshots` prints it
        chosen = _choose(found, snapshot, at, where)
        manifest, entries, _ = _open_repo_bundle(repo, chosen["id"])
    result = _restore_entries(manifest, entries, to, overwrite, root)
    result.update(target=target_name, id=chosen["id"], snapshot=chosen["id"], time=chosen["time"],
                  kind="config", host=manifest.get("hostname"))
    return _with_exit(result)
