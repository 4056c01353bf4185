"""The Repository's objects by id (chains, catalogs, bundles), and its kept snapshot listing.

Listing snapshots reads every catalog header (over SMB/NFS, one round trip each): a
Repository object reads them once, and lists again after it wrote a catalog or deleted a
chain object. Damage and what this machine saw last are reported on every call.
"""

from __future__ import annotations

import hashlib

import pytest

from dmbackup.archive import CATALOG_MAGIC, layout
from dmbackup.archive.catalog import Header, PageRow, U32, encode_catalog
from dmbackup.archive.crypto import Keys
from dmbackup.errors import NotFound
from dmbackup.targets.dir import DirTarget
from tests.engine.forge import forge, open_repo


def _count_catalog_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    real = DirTarget.get

    def get(self, name, offset=0, length=None):
        if name.endswith(".catalog"):
            reads.append(name)
        return real(self, name, offset, length)

    monkeypatch.setattr(DirTarget, "get", get)
    return reads


@pytest.fixture
def two(ready):
    """A repository with a full and an incremental snapshot."""
    ready.ok("backup", "--target", "local")
    ready.ok("backup", "--target", "local")
    return ready


def test_snapshot_headers_are_read_once_per_repository_object(two, monkeypatch):
    repo = open_repo(two)
    reads = _count_catalog_reads(monkeypatch)
    first = repo.snapshots()
    assert len(first) == 2 and len(reads) == 2
    again = repo.snapshots()
    assert [s.id for s in again] == [s.id for s in first] and len(reads) == 2
    again.pop()                                   # a caller's list is its own
    assert len(repo.snapshots()) == 2
    # another object of the same repository reads them itself
    assert len(open_repo(two).snapshots()) == 2 and len(reads) == 4


def test_a_catalog_written_or_a_chain_object_deleted_drops_the_listing(two):
    repo = open_repo(two)
    assert len(repo.snapshots()) == 2
    snap = forge(two, {"": []})                   # written by another Repository object
    assert len(repo.snapshots()) == 2             # ... which this one does not know of
    forged = open_repo(two)
    assert [s.id for s in forged.snapshots()][-1] == snap
    chain = forged.snapshots()[-1].chain
    forged.delete_object(chain, layout.catalog_name(snap))
    assert snap not in [s.id for s in forged.snapshots()]
    ref = forged.snapshots()[-1]
    data = forged.read_object(ref.chain, layout.catalog_name(ref.id))
    forged.delete_object(ref.chain, layout.catalog_name(ref.id))
    assert len(forged.snapshots()) == 1
    forged.put_catalog(ref.chain, ref.id, data)
    assert [s.id for s in forged.snapshots()][-1] == ref.id


def test_a_damaged_catalog_is_reported_on_every_listing(two):
    repo = open_repo(two)
    ref = repo.snapshots()[-1]
    path = f"{two.repo_dir}/dmbackup/mx.test/{layout.catalog(ref.chain, ref.id)}"
    with open(path, "r+b") as f:
        f.seek(len(CATALOG_MAGIC) + 4 + 20)
        f.write(b"\0\0\0\0")
    repo = open_repo(two)
    for _ in range(2):
        seen = []
        assert len(repo.snapshots(on_error=lambda c, s, exc: seen.append((c, s)))) == 1
        assert seen == [(ref.chain, ref.id)]
    assert len(repo.snapshots()) == 1 and [(c, s) for c, s, _ in repo.damaged] == [(ref.chain, ref.id)]
    assert len(repo.snapshots()) == 1 and len(repo.damaged) == 1


