"""Forging snapshots with the repository's own key, to feed restore hostile catalogs."""

from __future__ import annotations

import hashlib

from dmbackup.archive import layout
from dmbackup.archive.catalog import (
    Entry,
    PageRow,
    compress,
    encode_catalog,
    encode_page,
)
from dmbackup.archive.layout import page_aad
from dmbackup.archive.repository import Repository
from dmbackup.targets.dir import DirTarget

from tests.world import PASSPHRASE


def open_repo(world) -> Repository:
    repo = Repository(DirTarget("local", world.repo_dir), "mx.test")
    repo.load_meta()
    repo.unlock(lambda: PASSPHRASE.encode())
    return repo


def forge(world, pages: dict[str, list[list]], snap: str = "20991231T000000Z-inc") -> str:
    """Write a new incremental on top of the newest snapshot whose tree is ``pages``.

    ``pages`` maps a directory to raw entry lists (the on-disk encoding); file entries may
    reuse extents of existing content.
    """
    repo = open_repo(world)
    parent = repo.snapshots()[-1]
    chain = parent.chain
    rows, blob = [], b""
    for d, raw_entries in pages.items():
        plain = encode_page([Entry(*r[:8], hash=r[8], extents=r[9] if r[1] == "f" else None,
                                   link=r[9] if r[1] == "l" else None) for r in raw_entries])
        sealed = repo.keys.catalog.seal(compress(plain), page_aad(repo.id, chain, snap, len(blob)))
        rows.append(PageRow(d, snap, len(blob), len(sealed), hashlib.sha256(plain).hexdigest(), len(raw_entries)))
        blob += sealed
    repo.put_object(chain, layout.pages_name(snap), blob)
    header = parent.header
    header.id, header.parent, header.seq = snap, parent.id, parent.header.seq + 1
    header.kind, header.volumes, header.index = "incremental", [], None
    header.pages = {"name": layout.pages_name(snap), "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    header.time = "2099-12-31T00:00:00Z"
    repo.put_catalog(chain, snap, encode_catalog(header, {"pages": rows}, [], repo.keys.catalog, repo.id))
    return snap


def some_file_entry(world) -> list:
    """A real file entry (raw form) from the newest snapshot, to borrow valid extents."""
    repo = open_repo(world)
    ref = repo.snapshots()[-1]
    rows, _ = repo.catalog_body(ref)
    for row in rows:
        for e in repo.page(ref.chain, row):
            if e.type == "f" and e.size > 0:
                return e.encode()
    raise AssertionError("no file")
