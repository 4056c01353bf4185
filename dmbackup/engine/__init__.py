"""The operations: init, backup, snapshots, verify, restore, prune, as plain functions.

Each takes an ``App`` and a target name, opens the target for the duration of the call, and
returns a result object with ``as_dict()`` and ``exit_code``; expected failures raise
DmError subclasses. Nothing here imports typer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..archive.repository import README_RESTORE, Repository, snap_time
from ..errors import (
    DmError,
    ConfigError,
    CorruptObject,
    OperationFailed,
    RestoreError,
    UsageError,
    EXIT_OK,
    EXIT_WARNING,
)
from .backup import BackupResult, backup_mail, open_repository
from .restore import RestoreResult, TreeRestorer
from .verify import VerifyResult, verify_repo

__all__ = ["init_repo", "backup", "snapshots", "verify", "restore", "prune", "BackupResult",
           "RestoreResult", "VerifyResult"]


def _repo_target_cfg(app, target_name: str):
    tcfg = app.config.target(target_name)
    if not getattr(tcfg, "repository", True):
        return None
    return tcfg


def init_repo(app, target_name: str) -> dict:
    """Create the repository on a target, or enrol an existing one (after checking the key).

    Either way what this machine must not take from the medium later is recorded
    (dmbackup.archive.trust): mode, key fingerprint, newest snapshot. Enrolling again
    accepts the repository as it is now, an older copy included."""
    tcfg = _repo_target_cfg(app, target_name)
    if tcfg is None:
        raise UsageError(f"target {target_name!r} is a {app.config.target(target_name).type} target: it holds no "
                         "repository and needs no init")
    from ..archive import trust

    enc = app.config.encryption.enabled
    target = app.target(target_name)
    with target:
        repo = Repository(target, app.config.hostname)
        if repo.exists():
            # The mode is the config's; the passphrase must open the key before anything is
            # recorded. A repo.json that lost or fails its MAC is rewritten from the key: the
            # administrator asked for this repository, and the key vouches for it.
            repo.load_meta()
            repo.unlock(app.passphrase, encrypted=enc, check_meta=False)
            was = repo.meta_mac
            try:
                if enc and was != "ok":
                    repo.rewrite_meta()
                # older repositories carry older instructions for whoever holds the disk
                repo.t.put("README-RESTORE.txt", README_RESTORE.format(hostname=app.config.hostname).encode())
            except DmError as exc:      # a disk mounted read-only for a recovery: enrol anyway
                app.log.warning("repository_not_updated", target=target_name, error=str(exc))
            res = trust.enrol(app, repo, target_name, created=False)
            res["repaired_repo_json"] = was == "mismatch" and repo.meta_mac == "ok"
            app.log.info("repository_enrolled", target=target_name, repository=repo.id,
                         fingerprint=res["fingerprint"], repaired_repo_json=res["repaired_repo_json"])
            return res
        repo.create(app.passphrase() if enc else None, enc)
        res = trust.enrol(app, repo, target_name, created=True)
        res["repaired_repo_json"] = False
        app.log.info("repository_created", target=target_name, repository=repo.id,
                     fingerprint=res["fingerprint"])
        return res


def backup(app, target_name: str, what: str = "mail", full: bool = False, job=None):
    if what == "config":
        return _backup_config(app, target_name, job=job)
    if _repo_target_cfg(app, target_name) is None:
        raise ConfigError(f"target {target_name!r} only takes config bundles: use --what config")
    return backup_mail(app, target_name, full=full, job=job)


def _backup_config(app, target_name: str, job=None):
    try:
        from .. import configbackup
    except ImportError:
        raise OperationFailed("config bundles are not available in this build") from None
    tcfg = app.config.target(target_name)
    if not getattr(tcfg, "repository", True):
        return configbackup.backup_config_to_mailbox(app.config, tcfg, state=app.state)
    return configbackup.backup_config_to_repo(app, target_name)


@dataclass
class SnapshotInfo:
    id: str
    chain: str | None
    kind: str
    time: str
    files: int
    bytes: int
    stored_bytes: int
    parent: str | None = None
    warnings: int = 0
    job: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def snapshots(app, target_name: str, warnings: list | None = None) -> list[SnapshotInfo]:
    tcfg = app.config.target(target_name)
    if not getattr(tcfg, "repository", True):
        from .. import configbackup

        return [SnapshotInfo(**{k: d.get(k) for k in ("id", "chain", "kind", "time", "files", "bytes", "stored_bytes")})
                for d in configbackup.list_mailbox_bundles(app.config, tcfg)]
    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name, require_enrolled=False)
        out = [SnapshotInfo(s.id, s.chain, s.header.kind, s.header.time, s.header.files, s.header.bytes,
                            s.header.stored_bytes, s.header.parent, s.header.warnings, s.header.job)
               for s in repo.snapshots()]
        from .. import configbackup

        out.extend(SnapshotInfo(**d) for d in configbackup.list_repo_bundles(repo))
        for chain, snap, why in repo.damaged:
            msg = f"{chain}/{snap} is damaged and not listed ({why}): run `dmbackup verify`"
            app.log.warning("snapshot_damaged", message=msg)
            if warnings is not None:
                warnings.append(msg)
        return out


def verify(app, target_name: str, snapshot: str | None = None, read_data: bool = False) -> VerifyResult:
    tcfg = app.config.target(target_name)
    if not getattr(tcfg, "repository", True):
        from .. import configbackup

        return configbackup.verify_mailbox(app.config, tcfg, state=app.state)
    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name, require_enrolled=False)
        res = verify_repo(repo, target_name, snapshot=snapshot, read_data=read_data, app=app)
        app.log.info("verify_done", **res.as_dict())
        return res


def parse_time(text: str) -> datetime:
    t = text.strip().replace(" ", "T")
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise UsageError(f"cannot read time {text!r}: use ISO 8601, e.g. 2026-11-28T02:30 or 2026-11-28") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)   # documented: times without a zone are UTC
    return dt


def pick_snapshot(repo, spec: str | None, at: str | None):
    snaps = repo.snapshots()
    if at is not None:
        when = parse_time(at)
        cands = [s for s in snaps if parse_time(s.header.time) <= when]
        if not cands and not repo.damaged:
            raise OperationFailed(f"no snapshot at or before {at} on {repo.t.describe()}: see `dmbackup snapshots`")
        chosen = max(cands, key=lambda s: (parse_time(s.header.time), s.chain_no, s.header.seq)) if cands else None
    elif spec is None or spec == "latest":
        chosen = snaps[-1] if snaps else None
        when = None
    else:
        return repo.resolve(spec, snaps)
    # never hand back an older snapshot in silence when the one asked for is damaged
    limit = snap_time(when) if when is not None else "99999999T999999Z"
    newer_bad = [(c, b, why) for c, b, why in repo.damaged
                 if b[:16] <= limit and (chosen is None or b[:16] > chosen.id[:16])]
    if newer_bad:
        c, b, why = max(newer_bad, key=lambda d: d[1])
        raise CorruptObject(f"snapshot {c}/{b}, the one asked for, is damaged ({why}); restore an older one "
                            "by naming it (see `dmbackup snapshots`) and run `dmbackup verify`")
    if chosen is None:
        raise OperationFailed(f"no snapshots on {repo.t.describe()}")
    return chosen


def selection_prefix(mailbox: str | None, folder: str | None) -> tuple[str, bool]:
    """(relative dir, only the folder's own files) for --mailbox/--folder."""
    if folder and not mailbox:
        raise UsageError("--folder needs --mailbox USER@DOMAIN")
    if not mailbox:
        return "", False
    if mailbox.count("@") != 1:
        raise UsageError(f"--mailbox {mailbox!r}: expected USER@DOMAIN")
    user, domain = mailbox.split("@")
    if not user or not domain or "/" in mailbox or user in (".", "..") or domain in (".", ".."):
        raise UsageError(f"--mailbox {mailbox!r}: expected USER@DOMAIN")
    base = f"{domain}/{user}/Maildir"
    if not folder:
        return f"{domain}/{user}", False
    from ..maildir_names import folder_dir

    if folder.upper() == "INBOX":
        return base, True
    return f"{base}/{folder_dir(folder)}", False


def restore(app, target_name: str, snapshot: str | None = None, *, at: str | None = None,
            what: str = "mail", mailbox: str | None = None, folder: str | None = None,
            to: str | None = None, overwrite: bool = False, resume: bool = False,
            uid_gap: int | None = None, stage_fd: int | None = None, owner=None, modes=None) -> RestoreResult:
    """Restore into ``to`` (a directory), or into the live store (``to`` None: dmbackup.engine.live).

    ``uid_gap``: raise every restored folder's next UID by this much (dmbackup.engine.dovecot);
    default for ``--to``: only folders holding messages without a UID (an exact copy
    otherwise), except when ``to`` is the configured mail store itself, which is then meant to
    replace a store (every folder). ``resume``: finish an interrupted restore
    into the same destination. ``stage_fd``/``owner``/``modes``: used by the live restore."""
    if what == "config":
        from .. import configbackup

        return configbackup.restore_config(app, target_name, snapshot=snapshot, at=at, to=to, overwrite=overwrite)
    if _repo_target_cfg(app, target_name) is None:
        raise UsageError(f"target {target_name!r} holds only config bundles: use --what config")
    if uid_gap is not None and not 0 <= uid_gap <= 1_000_000_000:
        raise UsageError(f"--uid-gap {uid_gap}: expected a number from 0 to 1000000000")
    prefix, inbox_only = selection_prefix(mailbox, folder)
    if to is None:
        from .live import restore_live

        return restore_live(app, target_name, snapshot=snapshot, at=at, mailbox=mailbox, folder=folder,
                            overwrite=overwrite, resume=resume, uid_gap=uid_gap)
    dest = os.path.abspath(to)
    if stage_fd is None:
        if os.path.lexists(dest):
            if not os.path.isdir(dest) or os.path.islink(dest):
                raise RestoreError(f"restore destination {dest} is not a directory")
            if os.listdir(dest) and not (overwrite or resume):
                raise RestoreError(f"restore destination {dest} is not empty: choose an empty or new directory "
                                   "(or add --resume to finish an interrupted restore into it)")
        else:
            os.makedirs(dest, mode=0o700)
    if uid_gap is None:
        from .dovecot import UID_GAP

        store = app.config.source.mail_store
        uid_gap = UID_GAP if store and os.path.realpath(dest) == os.path.realpath(store) else None
    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name, require_enrolled=False)
        ref = pick_snapshot(repo, snapshot, at)
        rows, _ = repo.catalog_body(ref)
        app.log.info("restore_start", target=target_name, snapshot=ref.id, selection=prefix or "/", to=dest)
        res = TreeRestorer(repo, ref, dest, prefix=prefix, only_dir_files=inbox_only, app=app, resume=resume,
                           uid_gap=uid_gap, owner=owner, modes=modes, root_fd=stage_fd).run(rows)
        app.log.info("restore_done", **res.as_dict())
        return res