def test_objects_and_bundles_by_id(two):
    repo = open_repo(two)
    full, inc = repo.snapshots()
    assert repo.chains() == [full.chain]
    names = repo.chain_objects(full.chain)
    assert layout.catalog_name(full.id) in names and layout.volume_name(full.id, 1) in names
    vol = full.header.volumes[0]
    assert repo.object_size(full.chain, vol["name"]) == vol["size"]
    data = repo.read_object(full.chain, vol["name"])
    assert hashlib.sha256(data).hexdigest() == vol["sha256"]
    assert repo.read_object(full.chain, vol["name"], 4, 10) == data[4:14]
    # every mail snapshot carries its bundle, named by the snapshot's id
    assert repo.bundle_ids() == [full.id, inc.id]
    assert full.header.config_bundle == layout.bundle(full.id) == f"config/{full.id}.bundle"
    blob = repo.read_bundle(full.id)
    assert repo.bundle_size(full.id) == len(blob)
    cfg = layout.config_only_id(layout.snap_time(layout.parse_id_time(full.id)))
    repo.write_bundle(cfg, blob)
    assert repo.bundle_ids() == sorted([full.id, inc.id, cfg]) and layout.is_config_only(cfg)
    repo.delete_bundle(cfg)
    assert cfg not in repo.bundle_ids()
    with pytest.raises(NotFound):
        repo.bundle_size(cfg)


def test_layout_spells_the_format():
    """The names and AADs of the format, byte for byte (dmbackup.archive)."""
    chain, snap, rid = "0003-20261120T023000Z", "20261128T023000Z-inc", "ab" * 16
    assert layout.chain_id(3, "20261120T023000Z") == chain
    assert layout.snapshot_id("20261128T023000Z", "incremental") == snap
    assert layout.snapshot_id("20261128T023000Z", "full") == "20261128T023000Z-full"
    assert layout.catalog(chain, snap) == f"chains/{chain}/{snap}.catalog"
    assert layout.pages(chain, snap) == f"chains/{chain}/{snap}.pages"
    assert layout.index(chain, snap) == f"chains/{chain}/{snap}.index"
    assert layout.chain_object(chain, layout.volume_name(snap, 12)) == f"chains/{chain}/{snap}.v0012"
    assert layout.bundle("20261128T023000Z-config") == "config/20261128T023000Z-config.bundle"
    assert (layout.KEY_FILE, layout.LOCK, layout.REPO_JSON) == ("keys/master.json", "locks/lock", "repo.json")
    assert layout.object_owner(f"{snap}.v0001") == layout.object_owner(f"{snap}.pages") == snap
    assert layout.catalog_id(f"{snap}.catalog") == snap and layout.catalog_id(f"{snap}.pages") is None
    assert layout.bundle_id("config/x.bundle") == "x" and layout.bundle_id("x.bundle.tmp-1234") is None
    assert layout.block_aad(rid, chain, f"{snap}.v0001", 4) == f"{rid}|blk|{chain}|{snap}.v0001|4".encode()
    assert layout.page_aad(rid, chain, snap, 0) == f"{rid}|page|{chain}|{snap}|0".encode()
    assert layout.head_aad(rid, chain, snap) == f"{rid}|cat-head|{chain}|{snap}".encode()
    assert layout.body_aad(rid, chain, snap) == f"{rid}|cat-body|{chain}|{snap}".encode()
    assert layout.index_aad(rid, chain, snap) == f"{rid}|index|{chain}|{snap}".encode()
    assert layout.bundle_aad(rid, snap) == f"{rid}|bundle|{snap}".encode()


@pytest.mark.parametrize("master", [None, b"k" * 64])
def test_a_catalog_counts_its_own_size_as_before(master):
    """``encode_catalog(count_self=True)`` records the size the catalog had with the header as
    given, as the backup's two encodings did (stored_bytes += len(first encoding))."""
    sealer, rid = Keys(master).catalog, "cd" * 16
    rows = [PageRow(f"d{i}", "20261128T023000Z-full", i * 100, 100, "0" * 32, 3) for i in range(500)]
    for stored in (0, 9, 99_999, 10 ** 12 - 7):
        h = Header(id="20261128T023000Z-full", chain="0001-20261128T023000Z", seq=0, parent=None,
                   kind="full", what="mail", time="2026-11-28T02:30:00Z", hostname="mx.test", stored_bytes=stored)
        first = encode_catalog(h, {"pages": rows}, ["w"], sealer, rid)
        want = stored + len(first)
        out = encode_catalog(h, {"pages": rows}, ["w"], sealer, rid, count_self=True)
        assert h.stored_bytes == want
        (n,) = U32.unpack_from(out, len(CATALOG_MAGIC))
        assert out.startswith(CATALOG_MAGIC) and len(out) - n == len(first) - U32.unpack_from(first, 7)[0]
