"""Verifying a repository: every catalog, page and (with read_data) every stored byte.

Quick: every catalog authenticates, every page it lists opens, every volume it wrote exists
with the recorded size. ``read_data``: additionally each volume is read whole, its SHA-256
compared with the catalog's, and every block in it authenticated and decompressed; then every
file extent of every snapshot is checked to point at a good block and inside it. Damage is
reported with the snapshots and the files it affects; verification goes on after damage so
the report is complete.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from dmbackup.archive.blocks import BlockReader, stream_volume
from dmbackup.errors import CorruptObject, DmError, NotFound, EXIT_DAMAGE, EXIT_OK


@dataclass
class VerifyResult:
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
        return EXIT_DAMAGE if self.problems else EXIT_OK

    def as_dict(self) -> dict:
        return {"target": self.target, "read_data": self.read_data, "snapshots": self.snapshots,
                "volumes": self.volumes, "bytes_read": self.bytes_read, "ok": not self.problems,
                "problems": self.problems, "damaged_snapshots": self.damaged_snapshots,
                "damaged_files": self.damaged_files, "exit_code": self.exit_code}

    def summary(self) -> str:
        if not self.problems:
            what = "all data read and authenticated" if self.read_data else "catalogs and volume sizes checked"
            return f"verify ok: {self.snapshots} snapshot(s), {self.volumes} volume(s); {what}"
        snaps = ", ".join(self.damaged_snapshots) or "(repository structure)"
        nfiles = sum(len(v) for v in self.damaged_files.values())
        return (f"verify found damage: {len(self.problems)} problem(s) affecting snapshot(s) {snaps}"
                f"{f' and {nfiles} file(s)' if nfiles else ''}: {self.problems[0]}")


def verify_repo(repo, target_name: str, *, snapshot: str | None = None, read_data: bool = False,
                app=None) -> VerifyResult:
    res = VerifyResult(target_name, read_data)

    def damaged(snap_id, msg):
        res.problems.append(msg)
        if snap_id and snap_id not in res.damaged_snapshots:
            res.damaged_snapshots.append(snap_id)

    snaps = repo.snapshots(on_error=lambda c, s, exc: damaged(s, f"{c}/{s}: {exc}"))
    if snapshot:
        chosen = repo.resolve(snapshot, snaps)
        snaps = [s for s in snaps if s.chain == chosen.chain and s.header.seq <= chosen.header.seq]
        check = {chosen.id}
    else:
        check = {s.id for s in snaps}
    res.snapshots = len(check)

    # which volumes/pages exist, and (read_data) which blocks are good
    good_blocks: dict[tuple[str, str, int], int] = {}
    bad_volumes: set[tuple[str, str]] = set()
    volume_owner: dict[tuple[str, str], str] = {}
    volume_info: dict[tuple[str, str], tuple[int, int]] = {}       # -> (owner's seq, size)
    for s in snaps:
        objs = {}
        for v in s.header.volumes:
            volume_owner[(s.chain, v["name"])] = s.id
            volume_info[(s.chain, v["name"])] = (s.header.seq, v["size"])
            objs[v["name"]] = v
        if s.header.pages:
            objs[s.header.pages["name"]] = s.header.pages
        if s.header.index:
            objs[s.header.index["name"]] = s.header.index
        for name, info in objs.items():
            key = (s.chain, name)
            if app:
                app.check_stop()
            try:
                if read_data:
                    h = hashlib.sha256()
                    counted = _Counting(h)
                    if name.endswith((".pages", ".index")):
                        data = repo.t.get(f"chains/{s.chain}/{name}")
                        counted.update(data)
                        res.bytes_read += len(data)
                        if name.endswith(".index"):
                            try:
                                repo.content_index(s)
                            except CorruptObject as exc:
                                damaged(s.id, f"{s.chain}/{name}: {exc}")
                    else:
                        reader = BlockReader(repo.t, repo.id, repo.keys.data)
                        try:
                            for off, sealed in stream_volume(repo.t, f"chains/{s.chain}/{name}", info["size"], counted):
                                if app:
                                    app.check_stop()
                                try:
                                    plain = reader.open_block(s.chain, name, off, sealed)
                                    good_blocks[(s.chain, name, off)] = len(plain)
                                except CorruptObject as exc:
                                    damaged(s.id, f"{s.chain}/{name}: {exc}")
                        except CorruptObject as exc:
                            damaged(s.id, f"{s.chain}/{name}: {exc}")
                        res.bytes_read += counted.n
                        res.volumes += 1
                    if h.hexdigest() != info["sha256"] or counted.n != info["size"]:
                        bad_volumes.add(key)
                        damaged(s.id, f"{s.chain}/{name}: size or checksum differs from the catalog "
                                      f"(expected {info['size']} bytes)")
                else:
                    size = repo.t.stat(f"chains/{s.chain}/{name}").size
                    if size != info["size"]:
                        bad_volumes.add(key)
                        damaged(s.id, f"{s.chain}/{name}: {size} bytes, the catalog says {info['size']}")
                    if not name.endswith((".pages", ".index")):
                        res.volumes += 1
            except NotFound:
                bad_volumes.add(key)
                damaged(s.id, f"{s.chain}/{name} is missing")

    # the config bundle each snapshot carries
    for s in snaps:
        if s.id not in check or not s.header.config_bundle:
            continue
        name = s.header.config_bundle
        try:
            if read_data:
                from dmbackup.engine.configbundle import _open_repo_bundle

                _open_repo_bundle(repo, s.id)
            else:
                repo.t.stat(name)
        except NotFound:
            damaged(s.id, f"{name} (the config bundle of {s.id}) is missing")
        except (CorruptObject, DmError) as exc:
            damaged(s.id, f"{name} (the config bundle of {s.id}): {exc}")

    # config-only bundles (config/<time>-config.bundle)
    if not snapshot:
        from dmbackup.engine.configbundle import _open_repo_bundle, _repo_bundle_names

        for bid, _ in _repo_bundle_names(repo):
            if not bid.endswith("-config"):
                continue
            try:
                if read_data:
                    _open_repo_bundle(repo, bid)
                else:
                    repo.t.stat(f"config/{bid}.bundle")
            except (CorruptObject, DmError) as exc:
                damaged(bid, f"config/{bid}.bundle: {exc}")

    # walk every checked snapshot's tree
    for s in snaps:
        if s.id not in check:
            continue
        if app:
            app.check_stop()
        try:
            rows, _ = repo.catalog_body(s)
        except (CorruptObject, NotFound) as exc:
            damaged(s.id, f"{s.chain}/{s.id}: {exc}")
            continue
        shape = _TreeShape()
        for row in rows:
            try:
                entries = repo.page(s.chain, row)
            except (CorruptObject, NotFound) as exc:
                damaged(s.id, f"{s.chain}/{s.id}: {exc}")
                continue
            shape.add(row.dir, entries)
            for e in entries:
                if e.type != "f":
                    continue
                for vol, voff, vlen, boff, blen in e.extents:
                    key = (s.chain, vol)
                    bad = key in bad_volumes and not read_data
                    if read_data:
                        plain_len = good_blocks.get((s.chain, vol, voff))
                        bad = plain_len is None or boff + blen > plain_len
                    elif key not in volume_info:
                        bad = True
                    else:
                        # a volume this snapshot may use (its own or an older one of the chain)
                        # and an extent that lies inside it
                        seq, size = volume_info[key]
                        bad = bad or seq > s.header.seq or voff + vlen > size
                    if bad:
                        path = f"{row.dir}/{e.name}" if row.dir else e.name
                        files = res.damaged_files.setdefault(s.id, [])
                        if len(files) < 1000:
                            files.append(path)
                        if s.id not in res.damaged_snapshots:
                            res.damaged_snapshots.append(s.id)
                            res.problems.append(f"{s.chain}/{s.id}: file {path} lies in a damaged or missing block")
                        break
        for msg in shape.problems():
            damaged(s.id, f"{s.chain}/{s.id}: {msg}; it cannot be restored as it is (restore "
                          "restores one copy and warns)")
    return res


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


class _Counting:
    """A hasher that also counts the bytes it saw."""

    def __init__(self, h):
        self.h, self.n = h, 0

    def update(self, b: bytes) -> None:
        self.h.update(b)
        self.n += len(b)
