"""What this machine saw last in a repository, compared with every listing.

``dmbackup.archive.trust`` arms a repository's ``Watch`` with the newest snapshot and config
bundle recorded in ``state_dir``; every listing is then checked against them, so an older
copy of the disk put back (or its newest files deleted) is noticed: writers refuse it
(``fatal``), readers report it as damage. What is seen newer is recorded through the
callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmbackup.archive import layout
from dmbackup.errors import CorruptObject, WrongRepository


@dataclass
class Watch:
    """What this machine saw last in this repository (from state_dir), and whom to tell
    when it sees something newer. ``fatal``: an older repository raises (writers) instead of
    being reported as damage (readers: verify exits 4, restore refuses "the newest")."""

    newest: dict | None = None              # {"chain", "seq", "id", "time"}
    config_newest: str | None = None        # name of the newest config bundle
    fatal: bool = False
    on_newest: object = None                # callable(dict)
    on_config_newest: object = None         # callable(str)

    def saw(self, chain: str, snap: str, header) -> None:
        rec = {"chain": chain, "seq": header.seq, "id": snap, "time": header.time}
        cur = self.newest
        try:
            newer = not cur or ((layout.chain_number(chain), header.seq)
                                > (layout.chain_number(cur["chain"]), int(cur["seq"])))
        except (KeyError, TypeError, ValueError):
            newer = True
        if newer and self.on_newest:
            self.newest = rec
            self.on_newest(rec)
        if header.config_bundle:
            self.saw_config(snap)

    def saw_config(self, name: str) -> None:
        if self.on_config_newest and (not self.config_newest
                                      or layout.id_time(name) > layout.id_time(self.config_newest)):
            self.config_newest = name
            self.on_config_newest(name)


def older_than_seen(repo, what: str) -> str:
    return (f"the repository on {repo.t.describe()} is older than what this machine saw last: {what} "
            "is missing (an older copy of the disk was put back, or its newest files were deleted). "
            "Find the newer disk or share; if you put an older copy back on purpose, run "
            f"`dmbackup init {repo.t.name}` to accept it")


def check_config_bundles(repo, names: list[str], committed: set) -> str | None:
    """A message when the newest config bundle this machine saw is gone and nothing newer
    is there (None otherwise); records the newest present. Only config-only bundles and
    those of ``committed`` mail snapshots count: a killed run leaves its snapshot's bundle
    without a catalog, and the next run deletes it."""
    w = repo.watch
    names = [n for n in names if layout.is_config_only(n) or n in committed]
    seen = w.config_newest
    if seen and seen not in names and not any(layout.id_time(n) > layout.id_time(seen) for n in names):
        return older_than_seen(repo, f"config bundle {layout.bundle(seen)}")
    if names:
        w.saw_config(max(names, key=lambda n: (layout.id_time(n), n)))
    return None


def check_listing(repo, snaps: list, bad: set, on_error, explicit: bool) -> None:
    """Compare a listing with what was seen. A missing config bundle is reported only to
    writers (fatal) and to a caller that asked for every problem (verify): a mail restore
    must not refuse because a config-only bundle is gone."""
    w = repo.watch
    if w.config_newest and (w.fatal or explicit):
        committed = {x.id for x in snaps} | {b for _, b in bad}
        msg = check_config_bundles(repo, repo.bundle_ids(), committed)
        if msg and w.fatal:
            raise WrongRepository(msg)
        if msg:
            on_error("config", w.config_newest, CorruptObject(msg))
    seen = w.newest
    if seen:
        try:
            key = (layout.chain_number(seen["chain"]), int(seen["seq"]))
            where = (seen["chain"], seen["id"])
        except (KeyError, TypeError, ValueError):
            seen = None             # a state file we cannot read proves nothing
    if seen:
        # a damaged newest catalog is damage (reported as such), not a rollback
        present = where in bad or any((s.chain, s.id) == where for s in snaps)
        if not present and not any((s.chain_no, s.header.seq) > key for s in snaps):
            msg = older_than_seen(repo, f"snapshot {where[0]}/{where[1]} of {seen.get('time')}")
            if w.fatal:
                raise WrongRepository(msg)
            on_error(where[0], where[1], CorruptObject(msg))
            return
    if snaps and w.on_newest:
        w.saw(snaps[-1].chain, snaps[-1].id, snaps[-1].header)