def resync(app) -> dict:
    """Finish a store restored with ``--to DIR --uid-gap N`` and moved into place by hand."""
    from .live import resync as _resync

    return _resync(app)


@dataclass
class PruneResult:
    target: str
    dry_run: bool
    keep_chains: int
    kept: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    deleted_bundles: list[str] = field(default_factory=list)
    exit_code: int = EXIT_OK
    kept_damaged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def prune(app, target_name: str, keep_chains: int | None = None, dry_run: bool = False) -> PruneResult:
    """Keep the newest ``keep_chains`` chains; delete whole chains oldest first.

    Deletion order inside a chain: catalogs newest first, then pages and volumes, so an
    interrupted prune leaves either a complete chain or snapshots that no longer exist; never
    a listed snapshot with missing data.

    A chain with a damaged catalog is kept whatever its age, and reported (``kept_damaged``,
    exit 1): its other objects may be intact and the damage repairable from another copy,
    and a chain whose catalog cannot be read is not known to be old.
    """
    if keep_chains is None:
        jobs = [j for j in app.config.jobs.values() if j.target == target_name and j.what == "mail"]
        keep_chains = max((j.keep_chains for j in jobs), default=4)
    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name, require_enrolled=not dry_run)
        if not dry_run:
            repo.lock("prune")
        try:
            snaps = repo.snapshots()
            chains = repo.chains()
            with_snaps = [c for c in chains if any(s.chain == c for s in snaps)]
            newest = snaps[-1].chain if snaps else None
            keep = set(with_snaps[-keep_chains:]) | ({newest} if newest else set())
            damaged = sorted({c for c, _, _ in repo.damaged if c in chains})
            res = PruneResult(target_name, dry_run, keep_chains, kept=sorted(keep | set(damaged)),
                              kept_damaged=damaged)
            for c in damaged:
                bad = [f"{c}/{b}" for cc, b, _ in repo.damaged if cc == c]
                msg = (f"chain {c} is kept although retention would delete it: its catalog(s) "
                       f"{', '.join(bad)} are damaged; run `dmbackup verify --target {target_name}`, "
                       "and delete the chain by hand once you no longer need it")
                res.warnings.append(msg)
                app.log.warning("prune_kept_damaged", target=target_name, chain=c, message=msg)
            if damaged:
                res.exit_code = EXIT_WARNING
            keep |= set(damaged)
            for chain in chains:
                if chain in keep:
                    continue
                if not repo.chain_objects(chain):      # an empty leftover directory
                    if not dry_run:
                        _remove_empty_dirs(repo, [chain])
                    continue
                res.deleted.append(chain)
                if dry_run:
                    continue
                app.check_stop()
                objs = repo.chain_objects(chain)
                cats = sorted((o for o in objs if o.endswith(".catalog")), reverse=True)
                for o in cats + [o for o in objs if not o.endswith(".catalog")]:
                    repo.t.delete(f"chains/{chain}/{o}")
                    if o.endswith(".catalog"):
                        repo.t.delete(f"config/{o[:-len('.catalog')]}.bundle")
                app.log.info("chain_deleted", target=target_name, chain=chain)
            res.deleted_bundles = _prune_config_bundles(repo, snaps, keep, dry_run)
            if not dry_run and res.deleted:
                _remove_empty_dirs(repo, res.deleted)
            return res
        finally:
            repo.unlock_repo()


def _prune_config_bundles(repo, snaps, keep: set, dry_run: bool) -> list[str]:
    """Config-only bundles live as long as the oldest kept chain; the newest one always stays."""
    kept_times = [s.id[:16] for s in snaps if s.chain in keep]
    oldest = min(kept_times) if kept_times else None
    config_only = sorted(n.rsplit("/", 1)[-1][: -len(".bundle")] for n in repo.t.list("config")
                         if n.endswith("-config.bundle"))
    doomed = [c for c in config_only[:-1] if oldest is not None and c[:16] < oldest]
    if not dry_run:
        for c in doomed:
            repo.t.delete(f"config/{c}.bundle")
    return doomed


def _remove_empty_dirs(repo, chains) -> None:
    for c in chains:
        try:
            repo.t.rmdir(f"chains/{c}")
        except (OSError, DmError):
            pass           # not empty, or a target without directories: harmless
