"""The operations: init, backup, snapshots, verify, restore, resync, prune, as plain functions.

Each takes an ``App`` and a target name, opens the target for the duration of the call, and
returns a ``dmbackup.engine.result.Result`` (``exit_code``, ``warnings``, ``as_dict()``,
``summary()``); expected failures raise DmError subclasses. Nothing here imports typer.

A target either holds a repository (dir, usb, smb, nfs) or is a bundle store that keeps
config bundles only (the mailbox): ``dmbackup.config.holds_repository`` tells which, and the
config-bundle operations (``--what config``) work on both (``dmbackup.engine.configbundle``).
``run_backup`` and ``run_restore`` are what the commands run: the operation between the
pre- and post- hooks (``dmbackup.engine.hooks``); a job run (``dmbackup.daemon.jobs``) does
the same around its own steps.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

from dmbackup import gcpause
from dmbackup.engine.result import DictResult, Result
from dmbackup.errors import ConfigError, UsageError

# Start-up cost (issue 17): nothing heavy is imported here. The operations pull in zstandard,
# cryptography, the archive format and the config-bundle machinery when they run (imports inside
# the functions below); the other public names resolve on first use (PEP 562 ``__getattr__``).
_LAZY = {
    "BackupResult": "backup", "backup_mail": "backup",
    "InitResult": "enrol",
    "SnapshotInfo": "listing", "SnapshotList": "listing",
    "PruneResult": "prune",
    "RestoreResult": "restore",
    "restore_to_dir": "restoredir",
    "pick_snapshot": "select", "selection_prefix": "select",
    "VerifyResult": "verify", "verify_repo": "verify",
    "configbundle": None,
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    sub = _LAZY[name]
    if sub is None:                                  # a submodule itself
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(f"{__name__}.{sub}"), name)
    globals()[name] = value
    return value


def holds_repository(tcfg) -> bool:
    """``dmbackup.config.holds_repository``, imported when first asked (``--help`` reads no config)."""
    from dmbackup.config import holds_repository as holds

    return holds(tcfg)


__all__ = ["init_repo", "backup", "run_backup", "snapshots", "verify", "restore", "run_restore", "resync",
           "prune", "pick_snapshot", "selection_prefix", "BackupResult", "RestoreResult", "VerifyResult",
           "PruneResult", "InitResult", "SnapshotInfo", "SnapshotList", "ResyncResult", "Result"]


def backup(app, target_name: str, what: str = "mail", full: bool = False, job=None) -> Result:
    """One backup: a mail snapshot (full or incremental), or a config bundle (``what="config"``)."""
    if what == "config":
        from dmbackup.engine import configbundle

        return configbundle.backup_config(app, target_name)
    if not holds_repository(app.config.target(target_name)):
        raise ConfigError(f"target {target_name!r} only takes config bundles: use --what config")
    target = app.target(target_name)
    with target, gcpause.relaxed():
        from dmbackup.engine.unlockahead import derive_ahead

        derive_ahead(app, target)       # scrypt in a thread while the backup code loads
        from dmbackup.engine.backup import backup_mail

        return backup_mail(app, target, target_name, full=full, job=job)


def run_backup(app, target_name: str, what: str = "mail", full: bool = False) -> Result:
    """``dmbackup backup --target T``: ``backup`` between the pre- and post-backup hooks (a pre
    hook's exit 75 raises ``hooks.RunSkipped``, exit 0)."""
    from dmbackup.engine import hooks

    ctx = hooks.HookContext(action="backup", target=target_name, what=what)
    with hooks.around(app, ctx):
        res = backup(app, target_name, what=what, full=full)
        ctx.snapshot = res.snapshot_id
        ctx.warnings.extend(res.warnings)
    return res


def verify(app, target_name: str, snapshot: str | None = None, read_data: bool = False) -> Result:
    """Every snapshot restorable (``read_data``: every byte authentic); for a bundle store, its
    newest bundle."""
    if not holds_repository(app.config.target(target_name)):
        from dmbackup.engine import configbundle

        return configbundle.verify_bundles(app, target_name)
    from dmbackup.archive.trust import open_trusted
    from dmbackup.engine.verify import verify_repo

    target = app.target(target_name)
    with target, gcpause.relaxed():
        repo = open_trusted(app, target, target_name, require_enrolled=False)
        res = verify_repo(repo, target_name, snapshot=snapshot, read_data=read_data, app=app)
        app.log.info("verify_done", **res.as_dict())
        return res


def restore(app, target_name: str, snapshot: str | None = None, *, at: str | None = None,
            what: str = "mail", mailbox: str | None = None, folder: str | None = None,
            to: str | None = None, overwrite: bool = False, resume: bool = False,
            uid_gap: int | None = None, stage_fd: int | None = None, owner=None, modes=None,
            databases: bool = False) -> Result:
    """Restore into ``to`` (a directory: ``dmbackup.engine.restoredir``), or into the live store
    (``to`` None: ``dmbackup.engine.live``); ``what="config"``: a config bundle
    (``dmbackup.engine.configbundle``; ``databases``: also apply its database dumps).
    ``uid_gap``, ``resume``, ``stage_fd``/``owner``/``modes``: see ``restore_to_dir``."""
    from dmbackup.engine.select import selection_prefix

    if what == "config":
        from dmbackup.engine import configbundle

        return configbundle.restore_config(app, target_name, snapshot=snapshot, at=at, to=to, overwrite=overwrite,
                                           databases=databases)
    if databases:
        raise UsageError("--databases applies the database dumps of a config bundle: it goes with --what config "
                         "--overwrite")
    if not holds_repository(app.config.target(target_name)):
        raise UsageError(f"target {target_name!r} holds only config bundles: use --what config")
    if uid_gap is not None and not 0 <= uid_gap <= 1_000_000_000:
        raise UsageError(f"--uid-gap {uid_gap}: expected a number from 0 to 1000000000")
    selection_prefix(mailbox, folder)           # a malformed selection is a usage error, before any I/O
    with gcpause.relaxed():
        if to is None:
            from dmbackup.engine.live import restore_live

            return restore_live(app, target_name, snapshot=snapshot, at=at, mailbox=mailbox, folder=folder,
                                overwrite=overwrite, resume=resume, uid_gap=uid_gap)
        from dmbackup.engine.restoredir import restore_to_dir

        return restore_to_dir(app, target_name, snapshot, at=at, mailbox=mailbox, folder=folder, to=to,
                              overwrite=overwrite, resume=resume, uid_gap=uid_gap, stage_fd=stage_fd, owner=owner,
                              modes=modes)


def run_restore(app, target_name: str, snapshot: str | None = None, *, what: str = "mail", **kw) -> Result:
    """``dmbackup restore --target T``: ``restore`` between the pre- and post-restore hooks."""
    from dmbackup.engine import hooks

    ctx = hooks.HookContext(action="restore", target=target_name, what=what)
    with hooks.around(app, ctx):
        res = restore(app, target_name, snapshot, what=what, **kw)
        ctx.snapshot = res.snapshot_id
    return res


@dataclass
class ResyncResult(DictResult):
    """``restore --resync``: every mailbox resynced and its mod-sequences raised."""

    def summary(self) -> str:
        d = self.data
        return (f"resynced; {d.get('folders')} folder(s) now at HIGHESTMODSEQ {d.get('highest_modseq')}, "
                "every message's mod-sequence raised")

    def notes(self) -> list[str]:
        return [f"warning: {w}" for w in self.warnings]


def resync(app) -> ResyncResult:
    """Finish a store restored with ``--to DIR --uid-gap N`` and moved into place by hand."""
    from dmbackup.engine.live import resync as _resync

    d = _resync(app)
    return ResyncResult(data=d, code=d.get("exit_code", 0), warnings=list(d.get("warnings", [])))


def init_repo(app, target_name: str, *args, **kw):
    """``dmbackup init``: ``dmbackup.engine.enrol.init_repo``."""
    from dmbackup.engine.enrol import init_repo as _init_repo

    return _init_repo(app, target_name, *args, **kw)


def snapshots(app, target_name: str, *args, **kw):
    """``dmbackup snapshots``: ``dmbackup.engine.listing.snapshots``."""
    from dmbackup.engine.listing import snapshots as _snapshots

    return _snapshots(app, target_name, *args, **kw)


def prune(app, target_name: str, *args, **kw):
    """``dmbackup prune``: ``dmbackup.engine.prune.prune``."""
    from dmbackup.engine.prune import prune as _prune

    return _prune(app, target_name, *args, **kw)


_OPERATIONS = frozenset({"backup", "restore", "verify", "prune"})


class _Engine(types.ModuleType):
    """Importing a submodule sets it as an attribute of its package. The operations above share
    their names with submodules (backup, restore, verify, prune), and the submodules are now
    imported lazily, after the functions exist: that must not replace a function with its module
    (with eager imports it never did). So ``import dmbackup.engine.backup as m`` gives the
    *function*, as it always did: use ``importlib.import_module`` or ``sys.modules`` for the
    module."""

    def __setattr__(self, name, value):
        if name in _OPERATIONS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Engine
