"""``dmbackup prune``: keep the newest chains, delete whole chains oldest first."""

from __future__ import annotations

from dataclasses import dataclass, field

from dmbackup.engine.backup import open_repository
from dmbackup.errors import DmError, EXIT_OK, EXIT_WARNING


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
