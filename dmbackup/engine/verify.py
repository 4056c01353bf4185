"""Verifying a repository: every catalog, page and (with read_data) every stored byte.

Quick: every catalog authenticates, every page it lists opens, every volume it wrote exists
with the recorded size. ``read_data``: additionally each volume is read whole, its SHA-256
compared with the catalog's, and every block in it authenticated and decompressed; then every
file extent of every snapshot is checked to point at a good block and inside it. Damage is
reported with the snapshots and the files it affects; verification goes on after damage so
the report is complete.

The checks, in the order their problems are reported: the objects each snapshot wrote
(present, sizes; with read_data their bytes), the config bundle each checked snapshot
carries, the config-only bundles (whole-repository runs), then each checked snapshot's tree:
its catalog and pages, the extents of its files, and whether its shape can be restored.
Last, the user databases in the newest checked snapshot's config bundle are cross-checked
with the Maildirs its catalog holds: a mailbox without a Maildir, or a Maildir without a
mailbox, is a warning (exit 1) naming them, never damage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from dmbackup.archive import layout
from dmbackup.engine.result import Result
from dmbackup.errors import CorruptObject, DmError, NotFound, EXIT_DAMAGE, EXIT_OK, EXIT_WARNING


@dataclass
class VerifyResult(Result):
    target: str
    read_data: bool
    snapshots: int = 0
    volumes: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)
    damaged_snapshots: list[str] = field(default_factory=list)
    damaged_files: dict[str, list[str]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_DAMAGE if self.problems else EXIT_WARNING if self.warnings else EXIT_OK

    def damage(self, snap_id: str | None, msg: str) -> None:
        self.problems.append(msg)
        if snap_id and snap_id not in self.damaged_snapshots:
            self.damaged_snapshots.append(snap_id)

    def as_dict(self) -> dict:
        d = {"target": self.target, "read_data": self.read_data, "snapshots": self.snapshots,
             "volumes": self.volumes, "bytes_read": self.bytes_read, "ok": not self.problems,
             "problems": self.problems, "damaged_snapshots": self.damaged_snapshots,
             "damaged_files": self.damaged_files, "exit_code": self.exit_code}
        if self.warnings:       # the user databases' cross-check (added; absent when there is none)
            d["warnings"] = self.warnings
        return d

    def summary(self) -> str:
        if not self.problems:
            what = "all data read and authenticated" if self.read_data else "catalogs and volume sizes checked"
            return "\n".join([f"verify ok: {self.snapshots} snapshot(s), {self.volumes} volume(s); {what}"]
                             + [f"warning: {w}" for w in self.warnings])
        snaps = ", ".join(self.damaged_snapshots) or "(repository structure)"
        nfiles = sum(len(v) for v in self.damaged_files.values())
        return (f"verify found damage: {len(self.problems)} problem(s) affecting snapshot(s) {snaps}"
                f"{f' and {nfiles} file(s)' if nfiles else ''}: {self.problems[0]}")


def verify_repo(repo, target_name: str, *, snapshot: str | None = None, read_data: bool = False,
                app=None) -> VerifyResult:
    res = VerifyResult(target_name, read_data)
    snaps = repo.snapshots(on_error=lambda c, s, exc: res.damage(s, f"{c}/{s}: {exc}"))
    if snapshot:
        chosen = repo.resolve(snapshot, snaps)
        snaps = [s for s in snaps if s.chain == chosen.chain and s.header.seq <= chosen.header.seq]
        check = {chosen.id}
    else:
        check = {s.id for s in snaps}
    res.snapshots = len(check)
    objects = _Objects(repo, res, read_data, app)
    for s in snaps:
        objects.check_snapshot(s)
    checked = [s for s in snaps if s.id in check]
    for s in checked:
        _check_snapshot_bundle(repo, res, s, read_data)
    if not snapshot:
        _check_config_only_bundles(repo, res, read_data)
    for s in checked:
        if app:
            app.check_stop()
        _check_tree(repo, res, s, objects)
    _check_users(repo, res, checked, whole=not snapshot)
    return res


# --- the objects each snapshot wrote ---------------------------------------------------------
class _Objects:
    """Volumes, pages and index of every snapshot of the run: present with the recorded size
    (quick), or read whole with the recorded SHA-256 and every block authenticated
    (read_data). Remembers what it found for the extent check of the trees."""

    def __init__(self, repo, res: VerifyResult, read_data: bool, app):
        self.repo, self.res, self.read_data, self.app = repo, res, read_data, app
        self.good_blocks: dict[tuple[str, str, int], int] = {}       # (chain, volume, offset) -> plain length
        self.bad_volumes: set[tuple[str, str]] = set()
        self.volume_info: dict[tuple[str, str], tuple[int, int]] = {}   # -> (owner's seq, size)

    def check_snapshot(self, s) -> None:
        objs = {}
        for v in s.header.volumes:
            self.volume_info[(s.chain, v["name"])] = (s.header.seq, v["size"])
            objs[v["name"]] = v
        if s.header.pages:
            objs[s.header.pages["name"]] = s.header.pages
        if s.header.index:
            objs[s.header.index["name"]] = s.header.index
        for name, info in objs.items():
            if self.app:
                self.app.check_stop()
            try:
                if self.read_data:
                    self._read(s, name, info)
                else:
                    self._stat(s, name, info)
            except NotFound:
                self.bad_volumes.add((s.chain, name))
                self.res.damage(s.id, f"{s.chain}/{name} is missing")

    def _stat(self, s, name: str, info: dict) -> None:
        size = self.repo.object_size(s.chain, name)
        if size != info["size"]:
            self.bad_volumes.add((s.chain, name))
            self.res.damage(s.id, f"{s.chain}/{name}: {size} bytes, the catalog says {info['size']}")
        if layout.is_data_object(name):
            self.res.volumes += 1

    def _read(self, s, name: str, info: dict) -> None:
        counted = _Counting(hashlib.sha256())
        if layout.is_data_object(name):
            self._read_volume(s, name, info, counted)
        else:
            data = self.repo.read_object(s.chain, name)
            counted.update(data)
            self.res.bytes_read += len(data)
            if name.endswith(".index"):
                try:
                    self.repo.content_index(s)
                except CorruptObject as exc:
                    self.res.damage(s.id, f"{s.chain}/{name}: {exc}")
        if counted.h.hexdigest() != info["sha256"] or counted.n != info["size"]:
            self.bad_volumes.add((s.chain, name))
            self.res.damage(s.id, f"{s.chain}/{name}: size or checksum differs from the catalog "
                                  f"(expected {info['size']} bytes)")

    def _read_volume(self, s, name: str, info: dict, counted: "_Counting") -> None:
        reader = self.repo.block_reader()
        try:
            for off, sealed in self.repo.volume_blocks(s.chain, name, info["size"], counted):
                if self.app:
                    self.app.check_stop()
                try:
                    plain = reader.open_block(s.chain, name, off, sealed)
                    self.good_blocks[(s.chain, name, off)] = len(plain)
                except CorruptObject as exc:
                    self.res.damage(s.id, f"{s.chain}/{name}: {exc}")
        except CorruptObject as exc:
            self.res.damage(s.id, f"{s.chain}/{name}: {exc}")
        self.res.bytes_read += counted.n
        self.res.volumes += 1

    def extent_bad(self, s, vol: str, voff: int, vlen: int, boff: int, blen: int) -> bool:
        """Does a file extent of snapshot ``s`` lie in a damaged, missing or foreign block?"""
        key = (s.chain, vol)
        if self.read_data:
            plain_len = self.good_blocks.get((s.chain, vol, voff))
            return plain_len is None or boff + blen > plain_len
        if key not in self.volume_info:
            return True
        # a volume this snapshot may use (its own or an older one of the chain) and an extent
        # that lies inside it
        seq, size = self.volume_info[key]
        return key in self.bad_volumes or seq > s.header.seq or voff + vlen > size


class _Counting:
    """A hasher that also counts the bytes it saw."""

    def __init__(self, h):
        self.h, self.n = h, 0

    def update(self, b: bytes) -> None:
        self.h.update(b)
        self.n += len(b)


# --- config bundles ------------------------------------------------------------------------------
def _check_snapshot_bundle(repo, res: VerifyResult, s, read_data: bool) -> None:
    """The config bundle a mail snapshot carries."""
    from dmbackup.engine.configbundle import open_repo_bundle

    if not s.header.config_bundle:
        return
    name = s.header.config_bundle
    try:
        if read_data:
            open_repo_bundle(repo, s.id)
        else:
            repo.bundle_size(s.id)
    except NotFound:
        res.damage(s.id, f"{name} (the config bundle of {s.id}) is missing")
    except (CorruptObject, DmError) as exc:
        res.damage(s.id, f"{name} (the config bundle of {s.id}): {exc}")


def _check_config_only_bundles(repo, res: VerifyResult, read_data: bool) -> None:
    """Config-only bundles (``config/<time>-config.bundle``)."""
    from dmbackup.engine.configbundle import open_repo_bundle, repo_bundle_ids

    for bid in repo_bundle_ids(repo, config_only=True):
        try:
            if read_data:
                open_repo_bundle(repo, bid)
            else:
                repo.bundle_size(bid)
        except (CorruptObject, DmError) as exc:
            res.damage(bid, f"{layout.bundle(bid)}: {exc}")


# --- the user databases against the mail store ----------------------------------------------------
def _check_users(repo, res: VerifyResult, checked: list, *, whole: bool) -> None:
    """The mailboxes of the user databases in the newest checked mail snapshot's config bundle
    against the ``<domain>/<user>/Maildir`` directories of that snapshot's catalog (in a
    repository without mail snapshots, the newest config-only bundle's cross-check, made
    against the live mail store when it was written).

    Mismatches are warnings, not damage: the backup is intact and restores exactly what was
    there. A mailbox created but never delivered to has no Maildir yet, a deleted user's mail
    may be kept on purpose; what they say is about the appliance, for a person to look at,
    and nothing verify could repair or that makes a restore fail. One snapshot is enough: the
    newest is the one a restore takes, and older ones would repeat the same names."""
    from dmbackup.engine.bundlestore import open_repo_bundle
    from dmbackup.engine.configbundle import repo_bundle_ids
    from dmbackup.engine.configdb import cross_check_lines, recheck
    from dmbackup.source.appliance import maildirs_in

    snap = next((s for s in reversed(checked) if s.header.config_bundle), None)
    try:
        if snap is not None:
            where = f"snapshot {snap.id}"
            records = open_repo_bundle(repo, snap.id).manifest.get("databases") or []
            if records:
                rows, _ = repo.catalog_body(snap)
                records = recheck(records, maildirs_in(r.dir for r in rows), "the snapshot's mail store")
        elif whole and (ids := repo_bundle_ids(repo, config_only=True)):
            where = f"config bundle {ids[-1]}"
            records = open_repo_bundle(repo, ids[-1]).manifest.get("databases") or []
        else:
            return
    except DmError:
        return          # a bundle or catalog that does not open is reported as damage above
    res.warnings.extend(cross_check_lines(records, where))


# --- each checked snapshot's tree ------------------------------------------------------------------
def _check_tree(repo, res: VerifyResult, s, objects: _Objects) -> None:
    """Catalog and pages open, every file's extents lie in good blocks, the shape restores."""
    try:
        rows, _ = repo.catalog_body(s)
    except (CorruptObject, NotFound) as exc:
        res.damage(s.id, f"{s.chain}/{s.id}: {exc}")
        return
    shape = _TreeShape()
    for row in rows:
        try:
            entries = repo.page(s.chain, row)
        except (CorruptObject, NotFound) as exc:
            res.damage(s.id, f"{s.chain}/{s.id}: {exc}")
            continue
        shape.add(row.dir, entries)
        for e in entries:
            if e.type == "f" and any(objects.extent_bad(s, *x) for x in e.extents):
                _damaged_file(res, s, f"{row.dir}/{e.name}" if row.dir else e.name)
    for msg in shape.problems():
        res.damage(s.id, f"{s.chain}/{s.id}: {msg}; it cannot be restored as it is (restore "
                         "restores one copy and warns)")


