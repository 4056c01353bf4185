"""The operations: init, backup, snapshots, verify, restore, prune, as plain functions.

Each takes an ``App`` and a target name, opens the target for the duration of the call, and
returns a result object with ``as_dict()`` and ``exit_code``; expected failures raise
DmError subclasses. Nothing here imports typer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dmbackup.errors import ConfigError, OperationFailed, RestoreError, UsageError
from dmbackup.engine.backup import BackupResult, backup_mail, open_repository
from dmbackup.engine.enrol import init_repo
from dmbackup.engine.prune import PruneResult, prune
from dmbackup.engine.restore import RestoreResult, TreeRestorer
from dmbackup.engine.select import pick_snapshot, selection_prefix
from dmbackup.engine.verify import VerifyResult, verify_repo

__all__ = ["init_repo", "backup", "snapshots", "verify", "restore", "resync", "prune", "pick_snapshot",
           "selection_prefix", "BackupResult", "RestoreResult", "VerifyResult", "PruneResult"]


def _repo_target_cfg(app, target_name: str):
    tcfg = app.config.target(target_name)
    if not getattr(tcfg, "repository", True):
        return None
    return tcfg


def backup(app, target_name: str, what: str = "mail", full: bool = False, job=None):
    if what == "config":
        return _backup_config(app, target_name, job=job)
    if _repo_target_cfg(app, target_name) is None:
        raise ConfigError(f"target {target_name!r} only takes config bundles: use --what config")
    return backup_mail(app, target_name, full=full, job=job)


def _backup_config(app, target_name: str, job=None):
    try:
        from dmbackup.engine import configbundle
    except ImportError:
        raise OperationFailed("config bundles are not available in this build") from None
    tcfg = app.config.target(target_name)
    if not getattr(tcfg, "repository", True):
        return configbundle.backup_config_to_mailbox(app.config, tcfg, state=app.state)
    return configbundle.backup_config_to_repo(app, target_name)


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
        from dmbackup.engine import configbundle
        return [SnapshotInfo(**{k: d.get(k) for k in ("id", "chain", "kind", "time", "files", "bytes", "stored_bytes")})
                for d in configbundle.list_mailbox_bundles(app.config, tcfg)]
    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name, require_enrolled=False)
        out = [SnapshotInfo(s.id, s.chain, s.header.kind, s.header.time, s.header.files, s.header.bytes,
                            s.header.stored_bytes, s.header.parent, s.header.warnings, s.header.job)
               for s in repo.snapshots()]
        from dmbackup.engine import configbundle
        out.extend(SnapshotInfo(**d) for d in configbundle.list_repo_bundles(repo))
        for chain, snap, why in repo.damaged:
            msg = f"{chain}/{snap} is damaged and not listed ({why}): run `dmbackup verify`"
            app.log.warning("snapshot_damaged", message=msg)
            if warnings is not None:
                warnings.append(msg)
        return out


def verify(app, target_name: str, snapshot: str | None = None, read_data: bool = False) -> VerifyResult:
    tcfg = app.config.target(target_name)
    if not getattr(tcfg, "repository", True):
        from dmbackup.engine import configbundle
        return configbundle.verify_mailbox(app.config, tcfg, state=app.state)
    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name, require_enrolled=False)
        res = verify_repo(repo, target_name, snapshot=snapshot, read_data=read_data, app=app)
        app.log.info("verify_done", **res.as_dict())
        return res


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
        from dmbackup.engine import configbundle
        return configbundle.restore_config(app, target_name, snapshot=snapshot, at=at, to=to, overwrite=overwrite)
    if _repo_target_cfg(app, target_name) is None:
        raise UsageError(f"target {target_name!r} holds only config bundles: use --what config")
    if uid_gap is not None and not 0 <= uid_gap <= 1_000_000_000:
        raise UsageError(f"--uid-gap {uid_gap}: expected a number from 0 to 1000000000")
    prefix, inbox_only = selection_prefix(mailbox, folder)
    if to is None:
        from dmbackup.engine.live import restore_live

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
        from dmbackup.engine.dovecot import UID_GAP

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
    from dmbackup.engine.live import resync as _resync

    return _resync(app)
