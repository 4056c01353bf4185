"""A repository on a target: creation, opening, the objects of its chains and bundles, listing.

See dmbackup.archive for the format and dmbackup.archive.layout for every name. The Repository
works on a PrefixedTarget rooted at ``dmbackup/<hostname>``, so several appliances share one
disk or share without seeing each other's objects or locks. The medium is not trusted: every
read is bounded (dmbackup.archive.reader), the encryption mode is the caller's (from the
config), never ``repo.json``'s, and ``repo.json`` is checked against its MAC once the key is
open. What this machine saw last (dmbackup.archive.watch, armed by dmbackup.archive.trust)
is compared with every listing, so an older copy put back is noticed. The one-writer lock is
dmbackup.archive.lock.

The engine names nothing itself: it asks for a chain's objects, a snapshot's catalog, a
config bundle by id. Listing snapshots reads every catalog header, so the listing is kept
for the life of the Repository object and dropped when this object writes a catalog or
deletes a chain object.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import uuid

from dmbackup import utctime
from dmbackup.archive import FORMAT_VERSION, crypto, layout
from dmbackup.archive.blocks import BlockReader, BlockWriter, stream_volume
from dmbackup.archive.catalog import Header, PageRow
from dmbackup.archive.layout import CHAIN_RE, SNAP_RE
from dmbackup.archive.lock import RepoLock
from dmbackup.archive.readme import README_RESTORE  # (engine/enrol.py imports it from here)
from dmbackup.archive.reader import CatalogReader, SnapshotRef, read_small
from dmbackup.archive import watch as _watch
from dmbackup.archive.watch import Watch
from dmbackup.errors import CorruptObject, NoRepository, NotFound, OperationFailed, WrongRepository
from dmbackup.targets.base import AlreadyExists, PrefixedTarget, Target, is_temporary

ID_RE = re.compile(r"^[0-9a-f]{32}\Z")


class _RepoView(PrefixedTarget):
    """The repository's view of its target; it tells the repository when a catalog is
    committed or a chain object deleted, so what this machine saw last advances with every
    snapshot it makes and a kept listing never outlives a change."""

    def __init__(self, inner: Target, prefix: str, repo: "Repository"):
        super().__init__(inner, prefix)
        self._repo = repo

    def put(self, name, data):
        super().put(name, data)
        if layout.catalog_id(name) is not None and name.startswith(layout.CHAINS + "/") and not is_temporary(name):
            self._repo._catalog_committed(name, data)

    def delete(self, name):
        if name.startswith(layout.CHAINS + "/"):
            self._repo._listing = None
        super().delete(name)


class Repository:
    def __init__(self, target: Target, hostname: str):
        self.raw_target = target
        self.hostname = hostname
        self.t = _RepoView(target, layout.repo_root(hostname), self)
        self.meta: dict | None = None
        self.keys: crypto.Keys | None = None
        self.meta_mac: str | None = None      # "ok" | "absent" | "mismatch" once unlocked
        self.watch = Watch()
        self.damaged: list[tuple[str, str, str]] = []
        self._lock = RepoLock(self.t, hostname)
        self._reader = CatalogReader(self)
        self._listing: tuple[list[SnapshotRef], list[tuple[str, str, CorruptObject]]] | None = None

    # --- creation and opening ------------------------------------------------------------
    @property
    def id(self) -> str:
        assert self.meta is not None
        return self.meta["id"]

    def exists(self) -> bool:
        return self.t.exists(layout.REPO_JSON)

    def create(self, passphrase: bytes | None, encrypted: bool) -> str:
        if self.exists():
            raise OperationFailed(f"a repository already exists on {self.t.describe()}")
        if self.t.exists(layout.KEY_FILE) or list(self.t.list_dirs(layout.CHAINS)):
            raise OperationFailed(
                f"{self.t.describe()} holds backups of {self.hostname} (keys/ and chains/) but its repo.json "
                "is missing or damaged: refusing to create a new repository over them; restore "
                "repo.json from another copy of the disk, or move the old dmbackup/ directory away")
        repo_id = uuid.uuid4().hex
        master = os.urandom(64) if encrypted else None
        if encrypted:
            try:
                self.t.create_exclusive(layout.KEY_FILE, crypto.wrap_master(master, passphrase, repo_id))
            except AlreadyExists:
                raise OperationFailed(f"keys/master.json already exists on {self.t.describe()}: "
                                      "refusing to replace the key of existing backups") from None
        self.t.put(layout.README, README_RESTORE.format(hostname=self.hostname).encode())
        self.keys = crypto.Keys(master)
        meta = {"format": FORMAT_VERSION, "id": repo_id, "created": utctime.iso(utctime.utc_now()),
                "hostname": self.hostname, "encryption": "aes-256-gcm" if encrypted else "none"}
        if encrypted:
            meta["mac"] = self.keys.meta_mac(meta)
        # repo.json last: a repository whose creation was interrupted does not exist
        self.t.put(layout.REPO_JSON, json.dumps(meta, indent=1).encode() + b"\n")
        self.t.sync()
        self.meta = meta
        self.meta_mac = "ok" if encrypted else "absent"
        return repo_id

    def small(self, name: str, what: str) -> bytes:
        """A small file of the repository, read with a cap (never a medium's idea of a size)."""
        return read_small(self.t, name, what)

    def load_meta(self) -> dict:
        try:
            raw = self.small(layout.REPO_JSON, "repo.json")
        except NotFound:
            raise NoRepository(
                f"no dmbackup repository for host {self.hostname} on {self.t.describe()}: "
                f"run `dmbackup init {self.t.name}` first") from None
        try:
            meta = json.loads(raw)
            if not isinstance(meta, dict) or not isinstance(meta.get("id"), str) or not ID_RE.match(meta["id"]):
                raise ValueError
        except (ValueError, RecursionError):
            raise CorruptObject(f"repo.json on {self.t.describe()} is damaged") from None
        if meta.get("format") != FORMAT_VERSION:
            raise OperationFailed(f"repository format {meta.get('format')} is not supported by this dmbackup")
        self.meta = meta
        return meta

    @property
    def encrypted(self) -> bool:
        """Whether the open keys encrypt (what the config asked for; never repo.json's word)."""
        return bool(self.keys and self.keys.encrypted)

    def unlock(self, passphrase_fn, encrypted: bool = True, *, check_meta: bool = True) -> None:
        """Load keys. ``encrypted`` comes from the config: ``repo.json``'s "encryption" field
        is written for people and never read, because anyone holding the medium can edit it.
        ``passphrase_fn`` is called only when ``encrypted``. Then ``repo.json`` is checked
        against its MAC: a mismatch is WrongRepository (exit 7) unless ``check_meta`` is off
        (``init``, which repairs it); ``self.meta_mac`` says "ok", "absent" (written before
        repositories had one) or "mismatch"."""
        if self.meta is None:
            self.load_meta()
        if not encrypted:
            if self.t.exists(layout.KEY_FILE):
                raise WrongRepository(
                    f"the repository on {self.t.describe()} is encrypted (it has a key), but "
                    "encryption.mode = \"none\" in the config: set encryption.passphrase_file (or "
                    "$DMBACKUP_PASSPHRASE) and remove mode = \"none\" to use it, or use an empty "
                    "target for an unencrypted repository")
            self.keys = crypto.Keys(None)
            self.meta_mac = "absent"
            return
        try:
            keyfile = self.small(layout.KEY_FILE, "the key file keys/master.json")
        except NotFound:
            raise CorruptObject(
                f"the key file keys/master.json is missing on {self.t.describe()}: this repository "
                "was made unencrypted, or its key was deleted; restore keys/ from another copy of "
                "the disk (an unencrypted repository is used only with encryption.mode = \"none\")") from None
        self.keys = crypto.Keys(crypto.unwrap_master(keyfile, passphrase_fn(), self.id))
        self._check_meta_mac(check_meta)

    def _check_meta_mac(self, check_meta: bool) -> None:
        mac = self.meta.get("mac")
        if mac is None:
            self.meta_mac = "absent"
        elif isinstance(mac, str) and hmac.compare_digest(mac, self.keys.meta_mac(self.meta)):
            self.meta_mac = "ok"
        else:
            self.meta_mac = "mismatch"
            if check_meta:
                raise WrongRepository(
                    f"repo.json on {self.t.describe()} was changed after dmbackup wrote it (it does not "
                    "match its MAC under the repository key): someone edited the disk. The backups "
                    "themselves are checked separately: run `dmbackup verify --target "
                    f"{self.t.name} --read-data`, then `dmbackup init {self.t.name}` to rewrite repo.json "
                    "from the key")

    def rewrite_meta(self) -> None:
        """Write repo.json again from what the key vouches for (``init`` after tampering, or
        a repository from before repo.json had a MAC): the id, the key's encryption, a MAC."""
        assert self.meta is not None and self.keys is not None
        meta = {"format": FORMAT_VERSION, "id": self.id,
                "created": self.meta.get("created") if isinstance(self.meta.get("created"), str) else utctime.iso(utctime.utc_now()),
                "hostname": self.hostname, "encryption": "aes-256-gcm" if self.keys.encrypted else "none"}
        if self.keys.encrypted:
            meta["mac"] = self.keys.meta_mac(meta)
        self.t.put(layout.REPO_JSON, json.dumps(meta, indent=1).encode() + b"\n")
        self.meta = meta
        self.meta_mac = "ok" if self.keys.encrypted else "absent"

    # --- locking (dmbackup.archive.lock) -------------------------------------------------------
    def lock(self, purpose: str) -> None:
        self._lock.take(purpose)

    def unlock_repo(self) -> None:
        self._lock.release()

    # --- the medium ----------------------------------------------------------------------------
    def describe(self) -> str:
        return self.t.describe()

    def free_space(self) -> int | None:
        return self.t.free_space()

    def sync(self) -> None:
        """Make everything committed so far durable (before a catalog is written)."""
        self.t.sync()

    @property
    def bytes_read(self) -> int:
        return self.t.bytes_read

    # --- chains and their objects --------------------------------------------------------------
    def chains(self) -> list[str]:
        return sorted(c.rsplit("/", 1)[-1] for c in self.t.list_dirs(layout.CHAINS)
                      if CHAIN_RE.match(c.rsplit("/", 1)[-1]))

    def chain_objects(self, chain: str) -> list[str]:
        """Base names of everything in a chain's directory (temporary names included)."""
        return [n.rsplit("/", 1)[-1] for n in self.t.list(layout.chain_dir(chain))]

    def object_size(self, chain: str, name: str) -> int:
        """The size of a chain object (base name) on the medium; NotFound if it is missing."""
        return self.t.stat(layout.chain_object(chain, name)).size

    def read_object(self, chain: str, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.t.get(layout.chain_object(chain, name), offset, length)

    def object_writer(self, chain: str, name: str):
        """A writer for a chain object, committed under its name by ``commit()``."""
        return self.t.writer(layout.chain_object(chain, name))

    def put_object(self, chain: str, name: str, data: bytes) -> None:
        self.t.put(layout.chain_object(chain, name), data)

    def put_catalog(self, chain: str, snap: str, data: bytes) -> None:
        """Commit a snapshot: its catalog is written last (and the kept listing dropped)."""
        self.t.put(layout.catalog(chain, snap), data)

    def delete_object(self, chain: str, name: str) -> None:
        self.t.delete(layout.chain_object(chain, name))

    def remove_chain_dir(self, chain: str) -> None:
        """Remove an emptied chain's directory; raises OSError/DmError if it is not empty."""
        self.t.rmdir(layout.chain_dir(chain))

    def block_writer(self, chain: str, snap: str, volume_size: int, **kwargs) -> BlockWriter:
        """Volumes of snapshot ``snap``, at most ``volume_size`` (or what the target allows)."""
        return BlockWriter(self.t, self.id, chain, snap, self.keys.data,
                           min(volume_size, self.t.capabilities.max_object_size), **kwargs)

    def block_reader(self, cache_blocks: int = 8) -> BlockReader:
        return BlockReader(self.t, self.id, self.keys.data, cache_blocks)

    def volume_blocks(self, chain: str, volume: str, size: int, hasher):
        """(offset, sealed block) of a volume read in windows; every byte read goes to ``hasher``."""
        return stream_volume(self.t, layout.chain_object(chain, volume), size, hasher)

    # --- config bundles (config/<id>.bundle; the format is dmbackup.archive.bundle) ------------
    def bundle_ids(self) -> list[str]:
        """Ids of the committed bundles (mail snapshot ids and ``<time>-config``), by name."""
        return sorted(b for n in self.t.list(layout.BUNDLES)
                      if not is_temporary(n) and (b := layout.bundle_id(n)) is not None)

    def bundle_size(self, bid: str) -> int:
        return self.t.stat(layout.bundle(bid)).size

    def read_bundle(self, bid: str) -> bytes:
        """The whole bundle (check ``bundle_size`` first: this reads what the medium holds)."""
        return self.t.get(layout.bundle(bid))

    def write_bundle(self, bid: str, data: bytes) -> None:
        self.t.put(layout.bundle(bid), data)

    def delete_bundle(self, bid: str) -> None:
        self.t.delete(layout.bundle(bid))

    # --- snapshots -----------------------------------------------------------------------------
    def use_table_cache(self, cache) -> None:
        """Keep parsed catalog bodies in ``cache`` (dmbackup.archive.tablecache.TableCache)."""
        self._reader.cache = cache

    @property
    def table_cache(self):
        return self._reader.cache

    def catalog_header(self, chain: str, snap: str) -> Header:
        return self._reader.header(chain, snap)

    def snapshots(self, *, on_error=None) -> list[SnapshotRef]:
        """Every committed snapshot, ordered by (chain number, seq).

        A damaged catalog is passed to ``on_error`` or, by default, recorded in
        ``self.damaged`` and skipped: one bad catalog must not make the others unusable
        (``verify`` reports it). The headers are read once per Repository object (until it
        writes a catalog or deletes a chain object); damage and what this machine saw last
        are reported on every call."""
        explicit = on_error is not None
        if on_error is None:
            def on_error(chain, snap, exc):
                if (chain, snap) not in {(c, s) for c, s, _ in self.damaged}:
                    self.damaged.append((chain, snap, str(exc)))
        out, bad = self._list_snapshots()
        for chain, snap, exc in bad:
            on_error(chain, snap, exc)
        _watch.check_listing(self, out, {(c, s) for c, s, _ in bad}, on_error, explicit)
        return list(out)

    def _list_snapshots(self):
        if self._listing is None:
            out, bad = [], []
            for chain in self.chains():
                for obj in self.chain_objects(chain):
                    snap = layout.catalog_id(obj)
                    if snap is None or is_temporary(obj) or not SNAP_RE.match(snap):
                        continue
                    try:
                        out.append(SnapshotRef(chain, snap, self.catalog_header(chain, snap)))
                    except CorruptObject as exc:
                        bad.append((chain, snap, exc))
            out.sort(key=lambda s: (s.chain_no, s.header.seq, s.id))
            self._listing = (out, bad)
        return self._listing

    def catalog_body(self, ref: SnapshotRef):
        """(page rows in tree order, warnings) of a snapshot, its table resolved through its parents."""
        return self._reader.body(ref)

    def catalog_rows(self, ref: SnapshotRef):
        """The page rows of a snapshot in no particular order (``catalog_body`` without its sort)."""
        return self._reader.rows(ref)

    def table_depth(self, ref: SnapshotRef) -> int:
        """How many parent tables a snapshot's table builds on (0: a full table)."""
        return self._reader.depth(ref)

    def content_index(self, ref: SnapshotRef):
        """The snapshot's content index (``.get(sha256 hex)`` -> extents), or None."""
        return self._reader.content_index(ref)

    def page(self, chain: str, row: PageRow) -> list:
        """The entries of one directory: its stored base page with the row's delta applied."""
        return self._reader.page(chain, row)

    def page_at(self, chain: str, owner: str, offset: int, length: int, d: str = "") -> list:
        return self._reader.page_at(chain, owner, offset, length, d)

    def resolve(self, spec: str | None, snaps: list[SnapshotRef] | None = None) -> SnapshotRef:
        snaps = snaps if snaps is not None else self.snapshots()
        if not snaps:
            raise OperationFailed(f"no snapshots on {self.t.describe()}")
        if spec is None or spec == "latest":
            return snaps[-1]
        matches = [s for s in snaps if s.id == spec or f"{s.chain}/{s.id}" == spec]
        if not matches:
            matches = [s for s in snaps if s.id.startswith(spec)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise OperationFailed(f"no snapshot {spec!r} on {self.t.describe()}: see `dmbackup snapshots`")
        raise OperationFailed(f"snapshot {spec!r} is ambiguous: {', '.join(m.id for m in matches[:5])}")

    # --- what this machine saw last (dmbackup.archive.watch) -----------------------------------
    def older_than_seen(self, what: str) -> str:
        return _watch.older_than_seen(self, what)

    def saw_config(self, name: str) -> None:
        self.watch.saw_config(name)

    def check_config_bundles(self, names: list[str], committed: set) -> str | None:
        """A message when the newest config bundle this machine saw is gone and nothing newer
        is there (None otherwise); records the newest present (dmbackup.archive.watch)."""
        return _watch.check_config_bundles(self, names, committed)

    def _catalog_committed(self, name: str, data: bytes) -> None:
        from dmbackup.archive.catalog import decode_catalog_header

        self._listing = None
        if not self.watch.on_newest or self.keys is None:
            return
        _, chain, obj = name.split("/", 2)
        snap = layout.catalog_id(obj)
        try:
            header, _ = decode_catalog_header(data, self.keys.catalog, self.id, chain, snap)
        except CorruptObject:
            return
        self.watch.saw(chain, snap, header)

    # --- after an interrupted run ----------------------------------------------------------------
    def cleanup_leftovers(self, log=None) -> int:
        """Delete temporary names and objects of snapshots without a catalog (under the lock)."""
        removed = 0
        all_committed = set()       # by name: a damaged catalog still owns its objects
        for chain in self.chains():
            objs = self.chain_objects(chain)
            committed = {s for o in objs if (s := layout.catalog_id(o)) is not None and not is_temporary(o)}
            all_committed |= committed
            for o in objs:
                if is_temporary(o) or layout.object_owner(o) not in committed:
                    self.delete_object(chain, o)
                    removed += 1
                    if log:
                        log.info("removed_leftover", object=layout.chain_object(chain, o))
        for o in self.t.list(layout.BUNDLES):
            snap = layout.bundle_id(o) or ""
            # a mail snapshot's bundle without its catalog: left by an interrupted run
            if SNAP_RE.match(snap) and snap not in all_committed:
                self.t.delete(o)
                removed += 1
                if log:
                    log.info("removed_leftover", object=o)
        for d in (layout.BUNDLES, layout.KEYS, ""):
            for o in self.t.list(d):
                if is_temporary(o):
                    self.t.delete(o)
                    removed += 1
        return removed