def _damaged_file(res: VerifyResult, s, path: str) -> None:
    files = res.damaged_files.setdefault(s.id, [])
    if len(files) < 1000:
        files.append(path)
    if s.id not in res.damaged_snapshots:
        res.damaged_snapshots.append(s.id)
        res.problems.append(f"{s.chain}/{s.id}: file {path} lies in a damaged or missing block")


class _TreeShape:
    """Can the tree a snapshot describes be restored? Unique names per directory, safe names,
    one base name per Maildir folder (across new/ and cur/), every directory reachable from the
    root through directory entries. Problems are listed by path (at most 20 per kind)."""

    def __init__(self):
        self.dirs: dict[str, set[str]] = {}           # dir -> names of its directory entries
        self.rows: list[str] = []
        self.bases: dict[str, dict[str, str]] = {}    # Maildir folder -> base name -> first path
        self.found: dict[str, list[str]] = {}

    def _bad(self, kind: str, path: str) -> None:
        lst = self.found.setdefault(kind, [])
        if len(lst) < 20:
            lst.append(path or "/")

    def add(self, d: str, entries) -> None:
        from dmbackup.source.mailstore import base_name
        from dmbackup.engine.safetree import check_name

        self.rows.append(d)
        names: set[str] = set()
        folder, _, sub = d.rpartition("/")
        maildir = sub in ("new", "cur") or d in ("new", "cur")
        bases = self.bases.setdefault(folder if sub in ("new", "cur") else "", {}) if maildir else None
        subdirs = self.dirs.setdefault(d, set())
        for e in entries:
            path = f"{d}/{e.name}" if d else e.name
            try:
                check_name(e.name)
            except CorruptObject:
                self._bad("unsafe name", f"{d}/{e.name!r}")
                continue
            if e.name in names:
                self._bad("name listed twice in one directory", path)
                continue
            names.add(e.name)
            if e.type == "d":
                subdirs.add(e.name)
            if bases is not None and e.type == "f":
                b = base_name(e.name)
                if b in bases:
                    self._bad("message under two names in one Maildir folder", f"{bases[b]} and {path}")
                else:
                    bases[b] = path

    def problems(self) -> list[str]:
        for d in self.rows:
            if d:
                parent, _, name = d.rpartition("/")
                if name not in self.dirs.get(parent, ()):
                    self._bad("directory not reachable from the root", d)
        return [f"{kind}: {', '.join(paths)}" for kind, paths in self.found.items()]
