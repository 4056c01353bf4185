"""``dmbackup snapshots``: the snapshots and config bundles of one target, or of every target.

A repository target lists its mail snapshots (full and incremental, by chain) and its
config-only bundles (a mail snapshot's own bundle is part of that snapshot and not listed
again); a bundle store (the mailbox) lists its bundles from their message headers, without
the passphrase. A damaged snapshot is left out and said in a warning. Over every target, one
that cannot be reached (a USB disk unplugged) does not hide the others: it is reported, and
the exit code is its error's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dmbackup import humanize
from dmbackup.config import holds_repository
from dmbackup.engine.result import Result
from dmbackup.errors import DmError

if TYPE_CHECKING:
    from dmbackup.engine.bundlestore import BundleRef


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
    target: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def of_bundle(cls, b: BundleRef, target: str) -> "SnapshotInfo":
        return cls(b.id, None, "config", b.time, b.files, b.bytes, b.stored_bytes, warnings=b.warnings,
                   target=target)


@dataclass
class SnapshotList(Result):
    """The snapshots of one or more targets, in target order (iterable, like a list).

    ``warnings`` are about snapshots (damage); ``failed`` the targets that could not be
    listed, with their error. Neither is in ``--json``, which is the list of snapshots."""

    items: list[SnapshotInfo] = field(default_factory=list)
    failed: list[tuple[str, DmError]] = field(default_factory=list)
    _notes: list[str] = field(default_factory=list, repr=False)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def exit_code(self) -> int:
        # warnings are printed, not an exit 1: listing never changed anything; an unreachable
        # target is "not all fine"
        return max((exc.exit_code for _, exc in self.failed), default=0)

    def as_dict(self) -> dict:
        return {"snapshots": self.as_json(), "failed": {name: str(exc) for name, exc in self.failed},
                "warnings": self.warnings, "exit_code": self.exit_code}

    def as_json(self) -> list[dict]:
        return [s.as_dict() for s in self.items]

    def notes(self) -> list[str]:
        return list(self._notes)

    def summary(self) -> str:
        if not self.items:
            return "no snapshots"
        lines = [f"{'target':<10} {'chain':<22} {'id':<24} {'kind':<11} {'time':<20} {'files':>8} "
                 f"{'bytes':>10} {'stored':>10}"]
        for d in self.as_json():
            lines.append(f"{d['target']:<10} {str(d['chain'] or '-'):<22} {d['id']:<24} {d['kind']:<11} "
                         f"{d['time']:<20} {d['files']:>8} {humanize.size(d['bytes']):>10} "
                         f"{humanize.size(d['stored_bytes']):>10}")
        return "\n".join(lines)


def snapshots(app, target_name: str | None = None) -> SnapshotList:
    """The snapshots of ``target_name`` (its errors raise), or of every configured target."""
    if target_name is not None:
        return _one(app, target_name)
    out = SnapshotList()
    for name in sorted(app.config.targets):
        try:
            one = _one(app, name)
        except DmError as exc:
            out.failed.append((name, exc))
            out._notes.append(f"dmbackup: {name}: {exc}")
            continue
        out.items.extend(one.items)
        out.warnings.extend(one.warnings)
        out._notes.extend(f"warning: {name}: {w}" for w in one.warnings)
    return out


def _one(app, target_name: str) -> SnapshotList:
    tcfg = app.config.target(target_name)
    if not holds_repository(tcfg):
        from dmbackup.engine.configbundle import listing as bundle_listing   # late: start-up (issue 17)

        items = [SnapshotInfo.of_bundle(b, target_name) for b in bundle_listing(app, target_name)]
        return SnapshotList(items=items)
    target = app.target(target_name)
    with target:
        from dmbackup.engine.unlockahead import derive_ahead

        derive_ahead(app, target)          # scrypt beside loading the archive code below
        from dmbackup.archive.trust import open_trusted

        repo = open_trusted(app, target, target_name, require_enrolled=False)
        items = [SnapshotInfo(s.id, s.chain, s.header.kind, s.header.time, s.header.files, s.header.bytes,
                              s.header.stored_bytes, s.header.parent, s.header.warnings, s.header.job,
                              target_name)
                 for s in repo.snapshots()]
        from dmbackup.engine.bundlestore import RepositoryBundles

        items.extend(SnapshotInfo.of_bundle(b, target_name) for b in RepositoryBundles(repo, target_name).listing())
        res = SnapshotList(items=items)
        for chain, snap, why in repo.damaged:
            msg = f"{chain}/{snap} is damaged and not listed ({why}): run `dmbackup verify`"
            app.log.warning("snapshot_damaged", message=msg)
            res.warnings.append(msg)
        res._notes.extend(f"warning: {target_name}: {w}" for w in res.warnings)
    return res
