"""``dmbackup prune``: keep the newest chains, delete whole chains oldest first."""

from __future__ import annotations

from dataclasses import dataclass, field

from dmbackup.archive import layout
from dmbackup.engine import pagekeys
from dmbackup.engine.backup import open_repository
from dmbackup.engine.result import Result
from dmbackup.errors import DmError

DEFAULT_KEEP_CHAINS = 4


@dataclass
class PruneResult(Result):
    target: str
    dry_run: bool
    keep_chains: int
    kept: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    deleted_bundles: list[str] = field(default_factory=list)
    kept_damaged: list[str] = field(default_factory=list)

    # exit_code (Result): 1 exactly when a damaged chain was kept, each of which is a warning

    def as_dict(self) -> dict:
        return {"target": self.target, "dry_run": self.dry_run, "keep_chains": self.keep_chains,
                "kept": self.kept, "deleted": self.deleted, "deleted_bundles": self.deleted_bundles,
                "exit_code": self.exit_code, "kept_damaged": self.kept_damaged, "warnings": self.warnings}

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (f"{verb} {len(self.deleted)} chain(s){': ' + ', '.join(self.deleted) if self.deleted else ''}; "
                f"kept {', '.join(self.kept) or 'none'}")


def keep_chains_for(config, target_name: str) -> int:
    """The retention of a target: the largest ``keep_chains`` of the mail jobs writing to it."""
    jobs = [j for j in config.jobs.values() if j.target == target_name and j.what == "mail"]
    return max((j.keep_chains for j in jobs), default=DEFAULT_KEEP_CHAINS)


def prune(app, target_name: str, keep_chains: int, dry_run: bool = False) -> PruneResult:
    """Keep the newest ``keep_chains`` chains; delete whole chains oldest first.

    ``keep_chains`` is the caller's: a job's, or ``--keep-chains`` (``keep_chains_for`` gives a
    target's configured retention).

    Deletion order inside a chain: catalogs newest first, then pages and volumes, so an
    interrupted prune leaves either a complete chain or snapshots that no longer exist; never
    a listed snapshot with missing data.

    A chain with a damaged catalog is kept whatever its age, and reported (``kept_damaged``,
    exit 1): its other objects may be intact and the damage repairable from another copy,
    and a chain whose catalog cannot be read is not known to be old.
    """
    target = app.target(target_name)
    with target:
        repo = open_repository(app, target, target_name, require_enrolled=not dry_run)
        if not dry_run:
            repo.lock("prune")
        try:
            return _prune(app, repo, target_name, keep_chains, dry_run)
        finally:
            repo.unlock_repo()


def _prune(app, repo, target_name: str, keep_chains: int, dry_run: bool) -> PruneResult:
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
        _delete_chain(repo, chain)
        app.log.info("chain_deleted", target=target_name, chain=chain)
    res.deleted_bundles = _prune_config_bundles(repo, snaps, keep, dry_run)
    if not dry_run and res.deleted:
        _remove_empty_dirs(repo, res.deleted)
        pagekeys.forget_pruned(app, repo, {(s.chain, s.id) for s in snaps if s.chain in keep})
    return res


def _delete_chain(repo, chain: str) -> None:
    """Catalogs newest first (each with its snapshot's bundle), then everything else."""
    objs = repo.chain_objects(chain)
    cats = sorted((o for o in objs if layout.catalog_id(o) is not None), reverse=True)
    for o in cats + [o for o in objs if layout.catalog_id(o) is None]:
        repo.delete_object(chain, o)
        snap = layout.catalog_id(o)
        if snap is not None:
            repo.delete_bundle(snap)


def _prune_config_bundles(repo, snaps, keep: set, dry_run: bool) -> list[str]:
    """Config-only bundles live as long as the oldest kept chain; the newest one always stays."""
    kept_times = [layout.id_time(s.id) for s in snaps if s.chain in keep]
    oldest = min(kept_times) if kept_times else None
    config_only = sorted(b for b in repo.bundle_ids() if layout.is_config_only(b))
    doomed = [c for c in config_only[:-1] if oldest is not None and layout.id_time(c) < oldest]
    if not dry_run:
        for c in doomed:
            repo.delete_bundle(c)
    return doomed


def _remove_empty_dirs(repo, chains) -> None:
    for c in chains:
        try:
            repo.remove_chain_dir(c)
        except (OSError, DmError):
            pass           # not empty, or a target without directories: harmless
